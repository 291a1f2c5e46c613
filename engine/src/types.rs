//! Basic value types: addresses, ids and the time and money units of SPEC.md section 3.

use bincode::{Decode, Encode};

/// 1 MOR in wei.
pub const WEI_PER_MOR: u128 = 1_000_000_000_000_000_000;
/// R-TIME-1: a block lasts 12 seconds.
pub const BLOCK_MS: u64 = 12_000;
/// R-TIME-1: a day is 7,200 blocks.
pub const BLOCKS_PER_DAY: u64 = 7_200;

/// A MOR (Ethereum) address: 20 bytes. The router derives it from signatures; the
/// engine only compares and stores it.
///
/// `Debug` prints it as `Display` does (`0x` and 40 lowercase hex digits), so every
/// debug form of a command or effect (the `journal` tool's output, logs) names
/// addresses as operators read them, not as 20 decimal bytes.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Address(pub [u8; 20]);

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("0x")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Model ids come from the operator's catalog (`MarketConfig::models`).
pub type ModelId = u32;
/// Session ids are unique for the life of a market: `(sequence << SLOT_BITS) | slot`.
pub type SessionId = u64;
/// RFC ids and probe ids use the same layout as session ids.
pub type RfcId = u64;
/// A probe's id (same layout as session ids).
pub type ProbeId = u64;

/// Slabs hold at most 2^SLOT_BITS live entries; ids carry the slot in their low bits
/// so that a lookup is an index, and a sequence in the high bits so that a stale id
/// never matches a reused slot.
pub const SLOT_BITS: u32 = 24;
/// The low `SLOT_BITS` bits of an id: its slot (16,777,215 at most).
pub const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

/// An id from its sequence (high bits) and slot (low `SLOT_BITS` bits).
pub fn compose_id(sequence: u64, slot: u32) -> u64 {
    debug_assert!((slot as u64) <= SLOT_MASK);
    (sequence << SLOT_BITS) | slot as u64
}

/// The slab slot an id names.
pub fn slot_of(id: u64) -> usize {
    (id & SLOT_MASK) as usize
}

/// The unit a model's output is measured in (SPEC.md section 8). Only tokens are
/// accepted today; the others are named so that clients can already say them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Unit {
    /// Tokens (the only unit accepted today).
    Token = 0,
    /// Audio samples (named, refused `unsupported_unit`).
    AudioSample = 1,
    /// Video frames (named, refused `unsupported_unit`).
    VideoFrame = 2,
}

impl Unit {
    /// The unit of a wire byte; None for an unknown one.
    pub fn from_u8(value: u8) -> Option<Unit> {
        match value {
            0 => Some(Unit::Token),
            1 => Some(Unit::AudioSample),
            2 => Some(Unit::VideoFrame),
            _ => None,
        }
    }
}

/// The address index's hash. Addresses are keccak outputs of public keys, and
/// accounts are created only by the operator (balances) or by provider registration
/// (bounded by `providers_max`), so nobody can fill the index with keys chosen to
/// collide; a lookup of an unknown address costs at most the probe sequence the
/// operator's own keys formed. A fixed multiply-xorshift mix of the 20 bytes is
/// therefore enough and keeps SipHash off the hot path. It never affects outputs:
/// the index is never iterated.
#[inline]
pub fn address_hash(address: &Address) -> u64 {
    let b = &address.0;
    let w0 = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let w1 = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    let w2 = u32::from_le_bytes([b[16], b[17], b[18], b[19]]) as u64;
    let mut h = w0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 29) ^ w1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 32) ^ w2).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}
