//! The data directory's files: journal segments, snapshots, the market they belong
//! to, and the fsync discipline for creating and replacing them.
//!
//! ```text
//! journal-<first seq, 20 digits>.log   b"YSJRNL01", u64 LE first seq, then records
//! snapshot-<seq, 20 digits>.snap       b"YSSNAP01", u64 seq, u64 length,
//!                                      BLAKE3(seq, length, state) [32], engine state
//! market.bin                           b"YSMRKT01", BLAKE3(config) [32], bincode MarketConfig
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use yellowstone_engine::MarketConfig;

pub const SEGMENT_MAGIC: &[u8; 8] = b"YSJRNL01";
pub const SEGMENT_HEADER_BYTES: usize = 16;
const SNAPSHOT_MAGIC: &[u8; 8] = b"YSSNAP01";
const SNAPSHOT_HEADER_BYTES: usize = 8 + 8 + 8 + 32;
const MARKET_MAGIC: &[u8; 8] = b"YSMRKT01";
pub const MARKET_FILE: &str = "market.bin";

/// The network id the data directory was created for (R-CHAIN-3: fixed at creation;
/// every settlement it exports is signed for it). Decimal text.
pub const NETWORK_ID_FILE: &str = "network_id";

/// The data directory's network id, None for a directory created before the file
/// existed (its first start writes it).
pub fn read_network_id(dir: &Path) -> Result<Option<u32>, String> {
    let path = dir.join(NETWORK_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{}: {e} (expected a network id, decimal)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn segment_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.log")
}

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

/// What a data directory holds, sorted by sequence number (oldest first).
#[derive(Debug, Default)]
pub struct Listing {
    pub segments: Vec<(u64, PathBuf)>,
    pub snapshots: Vec<(u64, PathBuf)>,
    /// Leftovers of interrupted snapshot or market writes.
    pub temporaries: Vec<PathBuf>,
}

pub fn list(dir: &Path) -> Result<Listing, String> {
    let mut listing = Listing::default();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = number_in(name, "journal-", ".log") {
            listing.segments.push((seq, entry.path()));
        } else if let Some(seq) = number_in(name, "snapshot-", ".snap") {
            listing.snapshots.push((seq, entry.path()));
        } else if name.ends_with(".tmp") {
            listing.temporaries.push(entry.path());
        }
    }
    listing.segments.sort();
    listing.snapshots.sort();
    Ok(listing)
}

/// Makes a directory entry (a created, renamed or removed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync of directory {}: {e}", dir.display()))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the
/// directory. A crash leaves either the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, bytes: &[&[u8]]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = File::create(&tmp)?;
        for part in bytes {
            file.write_all(part)?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| format!("{}: {e}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Creates a segment starting at `first_seq` (replacing an empty leftover of the
/// same name) and makes its directory entry durable.
pub fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), String> {
    let path = dir.join(segment_name(first_seq));
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..].copy_from_slice(&first_seq.to_le_bytes());
    file.write_all(&header)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Checks a segment's header; returns its first sequence number.
pub fn check_segment_header(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "segment header truncated ({} of {SEGMENT_HEADER_BYTES} bytes)",
            bytes.len()
        ));
    }
    if &bytes[..8] != SEGMENT_MAGIC {
        return Err("not a journal segment (bad magic)".into());
    }
    Ok(u64::from_le_bytes(
        bytes[8..16].try_into().expect("8 bytes"),
    ))
}

fn snapshot_checksum(seq: u64, state: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&(state.len() as u64).to_le_bytes());
    hasher.update(state);
    *hasher.finalize().as_bytes()
}

/// Writes a snapshot atomically. `chunk_bytes` above 0: the file is written and
/// pushed to the device `chunk_bytes` at a time (`sync_file_range`, waiting for
/// each), so that the final fsync, and above all the journal's fdatasyncs running
/// meanwhile (whose device cache flush would otherwise wait behind tens of MB of a
/// 1,000,000-account snapshot), never find more than a chunk queued ahead of them.
pub fn write_snapshot(
    dir: &Path,
    seq: u64,
    state: &[u8],
    chunk_bytes: usize,
) -> Result<PathBuf, String> {
    let path = dir.join(snapshot_name(seq));
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
    header.extend_from_slice(SNAPSHOT_MAGIC);
    header.extend_from_slice(&seq.to_le_bytes());
    header.extend_from_slice(&(state.len() as u64).to_le_bytes());
    header.extend_from_slice(&snapshot_checksum(seq, state));
    if chunk_bytes == 0 {
        write_atomically(&path, &[&header, state])?;
    } else {
        write_atomically_paced(&path, &[&header, state], chunk_bytes)?;
    }
    Ok(path)
}

/// `write_atomically`, writing back `chunk_bytes` at a time as it goes.
fn write_atomically_paced(path: &Path, bytes: &[&[u8]], chunk_bytes: usize) -> Result<(), String> {
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
    result.map_err(|e| format!("{}: {e}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads and verifies a snapshot; returns (seq, engine state bytes).
pub fn read_snapshot(path: &Path) -> Result<(u64, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fail = |what: &str| format!("snapshot {}: {what}", path.display());
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
    Ok((seq, state.to_vec()))
}

/// Keeps the market configuration the journal was written under: replaying a
/// journal under other parameters would reach another state.
pub fn write_market(dir: &Path, market: &MarketConfig) -> Result<(), String> {
    let bytes = bincode::encode_to_vec(market, bincode::config::standard())
        .map_err(|e| format!("market config: {e}"))?;
    write_atomically(
        &dir.join(MARKET_FILE),
        &[MARKET_MAGIC, blake3::hash(&bytes).as_bytes(), &bytes],
    )
}

pub fn read_market(dir: &Path) -> Result<Option<MarketConfig>, String> {
    let path = dir.join(MARKET_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let fail = |what: &str| format!("{}: {what}", path.display());
    if bytes.len() < 40 || &bytes[..8] != MARKET_MAGIC {
        return Err(fail("not a market file (bad magic or truncated)"));
    }
    if blake3::hash(&bytes[40..]).as_bytes() != &bytes[8..40] {
        return Err(fail("checksum mismatch"));
    }
    let (market, _) = bincode::decode_from_slice(&bytes[40..], bincode::config::standard())
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
        assert!(read_snapshot(&path).unwrap_err().contains("length"));
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
        assert!(read_market(dir.path()).unwrap_err().contains("checksum"));
    }
}
