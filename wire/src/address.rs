//! MOR addresses (R-ID-1): the last 20 bytes of keccak-256 of the 64-byte
//! uncompressed secp256k1 public key, shown with EIP-55 mixed-case checksums.

use tiny_keccak::{Hasher, Keccak};

/// A MOR address (R-ID-1): 20 bytes, displayed and parsed as `0x` + 40 hex digits
/// with the EIP-55 checksum (`FromStr` accepts all-lower, all-upper or a valid
/// checksum). On the wire: the 20 bytes as they are (`docs/PROTOCOL.md`, "Types").
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(pub [u8; 20]);

/// keccak-256 (Ethereum's, not SHA-3) of `bytes`: 32 bytes.
pub fn keccak256(bytes: &[u8]) -> [u8; 32] {
    let mut keccak = Keccak::v256();
    keccak.update(bytes);
    let mut out = [0u8; 32];
    keccak.finalize(&mut out);
    out
}

impl Address {
    /// From the 64-byte uncompressed public key (without the 0x04 prefix).
    pub fn from_public_key_xy(xy: &[u8; 64]) -> Address {
        let hash = keccak256(xy);
        let mut out = [0u8; 20];
        out.copy_from_slice(&hash[12..]);
        Address(out)
    }

    /// The address of a secp256k1 public key (R-ID-1).
    pub fn from_public_key(key: &secp256k1::PublicKey) -> Address {
        let uncompressed = key.serialize_uncompressed();
        let mut xy = [0u8; 64];
        xy.copy_from_slice(&uncompressed[1..]);
        Address::from_public_key_xy(&xy)
    }

    /// EIP-55: hex digit i is upper case when nibble i of keccak(lowercase hex) >= 8.
    pub fn to_checksummed(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = keccak256(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            out.push(if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
        out
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_checksummed())
    }
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_checksummed())
    }
}

/// Why a text is not an address (`Address::from_str`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressParseError {
    /// Not 40 hex digits after an optional `0x`.
    Length,
    /// A character that is not a hex digit.
    NotHex,
    /// Mixed case that is not the EIP-55 checksum.
    BadChecksum,
}

impl std::fmt::Display for AddressParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressParseError::Length => write!(f, "an address is 0x followed by 40 hex digits"),
            AddressParseError::NotHex => write!(f, "an address must be hexadecimal"),
            AddressParseError::BadChecksum => {
                write!(f, "mixed-case address fails its EIP-55 checksum")
            }
        }
    }
}

impl std::error::Error for AddressParseError {}

impl std::str::FromStr for Address {
    type Err = AddressParseError;

    /// Accepts all-lower or all-upper hex, or mixed case only with a valid checksum.
    fn from_str(text: &str) -> Result<Address, AddressParseError> {
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        if digits.len() != 40 {
            return Err(AddressParseError::Length);
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| AddressParseError::NotHex)?;
        let address = Address(bytes);
        let has_lower = digits.chars().any(|c| c.is_ascii_lowercase());
        let has_upper = digits.chars().any(|c| c.is_ascii_uppercase());
        if has_lower && has_upper && address.to_checksummed()[2..] != *digits {
            return Err(AddressParseError::BadChecksum);
        }
        Ok(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_id_1_eip55_official_vectors() {
        for text in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            let address: Address = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
            assert_eq!(text.to_lowercase().parse::<Address>().unwrap(), address);
        }
        assert_eq!(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD".parse::<Address>(),
            Err(AddressParseError::BadChecksum)
        );
        assert_eq!("0x1234".parse::<Address>(), Err(AddressParseError::Length));
        assert_eq!(
            "0xzzzzb6053f3e94c9b9a09f33669435e7ef1beaed".parse::<Address>(),
            Err(AddressParseError::NotHex)
        );
    }

    #[test]
    fn r_id_1_address_of_a_known_key() {
        // Secret key 1: public key G; its Ethereum address is well known.
        let secp = secp256k1::Secp256k1::new();
        let mut secret = [0u8; 32];
        secret[31] = 1;
        let key = secp256k1::SecretKey::from_slice(&secret).unwrap();
        let public = secp256k1::PublicKey::from_secret_key(&secp, &key);
        assert_eq!(
            Address::from_public_key(&public).to_string().to_lowercase(),
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
    }
}
