//! The engine thread: the single writer of market state (LMAX style).
//!
//! It takes authenticated commands from the gateways, stamps each with the clock
//! (the only clock read on this path), appends (now, command) to the journal, applies
//! it, and holds the effects until the journal says the record is durable; then the
//! `EffectSink` (the router's encoder/router) gets them. So in durability `always` no
//! reply that depends on a command leaves before the command is on disk, while the
//! engine keeps working on the next commands (group commit, pipelined).
//! Ticks are journaled like any other input, so replay reproduces block seals.

use crossbeam_channel::{Receiver, Select};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use yellowstone_engine::{Command, Effect, Engine};

/// Where a command came from, echoed with its effects so replies find their way.
pub type Origin = u64;
/// Origin of commands the sequencer makes itself (ticks).
pub const ORIGIN_INTERNAL: Origin = u64::MAX;

/// What the sequencer consumes.
#[derive(Debug)]
pub enum SequencerInput {
    Command {
        origin: Origin,
        command: Command,
    },
    /// Seal what is due and stop (graceful shutdown).
    Shutdown,
}

/// One journal record: the engine input and the time it was applied at.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct JournalRecord {
    pub now_ms: u64,
    pub command: Command,
}

impl JournalRecord {
    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode::config::standard()).expect("records encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<JournalRecord, String> {
        let (record, read) = bincode::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| e.to_string())?;
        if read != bytes.len() {
            return Err(format!(
                "{} trailing bytes after a journal record",
                bytes.len() - read
            ));
        }
        Ok(record)
    }
}

/// The journal as the sequencer sees it.
pub trait Durability: Send {
    /// Appends one record; returns its sequence number (strictly increasing).
    fn append(&mut self, record: &[u8]) -> Result<u64, String>;
    /// Sequence numbers known durable, as they become so (highest first is fine).
    fn durable_updates(&self) -> Receiver<u64>;
    /// Everything appended so far is durable (`always`), or written (other modes).
    fn durable_seq(&self) -> u64;
    /// Writes a snapshot covering every record up to `seq`.
    fn snapshot(&mut self, seq: u64, state: Vec<u8>) -> Result<(), String>;
    /// A snapshot point: `engine` has applied every record up to `seq` (a block
    /// boundary). By default the engine is serialised here, on the engine thread; a
    /// journal with a replica engine serialises that one instead
    /// (`journal::replica`, ARCHITECTURE.md "Latency: what waits for the disk").
    fn snapshot_point(&mut self, seq: u64, engine: &Engine) -> Result<(), String> {
        self.snapshot(seq, engine.snapshot())
    }
    /// The snapshot replica's counters, if this journal keeps a replica.
    fn replica_stats(&self) -> Option<std::sync::Arc<crate::journal::ReplicaStats>> {
        None
    }
    /// Flushes and syncs everything appended; used at shutdown.
    fn flush(&mut self) -> Result<(), String>;
    /// Returns once record `seq` is on stable storage whatever the durability mode
    /// (credit batches are never published before their block's seal is durable).
    /// Journals that release only synced records already guarantee it.
    fn make_durable(&mut self, _seq: u64) -> Result<(), String> {
        Ok(())
    }
    /// Counters for the metrics endpoint, if this journal keeps any.
    fn stats(&self) -> Option<std::sync::Arc<crate::journal::JournalStats>> {
        None
    }
}

/// Receives effects once the command that caused them is durable.
pub trait EffectSink: Send {
    /// Called once per command, in order: with its effects (possibly none when the
    /// command came from a connection, whose frame the sink must answer).
    fn deliver(&mut self, origin: Origin, command: &Command, effects: &[Effect]);
    /// Called after each burst of deliveries, to flush outboxes.
    fn flush(&mut self) {}
}

#[derive(Clone, Debug)]
pub struct SequencerConfig {
    /// Commands taken from the inbound queue per journal group.
    pub batch_commands_max: usize,
    /// Tick at least this often so that probe timeouts and expiries fire on time.
    pub tick_interval_ms: u64,
    /// Snapshot every this many blocks (0: never).
    pub snapshot_every_blocks: u64,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            batch_commands_max: 1024,
            tick_interval_ms: 50,
            snapshot_every_blocks: 25,
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Pending {
    seq: u64,
    origin: Origin,
    command: Command,
    effects: Vec<Effect>,
}

pub struct Sequencer<D: Durability, S: EffectSink> {
    pub engine: Engine,
    journal: D,
    sink: S,
    config: SequencerConfig,
    pending: VecDeque<Pending>,
    clock: Box<dyn FnMut() -> u64 + Send>,
    last_tick_ms: u64,
    last_snapshot_block: u64,
    /// Spare effect vectors, so steady state does not allocate per command.
    spare: Vec<Vec<Effect>>,
    /// Called after each burst, e.g. to publish engine gauges.
    observer: Option<EngineObserver>,
}

/// Looks at the engine between bursts (gauges); never changes it.
pub type EngineObserver = Box<dyn FnMut(&Engine) + Send>;

impl<D: Durability, S: EffectSink> Sequencer<D, S> {
    pub fn new(engine: Engine, journal: D, sink: S, config: SequencerConfig) -> Self {
        let block = engine.block();
        Sequencer {
            engine,
            journal,
            sink,
            config,
            pending: VecDeque::new(),
            clock: Box::new(unix_ms),
            last_tick_ms: 0,
            last_snapshot_block: block,
            spare: Vec::new(),
            observer: None,
        }
    }

    /// Calls `observer` with the engine after each burst of commands.
    pub fn with_observer(mut self, observer: impl FnMut(&Engine) + Send + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Replaces the wall clock (tests drive time themselves).
    pub fn with_clock(mut self, clock: impl FnMut() -> u64 + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    pub fn journal(&self) -> &D {
        &self.journal
    }

    /// Runs until `Shutdown` arrives or every sender is gone; returns the engine.
    pub fn run(mut self, inbound: Receiver<SequencerInput>) -> Result<Engine, String> {
        let durable = self.journal.durable_updates();
        loop {
            let wait = self.time_to_next_tick();
            let mut select = Select::new();
            let inbound_index = select.recv(&inbound);
            let durable_index = if self.pending.is_empty() {
                None
            } else {
                Some(select.recv(&durable))
            };
            let ready = select.select_timeout(wait);
            match ready {
                Ok(op) if op.index() == inbound_index => match op.recv(&inbound) {
                    Ok(SequencerInput::Command { origin, command }) => {
                        if !self.process_burst(origin, command, &inbound)? {
                            break;
                        }
                    }
                    Ok(SequencerInput::Shutdown) | Err(_) => break,
                },
                Ok(op) if Some(op.index()) == durable_index => {
                    let _ = op.recv(&durable);
                }
                Ok(_) => {}
                Err(_) => {} // timeout: tick below
            }
            self.tick_if_due()?;
            // Observed before the burst's replies leave, so that what the observer
            // publishes (the market's figures) is never older than a reply a client
            // already holds.
            if let Some(observer) = self.observer.as_mut() {
                observer(&self.engine);
            }
            self.release_durable();
        }
        // Graceful stop: seal what is due, make everything durable, answer it.
        self.tick_if_due()?;
        self.journal.flush()?;
        self.release_durable();
        debug_assert!(self.pending.is_empty());
        Ok(self.engine)
    }

    /// Applies `first` and whatever else is queued, up to the batch limit. Returns
    /// false if a shutdown was seen.
    fn process_burst(
        &mut self,
        origin: Origin,
        first: Command,
        inbound: &Receiver<SequencerInput>,
    ) -> Result<bool, String> {
        self.apply(origin, first)?;
        for _ in 1..self.config.batch_commands_max {
            match inbound.try_recv() {
                Ok(SequencerInput::Command { origin, command }) => self.apply(origin, command)?,
                Ok(SequencerInput::Shutdown) => return Ok(false),
                Err(_) => break,
            }
        }
        Ok(true)
    }

    /// Journals and applies one command; its effects wait for durability.
    pub fn apply(&mut self, origin: Origin, command: Command) -> Result<(), String> {
        let now_ms = (self.clock)().max(self.engine.now_ms());
        let record = JournalRecord { now_ms, command };
        let seq = self.journal.append(&record.encode())?;
        let mut effects = self.spare.pop().unwrap_or_default();
        let block_before = self.engine.block();
        self.engine.apply(&record.command, now_ms, &mut effects);
        if effects.iter().any(|e| {
            matches!(
                e,
                Effect::BatchSealed { .. } | Effect::SettlementSealed { .. }
            )
        }) {
            self.journal.make_durable(seq)?;
        }
        if self.engine.block() != block_before {
            self.maybe_snapshot(seq)?;
        }
        if matches!(record.command, Command::Tick) {
            self.last_tick_ms = now_ms;
        }
        self.pending.push_back(Pending {
            seq,
            origin,
            command: record.command,
            effects,
        });
        Ok(())
    }

    fn maybe_snapshot(&mut self, seq: u64) -> Result<(), String> {
        let every = self.config.snapshot_every_blocks;
        if every == 0 || self.engine.block() < self.last_snapshot_block + every {
            return Ok(());
        }
        self.last_snapshot_block = self.engine.block();
        self.journal.snapshot_point(seq, &self.engine)
    }

    fn time_to_next_tick(&mut self) -> Duration {
        let now = (self.clock)();
        let next =
            (self.last_tick_ms + self.config.tick_interval_ms).min(self.engine.block_end_ms());
        Duration::from_millis(next.saturating_sub(now).min(self.config.tick_interval_ms))
    }

    fn tick_if_due(&mut self) -> Result<(), String> {
        let now = (self.clock)();
        if now >= self.last_tick_ms + self.config.tick_interval_ms
            || now >= self.engine.block_end_ms()
        {
            self.apply(ORIGIN_INTERNAL, Command::Tick)?;
        }
        Ok(())
    }

    /// Hands every pending command whose record is durable to the sink, in order.
    fn release_durable(&mut self) {
        let durable = self.journal.durable_seq();
        let mut delivered = false;
        while self.pending.front().is_some_and(|p| p.seq <= durable) {
            let mut pending = self.pending.pop_front().expect("checked");
            // A command from a connection is delivered even without effects: the
            // sink answers its frame (R-ID-6, half-close).
            if !pending.effects.is_empty() || pending.origin != ORIGIN_INTERNAL {
                self.sink
                    .deliver(pending.origin, &pending.command, &pending.effects);
                delivered = true;
            }
            pending.effects.clear();
            if self.spare.len() < 4096 {
                self.spare.push(pending.effects);
            }
        }
        if delivered {
            self.sink.flush();
        }
    }

    /// Replays journal records after a snapshot (recovery).
    pub fn replay(
        engine: &mut Engine,
        records: impl Iterator<Item = Result<Vec<u8>, String>>,
    ) -> Result<u64, String> {
        let mut effects = Vec::new();
        let mut count = 0;
        for bytes in records {
            let record = JournalRecord::decode(&bytes?)?;
            effects.clear();
            engine.apply(&record.command, record.now_ms, &mut effects);
            count += 1;
        }
        Ok(count)
    }
}

/// A journal that keeps nothing: durability `none` without files, for tests and
/// the embedded benchmark mode. Everything is "durable" as soon as appended.
pub struct NoJournal {
    seq: u64,
    updates: (crossbeam_channel::Sender<u64>, Receiver<u64>),
}

impl Default for NoJournal {
    fn default() -> Self {
        NoJournal {
            seq: 0,
            updates: crossbeam_channel::bounded(1),
        }
    }
}

impl Durability for NoJournal {
    fn append(&mut self, _record: &[u8]) -> Result<u64, String> {
        self.seq += 1;
        Ok(self.seq)
    }
    fn durable_updates(&self) -> Receiver<u64> {
        self.updates.1.clone()
    }
    fn durable_seq(&self) -> u64 {
        self.seq
    }
    fn snapshot(&mut self, _seq: u64, _state: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use yellowstone_engine::{Address, MarketConfig};

    /// A journal whose durability the test releases by hand.
    struct HeldJournal {
        records: Arc<Mutex<Vec<Vec<u8>>>>,
        durable: Arc<Mutex<u64>>,
        updates: (crossbeam_channel::Sender<u64>, Receiver<u64>),
    }

    impl Durability for HeldJournal {
        fn append(&mut self, record: &[u8]) -> Result<u64, String> {
            let mut records = self.records.lock().unwrap();
            records.push(record.to_vec());
            Ok(records.len() as u64)
        }
        fn durable_updates(&self) -> Receiver<u64> {
            self.updates.1.clone()
        }
        fn durable_seq(&self) -> u64 {
            *self.durable.lock().unwrap()
        }
        fn snapshot(&mut self, _seq: u64, _state: Vec<u8>) -> Result<(), String> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), String> {
            *self.durable.lock().unwrap() = self.records.lock().unwrap().len() as u64;
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct CollectingSink(Arc<Mutex<Vec<(Origin, Effect)>>>);

    impl EffectSink for CollectingSink {
        fn deliver(&mut self, origin: Origin, _command: &Command, effects: &[Effect]) {
            let mut out = self.0.lock().unwrap();
            out.extend(effects.iter().map(|e| (origin, e.clone())));
        }
    }

    const OPERATOR: Address = Address([9; 20]);

    #[test]
    fn effects_wait_for_durability_and_replay_reproduces_the_state() {
        let config = MarketConfig {
            genesis_ms: 1_000_000,
            operator: OPERATOR,
            ..MarketConfig::default()
        };
        let records = Arc::new(Mutex::new(Vec::new()));
        let durable = Arc::new(Mutex::new(0));
        let journal = HeldJournal {
            records: records.clone(),
            durable: durable.clone(),
            updates: crossbeam_channel::bounded(4),
        };
        let sink = CollectingSink::default();
        let time = Arc::new(Mutex::new(1_000_000u64));
        let clock_time = time.clone();
        let mut sequencer = Sequencer::new(
            Engine::new(config.clone()),
            journal,
            sink.clone(),
            SequencerConfig::default(),
        )
        .with_clock(move || *clock_time.lock().unwrap());
        let command = Command::SetBalances {
            operator: OPERATOR,
            nonce: 1,
            entries: vec![(Address([1; 20]), 5)],
        };
        sequencer.apply(7, command).unwrap();
        sequencer.release_durable();
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "nothing leaves before the record is durable"
        );
        *durable.lock().unwrap() = 1;
        sequencer.release_durable();
        assert_eq!(
            sink.0.lock().unwrap().as_slice(),
            &[
                (
                    7,
                    Effect::BalancesSet {
                        entries: vec![(Address([1; 20]), 5)]
                    }
                ),
                (
                    7,
                    Effect::Done {
                        to: OPERATOR,
                        nonce: 1
                    }
                )
            ]
        );
        // Ticks are journaled: a block seal replays exactly.
        *time.lock().unwrap() += 12_000;
        sequencer.tick_if_due().unwrap();
        let hash = sequencer.engine.state_hash();
        let mut replayed = Engine::new(config);
        let count = Sequencer::<HeldJournal, CollectingSink>::replay(
            &mut replayed,
            records.lock().unwrap().clone().into_iter().map(Ok),
        )
        .unwrap();
        assert_eq!(count, 2);
        assert_eq!(replayed.state_hash(), hash);
        assert_eq!(replayed.block(), 1);
    }

    #[test]
    fn run_loop_stops_on_shutdown_and_flushes() {
        let config = MarketConfig {
            genesis_ms: unix_ms(),
            operator: OPERATOR,
            ..MarketConfig::default()
        };
        let sink = CollectingSink::default();
        let sequencer = Sequencer::new(
            Engine::new(config),
            NoJournal::default(),
            sink.clone(),
            SequencerConfig::default(),
        );
        let (sender, receiver) = crossbeam_channel::bounded(16);
        let handle = std::thread::spawn(move || sequencer.run(receiver));
        sender
            .send(SequencerInput::Command {
                origin: 3,
                command: Command::SetBalances {
                    operator: OPERATOR,
                    nonce: 1,
                    entries: vec![],
                },
            })
            .unwrap();
        sender.send(SequencerInput::Shutdown).unwrap();
        let engine = handle.join().unwrap().unwrap();
        assert_eq!(engine.nonce_last(&OPERATOR), Some(1));
        assert!(sink.0.lock().unwrap().contains(&(
            3,
            Effect::Done {
                to: OPERATOR,
                nonce: 1
            }
        )));
    }

    #[test]
    fn journal_record_round_trips_and_rejects_trailing_bytes() {
        let record = JournalRecord {
            now_ms: 5,
            command: Command::Tick,
        };
        let mut bytes = record.encode();
        assert_eq!(JournalRecord::decode(&bytes).unwrap(), record);
        bytes.push(0);
        assert!(JournalRecord::decode(&bytes).is_err());
    }
}
