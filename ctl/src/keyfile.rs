//! Key files: the secret key yellowstone-ctl signs with.
//!
//! Accepted forms (the router's own formats): what `yellowstone-router keygen` prints
//! (`secret_hex=<64 hex>` and `address=<0x…>` lines; the address, if present, must
//! match the secret), or a single line of 64 hex digits as in a data directory's
//! `router.key`. Blank lines and `#` comments are skipped. A key file readable or
//! writable by group or others is refused (R-OPS-2), naming the fix.

use crate::CtlError;
use std::path::Path;
use yellowstone_wire::SigningKey;

/// Reads and checks the key file at `path` with the workspace's one reader
/// (`yellowstone_wire::keyfile`, R-OPS-2).
pub fn load(path: &Path) -> Result<SigningKey, CtlError> {
    yellowstone_wire::keyfile::read_key_file(path)
        .map_err(|e| CtlError::Local(format!("key file {e}")))
}

/// Parses a key file's text (see the module docs): the format every Yellowstone
/// tool reads, `SigningKey::from_key_file_text`.
pub fn parse(text: &str) -> Result<SigningKey, String> {
    SigningKey::from_key_file_text(text)
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
