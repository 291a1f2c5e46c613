//! The data directory's files: journal segments, snapshots, the market they belong
//! to, and the fsync discipline for creating and replacing them.
//!
//! ```text
//! journal-<first seq, 20 digits>.log   b"YSJRNL01", u64 LE first seq, then records
//! snapshot-<seq, 20 digits>.snap       b"YSSNAP01", u64 seq, u64 length,
//!                                      BLAKE3(seq, length, state) [32], engine state
//! market.bin                           b"YSMRKT01", BLAKE3(config) [32], bincode MarketConfig
//! ```

use super::classify::HeaderFault;
use super::error::{JournalError, StorageError};
use super::storage::FileStorage;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use yellowstone_engine::MarketConfig;

/// A segment's first 8 bytes.
pub const SEGMENT_MAGIC: &[u8; 8] = b"YSJRNL01";
/// Magic, then the first sequence number (u64 LE).
pub const SEGMENT_HEADER_BYTES: usize = 16;
const SNAPSHOT_MAGIC: &[u8; 8] = b"YSSNAP01";
const SNAPSHOT_HEADER_BYTES: usize = 8 + 8 + 8 + 32;
const MARKET_MAGIC: &[u8; 8] = b"YSMRKT01";
const MARKET_HEADER_BYTES: usize = 8 + 32;

// The on-disk layout, pinned: existing data directories must keep opening.
const _: () = assert!(SEGMENT_HEADER_BYTES == SEGMENT_MAGIC.len() + 8);
const _: () = assert!(SNAPSHOT_HEADER_BYTES == 56);
const _: () = assert!(MARKET_HEADER_BYTES == 40);
// A header is never all zeros (its magic is not), so a zero tail is never a header.
const _: () = assert!(SEGMENT_MAGIC[0] != 0);
pub const MARKET_FILE: &str = "market.bin";

/// The network id the data directory was created for (R-CHAIN-3: fixed at creation;
/// every settlement it exports is signed for it). Decimal text.
pub const NETWORK_ID_FILE: &str = "network_id";

/// The data directory's network id, None for a directory created before the file
/// existed (its first start writes it).
pub fn read_network_id(dir: &Path) -> Result<Option<u32>, JournalError> {
    let path = dir.join(NETWORK_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| JournalError::BadFile {
                path,
                what: format!("{e} (expected a network id, decimal)"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::new("read", path, e).into()),
    }
}

/// The segment file name for a segment starting at `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.log")
}

/// The snapshot file name for a snapshot covering records up to `seq`.
pub fn snapshot_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

fn number_in(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a data directory holds, by file name, sorted by sequence number (oldest
/// first); other files are ignored.
#[derive(Debug, Default)]
pub struct Names {
    /// `(first seq, name)` of every journal segment.
    pub segments: Vec<(u64, String)>,
    /// `(seq, name)` of every snapshot.
    pub snapshots: Vec<(u64, String)>,
    /// Leftovers of interrupted snapshot or market writes.
    pub temporaries: Vec<String>,
}

impl Names {
    /// Sorts a directory's file names into segments, snapshots and leftovers.
    pub fn sort(names: impl IntoIterator<Item = String>) -> Names {
        let mut sorted = Names::default();
        for name in names {
            if let Some(seq) = number_in(&name, "journal-", ".log") {
                sorted.segments.push((seq, name));
            } else if let Some(seq) = number_in(&name, "snapshot-", ".snap") {
                sorted.snapshots.push((seq, name));
            } else if name.ends_with(".tmp") {
                sorted.temporaries.push(name);
            }
        }
        sorted.segments.sort();
        sorted.snapshots.sort();
        sorted
    }
}

/// What a data directory holds, sorted by sequence number (oldest first).
#[derive(Debug, Default)]
pub struct Listing {
    /// `(first seq, path)` of every journal segment.
    pub segments: Vec<(u64, PathBuf)>,
    /// `(seq, path)` of every snapshot.
    pub snapshots: Vec<(u64, PathBuf)>,
    /// Leftovers of interrupted snapshot or market writes.
    pub temporaries: Vec<PathBuf>,
}

/// Lists `dir` ([`Names`], as paths).
pub fn list(dir: &Path) -> Result<Listing, JournalError> {
    use super::storage::Storage;
    let names = Names::sort(super::storage::FileStorage::reader(dir).list()?);
    let paths = |entries: Vec<(u64, String)>| -> Vec<(u64, PathBuf)> {
        entries
            .into_iter()
            .map(|(seq, name)| (seq, dir.join(name)))
            .collect()
    };
    Ok(Listing {
        segments: paths(names.segments),
        snapshots: paths(names.snapshots),
        temporaries: names.temporaries.iter().map(|n| dir.join(n)).collect(),
    })
}

/// Makes a directory entry (a created, renamed or removed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::new("fsync of directory", dir, e))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the
/// directory. A crash leaves either the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, bytes: &[&[u8]]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = File::create(&tmp)?;
        for part in bytes {
            file.write_all(part)?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| StorageError::new("write", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A segment's header: the magic, then `first_seq`.
pub fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..].copy_from_slice(&first_seq.to_le_bytes());
    header
}

/// Checks a segment's header; returns its first sequence number.
pub fn check_segment_header(bytes: &[u8]) -> Result<u64, HeaderFault> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(HeaderFault::Truncated {
            have: bytes.len(),
            need: SEGMENT_HEADER_BYTES,
        });
    };
    let (magic, first_seq) = header.split_at(SEGMENT_MAGIC.len());
    if magic != SEGMENT_MAGIC {
        return Err(HeaderFault::BadMagic);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(first_seq);
    Ok(u64::from_le_bytes(seq))
}

fn snapshot_checksum(seq: u64, state: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&(state.len() as u64).to_le_bytes());
    hasher.update(state);
    *hasher.finalize().as_bytes()
}

/// A snapshot's header for `state` covering records up to `seq`: magic, seq,
/// length, checksum (the file is this, then `state`).
pub fn snapshot_header(seq: u64, state: &[u8]) -> Vec<u8> {
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
    header.extend_from_slice(SNAPSHOT_MAGIC);
    header.extend_from_slice(&seq.to_le_bytes());
    header.extend_from_slice(&(state.len() as u64).to_le_bytes());
    header.extend_from_slice(&snapshot_checksum(seq, state));
    debug_assert_eq!(header.len(), SNAPSHOT_HEADER_BYTES);
    header
}

/// Writes a snapshot atomically in `dir` (through [`FileStorage::replace`]).
/// `chunk_bytes` above 0: the file is written and pushed to the device
/// `chunk_bytes` at a time (`sync_file_range`, waiting for each), so that the final
/// fsync, and above all the journal's fdatasyncs running meanwhile (whose device
/// cache flush would otherwise wait behind tens of MB of a 1,000,000-account
/// snapshot), never find more than a chunk queued ahead of them.
pub fn write_snapshot(
    dir: &Path,
    seq: u64,
    state: &[u8],
    chunk_bytes: usize,
) -> Result<PathBuf, JournalError> {
    use super::storage::Storage;
    let name = snapshot_name(seq);
    let mut storage = FileStorage::reader(dir).with_replace_chunk_bytes(chunk_bytes);
    storage.replace(&name, &[&snapshot_header(seq, state), state])?;
    Ok(storage.path_of(&name))
}

/// `write_atomically`, writing back `chunk_bytes` at a time as it goes.
pub(crate) fn write_atomically_paced(
    path: &Path,
    bytes: &[&[u8]],
    chunk_bytes: usize,
) -> Result<(), StorageError> {
    use std::os::fd::AsRawFd;
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = File::create(&tmp)?;
        let mut offset: u64 = 0;
        for part in bytes {
            for chunk in part.chunks(chunk_bytes.max(1)) {
                file.write_all(chunk)?;
                // SAFETY: a plain syscall on a descriptor this function owns; no
                // memory is passed.
                let status = unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        offset as libc::off64_t,
                        chunk.len() as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    )
                };
                if status != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                offset += chunk.len() as u64;
            }
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| StorageError::new("write", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads and verifies a snapshot; returns (seq, engine state bytes).
pub fn read_snapshot(path: &Path) -> Result<(u64, Vec<u8>), JournalError> {
    let bytes = std::fs::read(path).map_err(|e| StorageError::new("read", path, e))?;
    parse_snapshot(path, &bytes).map(|(seq, state)| (seq, state.to_vec()))
}

/// Verifies a snapshot file's bytes (`path` names it in errors); returns (seq,
/// engine state bytes).
pub fn parse_snapshot<'a>(path: &Path, bytes: &'a [u8]) -> Result<(u64, &'a [u8]), JournalError> {
    let fail = |what: &str| JournalError::BadFile {
        path: path.to_path_buf(),
        what: format!("snapshot: {what}"),
    };
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(fail("header truncated"));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(fail("bad magic"));
    }
    let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let length = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let state = &bytes[SNAPSHOT_HEADER_BYTES..];
    if state.len() as u64 != length {
        return Err(fail(&format!(
            "length {} but header says {length}",
            state.len()
        )));
    }
    if snapshot_checksum(seq, state) != bytes[24..56] {
        return Err(fail("checksum mismatch"));
    }
    Ok((seq, state))
}

/// Keeps the market configuration the journal was written under: replaying a
/// journal under other parameters would reach another state.
pub fn write_market(dir: &Path, market: &MarketConfig) -> Result<(), JournalError> {
    let bytes = bincode::encode_to_vec(market, bincode::config::standard()).map_err(|e| {
        JournalError::BadFile {
            path: dir.join(MARKET_FILE),
            what: format!("market config does not encode: {e}"),
        }
    })?;
    Ok(write_atomically(
        &dir.join(MARKET_FILE),
        &[MARKET_MAGIC, blake3::hash(&bytes).as_bytes(), &bytes],
    )?)
}

/// The market configuration the directory was created with (None: a fresh
/// directory). Errors: the file does not verify (magic, checksum, decoding).
pub fn read_market(dir: &Path) -> Result<Option<MarketConfig>, JournalError> {
    let path = dir.join(MARKET_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::new("read", path, e).into()),
    };
    let fail = |what: &str| JournalError::BadFile {
        path: path.clone(),
        what: what.to_string(),
    };
    if bytes.len() < MARKET_HEADER_BYTES || &bytes[..8] != MARKET_MAGIC {
        return Err(fail("not a market file (bad magic or truncated)"));
    }
    let body = &bytes[MARKET_HEADER_BYTES..];
    if blake3::hash(body).as_bytes() != &bytes[8..MARKET_HEADER_BYTES] {
        return Err(fail("checksum mismatch"));
    }
    let (market, _) = bincode::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| fail(&e.to_string()))?;
    Ok(Some(market))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_and_foreign_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [10u64, 2, 300] {
            std::fs::write(dir.path().join(segment_name(seq)), b"").unwrap();
        }
        std::fs::write(dir.path().join(snapshot_name(7)), b"").unwrap();
        std::fs::write(dir.path().join("journal-12.log"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::fs::write(dir.path().join("snapshot-x.tmp"), b"").unwrap();
        let listing = list(dir.path()).unwrap();
        let seqs: Vec<u64> = listing.segments.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 10, 300]);
        assert_eq!(listing.snapshots.len(), 1);
        assert_eq!(listing.temporaries.len(), 1);
    }

    /// The segment header as main wrote it before issue 26 (existing data
    /// directories must keep opening), and its check.
    #[test]
    fn the_segment_header_is_unchanged() {
        let header = segment_header(258);
        assert_eq!(&header[..], b"YSJRNL01\x02\x01\0\0\0\0\0\0");
        assert_eq!(check_segment_header(&header), Ok(258));
        assert_eq!(segment_name(258), "journal-00000000000000000258.log");
        assert_eq!(snapshot_name(9), "snapshot-00000000000000000009.snap");
        assert_eq!(
            check_segment_header(&header[..15]),
            Err(HeaderFault::Truncated { have: 15, need: 16 })
        );
    }

    #[test]
    fn snapshots_detect_every_kind_of_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), 99, b"engine state bytes", 0).unwrap();
        // Written back in chunks smaller than the state: the same file.
        let paced = tempfile::tempdir().unwrap();
        let paced_path = write_snapshot(paced.path(), 99, b"engine state bytes", 5).unwrap();
        assert_eq!(
            std::fs::read(&paced_path).unwrap(),
            std::fs::read(&path).unwrap()
        );
        assert_eq!(
            read_snapshot(&path).unwrap(),
            (99, b"engine state bytes".to_vec())
        );
        let good = std::fs::read(&path).unwrap();
        for index in 0..good.len() {
            let mut bad = good.clone();
            bad[index] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                read_snapshot(&path).is_err(),
                "flip at byte {index} went unseen"
            );
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(read_snapshot(&path)
            .unwrap_err()
            .to_string()
            .contains("length"));
    }

    #[test]
    fn market_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_market(dir.path()).unwrap(), None);
        let market = MarketConfig::default();
        write_market(dir.path(), &market).unwrap();
        assert_eq!(read_market(dir.path()).unwrap(), Some(market));
        let path = dir.path().join(MARKET_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_market(dir.path())
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }
}
