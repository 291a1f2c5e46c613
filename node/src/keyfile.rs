//! Key files (R-OPS-2 applied to the nodes): one line, the secret key as 64 hex
//! digits, or what `yellowstone-router keygen` prints (the format every Yellowstone
//! tool reads: `SigningKey::from_key_file_text`). Created readable by the owner only (0600); a key file that group or
//! others can read is refused, since it holds the MOR address's key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use yellowstone_wire::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is readable by others (mode {mode:o}); run chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
    #[error("key file {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("key file {path} exists already: refusing to overwrite a key")]
    Exists { path: String },
}

/// Reads a key file, refusing one readable by group or others.
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let name = path.display().to_string();
    let io = |source| KeyFileError::Io {
        path: name.clone(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: name,
            mode: mode & 0o777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    SigningKey::from_key_file_text(&text).map_err(|reason| KeyFileError::Invalid {
        path: name.clone(),
        reason,
    })
}

/// Creates a new key file (mode 0600, never overwriting) and returns its key.
pub fn create(path: &Path) -> Result<SigningKey, KeyFileError> {
    let name = path.display().to_string();
    let key = SigningKey::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: name.clone() },
            _ => KeyFileError::Io {
                path: name.clone(),
                source,
            },
        })?;
    writeln!(file, "{}", hex::encode(key.secret_bytes()))
        .map_err(|source| KeyFileError::Io { path: name, source })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_ops_2_key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path).unwrap().address(), key.address());
        assert!(matches!(create(&path), Err(KeyFileError::Exists { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load(&path).unwrap_err();
        assert!(matches!(error, KeyFileError::TooOpen { mode: 0o644, .. }));
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::write(&path, "zz\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Invalid { .. })));
    }
}
