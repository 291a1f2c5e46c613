//! An in-memory [`Storage`] that fails the way disks and kernels do, for tests and
//! simulations (issue 26 item 2; after TigerBeetle's `testing/storage.zig`):
//!
//! - a crash ([`FaultyStorage::crash`]) keeps what was synced and a prefix, cut at
//!   any byte, of what was appended after it (a torn write), optionally followed by
//!   zeros (the preallocated room of a real segment);
//! - a write can fail part-way (`Faults::append_fail_at`): a prefix of it lands,
//!   unsynced, and the call errs, as a full disk or an I/O error leaves it;
//! - reads fail at a seeded rate (`Faults::read_error_per_mille`);
//! - every operation takes a seeded virtual latency (`Faults::latency_us_max`),
//!   summed in [`FaultyStorage::elapsed_us`] for a simulation's clock.
//!
//! Everything is drawn from one seeded generator: the same seed and the same calls
//! give the same faults, so a failing seed replays exactly.
//!
//! Clones share the files (a test keeps one to crash while the journal writes
//! through another).

use super::error::StorageError;
use super::storage::Storage;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// Which faults to inject, and the seed they are drawn from.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Seeds every random choice.
    pub seed: u64,
    /// Reads that fail, per thousand.
    pub read_error_per_mille: u16,
    /// The append with this index (0: the first append) writes a random prefix of
    /// its bytes and fails; later appends to that file fail too (a failed write
    /// leaves the file in an unknown state: the journal stops, as fail-stop asks).
    pub append_fail_at: Option<u64>,
    /// At a crash, at most this many zero bytes follow what survives of the
    /// unsynced suffix (a real segment's preallocated room), bytes.
    pub crash_zero_tail_bytes_max: usize,
    /// Each operation takes up to this long in virtual time, microseconds.
    pub latency_us_max: u64,
}

/// One file: its content, and how much of it is durable.
#[derive(Clone, Debug, Default)]
struct MemFile {
    data: Vec<u8>,
    /// `data[..synced_len]` survives a crash whole.
    synced_len: usize,
    /// A failed append left this file broken: appends and syncs fail.
    broken: bool,
}

#[derive(Debug)]
struct State {
    files: BTreeMap<String, MemFile>,
    open: Option<String>,
    faults: Faults,
    rng: SplitMix64,
    appends: u64,
    elapsed_us: u64,
}

/// The in-memory storage; see the module comment.
#[derive(Clone, Debug)]
pub struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

/// splitmix64: tiny, seedable, the same on every platform and version.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next();
        }
        self.next() % (max + 1)
    }
}

fn injected(op: &'static str, name: &str, what: &str) -> StorageError {
    StorageError::new(
        op,
        name,
        std::io::Error::other(format!("injected fault: {what}")),
    )
}

fn missing(op: &'static str, name: &str) -> StorageError {
    StorageError::new(op, name, std::io::ErrorKind::NotFound.into())
}

impl FaultyStorage {
    /// An empty storage injecting `faults`.
    pub fn new(faults: Faults) -> FaultyStorage {
        let rng = SplitMix64(faults.seed);
        FaultyStorage {
            state: Arc::new(Mutex::new(State {
                files: BTreeMap::new(),
                open: None,
                faults,
                rng,
                appends: 0,
                elapsed_us: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread leaves plain data behind: still readable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The storage as a machine restarted after a power cut finds it: each file
    /// keeps its synced bytes, then a random prefix of the rest (cut at any byte);
    /// the open file then gets up to `Faults::crash_zero_tail_bytes_max` zeros (its
    /// preallocated room). The
    /// faults and the generator carry over (reads after a crash still fail); the
    /// returned storage shares nothing with this one, which the dead process may
    /// go on writing to.
    pub fn crash(&self) -> FaultyStorage {
        let mut state = self.lock();
        let zero_max = state.faults.crash_zero_tail_bytes_max as u64;
        let names: Vec<String> = state.files.keys().cloned().collect();
        let mut files = BTreeMap::new();
        for name in names {
            let file = state.files[&name].clone();
            let unsynced = (file.data.len() - file.synced_len) as u64;
            let kept = state.rng.up_to(unsynced) as usize;
            // Only the open file has preallocated room: closed segments were cut
            // to their data, replaced files (snapshots) were written whole.
            let is_open = state.open.as_deref() == Some(name.as_str());
            let zeros = if is_open {
                state.rng.up_to(zero_max) as usize
            } else {
                0
            };
            let mut data = file.data[..file.synced_len + kept].to_vec();
            data.resize(data.len() + zeros, 0);
            debug_assert!(
                data.len() >= file.synced_len,
                "a crash keeps what was synced"
            );
            let synced_len = data.len();
            files.insert(
                name,
                MemFile {
                    data,
                    synced_len,
                    broken: false,
                },
            );
        }
        let rng = SplitMix64(state.rng.next());
        FaultyStorage {
            state: Arc::new(Mutex::new(State {
                files,
                open: None,
                faults: state.faults.clone(),
                rng,
                appends: 0,
                elapsed_us: state.elapsed_us,
            })),
        }
    }

    /// Changes the faults injected from now on (the generator keeps its state).
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The bytes of `name` (None: no such file), without faults.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().files.get(name).map(|f| f.data.clone())
    }

    /// Replaces the bytes of `name` (all durable), for tests that damage a file.
    pub fn put(&self, name: &str, data: Vec<u8>) {
        let synced_len = data.len();
        self.lock().files.insert(
            name.to_string(),
            MemFile {
                data,
                synced_len,
                broken: false,
            },
        );
    }

    /// Virtual time spent in storage operations so far, microseconds.
    pub fn elapsed_us(&self) -> u64 {
        self.lock().elapsed_us
    }
}

impl State {
    fn tick(&mut self) {
        let latency = self.rng.up_to(self.faults.latency_us_max);
        self.elapsed_us = self.elapsed_us.saturating_add(latency);
    }

    fn open_file(&mut self, op: &'static str, name: &str) -> Result<&mut MemFile, StorageError> {
        if self.open.as_deref() != Some(name) {
            return Err(StorageError::new(
                op,
                name,
                std::io::Error::other("not the open file"),
            ));
        }
        let file = self.files.get_mut(name).ok_or_else(|| missing(op, name))?;
        if file.broken {
            return Err(injected(op, name, "an earlier write failed"));
        }
        Ok(file)
    }
}

impl Storage for FaultyStorage {
    fn list(&self) -> Result<Vec<String>, StorageError> {
        let mut state = self.lock();
        state.tick();
        Ok(state.files.keys().cloned().collect())
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError> {
        let mut state = self.lock();
        state.tick();
        let per_mille = u64::from(state.faults.read_error_per_mille);
        if per_mille > 0 && state.rng.up_to(999) < per_mille {
            return Err(injected("read", name, "read error"));
        }
        state
            .files
            .get(name)
            .map(|f| f.data.clone())
            .ok_or_else(|| missing("read", name))
    }

    fn create(&mut self, name: &str, initial: &[u8]) -> Result<(), StorageError> {
        let mut state = self.lock();
        // The same contract as the real storage: one open file at a time.
        debug_assert!(state.open.is_none(), "create while a file is open");
        state.tick();
        state.files.insert(
            name.to_string(),
            MemFile {
                data: initial.to_vec(),
                synced_len: initial.len(),
                broken: false,
            },
        );
        state.open = Some(name.to_string());
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8], sync: bool) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.tick();
        let index = state.appends;
        state.appends += 1;
        let fail = state.faults.append_fail_at == Some(index);
        let torn = state.rng.up_to(bytes.len() as u64) as usize;
        let file = state.open_file("append", name)?;
        if fail {
            file.data.extend_from_slice(&bytes[..torn]);
            file.broken = true;
            return Err(injected("append", name, "write failed part-way"));
        }
        file.data.extend_from_slice(bytes);
        if sync {
            file.synced_len = file.data.len();
        }
        Ok(())
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.tick();
        let file = state.open_file("fdatasync", name)?;
        file.synced_len = file.data.len();
        Ok(())
    }

    fn idle(&mut self, name: &str) -> Result<(), StorageError> {
        self.lock().open_file("preallocation", name).map(|_| ())
    }

    fn close(&mut self, name: &str) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.tick();
        let file = state.open_file("close", name)?;
        file.synced_len = file.data.len();
        state.open = None;
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.tick();
        let file = state
            .files
            .get_mut(name)
            .ok_or_else(|| missing("truncate", name))?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        // Like set_len: shorter cuts, longer extends with zeros; durable either way.
        file.data.resize(len, 0);
        file.synced_len = len;
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.tick();
        state
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| missing("remove", name))?;
        if state.open.as_deref() == Some(name) {
            state.open = None;
        }
        Ok(())
    }

    fn replace(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.tick();
        debug_assert!(
            state.open.as_deref() != Some(name),
            "the open file is appended to"
        );
        let data = parts.concat();
        let synced_len = data.len();
        state.files.insert(
            name.to_string(),
            MemFile {
                data,
                synced_len,
                broken: false,
            },
        );
        Ok(())
    }

    fn handle(&self) -> FaultyStorage {
        self.clone()
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(seed: u64) -> FaultyStorage {
        let mut storage = FaultyStorage::new(Faults {
            seed,
            crash_zero_tail_bytes_max: 8,
            latency_us_max: 50,
            ..Faults::default()
        });
        storage.create("a", b"head").unwrap();
        storage.append("a", b"synced", true).unwrap();
        storage.append("a", b"-unsynced-suffix", false).unwrap();
        storage
    }

    #[test]
    fn a_crash_keeps_the_synced_bytes_and_a_prefix_of_the_rest_cut_at_any_byte() {
        let mut cuts = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let crashed = written(seed).crash();
            let data = crashed.contents("a").unwrap();
            assert!(data.starts_with(b"headsynced"), "seed {seed}");
            let rest = &data[10..];
            let kept = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            assert_eq!(&rest[..kept], &b"-unsynced-suffix"[..kept], "seed {seed}");
            assert!(
                rest[kept..].iter().all(|b| *b == 0),
                "zeros after, seed {seed}"
            );
            cuts.insert(kept);
        }
        assert_eq!(cuts.len(), 17, "every cut from 0 to 16 bytes happens");
    }

    #[test]
    fn the_same_seed_gives_the_same_faults_and_latency() {
        for seed in [1, 2, 99] {
            let (one, two) = (written(seed), written(seed));
            assert_eq!(one.crash().contents("a"), two.crash().contents("a"));
            assert_eq!(one.elapsed_us(), two.elapsed_us());
        }
        assert_ne!(written(1).elapsed_us(), written(2).elapsed_us());
    }

    #[test]
    fn a_failed_append_leaves_a_torn_unsynced_prefix_and_breaks_the_file() {
        let mut storage = FaultyStorage::new(Faults {
            seed: 3,
            append_fail_at: Some(1),
            ..Faults::default()
        });
        storage.create("a", b"h").unwrap();
        storage.append("a", b"first", true).unwrap();
        let error = storage.append("a", b"second", true).unwrap_err();
        assert!(error.to_string().contains("injected fault"), "{error}");
        let data = storage.contents("a").unwrap();
        assert!(data.starts_with(b"hfirst") && b"second".starts_with(&data[6..]));
        assert!(storage.sync("a").is_err(), "a broken file stays broken");
        assert_eq!(storage.crash().contents("a").unwrap()[..6], b"hfirst"[..]);
    }

    #[test]
    fn reads_fail_at_the_configured_rate() {
        let mut storage = FaultyStorage::new(Faults {
            seed: 5,
            read_error_per_mille: 250,
            ..Faults::default()
        });
        storage.create("a", b"x").unwrap();
        let failed = (0..4000).filter(|_| storage.read("a").is_err()).count();
        assert!((800..1200).contains(&failed), "{failed} of 4000");
        storage.set_faults(Faults::default());
        assert!(storage.read("missing").unwrap_err().is_not_found());
        assert_eq!(storage.read("a").unwrap(), b"x");
    }
}
