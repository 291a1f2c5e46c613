//! The open segment: appends at a known offset, in one of three ways
//! ([`JournalIo`]): the write with the fsync linked to it in one io_uring
//! submission (the kernel runs the fsync on an io-wq worker thread), one
//! `pwritev2(RWF_DSYNC)` from the journal thread (data and its durability in one
//! syscall, no other thread), or pwrite(2) + fdatasync(2).
//!
//! Preallocation: the segment's file is kept zero-filled ahead of the write
//! offset (`preallocate_bytes` at a time), so an append overwrites blocks the
//! file already has and its fdatasync has no size or extent change to commit
//! (on ext4 that is a journal commit saved per fsync). The zero tail ends the
//! journal at recovery (`recovery::recover`); a clean close or a roll truncates
//! it.

use super::error::{ChoiceError, StorageError};
use io_uring::{opcode, squeue, types, IoUring};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// How the journal writes and makes its writes durable (`journal.io`).
/// BENCHMARKS.md ("Journal CPU") compares them: `Uring` gives the lowest RFC →
/// ticket latency on the machine measured, `Dsync` the lowest CPU per session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalIo {
    /// io_uring write linked to an fdatasync in one submission (default;
    /// `journal.io = "uring"`); the kernel runs the fsync on an io-wq worker
    /// thread. Falls back to `Sync` when io_uring cannot be set up.
    Uring,
    /// `pwritev2(..., RWF_DSYNC)` on the journal thread (`"dsync"`): one syscall
    /// per group, durable when it returns, no other thread.
    Dsync,
    /// pwrite(2) then fdatasync(2) on the journal thread (`"sync"`).
    Sync,
}

impl std::str::FromStr for JournalIo {
    type Err = ChoiceError;
    fn from_str(text: &str) -> Result<Self, ChoiceError> {
        match text {
            "dsync" => Ok(JournalIo::Dsync),
            "sync" => Ok(JournalIo::Sync),
            "uring" => Ok(JournalIo::Uring),
            other => Err(ChoiceError {
                key: "journal.io",
                allowed: "dsync, sync or uring",
                value: other.to_string(),
            }),
        }
    }
}

/// Zeros written per syscall when preallocating.
const ZERO_CHUNK_BYTES: usize = 64 * 1024;
static ZEROS: [u8; ZERO_CHUNK_BYTES] = [0; ZERO_CHUNK_BYTES];

pub struct SegmentFile {
    file: File,
    path: PathBuf,
    /// Where the next append goes (the end of the data).
    len: u64,
    /// The file is zero-filled from `len` up to here (the file's size).
    zeroed_to: u64,
    preallocate_bytes: u64,
    io: JournalIo,
    ring: Option<IoUring>,
}

impl SegmentFile {
    /// Takes over a segment whose data ends at the file's current size; with
    /// `preallocate_bytes` > 0, zero-fills that much ahead and fsyncs it (segment
    /// creation and roll are off the per-record path).
    pub fn new(
        file: File,
        path: PathBuf,
        io: JournalIo,
        preallocate_bytes: u64,
    ) -> Result<SegmentFile, StorageError> {
        let len = file
            .metadata()
            .map_err(|e| StorageError::new("metadata", &path, e))?
            .len();
        let ring = if io == JournalIo::Uring {
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
        let io = match (io, &ring) {
            (JournalIo::Uring, None) => JournalIo::Sync,
            (io, _) => io,
        };
        let mut segment = SegmentFile {
            file,
            path,
            len,
            zeroed_to: len,
            preallocate_bytes,
            io,
            ring,
        };
        if segment.preallocate(preallocate_bytes)? {
            segment.sync()?;
        }
        Ok(segment)
    }

    /// Zero-fills the file ahead of the data once less than half of
    /// `preallocate_bytes` is left (the new blocks reach the disk with the next
    /// fsync). Returns whether it wrote anything.
    pub fn preallocate(&mut self, ahead_bytes: u64) -> Result<bool, StorageError> {
        if ahead_bytes == 0 || self.zeroed_to.saturating_sub(self.len) >= ahead_bytes / 2 {
            return Ok(false);
        }
        let from = self.zeroed_to.max(self.len);
        let to = self.len + ahead_bytes;
        let mut at = from;
        while at < to {
            let chunk = (to - at).min(ZERO_CHUNK_BYTES as u64) as usize;
            self.file
                .write_all_at(&ZEROS[..chunk], at)
                .map_err(|e| self.error("preallocation", e))?;
            at += chunk as u64;
        }
        self.zeroed_to = to;
        debug_assert!(
            self.zeroed_to >= self.len + ahead_bytes,
            "room ahead of the data"
        );
        Ok(true)
    }

    /// Keeps the zero-filled room ahead of the data (after a group is durable, so
    /// the cost falls between groups).
    pub fn keep_preallocated(&mut self) -> Result<bool, StorageError> {
        self.preallocate(self.preallocate_bytes)
    }

    /// Cuts the zero tail off and fsyncs the file: the segment is closed (roll or
    /// clean shutdown) and will never be written again.
    pub fn finish(&mut self) -> Result<(), StorageError> {
        if self.zeroed_to > self.len {
            self.file
                .set_len(self.len)
                .map_err(|e| self.error("truncate", e))?;
            self.zeroed_to = self.len;
        }
        self.file.sync_all().map_err(|e| self.error("fsync", e))
    }

    /// The file's size (data plus zero-filled room).
    pub fn file_len(&self) -> u64 {
        self.zeroed_to.max(self.len)
    }

    pub fn io(&self) -> JournalIo {
        self.io
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

    fn error(&self, what: &'static str, error: std::io::Error) -> StorageError {
        StorageError::new(what, &self.path, error)
    }

    /// Appends `bytes`; with `sync`, returns only once they are on stable storage.
    pub fn append(&mut self, bytes: &[u8], sync: bool) -> Result<(), StorageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.io == JournalIo::Dsync {
            if sync {
                pwrite_dsync(&self.file, bytes, self.len)
                    .map_err(|e| self.error("pwritev2(RWF_DSYNC)", e))?;
            } else {
                self.file
                    .write_all_at(bytes, self.len)
                    .map_err(|e| self.error("write", e))?;
            }
            self.len += bytes.len() as u64;
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
        debug_assert!(self.file_len() >= self.len, "the data lies inside the file");
        if sync && !synced {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|e| self.error("fdatasync", e))
    }
}

/// Writes all of `bytes` at `offset` with `RWF_DSYNC`: each call returns once what
/// it wrote is on stable storage (as write + fdatasync of that range), so a short
/// write is continued the same way and an error is never retried over.
fn pwrite_dsync(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let offset_arg = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: one iovec over `bytes`, which outlives the call; the fd is open.
        let written =
            unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, offset_arg, libc::RWF_DSYNC) };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let written = written as usize;
        bytes = &bytes[written..];
        offset += written as u64;
    }
    Ok(())
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
    fn appends_land_at_the_end_through_every_path() {
        for (io, preallocate) in [
            (JournalIo::Uring, 0),
            (JournalIo::Sync, 0),
            (JournalIo::Dsync, 0),
            (JournalIo::Uring, 100_000),
            (JournalIo::Sync, 100_000),
            (JournalIo::Dsync, 100_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("segment");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut segment = SegmentFile::new(file, path.clone(), io, preallocate).unwrap();
            assert_eq!(segment.file_len(), preallocate, "{io:?}");
            segment.append(b"hello ", true).unwrap();
            segment.append(b"", true).unwrap();
            segment.append(b"journal", false).unwrap();
            segment.sync().unwrap();
            assert_eq!(segment.len(), 13);
            // While open, the data is followed by zeros up to the preallocated size.
            let mut expected = b"hello journal".to_vec();
            expected.resize(preallocate.max(13) as usize, 0);
            assert_eq!(std::fs::read(&path).unwrap(), expected, "{io:?}");
            segment.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"hello journal", "{io:?}");
        }
    }

    #[test]
    fn the_zero_filled_room_is_topped_up_at_half_and_never_over_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut segment = SegmentFile::new(file, path.clone(), JournalIo::Dsync, 1000).unwrap();
        segment.append(&[7u8; 400], true).unwrap();
        assert!(!segment.keep_preallocated().unwrap(), "600 left of 1000");
        segment.append(&[8u8; 200], true).unwrap();
        assert!(segment.keep_preallocated().unwrap(), "400 left: topped up");
        assert_eq!(segment.file_len(), 1600);
        // A group larger than the room just extends the file.
        segment.append(&[9u8; 2000], true).unwrap();
        assert_eq!(segment.file_len(), 2600);
        assert!(segment.keep_preallocated().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 3600);
        assert!(bytes[..400].iter().all(|b| *b == 7));
        assert!(bytes[400..600].iter().all(|b| *b == 8));
        assert!(bytes[600..2600].iter().all(|b| *b == 9));
        assert!(bytes[2600..].iter().all(|b| *b == 0));
    }
}
