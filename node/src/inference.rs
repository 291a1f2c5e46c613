//! R-NODE-1: how a ticket holder proves itself to the provider on the direct HTTP
//! call (documented for other clients in docs/nodes.md / docs/PROTOCOL.md):
//!
//! - `X-Yellowstone-Session`: the session id of the router-signed ticket, decimal.
//! - `X-Yellowstone-Signature`: `0x` + 130 hex digits, the user's 65-byte recoverable
//!   signature (r || s || v, low-s) over
//!   `wire::signature::inference_request_digest(network_id, session_id, body)`, i.e.
//!   BLAKE3("yellowstone/v1" || network_id u32 LE || 0xFF03 u16 LE || session_id u64 LE
//!   || BLAKE3(exact request body bytes)).
//!
//! The provider recovers the signer and serves the request only if it is the
//! ticket's user; the body cannot be altered without breaking the signature.

use yellowstone_wire::signature::{inference_request_digest, recover_signer};
use yellowstone_wire::{Address, SigError, Signature, SigningKey};

pub const SESSION_HEADER: &str = "x-yellowstone-session";
pub const SIGNATURE_HEADER: &str = "x-yellowstone-signature";

/// Signs a request body for `session_id`: returns the signature header's value.
pub fn sign_request(key: &SigningKey, network_id: u32, session_id: u64, body: &[u8]) -> String {
    let signature = key.sign_digest(&inference_request_digest(network_id, session_id, body));
    format!("0x{}", hex::encode(signature.0))
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("header {0} is malformed: {1}")]
    Malformed(&'static str, String),
    #[error("signature: {0}")]
    Signature(SigError),
}

/// Parses the two headers' values and recovers who signed the body for the session.
pub fn recover_requester(
    network_id: u32,
    session: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(u64, Address), HeaderError> {
    let session = session.ok_or(HeaderError::Missing(SESSION_HEADER))?;
    let session_id: u64 = session
        .trim()
        .parse()
        .map_err(|e| HeaderError::Malformed(SESSION_HEADER, format!("{e}")))?;
    let signature = signature.ok_or(HeaderError::Missing(SIGNATURE_HEADER))?;
    let digits = signature.trim().trim_start_matches("0x");
    let mut bytes = [0u8; 65];
    hex::decode_to_slice(digits, &mut bytes)
        .map_err(|e| HeaderError::Malformed(SIGNATURE_HEADER, format!("130 hex digits: {e}")))?;
    let digest = inference_request_digest(network_id, session_id, body);
    let signer = recover_signer(&digest, &Signature(bytes)).map_err(HeaderError::Signature)?;
    Ok((session_id, signer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_node_1_signature_recovers_the_user_and_binds_the_body() {
        let user = SigningKey::from_seed(b"user");
        let body = br#"{"model":"m","messages":[]}"#;
        let header = sign_request(&user, 3, 77, body);
        assert_eq!(
            recover_requester(3, Some("77"), Some(&header), body).unwrap(),
            (77, user.address())
        );
        // Another body, session or network recovers someone else.
        let (_, other) = recover_requester(3, Some("77"), Some(&header), b"{}").unwrap();
        assert_ne!(other, user.address());
        let (_, other) = recover_requester(4, Some("77"), Some(&header), body).unwrap();
        assert_ne!(other, user.address());
        assert_eq!(
            recover_requester(3, None, Some(&header), body),
            Err(HeaderError::Missing(SESSION_HEADER))
        );
        assert!(matches!(
            recover_requester(3, Some("x"), Some(&header), body),
            Err(HeaderError::Malformed(SESSION_HEADER, _))
        ));
        assert!(matches!(
            recover_requester(3, Some("77"), Some("0x1234"), body),
            Err(HeaderError::Malformed(SIGNATURE_HEADER, _))
        ));
    }
}
