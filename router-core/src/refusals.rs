//! R-PROV-3, R-QUOTA-5 (issue 27, quota-flood, costly-frame): budgets of refusals per
//! connection and per address.
//!
//! A client whose frames are all refused before the engine (a funded user flooding
//! RFCs past its quota, replays, frames before login, undecodable bodies) costs the
//! gateway a decode, a check and an `ErrorReply` per frame, on the thread that also
//! serves honest clients. Past `network.conn_refusals_per_s_max` refusals of one
//! connection within one second, the next refusal is answered `too_many_refusals` and
//! the connection is closed; anything refused on it after that (frames already read)
//! is dropped unanswered. `overloaded` is never counted: it is the router's state,
//! not the client's fault, and an honest client under load must not be cut off for it.
//!
//! A per-connection budget alone is multiplied by the connections an address opens
//! (or by its logins again after each close), and each login costs the router a
//! signature recovery. So the refusals of connections logged in as one address are
//! also counted together: past `network.addr_refusals_per_s_max` within one second,
//! the refused connection is closed the same way, and until that second ends a login
//! claiming the address is refused `too_many_refusals` before its signature is
//! recovered ([`RefusalBudget::login`]). Only proven refusals count for an address
//! (those of a connection logged in as it), so nobody can spend another address's
//! budget and lock it out. The budgets are per gateway thread: connections of one
//! address on T gateway threads get at most T address budgets.
//!
//! Sans-IO: the caller gives the time (`now_us`, monotonic microseconds) and acts on
//! the verdict (reply, reply and close, or nothing).

use crate::Conn;
use std::collections::HashMap;
use yellowstone_wire::{codes, Address};

/// The window the budgets count over (µs): one second.
pub const REFUSAL_WINDOW_US: u64 = 1_000_000;

/// Address windows held before the first sweep of ended ones (then twice what a
/// sweep left): the table stays within a small multiple of the addresses refused
/// in the last second, at an amortised O(1) a refusal.
const ADDR_WINDOWS_SWEEP_MIN: usize = 1_024;

/// What to do with one refusal of a connection's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalVerdict {
    /// Within the budgets: send the refusal's `ErrorReply`.
    Answer,
    /// A budget is spent: send this `too_many_refusals` refusal instead (it names
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
    /// `too_many_refusals` was sent: the connection is closing (connections only).
    closing: bool,
}

impl Window {
    fn new(now_us: u64) -> Window {
        Window {
            start_us: now_us,
            count: 0,
            closing: false,
        }
    }

    /// Counts one refusal at `now_us` (a new window once the last one ended);
    /// returns the count in the window.
    fn count(&mut self, now_us: u64) -> u32 {
        if now_us.saturating_sub(self.start_us) >= REFUSAL_WINDOW_US {
            self.start_us = now_us;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        debug_assert!(self.count >= 1 && self.start_us <= now_us);
        self.count
    }

    /// Whether the window is still the current one at `now_us`.
    fn current(&self, now_us: u64) -> bool {
        now_us.saturating_sub(self.start_us) < REFUSAL_WINDOW_US
    }
}

/// Refusals per connection and per address per second (see the module docs). One
/// entry per connection that was refused at least once, removed by `closed`; one per
/// address refused within about the last second (ended windows are swept).
#[derive(Debug)]
pub struct RefusalBudget {
    conn_per_s_max: u32,
    addr_per_s_max: u32,
    windows: HashMap<Conn, Window>,
    addr_windows: HashMap<Address, Window>,
    /// Sweep the ended address windows when the table reaches this many.
    addr_sweep_at: usize,
}

impl RefusalBudget {
    /// A budget of `conn_per_s_max` refusals per connection and `addr_per_s_max` per
    /// address, per second (each at least 1; `network.conn_refusals_per_s_max` and
    /// `network.addr_refusals_per_s_max`, validated there).
    pub fn new(conn_per_s_max: u32, addr_per_s_max: u32) -> RefusalBudget {
        RefusalBudget {
            conn_per_s_max: conn_per_s_max.max(1),
            addr_per_s_max: addr_per_s_max.max(1),
            windows: HashMap::new(),
            addr_windows: HashMap::new(),
            addr_sweep_at: ADDR_WINDOWS_SWEEP_MIN,
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

    /// Whether the next counted refusal of `conn` at `now_us` would be past its
    /// connection's or its address's budget (or the connection is already closing): R-HA-3 answers a
    /// resend from the reply cache only within the budget, so replaying one's own
    /// accepted messages is no cheaper a flood than having them refused.
    /// The address's budget counts too (`address`: the one `conn` logged in as).
    pub fn spent(&self, conn: Conn, address: Option<Address>, now_us: u64) -> bool {
        let conn_spent = self.windows.get(&conn).is_some_and(|window| {
            window.closing || (window.current(now_us) && window.count >= self.conn_per_s_max)
        });
        let addr_spent = address
            .and_then(|address| self.addr_windows.get(&address))
            .is_some_and(|window| window.current(now_us) && window.count >= self.addr_per_s_max);
        conn_spent || addr_spent
    }

    /// Addresses with a window (swept once ended, see the type's docs).
    pub fn addresses(&self) -> usize {
        self.addr_windows.len()
    }

    /// Counts a refusal of code `code` on `conn`, logged in as `address` (None: not
    /// logged in), at `now_us`, and says what to send.
    pub fn refused(
        &mut self,
        conn: Conn,
        address: Option<Address>,
        code: u16,
        now_us: u64,
    ) -> RefusalVerdict {
        if self.windows.get(&conn).is_some_and(|w| w.closing) {
            return RefusalVerdict::Drop;
        }
        if code == codes::OVERLOADED {
            return RefusalVerdict::Answer;
        }
        let conn_count = self
            .windows
            .entry(conn)
            .or_insert_with(|| Window::new(now_us))
            .count(now_us);
        let conn_spent = conn_count > self.conn_per_s_max;
        let addr_count = match address {
            Some(address) => self.count_address(address, now_us),
            None => 0,
        };
        let refused = if conn_spent {
            crate::Refused {
                code: codes::TOO_MANY_REFUSALS,
                reason: format!(
                    "{conn_count} messages refused within one second, more than \
                     network.conn_refusals_per_s_max = {}: connection closed",
                    self.conn_per_s_max
                ),
                detail: u128::from(self.conn_per_s_max),
            }
        } else if addr_count > self.addr_per_s_max {
            let address = address.map(|a| a.to_string()).unwrap_or_default();
            crate::Refused {
                code: codes::TOO_MANY_REFUSALS,
                reason: format!(
                    "{addr_count} messages of {address} refused within one second, more \
                     than network.addr_refusals_per_s_max = {}: connection closed",
                    self.addr_per_s_max
                ),
                detail: u128::from(self.addr_per_s_max),
            }
        } else {
            return RefusalVerdict::Answer;
        };
        if let Some(window) = self.windows.get_mut(&conn) {
            window.closing = true;
        }
        RefusalVerdict::Close(refused)
    }

    /// Counts a refusal of a connection logged in as `address`; returns the count
    /// in its window.
    fn count_address(&mut self, address: Address, now_us: u64) -> u32 {
        if self.addr_windows.len() >= self.addr_sweep_at
            && !self.addr_windows.contains_key(&address)
        {
            self.addr_windows.retain(|_, w| w.current(now_us));
            self.addr_sweep_at = (self.addr_windows.len() * 2).max(ADDR_WINDOWS_SWEEP_MIN);
        }
        self.addr_windows
            .entry(address)
            .or_insert_with(|| Window::new(now_us))
            .count(now_us)
    }

    /// R-PROV-3: a login claiming `claimed` at `now_us`, before its signature is
    /// recovered. Ok unless the address's budget is spent in the current second.
    ///
    /// Errors: `too_many_refusals` naming the address, the count, the bound and when
    /// to log in again (detail: the bound).
    pub fn login(&self, claimed: &Address, now_us: u64) -> Result<(), crate::Refused> {
        let Some(window) = self.addr_windows.get(claimed) else {
            return Ok(());
        };
        if !window.current(now_us) || window.count <= self.addr_per_s_max {
            return Ok(());
        }
        // Rounded up: a client that waits this long is let in.
        let wait_ms = (window.start_us + REFUSAL_WINDOW_US)
            .saturating_sub(now_us)
            .div_ceil(1_000);
        Err(crate::Refused {
            code: codes::TOO_MANY_REFUSALS,
            reason: format!(
                "{} messages of {claimed} refused within one second, more than \
                 network.addr_refusals_per_s_max = {}: log in again in {wait_ms} ms",
                window.count, self.addr_per_s_max
            ),
            detail: u128::from(self.addr_per_s_max),
        })
    }

    /// `conn` closed: its window goes (its address's stays until it ends).
    pub fn closed(&mut self, conn: Conn) {
        self.windows.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_quota_5_the_refusal_past_the_budget_closes_then_drops() {
        let mut budget = RefusalBudget::new(3, u32::MAX);
        let conn = Conn(7);
        for i in 0..3 {
            assert_eq!(
                budget.refused(conn, None, codes::QUOTA_EXCEEDED, i * 10),
                RefusalVerdict::Answer
            );
        }
        match budget.refused(conn, None, codes::QUOTA_EXCEEDED, 40) {
            RefusalVerdict::Close(refused) => {
                assert_eq!(refused.code, codes::TOO_MANY_REFUSALS);
                assert_eq!(refused.detail, 3);
                assert!(refused.reason.contains("4 messages"), "{}", refused.reason);
                assert!(refused.reason.contains("conn_refusals_per_s_max = 3"));
            }
            other => panic!("expected Close, got {other:?}"),
        }
        assert_eq!(
            budget.refused(conn, None, codes::QUOTA_EXCEEDED, 50),
            RefusalVerdict::Drop
        );
        assert_eq!(
            budget.refused(conn, None, codes::OVERLOADED, 60),
            RefusalVerdict::Drop
        );
        // Another connection has its own budget; a closed one starts afresh.
        assert_eq!(
            budget.refused(Conn(8), None, codes::QUOTA_EXCEEDED, 60),
            RefusalVerdict::Answer
        );
        budget.closed(conn);
        assert_eq!(budget.len(), 1);
    }

    #[test]
    fn r_quota_5_a_new_second_refills_and_overloaded_is_not_counted() {
        let mut budget = RefusalBudget::new(2, u32::MAX);
        let conn = Conn(1);
        for _ in 0..10 {
            assert_eq!(
                budget.refused(conn, None, codes::OVERLOADED, 5),
                RefusalVerdict::Answer
            );
        }
        assert_eq!(
            budget.refused(conn, None, codes::WRONG_SENDER, 10),
            RefusalVerdict::Answer
        );
        assert_eq!(
            budget.refused(conn, None, codes::WRONG_SENDER, 20),
            RefusalVerdict::Answer
        );
        assert_eq!(
            budget.refused(conn, None, codes::WRONG_SENDER, 10 + REFUSAL_WINDOW_US),
            RefusalVerdict::Answer,
            "a new window"
        );
        assert_eq!(
            budget.refused(conn, None, codes::WRONG_SENDER, 20 + REFUSAL_WINDOW_US),
            RefusalVerdict::Answer
        );
        assert!(matches!(
            budget.refused(conn, None, codes::WRONG_SENDER, 30 + REFUSAL_WINDOW_US),
            RefusalVerdict::Close(_)
        ));
    }

    #[test]
    fn r_prov_3_the_address_budget_spans_connections_and_refuses_its_logins_before_the_signature() {
        let mut budget = RefusalBudget::new(3, 5);
        let (me, other) = (Address([1; 20]), Address([2; 20]));
        let refuse = |budget: &mut RefusalBudget, conn: u64, t: u64| {
            budget.refused(Conn(conn), Some(me), codes::REPLAY, t)
        };
        // Three connections of one address: 3 + 2 answered, the sixth closes.
        for t in 0..3 {
            assert_eq!(refuse(&mut budget, 1, t), RefusalVerdict::Answer);
        }
        assert_eq!(refuse(&mut budget, 2, 3), RefusalVerdict::Answer);
        assert_eq!(refuse(&mut budget, 2, 4), RefusalVerdict::Answer);
        assert!(
            budget.login(&me, 5).is_ok(),
            "5 refusals: within the budget"
        );
        match refuse(&mut budget, 3, 6) {
            RefusalVerdict::Close(refused) => {
                assert_eq!(refused.code, codes::TOO_MANY_REFUSALS);
                assert_eq!(refused.detail, 5);
                assert!(refused.reason.contains("addr_refusals_per_s_max = 5"));
                assert!(
                    refused.reason.contains(&me.to_string()),
                    "{}",
                    refused.reason
                );
            }
            other => panic!("expected Close, got {other:?}"),
        }
        assert_eq!(refuse(&mut budget, 3, 7), RefusalVerdict::Drop);
        // Another connection of the address is closed at its next refusal.
        assert!(matches!(
            refuse(&mut budget, 1, 8),
            RefusalVerdict::Close(_)
        ));
        // A login claiming it is refused until the second ends; another address's
        // login and a connection not logged in are not affected.
        let refused = budget.login(&me, 500_000).unwrap_err();
        assert_eq!(refused.code, codes::TOO_MANY_REFUSALS);
        assert!(
            refused.reason.contains("log in again in 500 ms"),
            "{}",
            refused.reason
        );
        assert!(budget.login(&other, 500_000).is_ok());
        assert_eq!(
            budget.refused(Conn(9), None, codes::NOT_LOGGED_IN, 500_000),
            RefusalVerdict::Answer
        );
        assert!(budget.login(&me, REFUSAL_WINDOW_US).is_ok(), "a new second");
        assert_eq!(
            refuse(&mut budget, 4, REFUSAL_WINDOW_US),
            RefusalVerdict::Answer
        );
    }

    #[test]
    fn r_prov_3_ended_address_windows_are_swept() {
        let mut budget = RefusalBudget::new(10, 10);
        for i in 0..(ADDR_WINDOWS_SWEEP_MIN as u64 + 10) {
            let mut bytes = [0u8; 20];
            bytes[..8].copy_from_slice(&i.to_le_bytes());
            budget.refused(Conn(i), Some(Address(bytes)), codes::REPLAY, i * 1_000);
            budget.closed(Conn(i));
        }
        assert!(
            budget.addresses() <= ADDR_WINDOWS_SWEEP_MIN,
            "{} windows held",
            budget.addresses()
        );
        assert!(budget.is_empty());
    }
}
