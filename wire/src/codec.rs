//! Little-endian field readers and writers for message bodies. Readers check every
//! length against what is left before reading or allocating, so no input can make
//! them panic or reserve more memory than the frame holds.

use crate::address::Address;
use crate::signature::{Signature, SIGNATURE_LEN};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended before field `field`.
    Truncated {
        field: &'static str,
    },
    /// Bytes were left after the last field.
    TrailingBytes {
        count: usize,
    },
    UnknownMessageType {
        msg_type: u16,
    },
    BadEnumValue {
        field: &'static str,
        value: u64,
    },
    ListTooLong {
        field: &'static str,
        len: u64,
        max: u64,
    },
    StringTooLong {
        field: &'static str,
        len: u64,
        max: u64,
    },
    NotUtf8 {
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

pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    pub fn consumed(&self) -> usize {
        self.offset
    }

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

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }
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
    pub fn bytes32(&mut self, field: &'static str) -> Result<[u8; 32], DecodeError> {
        self.array(field)
    }
    pub fn address(&mut self, field: &'static str) -> Result<Address, DecodeError> {
        Ok(Address(self.array(field)?))
    }
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
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u128(&mut self, v: u128) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.0.push(v as u8);
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    pub fn address(&mut self, v: &Address) -> &mut Self {
        self.0.extend_from_slice(&v.0);
        self
    }
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
    pub fn list_len(&mut self, len: usize) -> &mut Self {
        self.u32(len as u32)
    }
}
