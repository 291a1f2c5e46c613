//! The tickets the router sent this provider (R-MATCH-6), and the checks a direct
//! request must pass (R-NODE-1): the session is one of this provider's, the signer is
//! the ticket's user, the ticket is unexpired and unused; one inference per ticket.
//! Bounded by `tickets_max`: when full, expired tickets go first, then the ones
//! closest to expiry.

use std::collections::HashMap;
use yellowstone_wire::{Address, SessionTicket};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("no ticket for session {0} at this provider")]
    Unknown(u64),
    #[error("session {session} belongs to another user ({user}), not to the signer {signer}")]
    NotYourTicket {
        session: u64,
        user: Address,
        signer: Address,
    },
    #[error("the ticket of session {session} expired at {expires_at_ms} (Unix ms)")]
    Expired { session: u64, expires_at_ms: u64 },
    #[error("the ticket of session {0} was used already: one inference per ticket")]
    Used(u64),
}

#[derive(Debug)]
struct Entry {
    ticket: SessionTicket,
    used: bool,
}

#[derive(Debug)]
pub struct Tickets {
    entries: HashMap<u64, Entry>,
    tickets_max: usize,
    /// Tickets dropped to keep the bound (an operator should raise it if non-zero).
    pub evicted: u64,
}

impl Tickets {
    pub fn new(tickets_max: usize) -> Tickets {
        assert!(tickets_max > 0);
        Tickets {
            entries: HashMap::new(),
            tickets_max,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, session: u64) -> bool {
        self.entries.contains_key(&session)
    }

    /// Keeps a ticket (a second copy of a known session changes nothing).
    pub fn insert(&mut self, ticket: SessionTicket, now_ms: u64) {
        if self.entries.contains_key(&ticket.session_id) {
            return;
        }
        if self.entries.len() >= self.tickets_max {
            self.entries.retain(|_, e| e.ticket.expires_at_ms > now_ms);
        }
        while self.entries.len() >= self.tickets_max {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.ticket.expires_at_ms)
                .map(|(id, _)| *id)
                .expect("a full map has entries");
            self.entries.remove(&oldest);
            self.evicted += 1;
        }
        self.entries.insert(
            ticket.session_id,
            Entry {
                ticket,
                used: false,
            },
        );
        debug_assert!(self.entries.len() <= self.tickets_max);
    }

    /// R-NODE-1: checks a request for `session` signed by `signer` and, if it may be
    /// served, marks the ticket used and returns it.
    pub fn claim(
        &mut self,
        session: u64,
        signer: Address,
        now_ms: u64,
    ) -> Result<SessionTicket, ClaimError> {
        let entry = self
            .entries
            .get_mut(&session)
            .ok_or(ClaimError::Unknown(session))?;
        if entry.ticket.user != signer {
            return Err(ClaimError::NotYourTicket {
                session,
                user: entry.ticket.user,
                signer,
            });
        }
        if now_ms >= entry.ticket.expires_at_ms {
            return Err(ClaimError::Expired {
                session,
                expires_at_ms: entry.ticket.expires_at_ms,
            });
        }
        if entry.used {
            return Err(ClaimError::Used(session));
        }
        entry.used = true;
        Ok(entry.ticket.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(session_id: u64, user: Address, expires_at_ms: u64) -> SessionTicket {
        SessionTicket {
            session_id,
            user,
            expires_at_ms,
            tokens_max: 10,
            ..SessionTicket::default()
        }
    }

    #[test]
    fn r_node_1_one_inference_per_ticket_only_for_its_user_before_expiry() {
        let (alice, mallory) = (Address([1; 20]), Address([2; 20]));
        let mut tickets = Tickets::new(10);
        tickets.insert(ticket(7, alice, 1_000), 0);
        assert_eq!(tickets.claim(8, alice, 10), Err(ClaimError::Unknown(8)));
        assert!(matches!(
            tickets.claim(7, mallory, 10),
            Err(ClaimError::NotYourTicket { .. })
        ));
        assert_eq!(tickets.claim(7, alice, 10).unwrap().session_id, 7);
        assert_eq!(tickets.claim(7, alice, 11), Err(ClaimError::Used(7)));
        tickets.insert(ticket(9, alice, 1_000), 0);
        assert!(matches!(
            tickets.claim(9, alice, 1_000),
            Err(ClaimError::Expired { .. })
        ));
        // Another user's refusal did not use the ticket up.
        tickets.insert(ticket(10, alice, 1_000), 0);
        let _ = tickets.claim(10, mallory, 1);
        assert!(tickets.claim(10, alice, 2).is_ok());
    }

    #[test]
    fn tickets_stay_bounded_expired_first() {
        let user = Address([1; 20]);
        let mut tickets = Tickets::new(2);
        tickets.insert(ticket(1, user, 50), 0);
        tickets.insert(ticket(2, user, 500), 0);
        tickets.insert(ticket(3, user, 900), 100); // 1 expired: it goes
        assert!(!tickets.contains(1) && tickets.contains(2) && tickets.contains(3));
        assert_eq!(tickets.evicted, 0);
        tickets.insert(ticket(4, user, 1_000), 100); // none expired: closest to expiry goes
        assert!(!tickets.contains(2) && tickets.contains(4));
        assert_eq!(tickets.evicted, 1);
        assert_eq!(tickets.len(), 2);
    }
}
