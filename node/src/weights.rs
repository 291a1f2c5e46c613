//! R-PROV-1: the BLAKE3 hash of a model's weights file, computed at the provider's
//! start. Multi-GB files are read in `CHUNK_BYTES` pieces (bounded memory) and each
//! piece is hashed on every core (`blake3::Hasher::update_rayon`), with a progress
//! line at most once a second. The result equals `blake3::hash(whole file)`.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes read and hashed at a time.
pub const CHUNK_BYTES: usize = 64 * 1024 * 1024;

/// Hashes `path`; `progress(done_bytes, total_bytes)` is called at most once per
/// `every` and once at the end.
pub fn hash_file(
    path: &Path,
    every: Duration,
    mut progress: impl FnMut(u64, u64),
) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let total = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; CHUNK_BYTES.min(total.max(1) as usize)];
    let mut done: u64 = 0;
    let mut last = Instant::now();
    loop {
        // Fill the buffer (a read may return less than asked).
        let mut filled = 0;
        while filled < buffer.len() {
            let n = file.read(&mut buffer[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        hasher.update_rayon(&buffer[..filled]);
        done += filled as u64;
        if last.elapsed() >= every {
            progress(done, total);
            last = Instant::now();
        }
    }
    progress(done, total);
    Ok(*hasher.finalize().as_bytes())
}

/// Hashes with a progress line in the log (`hashing weights … 42 %`).
pub fn hash_file_logged(path: &Path) -> std::io::Result<[u8; 32]> {
    let started = Instant::now();
    let name = path.display().to_string();
    let hash = hash_file(path, Duration::from_secs(1), |done, total| {
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        tracing::info!(
            file = %name,
            done_mib = done >> 20,
            total_mib = total >> 20,
            "hashing weights: {percent} %"
        );
    })?;
    tracing::info!(file = %name, hash = %hex::encode(hash), elapsed_ms = started.elapsed().as_millis() as u64, "weights hashed");
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_prov_1_chunked_parallel_hash_equals_the_whole_file_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        // Over one chunk, not a multiple of it, so the seam is exercised.
        let data: Vec<u8> = (0..CHUNK_BYTES + 12_345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let mut calls = Vec::new();
        let hash = hash_file(&path, Duration::ZERO, |done, total| {
            calls.push((done, total))
        })
        .unwrap();
        assert_eq!(hash, *blake3::hash(&data).as_bytes());
        assert_eq!(calls.last(), Some(&(data.len() as u64, data.len() as u64)));
        std::fs::write(&path, b"yellowstone-demo-model-1").unwrap();
        assert_eq!(
            hash_file(&path, Duration::ZERO, |_, _| {}).unwrap(),
            *blake3::hash(b"yellowstone-demo-model-1").as_bytes()
        );
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            hash_file(&path, Duration::ZERO, |_, _| {}).unwrap(),
            *blake3::hash(b"").as_bytes()
        );
    }
}
