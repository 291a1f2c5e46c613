//! Little-endian field readers and writers for message bodies. Readers check every
//! length against what is left before reading or allocating, so no input can make
//! them panic or reserve more memory than the frame holds.

use crate::address::Address;
use crate::signature::{Signature, SIGNATURE_LEN};

/// Why a body was refused (codes 0x0105..0x0107 and `bad_field`,
/// `codes::of_decode_error`); every variant names the field where it can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended before field `field`.
    Truncated {
        /// The field that did not fit.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// A message type the catalog does not have (`unknown_message_type`).
    UnknownMessageType {
        /// The type found in the header.
        msg_type: u16,
    },
    /// An enum or bool field holding a value it does not define.
    BadEnumValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A list longer than its limit.
    ListTooLong {
        /// The list field.
        field: &'static str,
        /// Items announced.
        len: u64,
        /// Items allowed.
        max: u64,
    },
    /// A string longer than its limit.
    StringTooLong {
        /// The string field.
        field: &'static str,
        /// Bytes announced.
        len: u64,
        /// Bytes allowed.
        max: u64,
    },
    /// A string whose bytes are not UTF-8.
    NotUtf8 {
        /// The string field.
        field: &'static str,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { field } => write!(f, "body truncated at field {field}"),
            DecodeError::TrailingBytes { count } => {
                write!(f, "{count} trailing bytes after the message")
            }
            DecodeError::UnknownMessageType { msg_type } => {
                write!(f, "unknown message type {msg_type:#06x}")
            }
            DecodeError::BadEnumValue { field, value } => {
                write!(f, "field {field} has invalid value {value}")
            }
            DecodeError::ListTooLong { field, len, max } => {
                write!(f, "list {field} has {len} items, at most {max}")
            }
            DecodeError::StringTooLong { field, len, max } => {
                write!(f, "string {field} has {len} bytes, at most {max}")
            }
            DecodeError::NotUtf8 { field } => write!(f, "string {field} is not UTF-8"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads little-endian fields from a body, front to back, each checked against the
/// bytes left (`consumed() + remaining()` is always the body's length).
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> usize {
        self.offset
    }

    /// The next `n` bytes as they are; `Truncated { field }` when fewer are left.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { field });
        }
        let out = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// Reads one byte; `Truncated { field }` when the body is shorter.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    /// Reads a u16, 2 bytes little-endian; `Truncated { field }` when the body is shorter.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    /// Reads a u32, 4 bytes little-endian; `Truncated { field }` when the body is shorter.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    /// Reads a u64, 8 bytes little-endian; `Truncated { field }` when the body is shorter.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// Reads a u128, 16 bytes little-endian (wei amounts); `Truncated { field }` when the body is shorter.
    pub fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }
    /// Reads a bool, one byte 0 or 1 (`BadEnumValue` otherwise); `Truncated { field }` when the body is shorter.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadEnumValue {
                field,
                value: value as u64,
            }),
        }
    }
    /// Reads 32 bytes (a hash); `Truncated { field }` when the body is shorter.
    pub fn bytes32(&mut self, field: &'static str) -> Result<[u8; 32], DecodeError> {
        self.array(field)
    }
    /// Reads an address, 20 bytes; `Truncated { field }` when the body is shorter.
    pub fn address(&mut self, field: &'static str) -> Result<Address, DecodeError> {
        Ok(Address(self.array(field)?))
    }
    /// Reads a signature, 65 bytes; `Truncated { field }` when the body is shorter.
    pub fn signature(&mut self, field: &'static str) -> Result<Signature, DecodeError> {
        Ok(Signature(self.array::<SIGNATURE_LEN>(field)?))
    }

    /// A u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(DecodeError::StringTooLong {
                field,
                len: len as u64,
                max: max as u64,
            });
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8 { field })
    }

    /// A u32 item count, checked against `max` and against the bytes left.
    pub fn list_len(
        &mut self,
        field: &'static str,
        max: usize,
        item_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::ListTooLong {
                field,
                len: len as u64,
                max: max as u64,
            });
        }
        if len.saturating_mul(item_bytes_min.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(len)
    }

    /// Ends the body: `TrailingBytes` unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}

/// Appends little-endian fields to a byte vector.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Appends a u16, 2 bytes little-endian.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u32, 4 bytes little-endian.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u64, 8 bytes little-endian.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u128, 16 bytes little-endian.
    pub fn u128(&mut self, v: u128) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a bool as one byte 0 or 1.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.0.push(v as u8);
        self
    }
    /// Bytes as they are, no length prefix (fixed-size fields).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Appends an address, 20 bytes.
    pub fn address(&mut self, v: &Address) -> &mut Self {
        self.0.extend_from_slice(&v.0);
        self
    }
    /// Appends a signature, 65 bytes.
    pub fn signature(&mut self, v: &Signature) -> &mut Self {
        self.0.extend_from_slice(&v.0);
        self
    }
    /// Strings longer than u16::MAX are cut (encoders check limits before).
    pub fn string(&mut self, v: &str) -> &mut Self {
        let len = v.len().min(u16::MAX as usize);
        self.u16(len as u16);
        self.0.extend_from_slice(&v.as_bytes()[..len]);
        self
    }
    /// A list's u32 item count (callers check the list's limit before).
    pub fn list_len(&mut self, len: usize) -> &mut Self {
        self.u32(len as u32)
    }
}
