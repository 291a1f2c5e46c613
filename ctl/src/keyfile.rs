//! Key files: the secret key yellowstone-ctl signs with.
//!
//! Accepted forms (the router's own formats): what `yellowstone-router keygen` prints
//! (`secret_hex=<64 hex>` and `address=<0x…>` lines; the address, if present, must
//! match the secret), or a single line of 64 hex digits as in a data directory's
//! `router.key`. Blank lines and `#` comments are skipped. A key file readable or
//! writable by group or others is refused (R-OPS-2), naming the fix.

use crate::CtlError;
use std::path::Path;
use yellowstone_wire::{Address, SigningKey};

/// Reads and checks the key file at `path`.
pub fn load(path: &Path) -> Result<SigningKey, CtlError> {
    let shown = path.display();
    let metadata =
        std::fs::metadata(path).map_err(|e| CtlError::Local(format!("key file {shown}: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CtlError::Local(format!(
                "key file {shown} is accessible to others (mode {mode:03o}): chmod 600 {shown}"
            )));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::Local(format!("key file {shown}: {e}")))?;
    parse(&text).map_err(|e| CtlError::Local(format!("key file {shown}: {e}")))
}

/// Parses a key file's text (see the module docs).
pub fn parse(text: &str) -> Result<SigningKey, String> {
    let mut secret = None;
    let mut expected: Option<Address> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(value) = line.strip_prefix("address=") {
            let address = value
                .trim()
                .parse()
                .map_err(|e| format!("line {}: address: {e}", number + 1))?;
            expected = Some(address);
            continue;
        }
        let hex = line.strip_prefix("secret_hex=").unwrap_or(line).trim();
        let hex = hex.strip_prefix("0x").unwrap_or(hex);
        if secret.is_some() {
            return Err(format!("line {}: a second secret key", number + 1));
        }
        let key = SigningKey::from_hex(hex).map_err(|e| {
            format!(
                "line {}: expected secret_hex=<64 hex digits>, address=<0x…> or 64 hex digits ({e})",
                number + 1
            )
        })?;
        secret = Some(key);
    }
    let key = secret.ok_or("no secret key in it")?;
    if let Some(expected) = expected {
        if key.address() != expected {
            return Err(format!(
                "its address line says {expected}, but its secret is the key of {}",
                key.address()
            ));
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_ops_2_keygen_output_and_bare_hex_parse_and_mismatches_are_named() {
        let key = SigningKey::from_seed(b"ctl-key");
        let secret = hex::encode(key.secret_bytes());
        let keygen = format!("secret_hex={secret}\naddress={}\n", key.address());
        assert_eq!(parse(&keygen).unwrap().address(), key.address());
        assert_eq!(
            parse(&format!("# router\n{secret}\n")).unwrap().address(),
            key.address()
        );
        let other = SigningKey::from_seed(b"other").address();
        let error = parse(&format!("secret_hex={secret}\naddress={other}\n")).unwrap_err();
        assert!(error.contains("address line"), "{error}");
        assert!(parse("").unwrap_err().contains("no secret"));
        assert!(parse("secret_hex=zz\n").unwrap_err().contains("line 1"));
        assert!(parse(&format!("{secret}\n{secret}\n"))
            .unwrap_err()
            .contains("second"));
    }

    #[test]
    fn r_ops_2_a_key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("op.key");
        let key = SigningKey::from_seed(b"ctl-key");
        std::fs::write(&path, hex::encode(key.secret_bytes())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&path).unwrap().address(), key.address());
    }
}
