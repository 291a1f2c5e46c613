//! The login handshake (docs/PROTOCOL.md section 3), without IO, shared by the blocking
//! `client::Client` and the nodes' async link (issue 26 item 4): the router sends a
//! `LoginChallenge`, the client checks the network id and (if pinned) the router's
//! address, answers with a signed `LoginAnswer`, and the router replies `LoginOk` or an
//! `ErrorReply`.

use crate::{Address, LoginAnswer, LoginChallenge, Message, SigningKey};

/// What a client expects of the router it logs in to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginExpect {
    /// The network id the client signs for; `None` takes the router's (tools that
    /// learn it at login).
    pub network_id: Option<u32>,
    /// The router's address, pinned; `None` trusts the one the challenge names.
    pub router: Option<Address>,
}

/// Why a login failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginError {
    /// The router's first message was not a challenge (its name).
    NoChallenge(&'static str),
    /// The router runs another network id than the client is configured for.
    NetworkId {
        /// The network id the router's challenge names.
        router: u32,
        /// The one the client is configured for.
        configured: u32,
    },
    /// The router signs as another address than the pinned one.
    RouterAddress {
        /// The address the router's challenge names.
        router: Address,
        /// The pinned one.
        configured: Address,
    },
    /// The router refused the answer (`ErrorReply`): its code and reason.
    Refused {
        /// The refusal's code (docs/PROTOCOL.md, error codes).
        code: u16,
        /// The router's reason.
        reason: String,
    },
    /// `LoginOk` named another address than the one that answered.
    WrongAddress {
        /// The address `LoginOk` names.
        router_says: Address,
        /// The address that answered the challenge.
        ours: Address,
    },
    /// Anything but `LoginOk` or `ErrorReply` after the answer (its name).
    Unexpected(&'static str),
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::NoChallenge(name) => write!(f, "expected a login challenge, got {name}"),
            LoginError::NetworkId { router, configured } => write!(
                f,
                "the router runs network id {router}, this client is configured for {configured}"
            ),
            LoginError::RouterAddress { router, configured } => write!(
                f,
                "the router signs as {router}, this client is configured for {configured}"
            ),
            LoginError::Refused { code, reason } => {
                write!(f, "login refused ({code:#06x}): {reason}")
            }
            LoginError::WrongAddress { router_says, ours } => {
                write!(f, "login ok names {router_says}, not this client's {ours}")
            }
            LoginError::Unexpected(name) => write!(f, "unexpected {name} after the login answer"),
        }
    }
}

impl std::error::Error for LoginError {}

/// The router as the challenge named it, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRouter {
    /// The network id the challenge names (signatures are bound to it, R-ID-2).
    pub network_id: u32,
    /// The router's signing address.
    pub router: Address,
}

/// Checks the router's first message against `expect` and returns the signed
/// `LoginAnswer` frame to send, with the router it names.
pub fn answer_challenge(
    first: &Message,
    key: &SigningKey,
    expect: LoginExpect,
) -> Result<(Vec<u8>, LoginRouter), LoginError> {
    let challenge: &LoginChallenge = match first {
        Message::LoginChallenge(challenge) => challenge,
        other => return Err(LoginError::NoChallenge(other.name())),
    };
    if let Some(configured) = expect.network_id {
        if configured != challenge.network_id {
            return Err(LoginError::NetworkId {
                router: challenge.network_id,
                configured,
            });
        }
    }
    if let Some(configured) = expect.router {
        if configured != challenge.router {
            return Err(LoginError::RouterAddress {
                router: challenge.router,
                configured,
            });
        }
    }
    let mut answer: Message = LoginAnswer {
        address: key.address(),
        challenge: challenge.challenge,
        ..LoginAnswer::default()
    }
    .into();
    let frame = answer.sign(key, challenge.network_id);
    Ok((
        frame,
        LoginRouter {
            network_id: challenge.network_id,
            router: challenge.router,
        },
    ))
}

/// Reads the router's reply to the answer: `LoginOk` for `ours`, or why not.
pub fn check_reply(reply: &Message, ours: Address) -> Result<(), LoginError> {
    match reply {
        Message::LoginOk(ok) if ok.address == ours => Ok(()),
        Message::LoginOk(ok) => Err(LoginError::WrongAddress {
            router_says: ok.address,
            ours,
        }),
        Message::ErrorReply(e) => Err(LoginError::Refused {
            code: e.code,
            reason: e.reason.clone(),
        }),
        other => Err(LoginError::Unexpected(other.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorReply, LoginOk};

    fn challenge(network_id: u32, router: Address) -> Message {
        LoginChallenge {
            challenge: [7; 32],
            network_id,
            router,
        }
        .into()
    }

    #[test]
    fn the_answer_signs_the_challenge_for_the_routers_network() {
        let key = SigningKey::from_bytes(&[1; 32]).expect("a valid key");
        let router = Address([2; 20]);
        let (frame, named) =
            answer_challenge(&challenge(5, router), &key, LoginExpect::default()).expect("ok");
        assert_eq!(
            named,
            LoginRouter {
                network_id: 5,
                router
            }
        );
        let mut decoder = crate::frame::FrameDecoder::new(1 << 20);
        decoder.extend(&frame);
        let frame = decoder.next_frame().expect("a frame").expect("whole");
        let message = Message::decode(frame.header.msg_type, &frame.body).expect("decodes");
        assert_eq!(message.verify(5, &frame.body), Ok(key.address()));
    }

    #[test]
    fn a_wrong_network_or_router_or_first_message_is_refused() {
        let key = SigningKey::from_bytes(&[1; 32]).expect("a valid key");
        let router = Address([2; 20]);
        let expect = LoginExpect {
            network_id: Some(1),
            router: Some(router),
        };
        assert!(matches!(
            answer_challenge(&challenge(2, router), &key, expect),
            Err(LoginError::NetworkId {
                router: 2,
                configured: 1
            })
        ));
        assert!(matches!(
            answer_challenge(&challenge(1, Address([3; 20])), &key, expect),
            Err(LoginError::RouterAddress { .. })
        ));
        assert!(matches!(
            answer_challenge(&crate::Ping { payload: 0 }.into(), &key, expect),
            Err(LoginError::NoChallenge("Ping"))
        ));
    }

    #[test]
    fn the_reply_is_ok_only_for_our_address() {
        let ours = Address([4; 20]);
        assert_eq!(check_reply(&LoginOk { address: ours }.into(), ours), Ok(()));
        assert!(matches!(
            check_reply(
                &LoginOk {
                    address: Address([5; 20])
                }
                .into(),
                ours
            ),
            Err(LoginError::WrongAddress { .. })
        ));
        let refused: Message = ErrorReply {
            code: 0x0108,
            reason: "bad signature".into(),
            ..ErrorReply::default()
        }
        .into();
        assert!(matches!(
            check_reply(&refused, ours),
            Err(LoginError::Refused { code: 0x0108, .. })
        ));
    }
}
