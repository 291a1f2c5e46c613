//! The engine thread: the single writer of market state (LMAX style).
//!
//! It takes authenticated commands from the gateways, stamps each with the clock
//! (the only clock read on this path), appends (now, command) to the journal, applies
//! it, and sorts its effects by what they promise ([`release_of`], ARCHITECTURE.md
//! "Latency: what waits for the disk"): an effect that promises nothing to anyone (a
//! probe) goes to the `EffectSink` at once; every promise waits until the journal says
//! the command's record is durable (journal order makes `seq <= durable_seq` enough:
//! it covers every earlier record the promise depends on). A credit batch or a
//! settlement also waits until its seal is on stable storage whatever the durability
//! mode (R-BLOCK-*), without stopping the engine thread. So in durability `always` no
//! promise leaves before its command is on disk, while the engine keeps working on the
//! next commands (group commit, pipelined), and an RFC's probe travels while its
//! record is being written.
//! Ticks are journaled like any other input, so replay reproduces block seals.

// Defined with the journal (issue 26: no `sequencer <-> journal` circle); re-exported
// here for the callers that name them through the sequencer.
use crate::journal::JournalError;
pub use crate::journal::{Durability, JournalRecord};
use crate::metrics::{Stage, StageRecorder};
use crossbeam_channel::{Receiver, Select};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use yellowstone_engine::{Applied, Command, Effect, Engine, APPLY_BATCH_GROUP};

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
    /// R-ID-6: connection `conn` (an origin), logged in as `address`, closed: the
    /// sink (the routes' one writer) releases the routes it held, and the engine is
    /// told when it was its provider's route. In order with the commands around it.
    Closed {
        conn: Origin,
        address: yellowstone_engine::Address,
    },
    /// Seal what is due and stop (graceful shutdown).
    Shutdown,
    /// R-HA-1: this member lost office (replication): stop at once, sealing nothing
    /// and releasing no promise still pending (its records may never be committed;
    /// the new leader answers what was). The engine returned is thrown away.
    Abandon,
}

/// When an effect may leave the engine thread, and the classification of each effect:
/// router-core's (`dispatch.rs`), the one place that decides it.
pub use yellowstone_router_core::{release_of, Release};

/// Receives effects: those that promise nothing at once, the others once the command
/// that caused them is durable.
pub trait EffectSink: Send {
    /// Called once per command, in order, once its record is durable: with its
    /// promises (possibly none when the command came from a connection, whose frame
    /// the sink must answer, exactly once, here).
    fn deliver(&mut self, origin: Origin, command: &Command, effects: &[Effect]);
    /// Called right after the engine applied a command whose effects include some
    /// that promise nothing (`Release::Now`, only those are passed). Must not answer
    /// the command's frame (`deliver` does, later).
    fn deliver_now(&mut self, origin: Origin, command: &Command, effects: &[Effect]);
    /// Called after each burst of deliveries, to flush outboxes.
    fn flush(&mut self) {}
    /// R-ID-6: `command` from `origin` is about to be applied (the route it is for
    /// moves to its connection before anything the engine says is routed).
    fn on_command(&mut self, _origin: Origin, _command: &Command) {}
    /// R-ID-6: connection `conn`, logged in as `address`, closed; returns the command
    /// to apply when the engine must learn of it (its provider is unreachable).
    fn on_closed(
        &mut self,
        _conn: Origin,
        _address: yellowstone_engine::Address,
    ) -> Option<Command> {
        None
    }
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
    /// When its record was appended, for the commands whose durable wait is timed.
    appended_at: Option<Instant>,
    /// Waits for `synced_seq` too (a sealed block's batch, `Release::Synced`).
    synced: bool,
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
    /// `Release::Now` effects of the command being applied (reused).
    now_effects: Vec<Effect>,
    /// Something went out through `deliver_now` since the last sink flush.
    sent_now: bool,
    /// Called after each burst, e.g. to publish engine gauges.
    observer: Option<EngineObserver>,
    /// Times one command in `STAGE_SAMPLE_EVERY` (`Stage::Apply`, `Stage::DurableWait`).
    stages: Option<StageRecorder>,
    commands_seen: u64,
    /// The burst being applied (reused).
    burst: VecDeque<(Origin, Command)>,
    /// The sequence number of the last record appended (0: none by this process, so
    /// a refusal waits for nothing but what recovery found durable).
    last_seq: u64,
    /// Commands refused without a journal record (R-OPS-4, R-PROV-3).
    refused_total: u64,
    /// `SequencerInput::Abandon` was seen (R-HA-1): stop without releasing.
    abandoned: bool,
}

/// One command in this many is timed for the stage metrics (two clock reads each).
const STAGE_SAMPLE_EVERY: u64 = 16;

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
            now_effects: Vec::new(),
            sent_now: false,
            observer: None,
            stages: None,
            commands_seen: 0,
            burst: VecDeque::new(),
            last_seq: 0,
            refused_total: 0,
            abandoned: false,
        }
    }

    /// Commands the engine refused without changing state, so not journaled.
    pub fn refused_unjournaled_total(&self) -> u64 {
        self.refused_total
    }

    /// Records the engine's apply time and the durable wait of one command in 16.
    pub fn with_stages(mut self, stages: StageRecorder) -> Self {
        self.stages = Some(stages);
        self
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
                    Ok(SequencerInput::Closed { conn, address }) => self.closed(conn, address)?,
                    Ok(SequencerInput::Shutdown) | Err(_) => break,
                    Ok(SequencerInput::Abandon) => {
                        self.abandoned = true;
                        break;
                    }
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
        if self.abandoned {
            // R-HA-1: out of office, nothing pending may leave (the promise rule):
            // what is committed the new leader answers from its own journal.
            self.pending.clear();
            return Ok(self.engine);
        }
        // Graceful stop: seal what is due, make everything durable, answer it.
        self.tick_if_due()?;
        self.journal.flush()?;
        self.release_durable();
        debug_assert!(self.pending.is_empty());
        Ok(self.engine)
    }

    /// Applies `first` and whatever else is queued, up to the batch limit. Returns
    /// false if a shutdown was seen. The burst is taken off the channel first, so
    /// that before each group of commands the engine can warm the cache lines of
    /// their originators' accounts together (`Engine::warm`, issue 18 item 5); the
    /// commands are then journaled and applied one by one, in order, as before.
    fn process_burst(
        &mut self,
        origin: Origin,
        first: Command,
        inbound: &Receiver<SequencerInput>,
    ) -> Result<bool, String> {
        let mut burst = std::mem::take(&mut self.burst);
        debug_assert!(burst.is_empty());
        burst.push_back((origin, first));
        let mut running = true;
        // A close ends the burst: it is handled after the commands before it.
        let mut closed = None;
        while burst.len() < self.config.batch_commands_max {
            match inbound.try_recv() {
                Ok(SequencerInput::Command { origin, command }) => {
                    burst.push_back((origin, command))
                }
                Ok(SequencerInput::Closed { conn, address }) => {
                    closed = Some((conn, address));
                    break;
                }
                Ok(SequencerInput::Shutdown) => {
                    running = false;
                    break;
                }
                Ok(SequencerInput::Abandon) => {
                    self.abandoned = true;
                    running = false;
                    break;
                }
                Err(_) => break,
            }
        }
        while !burst.is_empty() {
            let group = burst.len().min(APPLY_BATCH_GROUP);
            self.engine
                .warm(burst.iter().take(group).map(|(_, command)| command));
            for (origin, command) in burst.drain(..group) {
                self.apply(origin, command)?;
            }
        }
        self.burst = burst;
        if let Some((conn, address)) = closed {
            self.closed(conn, address)?;
        }
        Ok(running)
    }

    /// A connection closed (R-ID-6): the sink releases its routes; the engine learns
    /// of it only when its provider became unreachable.
    fn closed(&mut self, conn: Origin, address: yellowstone_engine::Address) -> Result<(), String> {
        match self.sink.on_closed(conn, address) {
            Some(command) => self.apply(ORIGIN_INTERNAL, command),
            None => Ok(()),
        }
    }

    /// Applies one command and journals it unless the engine refused it without
    /// changing anything (R-OPS-4, R-PROV-3: a refusal writes nothing to the journal;
    /// when timers or a block end are due, a `Tick` is journaled first so that the
    /// command itself can be left out). Effects that promise nothing go to the sink
    /// at once, the others wait for durability ([`release_of`]); a refusal waits for
    /// every record before it, the state it was computed against.
    pub fn apply(&mut self, origin: Origin, command: Command) -> Result<(), String> {
        let now_ms = (self.clock)().max(self.engine.now_ms());
        if command.origin().is_some() && self.engine.is_due(now_ms) {
            self.apply(ORIGIN_INTERNAL, Command::Tick)?;
        }
        if origin != ORIGIN_INTERNAL {
            self.sink.on_command(origin, &command);
        }
        let record = JournalRecord { now_ms, command };
        self.commands_seen += 1;
        let timed = self.stages.is_some() && self.commands_seen.is_multiple_of(STAGE_SAMPLE_EVERY);
        let appended_at = timed.then(Instant::now);
        let mut effects = self.spare.pop().unwrap_or_default();
        let block_before = self.engine.block();
        let apply_started = timed.then(Instant::now);
        let applied = self
            .engine
            .apply_unless_refused(&record.command, now_ms, &mut effects);
        if let (Some(started), Some(stages)) = (apply_started, &self.stages) {
            stages.record_ns(Stage::Apply, started.elapsed().as_nanos() as u64);
        }
        let seq = match applied {
            Applied::Changed => {
                let seq = self.journal.append(&record.encode())?;
                debug_assert!(seq > self.last_seq, "sequence numbers increase");
                self.last_seq = seq;
                seq
            }
            Applied::Refused => {
                debug_assert_eq!(self.engine.block(), block_before);
                self.refused_total += 1;
                self.last_seq
            }
        };
        let mut synced = false;
        let mut now = false;
        for effect in effects.iter() {
            match release_of(effect) {
                Release::Now => now = true,
                Release::Durable => {}
                Release::Synced => synced = true,
            }
        }
        if now {
            debug_assert!(self.now_effects.is_empty());
            // Linear split, effect order kept on both sides (a tick can time out many
            // probes and send as many new ones).
            let mut promises = self.spare.pop().unwrap_or_default();
            debug_assert!(promises.is_empty());
            for effect in effects.drain(..) {
                match release_of(&effect) {
                    Release::Now => self.now_effects.push(effect),
                    Release::Durable | Release::Synced => promises.push(effect),
                }
            }
            std::mem::swap(&mut effects, &mut promises);
            if self.spare.len() < 4096 {
                self.spare.push(promises);
            }
            self.sink
                .deliver_now(origin, &record.command, &self.now_effects);
            self.now_effects.clear();
            self.sent_now = true;
        }
        if synced {
            // Not a wait: the batch waits in `pending` for `synced_seq` (R-BLOCK-*).
            self.journal.request_sync(seq)?;
        }
        if self.engine.block() != block_before {
            self.maybe_snapshot(seq)?;
        }
        if matches!(record.command, Command::Tick) {
            self.last_tick_ms = now_ms;
        }
        self.pending.push_back(Pending {
            seq,
            appended_at,
            synced,
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
        Ok(self.journal.snapshot_point(seq, &self.engine)?)
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

    /// Hands every pending command whose record is durable (and, for a sealed block,
    /// synced) to the sink, in order.
    fn release_durable(&mut self) {
        let durable = self.journal.durable_seq();
        let synced = self.journal.synced_seq();
        let mut delivered = std::mem::take(&mut self.sent_now);
        while self
            .pending
            .front()
            .is_some_and(|p| p.seq <= durable && (!p.synced || p.seq <= synced))
        {
            let mut pending = self.pending.pop_front().expect("checked");
            if let (Some(appended), Some(stages)) = (pending.appended_at, &self.stages) {
                stages.record_ns(Stage::DurableWait, appended.elapsed().as_nanos() as u64);
            }
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

    /// Replays journal records (payloads) after a snapshot; returns how many.
    /// Errors: the first record that does not decode, or the first read error.
    pub fn replay(
        engine: &mut Engine,
        records: impl Iterator<Item = Result<Vec<u8>, JournalError>>,
    ) -> Result<u64, JournalError> {
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
    fn append(&mut self, _record: &[u8]) -> Result<u64, JournalError> {
        self.seq += 1;
        Ok(self.seq)
    }
    fn durable_updates(&self) -> Receiver<u64> {
        self.updates.1.clone()
    }
    fn durable_seq(&self) -> u64 {
        self.seq
    }
    fn synced_seq(&self) -> u64 {
        self.seq
    }
    fn request_sync(&mut self, _seq: u64) -> Result<(), JournalError> {
        Ok(())
    }
    fn snapshot(&mut self, _seq: u64, _state: Vec<u8>) -> Result<(), JournalError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), JournalError> {
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

    impl HeldJournal {
        fn new(durable: Arc<Mutex<u64>>) -> HeldJournal {
            HeldJournal {
                records: Arc::default(),
                durable,
                updates: crossbeam_channel::bounded(4),
            }
        }
    }

    /// A journal like `none`/`interval`: everything is durable at once, but on stable
    /// storage only up to what the test sets; records sync requests.
    struct LaggingJournal {
        seq: u64,
        synced: Arc<Mutex<u64>>,
        requested: Arc<Mutex<Vec<u64>>>,
        updates: (crossbeam_channel::Sender<u64>, Receiver<u64>),
    }

    impl Durability for LaggingJournal {
        fn append(&mut self, _record: &[u8]) -> Result<u64, JournalError> {
            self.seq += 1;
            Ok(self.seq)
        }
        fn durable_updates(&self) -> Receiver<u64> {
            self.updates.1.clone()
        }
        fn durable_seq(&self) -> u64 {
            self.seq
        }
        fn synced_seq(&self) -> u64 {
            *self.synced.lock().unwrap()
        }
        fn request_sync(&mut self, seq: u64) -> Result<(), JournalError> {
            self.requested.lock().unwrap().push(seq);
            Ok(())
        }
        fn snapshot(&mut self, _seq: u64, _state: Vec<u8>) -> Result<(), JournalError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), JournalError> {
            *self.synced.lock().unwrap() = self.seq;
            Ok(())
        }
    }

    impl Durability for HeldJournal {
        fn append(&mut self, record: &[u8]) -> Result<u64, JournalError> {
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
        fn synced_seq(&self) -> u64 {
            self.durable_seq() // like `always`: durable means on disk
        }
        fn request_sync(&mut self, _seq: u64) -> Result<(), JournalError> {
            Ok(())
        }
        fn snapshot(&mut self, _seq: u64, _state: Vec<u8>) -> Result<(), JournalError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), JournalError> {
            *self.durable.lock().unwrap() = self.records.lock().unwrap().len() as u64;
            Ok(())
        }
    }

    /// Collects what `deliver` got (`.0`), what `deliver_now` got (`.1`) and the
    /// origins whose frames `deliver` answered (`.2`).
    #[derive(Clone, Default)]
    #[allow(clippy::type_complexity)]
    struct CollectingSink(
        Arc<Mutex<Vec<(Origin, Effect)>>>,
        Arc<Mutex<Vec<(Origin, Effect)>>>,
        Arc<Mutex<Vec<Origin>>>,
    );

    impl EffectSink for CollectingSink {
        fn deliver(&mut self, origin: Origin, _command: &Command, effects: &[Effect]) {
            let mut out = self.0.lock().unwrap();
            out.extend(effects.iter().map(|e| (origin, e.clone())));
            self.2.lock().unwrap().push(origin);
        }
        fn deliver_now(&mut self, origin: Origin, _command: &Command, effects: &[Effect]) {
            let mut out = self.1.lock().unwrap();
            out.extend(effects.iter().map(|e| (origin, e.clone())));
        }
    }

    fn is_probe(effect: &Effect) -> bool {
        matches!(effect, Effect::Probe { .. })
    }

    #[test]
    fn only_the_probe_leaves_before_durability_and_batches_wait_for_stable_storage() {
        use yellowstone_engine::workload::{Workload, WorkloadSizes};
        let sizes = WorkloadSizes {
            models: 2,
            providers: 4,
            users: 20,
            lifecycles_per_ms: 1,
        };
        let mut commands = Vec::new();
        let mut workload = Workload::new(sizes, &mut commands);
        for _ in 0..40 {
            workload.lifecycle(&mut commands);
        }
        let config = Workload::market_config(&sizes);
        let durable = Arc::new(Mutex::new(0));
        let sink = CollectingSink::default();
        let time = Arc::new(Mutex::new(config.genesis_ms));
        let clock_time = time.clone();
        let mut sequencer = Sequencer::new(
            Engine::new(config),
            HeldJournal::new(durable.clone()),
            sink.clone(),
            SequencerConfig::default(),
        )
        .with_clock(move || *clock_time.lock().unwrap());
        let mut rfcs = 0;
        for (origin, (now_ms, command)) in commands.into_iter().enumerate() {
            *time.lock().unwrap() = now_ms;
            rfcs += matches!(command, Command::SubmitRfc { .. }) as usize;
            sequencer.apply(origin as Origin, command).unwrap();
            sequencer.release_durable();
        }
        // Nothing is durable: every probe went, no promise and no frame answer did.
        let now = sink.1.lock().unwrap().clone();
        assert_eq!(now.len(), rfcs, "one probe per RFC, sent at once");
        assert!(now.iter().all(|(_, e)| is_probe(e)));
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "no promise before durable"
        );
        assert!(sink.2.lock().unwrap().is_empty(), "no frame answered early");
        // Once durable, each command is answered exactly once, in order, with its
        // promises and without its probes.
        let applied = sequencer.pending.len();
        *durable.lock().unwrap() = u64::MAX;
        sequencer.release_durable();
        let delivered = sink.0.lock().unwrap().clone();
        assert!(delivered.iter().all(|(_, e)| !is_probe(e)));
        assert_eq!(
            delivered
                .iter()
                .filter(|(_, e)| matches!(e, Effect::SessionOpened { .. }))
                .count(),
            rfcs,
            "every ticket, after durability"
        );
        let answered = sink.2.lock().unwrap().clone();
        assert!(
            answered.windows(2).all(|w| w[0] < w[1]),
            "in order, once each"
        );
        assert!(answered.len() <= applied);
    }

    #[test]
    fn a_sealed_block_asks_for_a_sync_and_its_batch_waits_for_it_without_stalling() {
        let config = MarketConfig {
            genesis_ms: 1_000_000,
            operator: OPERATOR,
            ..MarketConfig::default()
        };
        let synced = Arc::new(Mutex::new(0));
        let requested = Arc::new(Mutex::new(Vec::new()));
        let journal = LaggingJournal {
            seq: 0,
            synced: synced.clone(),
            requested: requested.clone(),
            updates: crossbeam_channel::bounded(4),
        };
        let sink = CollectingSink::default();
        let time = Arc::new(Mutex::new(1_000_000u64));
        let clock_time = time.clone();
        let mut sequencer = Sequencer::new(
            Engine::new(config),
            journal,
            sink.clone(),
            SequencerConfig::default(),
        )
        .with_clock(move || *clock_time.lock().unwrap());
        let set = |nonce| Command::SetBalances {
            operator: OPERATOR,
            nonce,
            entries: vec![],
        };
        sequencer.apply(1, set(1)).unwrap();
        sequencer.release_durable();
        assert_eq!(sink.2.lock().unwrap().as_slice(), &[1], "durable is enough");
        *time.lock().unwrap() += 12_000;
        sequencer.tick_if_due().unwrap(); // seq 2 seals block 0
        sequencer.apply(3, set(2)).unwrap();
        sequencer.release_durable();
        assert_eq!(
            requested.lock().unwrap().as_slice(),
            &[2],
            "a sync was asked"
        );
        let sealed = |sink: &CollectingSink| {
            sink.0
                .lock()
                .unwrap()
                .iter()
                .any(|(_, e)| matches!(e, Effect::BatchSealed { .. }))
        };
        assert!(!sealed(&sink), "no batch before its seal is on disk");
        assert_eq!(
            sink.2.lock().unwrap().as_slice(),
            &[1],
            "later replies wait"
        );
        *synced.lock().unwrap() = 1;
        sequencer.release_durable();
        assert!(!sealed(&sink));
        *synced.lock().unwrap() = 2;
        sequencer.release_durable();
        assert!(sealed(&sink), "published once synced");
        assert_eq!(sink.2.lock().unwrap().as_slice(), &[1, ORIGIN_INTERNAL, 3]);
    }

    #[test]
    fn the_release_classification_sends_only_probes_early() {
        use yellowstone_engine::{BatchApplied, CreditBatch};
        let probe = Effect::Probe {
            provider: OPERATOR,
            probe: 1,
            model: 0,
            tokens_max: 1,
            deadline_ms: 1,
        };
        assert_eq!(release_of(&probe), Release::Now);
        let accepted = Effect::RfcAccepted {
            user: OPERATOR,
            nonce: 1,
            rfc: 1,
            tokens_left: 0,
        };
        assert_eq!(release_of(&accepted), Release::Durable);
        let done = Effect::Done {
            to: OPERATOR,
            nonce: 1,
        };
        assert_eq!(release_of(&done), Release::Durable);
        let batch = Effect::BatchSealed {
            batch: CreditBatch::default(),
            applied: BatchApplied::default(),
        };
        assert_eq!(release_of(&batch), Release::Synced);
    }

    const OPERATOR: Address = Address([9; 20]);

    #[test]
    fn effects_wait_for_durability_and_replay_reproduces_the_state() {
        let config = MarketConfig {
            genesis_ms: 1_000_000,
            operator: OPERATOR,
            ..MarketConfig::default()
        };
        let durable = Arc::new(Mutex::new(0));
        let journal = HeldJournal::new(durable.clone());
        let records = journal.records.clone();
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
    fn r_ops_4_a_refusal_writes_no_record_and_waits_for_what_came_before() {
        let config = MarketConfig {
            genesis_ms: 1_000_000,
            operator: OPERATOR,
            ..MarketConfig::default()
        };
        let durable = Arc::new(Mutex::new(0));
        let journal = HeldJournal::new(durable.clone());
        let records = journal.records.clone();
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
        let set = |nonce| Command::SetBalances {
            operator: OPERATOR,
            nonce,
            entries: vec![(Address([1; 20]), 5)],
        };
        sequencer.apply(1, set(1)).unwrap();
        // A replay and a refused sender: nothing journaled, nothing answered before
        // the record they were computed against is durable.
        sequencer.apply(2, set(1)).unwrap();
        let stranger = Command::ProviderAnnounce {
            provider: Address([3; 20]),
            nonce: 1,
        };
        sequencer.apply(3, stranger).unwrap();
        assert_eq!(records.lock().unwrap().len(), 1, "refusals write nothing");
        assert_eq!(sequencer.refused_unjournaled_total(), 2);
        sequencer.release_durable();
        assert!(sink.2.lock().unwrap().is_empty(), "they wait for record 1");
        *durable.lock().unwrap() = 1;
        sequencer.release_durable();
        assert_eq!(sink.2.lock().unwrap().as_slice(), &[1, 2, 3]);
        // Past the block's end something is due: a tick is journaled first, the
        // refusal still is not.
        *time.lock().unwrap() += 12_000;
        sequencer.apply(4, set(1)).unwrap();
        let journaled: Vec<Command> = records
            .lock()
            .unwrap()
            .iter()
            .map(|r| JournalRecord::decode(r).unwrap().command)
            .collect();
        assert_eq!(journaled, vec![set(1), Command::Tick]);
        let mut replayed = Engine::new(config);
        Sequencer::<HeldJournal, CollectingSink>::replay(
            &mut replayed,
            records.lock().unwrap().clone().into_iter().map(Ok),
        )
        .unwrap();
        assert_eq!(replayed.state_hash(), sequencer.engine.state_hash());
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

    /// R-HA-1 (issue 25): a leader that loses office abandons its pipeline: what
    /// was applied but not committed is never answered (the Shutdown path would
    /// flush and answer it).
    #[test]
    fn r_ha_1_abandon_releases_no_pending_promise() {
        let config = MarketConfig {
            genesis_ms: unix_ms(),
            operator: OPERATOR,
            ..MarketConfig::default()
        };
        let sink = CollectingSink::default();
        let durable = Arc::new(Mutex::new(0));
        let sequencer = Sequencer::new(
            Engine::new(config),
            HeldJournal::new(durable.clone()),
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
        sender.send(SequencerInput::Abandon).unwrap();
        let engine = handle.join().unwrap().unwrap();
        assert_eq!(engine.nonce_last(&OPERATOR), Some(1), "applied");
        assert_eq!(*durable.lock().unwrap(), 0, "not flushed");
        assert!(sink.0.lock().unwrap().is_empty(), "no promise left");
        assert!(sink.2.lock().unwrap().is_empty(), "no frame answered");
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
