//! Shared by the replication tests: a command stream of real engine commands (the
//! engine's deterministic market workload) with block boundaries on demand, and the
//! reference engine that applied it.

#![allow(dead_code)]

use yellowstone_engine::workload::{Workload, WorkloadSizes};
use yellowstone_engine::{Command, Engine, MarketConfig};
use yellowstone_gateway::journal::JournalRecord;

/// Milliseconds per block (7,200 blocks a day).
pub const BLOCK_MS: u64 = 12_000;

pub fn sizes() -> WorkloadSizes {
    WorkloadSizes {
        models: 2,
        providers: 4,
        users: 16,
        lifecycles_per_ms: 1,
    }
}

pub fn market() -> MarketConfig {
    Workload::market_config(&sizes())
}

/// Journal records of a workload, with time jumps that cross block boundaries; a
/// reference engine applies each record as it is made.
pub struct Stream {
    workload: Workload,
    pending: Vec<(u64, Command)>,
    offset_ms: u64,
    last_ms: u64,
    pub reference: Engine,
    pub made: u64,
    /// The reference engine's state hash as it entered each block.
    pub blocks: std::collections::BTreeMap<u64, [u8; 32]>,
}

impl Stream {
    pub fn new() -> Stream {
        let mut pending = Vec::new();
        let workload = Workload::new(sizes(), &mut pending);
        Stream {
            workload,
            pending,
            offset_ms: 0,
            last_ms: 0,
            reference: Engine::new(market()),
            made: 0,
            blocks: std::collections::BTreeMap::new(),
        }
    }

    fn record(&mut self, now_ms: u64, command: Command) -> Vec<u8> {
        let now_ms = now_ms.max(self.last_ms);
        self.last_ms = now_ms;
        let mut effects = Vec::new();
        let block = self.reference.block();
        self.reference.apply(&command, now_ms, &mut effects);
        if self.reference.block() != block {
            self.blocks
                .insert(self.reference.block(), self.reference.state_hash());
        }
        self.made += 1;
        JournalRecord { now_ms, command }.encode()
    }

    /// The next `n` records of the workload (setup first, then lifecycles).
    pub fn next(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pending.is_empty() {
                self.workload.lifecycle(&mut self.pending);
                continue;
            }
            let (t, command) = self.pending.remove(0);
            let record = self.record(t + self.offset_ms, command);
            out.push(record);
        }
        out
    }

    /// A tick a whole block later: the engine crosses a block boundary.
    pub fn block_jump(&mut self) -> Vec<u8> {
        self.offset_ms += BLOCK_MS;
        let now = self.last_ms + BLOCK_MS;
        self.record(now, Command::Tick)
    }
}
