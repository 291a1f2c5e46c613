//! R-PROV-3, R-QUOTA-5 (issue 27, quota-flood): a budget of refusals per connection.
//!
//! A client whose frames are all refused before the engine (a funded user flooding
//! RFCs past its quota, replays, frames before login, undecodable bodies) costs the
//! gateway a decode, a check and an `ErrorReply` per frame, on the thread that also
//! serves honest clients. Past `network.conn_refusals_per_s_max` refusals within one
//! second, the next refusal is answered `too_many_refusals` and the connection is
//! closed; anything refused on it after that (frames already read) is dropped
//! unanswered. `overloaded` is never counted: it is the router's state, not the
//! client's fault, and an honest client under load must not be cut off for it.
//!
//! Sans-IO: the caller gives the time (`now_us`, monotonic microseconds) and acts on
//! the verdict (reply, reply and close, or nothing).

use crate::Conn;
use std::collections::HashMap;
use yellowstone_wire::codes;

/// The window the budget counts over (µs): one second.
pub const REFUSAL_WINDOW_US: u64 = 1_000_000;

/// What to do with one refusal of a connection's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalVerdict {
    /// Within the budget: send the refusal's `ErrorReply`.
    Answer,
    /// The budget is spent: send this `too_many_refusals` refusal instead (it names
    /// the count and the bound) and close the connection after it.
    Close(crate::Refused),
    /// The connection was already told `too_many_refusals`: send nothing.
    Drop,
}

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// Start of the current window (µs, the caller's clock).
    start_us: u64,
    /// Refusals counted in it.
    count: u32,
    /// `too_many_refusals` was sent: the connection is closing.
    closing: bool,
}

/// Refusals per connection per second (see the module docs). One entry per
/// connection that was refused at least once, removed by `closed`.
#[derive(Debug)]
pub struct RefusalBudget {
    per_s_max: u32,
    windows: HashMap<Conn, Window>,
}

impl RefusalBudget {
    /// A budget of `per_s_max` refusals per connection per second (at least 1;
    /// `network.conn_refusals_per_s_max`, validated there).
    pub fn new(per_s_max: u32) -> RefusalBudget {
        RefusalBudget {
            per_s_max: per_s_max.max(1),
            windows: HashMap::new(),
        }
    }

    /// Connections with a window (refused at least once and not closed since).
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// No connection has a window.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether the next counted refusal of `conn` at `now_us` would be past the budget
    /// (or the connection is already closing): R-HA-3 answers a resend from the reply
    /// cache only within the budget, so replaying one's own accepted messages is no
    /// cheaper a flood than having them refused.
    pub fn spent(&self, conn: Conn, now_us: u64) -> bool {
        self.windows.get(&conn).is_some_and(|window| {
            window.closing
                || (now_us.saturating_sub(window.start_us) < REFUSAL_WINDOW_US
                    && window.count >= self.per_s_max)
        })
    }

    /// Counts a refusal of code `code` on `conn` at `now_us` and says what to send.
    pub fn refused(&mut self, conn: Conn, code: u16, now_us: u64) -> RefusalVerdict {
        if code == codes::OVERLOADED {
            return match self.windows.get(&conn) {
                Some(window) if window.closing => RefusalVerdict::Drop,
                _ => RefusalVerdict::Answer,
            };
        }
        let per_s_max = self.per_s_max;
        let window = self.windows.entry(conn).or_insert(Window {
            start_us: now_us,
            count: 0,
            closing: false,
        });
        if window.closing {
            return RefusalVerdict::Drop;
        }
        if now_us.saturating_sub(window.start_us) >= REFUSAL_WINDOW_US {
            window.start_us = now_us;
            window.count = 0;
        }
        window.count = window.count.saturating_add(1);
        debug_assert!(window.count >= 1 && window.start_us <= now_us.max(window.start_us));
        if window.count <= per_s_max {
            return RefusalVerdict::Answer;
        }
        window.closing = true;
        RefusalVerdict::Close(crate::Refused {
            code: codes::TOO_MANY_REFUSALS,
            reason: format!(
                "{} messages refused within one second, more than \
                 network.conn_refusals_per_s_max = {per_s_max}: connection closed",
                window.count
            ),
            detail: u128::from(per_s_max),
        })
    }

    /// `conn` closed: its window goes.
    pub fn closed(&mut self, conn: Conn) {
        self.windows.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_quota_5_the_refusal_past_the_budget_closes_then_drops() {
        let mut budget = RefusalBudget::new(3);
        let conn = Conn(7);
        for i in 0..3 {
            assert_eq!(
                budget.refused(conn, codes::QUOTA_EXCEEDED, i * 10),
                RefusalVerdict::Answer
            );
        }
        match budget.refused(conn, codes::QUOTA_EXCEEDED, 40) {
            RefusalVerdict::Close(refused) => {
                assert_eq!(refused.code, codes::TOO_MANY_REFUSALS);
                assert_eq!(refused.detail, 3);
                assert!(refused.reason.contains("4 messages"), "{}", refused.reason);
                assert!(refused.reason.contains("conn_refusals_per_s_max = 3"));
            }
            other => panic!("expected Close, got {other:?}"),
        }
        assert_eq!(
            budget.refused(conn, codes::QUOTA_EXCEEDED, 50),
            RefusalVerdict::Drop
        );
        assert_eq!(
            budget.refused(conn, codes::OVERLOADED, 60),
            RefusalVerdict::Drop
        );
        // Another connection has its own budget; a closed one starts afresh.
        assert_eq!(
            budget.refused(Conn(8), codes::QUOTA_EXCEEDED, 60),
            RefusalVerdict::Answer
        );
        budget.closed(conn);
        assert_eq!(budget.len(), 1);
    }

    #[test]
    fn r_quota_5_a_new_second_refills_and_overloaded_is_not_counted() {
        let mut budget = RefusalBudget::new(2);
        let conn = Conn(1);
        for _ in 0..10 {
            assert_eq!(
                budget.refused(conn, codes::OVERLOADED, 5),
                RefusalVerdict::Answer
            );
        }
        assert_eq!(
            budget.refused(conn, codes::WRONG_SENDER, 10),
            RefusalVerdict::Answer
        );
        assert_eq!(
            budget.refused(conn, codes::WRONG_SENDER, 20),
            RefusalVerdict::Answer
        );
        assert_eq!(
            budget.refused(conn, codes::WRONG_SENDER, 10 + REFUSAL_WINDOW_US),
            RefusalVerdict::Answer,
            "a new window"
        );
        assert_eq!(
            budget.refused(conn, codes::WRONG_SENDER, 20 + REFUSAL_WINDOW_US),
            RefusalVerdict::Answer
        );
        assert!(matches!(
            budget.refused(conn, codes::WRONG_SENDER, 30 + REFUSAL_WINDOW_US),
            RefusalVerdict::Close(_)
        ));
    }
}
