//! One journal record on disk: length-framed and checksummed.
//!
//! ```text
//! offset 0   u32 LE  payload length
//! offset 4   u64 LE  sequence number
//! offset 12  [u8;16] BLAKE3(length || sequence || payload), first 16 bytes
//! offset 28  payload (a bincode `JournalRecord`)
//! ```
//! The checksum covers the header fields too, so a flipped length or sequence is
//! caught as surely as a flipped payload byte.

use super::error::JournalError;
use yellowstone_engine::Command;

/// One journal record: the engine input and the time it was applied at.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct JournalRecord {
    /// The engine's clock for this command, Unix milliseconds.
    pub now_ms: u64,
    /// The engine input.
    pub command: Command,
}

impl JournalRecord {
    /// The record's payload bytes (bincode, standard configuration).
    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode::config::standard()).expect("records encode")
    }

    /// Decodes a payload; every byte must belong to the record.
    /// Errors: [`JournalError::Decode`] (not a record, or trailing bytes).
    pub fn decode(bytes: &[u8]) -> Result<JournalRecord, JournalError> {
        let (record, read) = bincode::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| JournalError::Decode {
                reason: e.to_string(),
            })?;
        if read != bytes.len() {
            return Err(JournalError::Decode {
                reason: format!(
                    "{} trailing bytes after a journal record",
                    bytes.len() - read
                ),
            });
        }
        debug_assert!(read > 0, "a record is never empty");
        Ok(record)
    }
}

/// Bytes before the payload.
pub const RECORD_HEADER_BYTES: usize = 28;
/// A payload longer than this is refused when written and taken as corruption when
/// read (the largest command, a balance update of `balance_entries_max` = 100,000
/// entries, is about 4 MiB).
pub const RECORD_PAYLOAD_MAX: usize = 8 << 20;

const CHECKSUM_BYTES: usize = 16;
const LENGTH_AT: usize = 0;
const SEQ_AT: usize = 4;
const CHECKSUM_AT: usize = 12;

// The layout in the module comment, pinned: a change here would make existing data
// directories unreadable.
const _: () = assert!(SEQ_AT == LENGTH_AT + 4);
const _: () = assert!(CHECKSUM_AT == SEQ_AT + 8);
const _: () = assert!(RECORD_HEADER_BYTES == CHECKSUM_AT + CHECKSUM_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES == 28);
// The length field is a u32: every allowed payload length fits in it.
const _: () = assert!(RECORD_PAYLOAD_MAX <= u32::MAX as usize);
// `classify::valid_record_after` steps by whole headers; the checksum must cover
// at least a hash's worth of bytes to make a zero header impossible in practice.
const _: () = assert!(CHECKSUM_BYTES >= 16);

fn checksum(length: u32, seq: u64, payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&length.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    let hash = hasher.finalize();
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&hash.as_bytes()[..CHECKSUM_BYTES]);
    out
}

/// Appends the framed record (header, then `payload`) to `out`.
/// Errors: [`JournalError::RecordTooLarge`] over `RECORD_PAYLOAD_MAX` (nothing is
/// appended).
pub fn encode_into(out: &mut Vec<u8>, seq: u64, payload: &[u8]) -> Result<(), JournalError> {
    if payload.len() > RECORD_PAYLOAD_MAX {
        return Err(JournalError::RecordTooLarge {
            bytes: payload.len(),
            max: RECORD_PAYLOAD_MAX,
        });
    }
    debug_assert!(seq >= 1, "sequence numbers start at 1");
    let start = out.len();
    let length = payload.len() as u32;
    out.reserve(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&checksum(length, seq, payload));
    out.extend_from_slice(payload);
    // Paired with `parse`: what is written is what recovery will accept.
    debug_assert_eq!(out.len() - start, RECORD_HEADER_BYTES + payload.len());
    debug_assert!(
        matches!(parse(&out[start..]), Ok(r) if r.seq == seq && r.payload == payload),
        "record {seq} does not parse back"
    );
    Ok(())
}

/// What is wrong with the bytes at some offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    /// Fewer bytes than a header, or than the header's length announces.
    #[error("truncated record ({have} of {need} bytes)")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the record needs.
        need: usize,
    },
    /// A length field over `RECORD_PAYLOAD_MAX`.
    #[error("record length {0} over the {max}-byte limit", max = RECORD_PAYLOAD_MAX)]
    LengthOverLimit(u32),
    /// The checksum does not match the header and payload.
    #[error("checksum mismatch (record claims seq {seq})")]
    ChecksumMismatch {
        /// The sequence number the (untrusted) header claims.
        seq: u64,
    },
}

/// A record read back from disk.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub payload: &'a [u8],
    /// Header plus payload.
    pub framed_len: usize,
}

/// The sequence number in the header at the start of `bytes`, if the header is whole
/// and its length fits in `bytes` and under the limit (no checksum is computed).
pub fn peek_seq(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let length = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    if length > RECORD_PAYLOAD_MAX || bytes.len() < RECORD_HEADER_BYTES + length {
        return None;
    }
    Some(u64::from_le_bytes(header[4..12].try_into().ok()?))
}

/// Reads the record at the start of `bytes` (checks length and checksum).
pub fn parse(bytes: &[u8]) -> Result<RecordRef<'_>, RecordFault> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(RecordFault::Truncated {
            have: bytes.len(),
            need: RECORD_HEADER_BYTES,
        });
    }
    let length = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if length as usize > RECORD_PAYLOAD_MAX {
        return Err(RecordFault::LengthOverLimit(length));
    }
    let framed_len = RECORD_HEADER_BYTES + length as usize;
    if bytes.len() < framed_len {
        return Err(RecordFault::Truncated {
            have: bytes.len(),
            need: framed_len,
        });
    }
    let seq = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let payload = &bytes[RECORD_HEADER_BYTES..framed_len];
    if bytes[12..RECORD_HEADER_BYTES] != checksum(length, seq, payload) {
        return Err(RecordFault::ChecksumMismatch { seq });
    }
    debug_assert!(framed_len <= bytes.len() && framed_len >= RECORD_HEADER_BYTES);
    Ok(RecordRef {
        seq,
        payload,
        framed_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_RECORD_HEX: &str =
        "0b0000000700000000000000a968c0b9cfc3ccdc405d7457716e67f279656c6c6f7773746f6e65";

    #[test]
    fn records_round_trip_and_every_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode_into(&mut out, 42, b"hello journal").unwrap();
        let record = parse(&out).unwrap();
        assert_eq!((record.seq, record.payload), (42, &b"hello journal"[..]));
        assert_eq!(record.framed_len, out.len());
        for bit in 0..out.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(parse(&flipped).is_err(), "flip of bit {bit} went unseen");
        }
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        let mut out = Vec::new();
        encode_into(&mut out, 1, &[7u8; 40]).unwrap();
        for cut in 0..out.len() {
            assert!(
                matches!(parse(&out[..cut]), Err(RecordFault::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }

    /// The bytes of one record, as main wrote them before issue 26: existing data
    /// directories must keep opening, so the framing and its checksum may not move.
    #[test]
    fn the_on_disk_framing_is_unchanged() {
        let mut out = Vec::new();
        encode_into(&mut out, 7, b"yellowstone").unwrap();
        assert_eq!(hex::encode(&out), GOLDEN_RECORD_HEX);
        let record = parse(&hex::decode(GOLDEN_RECORD_HEX).unwrap()).map(|r| r.seq);
        assert_eq!(record, Ok(7));
    }

    #[test]
    fn oversized_payloads_are_refused_both_ways() {
        let mut out = Vec::new();
        assert!(encode_into(&mut out, 1, &vec![0u8; RECORD_PAYLOAD_MAX + 1]).is_err());
        let mut header = vec![0u8; RECORD_HEADER_BYTES];
        header[0..4].copy_from_slice(&(RECORD_PAYLOAD_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            parse(&header),
            Err(RecordFault::LengthOverLimit(RECORD_PAYLOAD_MAX as u32 + 1))
        );
    }
}
