//! Both halves of the core behind one quinn-proto-like interface, for a
//! single-threaded driver (the simulation, a future replica): bytes in
//! (`on_frame`), commands out (`poll_command`), effects in (`on_applied`), durability
//! in (`on_durable`), frames out (`poll_output`). The driver owns the engine, the
//! journal, the clock and the sockets; the core owns every decision between them.

use crate::connection::{Admission, AdmissionConfig, Admitted, Outcome};
use crate::dispatch::Dispatch;
use crate::{CacheUpdate, Conn, Handoff, MarketView, Output, PlainVerifier, Refused};
use std::collections::{HashMap, VecDeque};
use yellowstone_engine::{Command, Effect, Engine};
use yellowstone_wire::frame::{FrameHeader, HEADER_LEN};
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::{codes, Address};

/// The pre-check caches as plain maps: the [`MarketView`] of a single-threaded
/// driver, written only from [`CacheUpdate`]s (and from a recovered engine at start).
#[derive(Clone, Debug, Default)]
pub struct CacheView {
    balances: HashMap<Address, u128>,
    nonces: HashMap<Address, u64>,
    models: HashMap<u32, [u8; 32]>,
}

impl CacheView {
    /// What a (recovered) engine holds: its catalog, balances and last nonces.
    pub fn of_engine(engine: &Engine) -> CacheView {
        let mut view = CacheView {
            models: engine
                .config()
                .models
                .iter()
                .map(|m| (m.id, m.weights_hash))
                .collect(),
            ..CacheView::default()
        };
        for (address, balance_wei) in engine.balances() {
            view.apply(&CacheUpdate::Balance {
                address: crate::to_wire(address),
                balance_wei,
            });
        }
        for (address, nonce) in engine.nonces() {
            view.apply(&CacheUpdate::NonceAccepted {
                address: crate::to_wire(address),
                nonce,
            });
        }
        view
    }

    /// Applies one update (a nonce never goes down).
    pub fn apply(&mut self, update: &CacheUpdate) {
        match update {
            CacheUpdate::NonceAccepted { address, nonce } => {
                let last = self.nonces.entry(*address).or_insert(*nonce);
                *last = (*last).max(*nonce);
            }
            CacheUpdate::Balance {
                address,
                balance_wei,
            } => {
                self.balances.insert(*address, *balance_wei);
            }
        }
    }
}

impl MarketView for CacheView {
    fn balance_wei(&self, address: &Address) -> Option<u128> {
        self.balances.get(address).copied()
    }

    fn nonce_last(&self, address: &Address) -> Option<u64> {
        self.nonces.get(address).copied()
    }

    fn weights_hash(&self, model: u32) -> Option<[u8; 32]> {
        self.models.get(&model).copied()
    }
}

/// Admission + Dispatch + the caches between them, for one thread.
#[derive(Debug)]
pub struct RouterCore {
    admission: Admission,
    dispatch: Dispatch,
    view: CacheView,
    router: Address,
    /// `market.rfc_retry_after_ms`: the retry-after of an `overloaded` refusal.
    retry_after_ms: u32,
    /// `network.frame_bytes_max`.
    frame_bytes_max: usize,
    commands: VecDeque<Handoff>,
    outputs: VecDeque<Output>,
}

impl RouterCore {
    /// A core for a router with address `router`, over `view` (from the recovered
    /// engine: [`CacheView::of_engine`]).
    pub fn new(
        config: AdmissionConfig,
        router: Address,
        view: CacheView,
        retry_after_ms: u32,
        frame_bytes_max: usize,
        now_us: u64,
    ) -> RouterCore {
        assert!(frame_bytes_max > HEADER_LEN, "a frame holds its header");
        RouterCore {
            admission: Admission::new(config, now_us),
            dispatch: Dispatch::new(),
            view,
            router,
            retry_after_ms,
            frame_bytes_max,
            commands: VecDeque::new(),
            outputs: VecDeque::new(),
        }
    }

    /// The pre-check caches.
    pub fn view(&self) -> &CacheView {
        &self.view
    }

    /// The engine-side half (routes, pending promises).
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// A connection opened; `challenge` is 32 random bytes the driver drew.
    pub fn on_open(&mut self, conn: Conn, challenge: [u8; 32]) {
        let hello = self.admission.open(conn, challenge, self.router);
        self.outputs.push_back(Output::Send {
            conn,
            message: hello,
            answers: false,
        });
    }

    /// One whole frame (header and body) from `conn` at `now_us`. Answers it (an
    /// output with `answers`), or queues its command (`poll_command`), whose answer
    /// comes from `on_durable`. A broken header closes the connection. Catalog and
    /// market-state queries are answered from the engine's publications, which this
    /// core does not hold: refused `not_allowed` here (the gateway answers them).
    pub fn on_frame(&mut self, conn: Conn, frame: &[u8], now_us: u64) {
        debug_assert!(
            self.admission.is_open(conn),
            "frames only on open connections"
        );
        let header = match frame
            .get(..HEADER_LEN)
            .and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
            .ok_or(None)
            .and_then(|h| FrameHeader::decode(h, self.frame_bytes_max).map_err(Some))
        {
            Ok(header) if header.frame_len() == frame.len() => header,
            Ok(_) | Err(None) => {
                let refused = Refused::new(
                    codes::TRUNCATED_BODY,
                    format!(
                        "a frame of {} bytes differs from its header's length",
                        frame.len()
                    ),
                );
                return self.close_with(conn, refused);
            }
            Err(Some(error)) => {
                let refused = Refused::new(codes::of_frame_error(&error), error.to_string());
                return self.close_with(conn, refused);
            }
        };
        let (msg_type, body) = (
            header.msg_type,
            bytes::Bytes::copy_from_slice(&frame[HEADER_LEN..]),
        );
        let message = match Message::decode(msg_type, &body) {
            Ok(message) => message,
            Err(error) => {
                let refused = Refused::new(codes::of_decode_error(&error), error.to_string());
                return self.refuse(conn, refused, msg_type, 0);
            }
        };
        let address = match (&message, self.admission.address(conn)) {
            (Message::Ping(ping), _) => {
                let pong = messages::Pong {
                    payload: ping.payload,
                };
                return self.answer_with(conn, pong.into());
            }
            (Message::LoginAnswer(answer), _) => {
                return match self.admission.login(conn, answer, &body, &PlainVerifier) {
                    Ok(address) => self.answer_with(conn, messages::LoginOk { address }.into()),
                    Err(refused) => self.refuse(conn, refused, msg_type, 0),
                };
            }
            (_, None) => {
                let nonce = message.claimed_origin().map_or(0, |(_, nonce)| nonce);
                let refused =
                    Refused::new(codes::NOT_LOGGED_IN, "log in first: answer the challenge");
                return self.refuse(conn, refused, msg_type, nonce);
            }
            (_, Some(address)) => address,
        };
        let Some((claimed, nonce)) = message.claimed_origin() else {
            let refused = Refused::new(
                codes::NOT_ALLOWED,
                format!("{} is not sent by this core's clients", message.name()),
            );
            return self.refuse(conn, refused, msg_type, 0);
        };
        let admitted = Admitted {
            conn,
            address,
            msg_type,
            claimed,
            nonce,
            message,
            body,
        };
        match self
            .admission
            .admit(&admitted, now_us, &self.view, &PlainVerifier)
        {
            Ok(Outcome::Command(command)) => self.commands.push_back(Handoff {
                conn,
                msg_type,
                nonce,
                command,
            }),
            Ok(Outcome::Subscribe) => {
                self.dispatch.subscribe(conn);
                self.answer_with(conn, messages::Ack { nonce }.into());
            }
            Err(refused) => self.refuse(conn, refused, msg_type, nonce),
        }
    }

    /// The next command for the engine. Its route (R-ID-6) moves to its connection
    /// now, before the engine can answer with something to route.
    pub fn poll_command(&mut self) -> Option<Handoff> {
        let handoff = self.commands.pop_front()?;
        self.dispatch.on_command(handoff.conn, &handoff.command);
        Some(handoff)
    }

    /// The engine applied `command` as record `seq` (see [`Dispatch::on_applied`]).
    pub fn on_applied(
        &mut self,
        seq: u64,
        origin: Option<Conn>,
        command: Command,
        effects: Vec<Effect>,
    ) {
        self.dispatch.on_applied(seq, origin, command, effects);
        self.drain_dispatch();
    }

    /// Records up to `durable_seq` are durable, up to `synced_seq` synced.
    pub fn on_durable(&mut self, durable_seq: u64, synced_seq: u64) {
        self.dispatch.on_durable(durable_seq, synced_seq);
        self.drain_dispatch();
    }

    /// `conn` closed. Its queued commands go to the engine first (the driver drains
    /// `poll_command` before calling this); returns the command to apply when the
    /// provider it served is unreachable now.
    pub fn on_closed(&mut self, conn: Conn) -> Option<Command> {
        let address = self.admission.closed(conn)?;
        self.dispatch.on_closed(conn, address)
    }

    /// The next thing to send, sign, close.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn drain_dispatch(&mut self) {
        while let Some(output) = self.dispatch.poll_output() {
            if let Output::Cache(update) = &output {
                self.view.apply(update);
            }
            self.outputs.push_back(output);
        }
    }

    fn answer_with(&mut self, conn: Conn, message: Message) {
        self.outputs.push_back(Output::Send {
            conn,
            message,
            answers: true,
        });
    }

    fn refuse(&mut self, conn: Conn, refused: Refused, ref_msg_type: u16, ref_nonce: u64) {
        let reply = error_reply(refused, ref_msg_type, ref_nonce, self.retry_after_ms);
        self.answer_with(conn, reply);
    }

    fn close_with(&mut self, conn: Conn, refused: Refused) {
        let reply = error_reply(refused, 0, 0, self.retry_after_ms);
        self.outputs.push_back(Output::Send {
            conn,
            message: reply,
            answers: false,
        });
        self.outputs.push_back(Output::Close { conn });
    }
}

/// The `ErrorReply` refusing a message: `retry_after_ms` only for `overloaded`.
pub fn error_reply(
    refused: Refused,
    ref_msg_type: u16,
    ref_nonce: u64,
    retry_after_ms: u32,
) -> Message {
    Message::from(messages::ErrorReply {
        code: refused.code,
        ref_msg_type,
        ref_nonce,
        retry_after_ms: if refused.code == codes::OVERLOADED {
            retry_after_ms
        } else {
            0
        },
        detail: refused.detail,
        reason: refused.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> RouterCore {
        let config = AdmissionConfig {
            network_id: 7,
            operator: None,
            weights_proofs_per_s: 1,
            weights_proofs_unfunded_per_s: 1,
            genesis_ms: 0,
        };
        RouterCore::new(
            config,
            Address([1; 20]),
            CacheView::default(),
            500,
            4_096,
            0,
        )
    }

    fn outputs(core: &mut RouterCore) -> Vec<Output> {
        std::iter::from_fn(|| core.poll_output()).collect()
    }

    #[test]
    fn r_id_3_a_connection_is_challenged_and_nothing_but_a_login_or_ping_passes_before_it() {
        let mut core = core();
        core.on_open(Conn(1), [4; 32]);
        assert!(matches!(
            outputs(&mut core).as_slice(),
            [Output::Send { message: Message::LoginChallenge(c), answers: false, .. }] if c.challenge == [4; 32]
        ));
        core.on_frame(
            Conn(1),
            &Message::from(messages::Ping { payload: 9 }).to_frame(),
            0,
        );
        assert!(matches!(
            outputs(&mut core).as_slice(),
            [Output::Send { message: Message::Pong(p), answers: true, .. }] if p.payload == 9
        ));
        let key = yellowstone_wire::SigningKey::from_seed(b"u");
        let mut rfc = Message::from(messages::Rfc {
            from: key.address(),
            nonce: 3,
            ..Default::default()
        });
        core.on_frame(Conn(1), &rfc.sign(&key, 7), 0);
        match outputs(&mut core).as_slice() {
            [Output::Send {
                message: Message::ErrorReply(e),
                answers: true,
                ..
            }] => {
                assert_eq!(e.code, codes::NOT_LOGGED_IN);
                assert_eq!(e.ref_nonce, 3, "the nonce is echoed");
            }
            other => panic!("{other:?}"),
        }
        assert!(core.poll_command().is_none());
    }

    #[test]
    fn a_broken_header_closes_the_connection_with_its_code() {
        let mut core = core();
        core.on_open(Conn(1), [4; 32]);
        outputs(&mut core);
        let mut frame = Message::from(messages::Ping { payload: 1 }).to_frame();
        frame[0] = b'X';
        core.on_frame(Conn(1), &frame, 0);
        match outputs(&mut core).as_slice() {
            [Output::Send {
                message: Message::ErrorReply(e),
                ..
            }, Output::Close { conn }] => {
                assert_eq!(e.code, codes::BAD_MAGIC);
                assert_eq!(*conn, Conn(1));
            }
            other => panic!("{other:?}"),
        }
        // A frame shorter than its header says is refused too (not read past).
        core.on_open(Conn(2), [5; 32]);
        outputs(&mut core);
        let frame = Message::from(messages::Ping { payload: 1 }).to_frame();
        core.on_frame(Conn(2), &frame[..frame.len() - 1], 0);
        assert!(matches!(
            outputs(&mut core).as_slice(),
            [Output::Send { message: Message::ErrorReply(e), .. }, Output::Close { .. }]
                if e.code == codes::TRUNCATED_BODY
        ));
    }
}
