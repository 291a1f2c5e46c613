//! Key files (R-OPS-2): the one reader of secret-key files for every Yellowstone
//! tool (the router's `router.key` and `address --key-file`, `yellowstone-ctl`, the
//! chain relayer). A key file must be a regular file that neither group nor others
//! may read or write; its text is what `yellowstone-router keygen` prints
//! (`secret_hex=…`, `address=…`) or one line of 64 hex digits
//! ([`SigningKey::from_key_file_text`]).

use crate::signature::SigningKey;
use std::path::{Path, PathBuf};

/// Why a key file was refused; every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be examined or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file's path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The path is a directory or another non-regular file.
    #[error("{}: is {what}; a key file is a regular file holding the 64-hex-digit secret", path.display())]
    NotAFile {
        /// The key file's path.
        path: PathBuf,
        /// "a directory" or "not a regular file".
        what: &'static str,
    },
    /// Group or others may read or write it: a secret must be its owner's alone.
    #[error(
        "{}: key file is readable by group or others (mode {mode:03o}); a key must be readable \
         by its owner only: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    OpenToOthers {
        /// The key file's path.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o777`).
        mode: u32,
    },
    /// The text is not a key file (see the module docs); the reason names the line.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The key file's path.
        path: PathBuf,
        /// What is wrong, from [`SigningKey::from_key_file_text`].
        reason: String,
    },
}

/// Refuses a path that is not a regular file, or that group or others may read or
/// write (mode `& 0o077` not zero). Reads no content.
pub fn check_key_file_mode(path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::metadata(path).map_err(|source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !metadata.is_file() {
        let what = if metadata.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(KeyFileError::NotAFile {
            path: path.to_path_buf(),
            what,
        });
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::OpenToOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads the key file at `path` after [`check_key_file_mode`]: the signing key, or
/// the reason it was refused, naming the path.
pub fn read_key_file(path: &Path) -> Result<SigningKey, KeyFileError> {
    check_key_file_mode(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    SigningKey::from_key_file_text(&text).map_err(|reason| KeyFileError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn r_ops_2_key_files_open_to_others_or_not_files_are_refused_naming_the_fix() {
        let dir = std::env::temp_dir().join(format!("ys-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("op.key");
        let key = SigningKey::from_seed(b"keyfile");
        std::fs::write(&path, hex::encode(key.secret_bytes())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = read_key_file(&path).unwrap_err();
        assert!(matches!(
            error,
            KeyFileError::OpenToOthers { mode: 0o640, .. }
        ));
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap().address(), key.address());
        let error = read_key_file(&dir).unwrap_err();
        assert!(error.to_string().contains("is a directory"), "{error}");
        std::fs::write(&path, "nonsense\n").unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyFileError::Format { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
