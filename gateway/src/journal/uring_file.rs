//! The open segment: appends at a known offset, with the fsync linked to the write
//! in one io_uring submission (one syscall per group commit), or plain
//! pwrite(2) + fdatasync(2) where io_uring is unavailable.

use io_uring::{opcode, squeue, types, IoUring};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

pub struct SegmentFile {
    file: File,
    path: PathBuf,
    len: u64,
    ring: Option<IoUring>,
}

impl SegmentFile {
    pub fn new(file: File, path: PathBuf, io_uring: bool) -> Result<SegmentFile, String> {
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let ring = if io_uring {
            match IoUring::new(8) {
                Ok(ring) => Some(ring),
                Err(error) => {
                    tracing::warn!(%error, "journal: io_uring unavailable, using write(2)/fdatasync(2)");
                    None
                }
            }
        } else {
            None
        };
        Ok(SegmentFile {
            file,
            path,
            len,
            ring,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    fn error(&self, what: &str, error: std::io::Error) -> String {
        format!("journal {} {what}: {error}", self.path.display())
    }

    /// Appends `bytes`; with `sync`, returns only once they are on stable storage.
    pub fn append(&mut self, bytes: &[u8], sync: bool) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        let done = match self.ring.as_mut() {
            Some(ring) => submit_linked(ring, &self.file, self.len, bytes, sync)
                .map_err(|e| self.error("io_uring write", e))?,
            None => 0,
        };
        let (written, synced) = match done {
            // The ring wrote it all, and synced it if asked.
            n if n == bytes.len() && self.ring.is_some() => (n, sync),
            n => (n, false),
        };
        if written < bytes.len() {
            // Short write (or no ring): finish with pwrite, which loops on its own.
            self.file
                .write_all_at(&bytes[written..], self.len + written as u64)
                .map_err(|e| self.error("write", e))?;
        }
        self.len += bytes.len() as u64;
        if sync && !synced {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), String> {
        self.file
            .sync_data()
            .map_err(|e| self.error("fdatasync", e))
    }
}

/// Write at `offset`, linked to an fdatasync when `sync`; returns the bytes written
/// (the fsync result is checked: a failed fsync is an error, never retried, as the
/// kernel may have dropped the dirty pages).
fn submit_linked(
    ring: &mut IoUring,
    file: &File,
    offset: u64,
    bytes: &[u8],
    sync: bool,
) -> std::io::Result<usize> {
    let fd = types::Fd(file.as_raw_fd());
    let chunk = bytes.len().min(u32::MAX as usize) as u32;
    let mut write = opcode::Write::new(fd, bytes.as_ptr(), chunk)
        .offset(offset)
        .build()
        .user_data(1);
    if sync {
        write = write.flags(squeue::Flags::IO_LINK);
    }
    let fsync = opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(2);
    // SAFETY: `bytes` outlives the submission: we wait for both completions below
    // before returning, and the ring is used by this thread only.
    unsafe {
        let mut queue = ring.submission();
        queue.push(&write).map_err(std::io::Error::other)?;
        if sync {
            queue.push(&fsync).map_err(std::io::Error::other)?;
        }
    }
    let expected = if sync { 2 } else { 1 };
    ring.submit_and_wait(expected)?;
    let mut written = 0usize;
    let mut fsync_result = 0i32;
    let mut seen = 0;
    while seen < expected {
        let Some(entry) = ring.completion().next() else {
            ring.submit_and_wait(1)?;
            continue;
        };
        seen += 1;
        match entry.user_data() {
            1 if entry.result() < 0 => {
                return Err(std::io::Error::from_raw_os_error(-entry.result()))
            }
            1 => written = entry.result() as usize,
            _ => fsync_result = entry.result(),
        }
    }
    if sync && written == bytes.len() && fsync_result < 0 {
        return Err(std::io::Error::from_raw_os_error(-fsync_result));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_land_at_the_end_through_either_path() {
        for io_uring in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("segment");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut segment = SegmentFile::new(file, path.clone(), io_uring).unwrap();
            segment.append(b"hello ", true).unwrap();
            segment.append(b"", true).unwrap();
            segment.append(b"journal", false).unwrap();
            segment.sync().unwrap();
            assert_eq!(segment.len(), 13);
            assert_eq!(std::fs::read(&path).unwrap(), b"hello journal");
        }
    }
}
