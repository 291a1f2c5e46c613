//! The journal's segments over a `Storage` (issue 26 item 2): the few file
//! operations the writer and recovery need, so that a test can put the journal on
//! a storage that tears writes, loses what was not synced, and fails reads
//! ([`super::faulty::FaultyStorage`], after TigerBeetle's `testing/storage.zig`),
//! and the real one ([`FileStorage`]) keeps its io_uring, `pwritev2(RWF_DSYNC)` and
//! pwrite + fdatasync paths (`uring_file`) unchanged.
//!
//! Files are named, not opened: one segment at a time is open for appending (the
//! one last created), every other file is read, cut, replaced or removed whole.
//! Segments and snapshots live here; the market file and the network id stay
//! plain files (`files`), written once when a data directory is created.
//!
//! Guarantees every implementation gives: `create`, `truncate`, `delete` and
//! `replace` are durable when they return (file data and directory entry), and
//! `replace` is atomic (old content or new after a crash); `append` is durable
//! only with `sync` or after a later `sync`/`close`; a crash keeps a prefix of
//! what was appended since the last sync (possibly none of it), never a hole.

use super::error::StorageError;
use super::uring_file::{JournalIo, SegmentFile};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file operations the journal needs. Names are plain file names (no
/// directory): `files::segment_name` and the like.
pub trait Storage: Send {
    /// The names of every file present, in no particular order.
    fn list(&self) -> Result<Vec<String>, StorageError>;
    /// The whole content of `name`.
    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError>;
    /// Creates (or replaces) `name` holding `initial` and makes it durable, file and
    /// directory entry; it becomes the open file that `append` writes to.
    fn create(&mut self, name: &str, initial: &[u8]) -> Result<(), StorageError>;
    /// Appends to the open file `name`; with `sync`, returns only once the bytes are
    /// on stable storage.
    fn append(&mut self, name: &str, bytes: &[u8], sync: bool) -> Result<(), StorageError>;
    /// Makes everything appended to the open file `name` durable.
    fn sync(&mut self, name: &str) -> Result<(), StorageError>;
    /// Housekeeping between groups, off the durable path (the real storage tops up
    /// the zero-filled room ahead of the data).
    fn idle(&mut self, name: &str) -> Result<(), StorageError>;
    /// Closes the open file `name` for good: durable, nothing after its data.
    fn close(&mut self, name: &str) -> Result<(), StorageError>;
    /// Cuts `name` to `len` bytes, durably.
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError>;
    /// Removes `name`, durably (directory entry synced).
    fn delete(&mut self, name: &str) -> Result<(), StorageError>;
    /// Removes every file in `names`, durably once it returns (the real storage
    /// syncs the directory once for all of them).
    fn delete_all(&mut self, names: &[&str]) -> Result<(), StorageError> {
        names.iter().try_for_each(|name| self.delete(name))
    }
    /// Replaces `name` with the concatenation of `parts`, atomically and durably:
    /// after a crash the file holds the old content or the new, never a mix
    /// (snapshots; the real storage writes a temporary file, fsyncs, renames, and
    /// fsyncs the directory).
    fn replace(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError>;
    /// Another handle on the same files for another thread (the snapshot thread
    /// replaces snapshots and removes covered segments while the writer appends).
    /// It has no open file.
    fn handle(&self) -> Self
    where
        Self: Sized;
    /// How `name` is shown to an operator (the real storage: its path).
    fn path_of(&self, name: &str) -> PathBuf;
}

/// Segments as plain files in a directory; the open segment is a [`SegmentFile`]
/// (io_uring, `RWF_DSYNC` or pwrite + fdatasync, zero-filled ahead).
pub struct FileStorage {
    dir: PathBuf,
    io: JournalIo,
    preallocate_bytes: u64,
    /// `replace` writes back this many bytes at a time (0: at once).
    replace_chunk_bytes: usize,
    open: Option<(String, SegmentFile)>,
}

impl FileStorage {
    /// Storage in `dir`, appending through `io` with `preallocate_bytes` of
    /// zero-filled room kept ahead of the open segment's data (0: none).
    pub fn new(dir: PathBuf, io: JournalIo, preallocate_bytes: u64) -> FileStorage {
        FileStorage {
            dir,
            io,
            preallocate_bytes,
            replace_chunk_bytes: 0,
            open: None,
        }
    }

    /// `replace` writes a file back `chunk_bytes` at a time (`sync_file_range`,
    /// waiting for each), so the journal's fdatasyncs never queue behind a whole
    /// snapshot (`journal.snapshot_write_chunk_bytes`; 0: at once).
    pub fn with_replace_chunk_bytes(mut self, chunk_bytes: usize) -> FileStorage {
        self.replace_chunk_bytes = chunk_bytes;
        self
    }

    /// Storage that is only read, cut and pruned (recovery, tools).
    pub fn reader(dir: &Path) -> FileStorage {
        FileStorage::new(dir.to_path_buf(), JournalIo::Sync, 0)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_segment(&mut self, name: &str) -> Result<&mut SegmentFile, StorageError> {
        match &mut self.open {
            Some((open, segment)) if open == name => Ok(segment),
            _ => Err(StorageError::new(
                "append",
                self.dir.join(name),
                std::io::Error::other("not the open segment"),
            )),
        }
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::new("fsync of directory", &self.dir, e))
    }
}

impl Storage for FileStorage {
    fn list(&self) -> Result<Vec<String>, StorageError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| StorageError::new("list", &self.dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::new("list", &self.dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.dir.join(name);
        std::fs::read(&path).map_err(|e| StorageError::new("read", path, e))
    }

    fn create(&mut self, name: &str, initial: &[u8]) -> Result<(), StorageError> {
        // One open segment at a time: a roll closes the old one first.
        debug_assert!(self.open.is_none(), "create while a segment is open");
        let path = self.dir.join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageError::new("create", &path, e))?;
        file.write_all(initial)
            .and_then(|_| file.sync_all())
            .map_err(|e| StorageError::new("write", &path, e))?;
        self.sync_dir()?;
        let segment = SegmentFile::new(file, path, self.io, self.preallocate_bytes)?;
        self.open = Some((name.to_string(), segment));
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8], sync: bool) -> Result<(), StorageError> {
        self.open_segment(name)?.append(bytes, sync)
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.open_segment(name)?.sync()
    }

    fn idle(&mut self, name: &str) -> Result<(), StorageError> {
        self.open_segment(name)?.keep_preallocated().map(|_| ())
    }

    fn close(&mut self, name: &str) -> Result<(), StorageError> {
        self.open_segment(name)?.finish()?;
        self.open = None;
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::new("open", &path, e))?;
        file.set_len(len)
            .and_then(|_| file.sync_all())
            .map_err(|e| StorageError::new("truncate", &path, e))
    }

    fn delete(&mut self, name: &str) -> Result<(), StorageError> {
        let path = self.dir.join(name);
        std::fs::remove_file(&path).map_err(|e| StorageError::new("remove", &path, e))?;
        self.sync_dir()
    }

    fn delete_all(&mut self, names: &[&str]) -> Result<(), StorageError> {
        for name in names {
            let path = self.dir.join(name);
            std::fs::remove_file(&path).map_err(|e| StorageError::new("remove", path, e))?;
        }
        if names.is_empty() {
            return Ok(());
        }
        self.sync_dir()
    }

    fn replace(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
        let path = self.dir.join(name);
        if self.replace_chunk_bytes == 0 {
            super::files::write_atomically(&path, parts)
        } else {
            super::files::write_atomically_paced(&path, parts, self.replace_chunk_bytes)
        }
    }

    fn handle(&self) -> FileStorage {
        FileStorage::new(self.dir.clone(), self.io, self.preallocate_bytes)
            .with_replace_chunk_bytes(self.replace_chunk_bytes)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
