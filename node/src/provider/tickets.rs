//! The tickets the router sent this provider (R-MATCH-6), and the checks a direct
//! request must pass (R-NODE-1): the session is one of this provider's, the signer is
//! the ticket's user, the ticket is unexpired and unused; one inference per ticket.
//! Bounded by `tickets_max`: when full, expired tickets go first, then the ones
//! closest to expiry.
//!
//! R-NODE-5 (issue 23 case 6): with a data directory the tickets survive a restart of
//! the provider node. Every ticket received and every ticket used is appended to
//! `<data_dir>/tickets.log` (one line each: `T <ticket body, hex>` or `U <session>`);
//! at start the file is read back, expired tickets dropped, and rewritten with what is
//! left, and it is rewritten the same way whenever it holds more than twice
//! `tickets_max` lines, so it stays bounded. The tickets were checked against the
//! router's signature when they arrived (R-ID-5); the file is the node's own, kept
//! with its key (mode 0600).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use yellowstone_wire::{Address, SessionTicket};

/// The file the tickets are kept in, inside the provider's `data_dir`.
pub const TICKETS_FILE: &str = "tickets.log";

#[derive(Debug, thiserror::Error)]
pub enum TicketFileError {
    #[error("tickets file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("tickets file {path} line {line}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The append-only log behind `Tickets` (see the module's doc).
#[derive(Debug)]
struct TicketFile {
    path: PathBuf,
    file: std::fs::File,
    lines: usize,
}

impl TicketFile {
    fn io(path: &Path) -> impl Fn(std::io::Error) -> TicketFileError + '_ {
        move |source| TicketFileError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn append(&mut self, line: &str) {
        if let Err(error) = writeln!(self.file, "{line}") {
            tracing::warn!(path = %self.path.display(), %error, "tickets file not written: a restart may lose this ticket");
        }
        self.lines += 1;
    }
}

fn ticket_line(ticket: &SessionTicket) -> String {
    let mut body = Vec::new();
    ticket.encode(&mut body);
    format!("T {}", hex::encode(body))
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("no ticket for session {0} at this provider")]
    Unknown(u64),
    /// Issue 23 case 8: worded as `Unknown` and naming nobody but the signer, so
    /// that presenting session ids tells a stranger neither who holds a session nor
    /// whether it exists at this provider (the holder's address stays in the node's
    /// own log only through `user`).
    #[error("no ticket for session {session} at this provider")]
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
    file: Option<TicketFile>,
}

impl Tickets {
    pub fn new(tickets_max: usize) -> Tickets {
        assert!(tickets_max > 0);
        Tickets {
            entries: HashMap::new(),
            tickets_max,
            evicted: 0,
            file: None,
        }
    }

    /// R-NODE-5: tickets kept in `dir` (created, mode 0700), read back from an
    /// earlier run (expired ones dropped). Errors: the directory or file cannot be
    /// made, read or written, or a line is not a ticket this node wrote.
    pub fn open(tickets_max: usize, dir: &Path, now_ms: u64) -> Result<Tickets, TicketFileError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = dir.join(TICKETS_FILE);
        let io = TicketFile::io(&path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(&io)?;
        let mut tickets = Tickets::new(tickets_max);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        for (index, line) in text.lines().enumerate() {
            let invalid = |reason: String| TicketFileError::Invalid {
                path: path.display().to_string(),
                line: index + 1,
                reason,
            };
            match line.split_once(' ') {
                Some(("T", body)) => {
                    let body = hex::decode(body).map_err(|e| invalid(e.to_string()))?;
                    let ticket =
                        SessionTicket::decode(&body).map_err(|e| invalid(e.to_string()))?;
                    if ticket.expires_at_ms > now_ms {
                        tickets.insert(ticket, now_ms);
                    }
                }
                Some(("U", session)) => {
                    let session: u64 = session
                        .parse()
                        .map_err(|_| invalid(format!("not a session id: {session:?}")))?;
                    if let Some(entry) = tickets.entries.get_mut(&session) {
                        entry.used = true;
                    }
                }
                _ if line.is_empty() => {}
                // A line cut by a crash mid-write is the last one: the rest was whole.
                _ if index + 1 == text.lines().count() => {
                    tracing::warn!(path = %path.display(), line = index + 1, "tickets file: a partial last line dropped");
                }
                _ => return Err(invalid(format!("not a ticket line: {line:.40}"))),
            }
        }
        tickets.rewrite(&path)?;
        Ok(tickets)
    }

    /// Writes the file anew from the tickets held (temp file, then rename).
    fn rewrite(&mut self, path: &Path) -> Result<(), TicketFileError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = TicketFile::io(path);
        let temp = path.with_extension("log.new");
        let mut text = String::new();
        let mut lines = 0;
        for (session, entry) in &self.entries {
            text.push_str(&ticket_line(&entry.ticket));
            text.push('\n');
            lines += 1;
            if entry.used {
                text.push_str(&format!("U {session}\n"));
                lines += 1;
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(&io)?;
        file.write_all(text.as_bytes()).map_err(&io)?;
        file.sync_all().map_err(&io)?;
        std::fs::rename(&temp, path).map_err(&io)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(&io)?;
        self.file = Some(TicketFile {
            path: path.to_path_buf(),
            file,
            lines,
        });
        Ok(())
    }

    /// Keeps the file within twice `tickets_max` lines (plus slack for the used marks).
    fn compact_if_long(&mut self) {
        let Some(file) = &self.file else { return };
        if file.lines <= 2 * self.tickets_max + 1024 {
            return;
        }
        let path = file.path.clone();
        if let Err(error) = self.rewrite(&path) {
            tracing::warn!(%error, "tickets file not compacted");
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
        if let Some(file) = &mut self.file {
            file.append(&ticket_line(&ticket));
        }
        self.entries.insert(
            ticket.session_id,
            Entry {
                ticket,
                used: false,
            },
        );
        debug_assert!(self.entries.len() <= self.tickets_max);
        self.compact_if_long();
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
        let ticket = entry.ticket.clone();
        if let Some(file) = &mut self.file {
            file.append(&format!("U {session}"));
        }
        Ok(ticket)
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
        // Another user's refusal did not use the ticket up; issue 23 case 8: it names
        // nobody and reads as an unknown session's.
        tickets.insert(ticket(10, alice, 1_000), 0);
        let refusal = tickets.claim(10, mallory, 1).unwrap_err().to_string();
        assert!(!refusal.contains(&alice.to_string()), "{refusal}");
        assert_eq!(refusal, ClaimError::Unknown(10).to_string());
        assert!(tickets.claim(10, alice, 2).is_ok());
    }

    #[test]
    fn r_node_5_tickets_and_their_use_survive_a_restart_and_expire() {
        let dir = std::env::temp_dir().join(format!("ys-tickets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let alice = Address([1; 20]);
        {
            let mut tickets = Tickets::open(10, &dir, 0).unwrap();
            tickets.insert(ticket(1, alice, 1_000), 0);
            tickets.insert(ticket(2, alice, 1_000), 0);
            tickets.insert(ticket(3, alice, 100), 0);
            assert!(tickets.claim(2, alice, 10).is_ok());
        }
        let mut tickets = Tickets::open(10, &dir, 500).unwrap();
        assert_eq!(tickets.len(), 2, "the expired ticket 3 was dropped");
        assert!(tickets.claim(1, alice, 510).is_ok());
        assert_eq!(tickets.claim(2, alice, 510), Err(ClaimError::Used(2)));
        drop(tickets);
        // Used marks of the second run were kept too; a bad line is refused by name.
        let mut again = Tickets::open(10, &dir, 520).unwrap();
        assert_eq!(again.claim(1, alice, 530), Err(ClaimError::Used(1)));
        drop(again);
        let path = dir.join(TICKETS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("X nonsense\n{text}")).unwrap();
        assert!(matches!(
            Tickets::open(10, &dir, 0),
            Err(TicketFileError::Invalid { line: 1, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
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
