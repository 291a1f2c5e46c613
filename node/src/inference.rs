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
//! - `X-Yellowstone-Ticket` (optional; outsider review 3 finding 2, R-HA-3): the
//!   router-signed `SessionTicket` the user holds, its wire body (signature
//!   included) in hex, at most [`TICKET_HEADER_HEX_MAX`] digits. A provider that has
//!   no ticket for the session (its copy was lost with a failed-over leader) accepts
//!   this one iff it verifies as the router's (R-ID-5: the router's address, the
//!   network id), names this provider and the session, and is unexpired; the
//!   signer must still be the ticket's user.
//!
//! The provider recovers the signer and serves the request only if it is the
//! ticket's user; the body cannot be altered without breaking the signature.

use yellowstone_wire::signature::{inference_request_digest, recover_signer};
use yellowstone_wire::{Address, SigError, Signature, SigningKey};

pub const SESSION_HEADER: &str = "x-yellowstone-session";
pub const SIGNATURE_HEADER: &str = "x-yellowstone-signature";
pub const TICKET_HEADER: &str = "x-yellowstone-ticket";

/// The longest `X-Yellowstone-Ticket` value, hex digits: twice the largest ticket
/// body (the fixed fields, 8 + 20 + 20 + 4 + 4 + 8 + 16 + 8 + 8 + 65 bytes, and an
/// endpoint of `ENDPOINT_BYTES_MAX`), so that no longer header is decoded.
pub const TICKET_HEADER_HEX_MAX: usize = 2
    * (8 + 20 + 20 + 4 + 4 + 8 + 16 + 8 + 8 + 65 + yellowstone_wire::messages::ENDPOINT_BYTES_MAX);

/// The `X-Yellowstone-Ticket` value for `ticket`: its wire body in hex. Only for a
/// ticket exactly as the router sent it: a node that may have renamed the ticket's
/// `rfc_nonce` (R-ID-8) sends the body it received instead (the consumer does).
pub fn ticket_header(ticket: &yellowstone_wire::SessionTicket) -> String {
    let mut body = Vec::new();
    ticket.encode(&mut body);
    hex::encode(body)
}

/// Why a presented ticket (`X-Yellowstone-Ticket`) is refused; each names the value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresentedTicketError {
    #[error("header {TICKET_HEADER} is {len} hex digits, at most {TICKET_HEADER_HEX_MAX}")]
    TooLong { len: usize },
    #[error("header {TICKET_HEADER} is not a ticket: {0}")]
    Malformed(String),
    #[error("the presented ticket does not verify as signed by the router {router} on network {network_id}")]
    NotTheRouters { router: Address, network_id: u32 },
    #[error("the presented ticket is for session {ticket}, the request for session {request}")]
    OtherSession { ticket: u64, request: u64 },
    #[error("the presented ticket names provider {named}, this provider is {own}")]
    OtherProvider { named: Address, own: Address },
    #[error("the router's address is not known yet (no connection so far): a presented ticket cannot be checked")]
    RouterUnknown,
}

/// R-ID-5, R-NODE-1: decodes and checks a presented ticket: at most
/// [`TICKET_HEADER_HEX_MAX`] hex digits, a `SessionTicket` body signed by `router` for
/// `network_id`, for `session`, naming `own` as its provider. The user and the expiry
/// are checked by the claim, as for a ticket from the router.
pub fn check_presented_ticket(
    value: &str,
    network_id: u32,
    router: Address,
    own: Address,
    session: u64,
) -> Result<yellowstone_wire::SessionTicket, PresentedTicketError> {
    let value = value.trim();
    if value.len() > TICKET_HEADER_HEX_MAX {
        return Err(PresentedTicketError::TooLong { len: value.len() });
    }
    let body = hex::decode(value.trim_start_matches("0x"))
        .map_err(|e| PresentedTicketError::Malformed(e.to_string()))?;
    let ticket = yellowstone_wire::SessionTicket::decode(&body)
        .map_err(|e| PresentedTicketError::Malformed(e.to_string()))?;
    yellowstone_wire::Message::SessionTicket(ticket.clone())
        .verify_router(network_id, &body, &router)
        .map_err(|_| PresentedTicketError::NotTheRouters { router, network_id })?;
    if ticket.session_id != session {
        return Err(PresentedTicketError::OtherSession {
            ticket: ticket.session_id,
            request: session,
        });
    }
    if ticket.provider != own {
        return Err(PresentedTicketError::OtherProvider {
            named: ticket.provider,
            own,
        });
    }
    Ok(ticket)
}

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

    /// The header bound holds the largest ticket (an endpoint of the most bytes), and
    /// the checks name why a ticket is not this provider's.
    #[test]
    fn r_id_5_a_presented_ticket_is_checked_as_the_routers_for_this_provider() {
        use yellowstone_wire::{Message, SessionTicket};
        let router = SigningKey::from_seed(b"router");
        let own = SigningKey::from_seed(b"provider").address();
        let ticket = SessionTicket {
            session_id: 9,
            user: SigningKey::from_seed(b"user").address(),
            provider: own,
            endpoint: "e".repeat(yellowstone_wire::messages::ENDPOINT_BYTES_MAX),
            model_id: 1,
            tokens_max: 8,
            price_wei_per_token: u128::MAX,
            expires_at_ms: u64::MAX,
            rfc_nonce: u64::MAX,
            ..SessionTicket::default()
        };
        let frame = Message::SessionTicket(ticket.clone()).sign(&router, 3);
        let header = hex::encode(&frame[yellowstone_wire::frame::HEADER_LEN..]);
        assert!(header.len() <= TICKET_HEADER_HEX_MAX, "{}", header.len());
        let signed = check_presented_ticket(&header, 3, router.address(), own, 9).unwrap();
        assert_eq!(ticket_header(&signed), header, "re-encoded byte-identical");
        assert_eq!(
            check_presented_ticket(&header, 4, router.address(), own, 9),
            Err(PresentedTicketError::NotTheRouters {
                router: router.address(),
                network_id: 4
            })
        );
        let other = SigningKey::from_seed(b"other provider").address();
        assert_eq!(
            check_presented_ticket(&header, 3, router.address(), other, 9),
            Err(PresentedTicketError::OtherProvider {
                named: own,
                own: other
            })
        );
        assert_eq!(
            check_presented_ticket(&header, 3, router.address(), own, 10),
            Err(PresentedTicketError::OtherSession {
                ticket: 9,
                request: 10
            })
        );
    }
}
