//! Signatures (R-ID-2, R-ID-3): 65-byte recoverable secp256k1 ECDSA (r || s || v,
//! v in {0, 1}; 27/28 accepted on input), low-s only, over a 32-byte digest:
//! BLAKE3(DOMAIN_TAG || network_id u32 LE || msg_type u16 LE || body), so that a
//! signature can never be replayed as another message type or on another network.

use crate::address::Address;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, SecretKey, SECP256K1};

/// The domain tag every digest starts with (R-ID-2), 14 ASCII bytes.
pub const DOMAIN_TAG: &[u8] = b"yellowstone/v1";
/// Bytes of a signature: r (32) ‖ s (32) ‖ v (1).
pub const SIGNATURE_LEN: usize = 65;
/// Pseudo message type under which a provider signs a model's weights hash.
pub const WEIGHTS_PROOF_TYPE: u16 = 0xFF01;
/// Pseudo message type under which a client signs the login challenge.
pub const LOGIN_TYPE: u16 = 0xFF02;
/// Pseudo message type under which a user signs an inference request sent straight
/// to a provider (R-NODE-1).
pub const INFERENCE_REQUEST_TYPE: u16 = 0xFF03;

/// secp256k1 group order n, big-endian, and n / 2 (the low-s bound).
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// A recoverable secp256k1 ECDSA signature, r ‖ s ‖ v (v 0 or 1; 27 or 28 accepted
/// on input), low-s (R-ID-2). The signer is recovered from it, never sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

impl Default for Signature {
    fn default() -> Self {
        Signature([0u8; SIGNATURE_LEN])
    }
}

/// Why a signature or a secret key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigError {
    /// r or s out of range, or no key recovers from it.
    BadSignature,
    /// s above n/2: malleable, refused (R-ID-2).
    HighS,
    /// v is not 0, 1, 27 or 28.
    BadRecoveryId,
    /// The recovered signer is not the address the message claims (R-ID-3).
    SignerMismatch {
        /// The address the signature recovers to.
        recovered: Address,
    },
}

impl std::fmt::Display for SigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigError::BadSignature => write!(f, "bad signature"),
            SigError::HighS => write!(f, "signature has a high s value (only low-s is accepted)"),
            SigError::BadRecoveryId => write!(f, "signature recovery id must be 0, 1, 27 or 28"),
            SigError::SignerMismatch { recovered } => {
                write!(f, "signed by {recovered}, not by the claimed address")
            }
        }
    }
}

impl std::error::Error for SigError {}

/// Bodies up to this size are hashed from one stack buffer (one `blake3::hash` call,
/// cheaper than the incremental hasher for small inputs); larger ones incrementally.
/// Both give the same digest.
const DIGEST_STACK_BYTES_MAX: usize = 512;

/// The 32-byte digest a message is signed over (R-ID-2):
/// BLAKE3(DOMAIN_TAG ‖ network_id u32 LE ‖ msg_type u16 LE ‖ body), `body` without
/// its trailing signature.
pub fn digest(network_id: u32, msg_type: u16, body: &[u8]) -> [u8; 32] {
    const PREFIX_LEN: usize = DOMAIN_TAG.len() + 4 + 2;
    if body.len() <= DIGEST_STACK_BYTES_MAX - PREFIX_LEN {
        let mut buffer = [0u8; DIGEST_STACK_BYTES_MAX];
        buffer[..DOMAIN_TAG.len()].copy_from_slice(DOMAIN_TAG);
        buffer[DOMAIN_TAG.len()..DOMAIN_TAG.len() + 4].copy_from_slice(&network_id.to_le_bytes());
        buffer[DOMAIN_TAG.len() + 4..PREFIX_LEN].copy_from_slice(&msg_type.to_le_bytes());
        buffer[PREFIX_LEN..PREFIX_LEN + body.len()].copy_from_slice(body);
        return *blake3::hash(&buffer[..PREFIX_LEN + body.len()]).as_bytes();
    }
    digest_incremental(network_id, msg_type, body)
}

fn digest_incremental(network_id: u32, msg_type: u16, body: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN_TAG);
    hasher.update(&network_id.to_le_bytes());
    hasher.update(&msg_type.to_le_bytes());
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

/// The digest a provider signs to prove it holds a model's weights (R-PROV-1).
pub fn weights_proof_digest(network_id: u32, model_id: u32, weights_hash: &[u8; 32]) -> [u8; 32] {
    let mut body = [0u8; 36];
    body[..4].copy_from_slice(&model_id.to_le_bytes());
    body[4..].copy_from_slice(weights_hash);
    digest(network_id, WEIGHTS_PROOF_TYPE, &body)
}

/// R-NODE-1: the digest a user signs to send an inference request to the provider
/// of session `session_id`: `digest(network_id, INFERENCE_REQUEST_TYPE, session_id u64
/// LE || BLAKE3(request body))`. The body's own digest (not the body) enters, so the
/// provider can check a streamed body in one pass, and the router never needs it.
pub fn inference_request_digest(network_id: u32, session_id: u64, body: &[u8]) -> [u8; 32] {
    let mut signed = [0u8; 40];
    signed[..8].copy_from_slice(&session_id.to_le_bytes());
    signed[8..].copy_from_slice(blake3::hash(body).as_bytes());
    digest(network_id, INFERENCE_REQUEST_TYPE, &signed)
}

/// The digest a client signs to log in: [`digest`] of the router's 32-byte
/// challenge under the pseudo type [`LOGIN_TYPE`] (R-ID-4).
pub fn login_digest(network_id: u32, challenge: &[u8; 32]) -> [u8; 32] {
    digest(network_id, LOGIN_TYPE, challenge)
}

/// Recovers the signer of `digest`, refusing high-s signatures.
pub fn recover_signer(digest: &[u8; 32], signature: &Signature) -> Result<Address, SigError> {
    let bytes = &signature.0;
    if bytes[32..64] > HALF_ORDER[..] {
        return Err(SigError::HighS);
    }
    let v = match bytes[64] {
        0 | 27 => 0,
        1 | 28 => 1,
        _ => return Err(SigError::BadRecoveryId),
    };
    let id = RecoveryId::try_from(v).map_err(|_| SigError::BadRecoveryId)?;
    let recoverable =
        RecoverableSignature::from_compact(&bytes[..64], id).map_err(|_| SigError::BadSignature)?;
    let message = Message::from_digest(*digest);
    let public = SECP256K1
        .recover_ecdsa(&message, &recoverable)
        .map_err(|_| SigError::BadSignature)?;
    Ok(Address::from_public_key(&public))
}

/// Recovers and checks the signer equals `claimed` (R-ID-3).
pub fn verify_signer(
    digest: &[u8; 32],
    signature: &Signature,
    claimed: &Address,
) -> Result<(), SigError> {
    let recovered = recover_signer(digest, signature)?;
    if recovered != *claimed {
        return Err(SigError::SignerMismatch { recovered });
    }
    Ok(())
}

/// A secp256k1 key that signs and knows its address.
#[derive(Clone)]
pub struct SigningKey {
    secret: SecretKey,
    address: Address,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.address)
    }
}

impl SigningKey {
    /// A key from its 32-byte big-endian secret; `SigError::BadSignature` when the
    /// secret is 0 or not below the group order.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<SigningKey, SigError> {
        let secret = SecretKey::from_slice(secret).map_err(|_| SigError::BadSignature)?;
        let public = PublicKey::from_secret_key(SECP256K1, &secret);
        Ok(SigningKey {
            secret,
            address: Address::from_public_key(&public),
        })
    }

    /// A fresh key from the operating system's randomness.
    pub fn random() -> SigningKey {
        let (secret, public) = SECP256K1.generate_keypair(&mut secp256k1::rand::thread_rng());
        SigningKey {
            secret,
            address: Address::from_public_key(&public),
        }
    }

    /// A deterministic key from a seed (tests, load generation): BLAKE3 of the seed,
    /// re-hashed in the negligible case it is not a valid scalar.
    pub fn from_seed(seed: &[u8]) -> SigningKey {
        let mut bytes = *blake3::hash(seed).as_bytes();
        loop {
            if let Ok(key) = SigningKey::from_bytes(&bytes) {
                return key;
            }
            bytes = *blake3::hash(&bytes).as_bytes();
        }
    }

    /// Parses a key file's text, the one format every Yellowstone tool reads (the
    /// router's `address` and `router.key`, the provider and consumer nodes, ctl):
    /// what `yellowstone-router keygen` prints (`secret_hex=<64 hex>` and an optional
    /// `address=<0x…>` line, which must then be the secret's address), or one line of
    /// 64 hex digits (`0x` allowed) as in a data directory's `router.key` or a node's
    /// `keygen --out` file. Blank lines and `#` comments are skipped.
    ///
    /// Errors: a line that is neither form (named by number), a second secret, no
    /// secret, an address line that does not match the secret.
    pub fn from_key_file_text(text: &str) -> Result<SigningKey, String> {
        let mut secret = None;
        let mut expected: Option<Address> = None;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(value) = line.strip_prefix("address=") {
                let address = value
                    .trim()
                    .parse()
                    .map_err(|e| format!("line {}: address: {e}", number + 1))?;
                expected = Some(address);
                continue;
            }
            let hex = line.strip_prefix("secret_hex=").unwrap_or(line).trim();
            if secret.is_some() {
                return Err(format!("line {}: a second secret key", number + 1));
            }
            let key = SigningKey::from_hex(hex).map_err(|e| {
                format!(
                    "line {}: expected secret_hex=<64 hex digits>, address=<0x…> or 64 hex \
                     digits ({e})",
                    number + 1
                )
            })?;
            secret = Some(key);
        }
        let key = secret.ok_or("no secret key in it")?;
        if let Some(expected) = expected {
            if key.address() != expected {
                return Err(format!(
                    "its address line says {expected}, but its secret is the key of {}",
                    key.address()
                ));
            }
        }
        Ok(key)
    }

    /// A key from 64 hex digits (an optional `0x`, surrounding space ignored); the
    /// error says whether the text is not 64 hex digits or the secret out of range.
    pub fn from_hex(text: &str) -> Result<SigningKey, String> {
        let digits = text.trim().trim_start_matches("0x");
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes)
            .map_err(|e| format!("secret key must be 64 hex digits: {e}"))?;
        SigningKey::from_bytes(&bytes).map_err(|_| "secret key out of range".to_string())
    }

    /// The 32-byte big-endian secret (what a key file holds in hex).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.secret_bytes()
    }

    /// The key's address (R-ID-1).
    pub fn address(&self) -> Address {
        self.address
    }

    /// The 64-byte uncompressed public key (x || y, without the 0x04 prefix): what
    /// the address is the keccak-256 of (R-ID-1).
    pub fn public_key_xy(&self) -> [u8; 64] {
        let public = PublicKey::from_secret_key(SECP256K1, &self.secret);
        let uncompressed = public.serialize_uncompressed();
        let mut xy = [0u8; 64];
        xy.copy_from_slice(&uncompressed[1..]);
        debug_assert_eq!(Address::from_public_key_xy(&xy), self.address);
        xy
    }

    /// RFC 6979 deterministic, low-s (libsecp256k1 normalises s).
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Signature {
        let message = Message::from_digest(*digest);
        let recoverable = SECP256K1.sign_ecdsa_recoverable(&message, &self.secret);
        let (id, compact) = recoverable.serialize_compact();
        let mut out = [0u8; SIGNATURE_LEN];
        out[..64].copy_from_slice(&compact);
        out[64] = i32::from(id) as u8;
        Signature(out)
    }
}

/// Flips s to n - s (and v), making a valid but high-s twin: for tests.
pub fn to_high_s(signature: &Signature) -> Signature {
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36,
        0x41, 0x41,
    ];
    let mut out = signature.0;
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let diff = ORDER[i] as i16 - signature.0[32 + i] as i16 - borrow;
        out[32 + i] = diff.rem_euclid(256) as u8;
        borrow = if diff < 0 { 1 } else { 0 };
    }
    out[64] ^= 1;
    Signature(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_id_2_sign_recover_and_domain_separation() {
        let key = SigningKey::from_seed(b"alice");
        let d = digest(1, 0x20, b"body");
        let signature = key.sign_digest(&d);
        assert_eq!(recover_signer(&d, &signature), Ok(key.address()));
        assert_eq!(key.sign_digest(&d), signature, "RFC 6979 is deterministic");
        assert_ne!(digest(2, 0x20, b"body"), d, "network id is bound");
        assert_ne!(digest(1, 0x21, b"body"), d, "message type is bound");
        let other = recover_signer(&digest(1, 0x21, b"body"), &signature);
        assert_ne!(other, Ok(key.address()));
    }

    #[test]
    fn r_id_2_digest_fast_path_equals_incremental() {
        for len in [0usize, 1, 63, 64, 65, 400, 491, 492, 493, 1024, 5000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                digest(3, 0x20, &body),
                digest_incremental(3, 0x20, &body),
                "{len}"
            );
        }
    }

    #[test]
    fn r_id_2_high_s_is_refused_and_r_id_3_mismatch_detected() {
        let key = SigningKey::from_seed(b"bob");
        let d = digest(1, 0x20, b"x");
        let signature = key.sign_digest(&d);
        let high = to_high_s(&signature);
        assert_eq!(recover_signer(&d, &high), Err(SigError::HighS));
        let mut bad_v = signature;
        bad_v.0[64] = 9;
        assert_eq!(recover_signer(&d, &bad_v), Err(SigError::BadRecoveryId));
        assert_eq!(
            recover_signer(&d, &Signature::default()),
            Err(SigError::BadSignature)
        );
        let mallory = SigningKey::from_seed(b"mallory").address();
        assert_eq!(
            verify_signer(&d, &signature, &mallory),
            Err(SigError::SignerMismatch {
                recovered: key.address()
            })
        );
    }
}
