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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Address(pub [u8; 20]);

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
pub type ProbeId = u64;

/// Slabs hold at most 2^SLOT_BITS live entries; ids carry the slot in their low bits
/// so that a lookup is an index, and a sequence in the high bits so that a stale id
/// never matches a reused slot.
pub const SLOT_BITS: u32 = 24;
pub const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

pub fn compose_id(sequence: u64, slot: u32) -> u64 {
    debug_assert!((slot as u64) <= SLOT_MASK);
    (sequence << SLOT_BITS) | slot as u64
}

pub fn slot_of(id: u64) -> usize {
    (id & SLOT_MASK) as usize
}

/// The unit a model's output is measured in (SPEC.md section 8). Only tokens are
/// accepted today; the others are named so that clients can already say them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Unit {
    Token = 0,
    AudioSample = 1,
    VideoFrame = 2,
}

impl Unit {
    pub fn from_u8(value: u8) -> Option<Unit> {
        match value {
            0 => Some(Unit::Token),
            1 => Some(Unit::AudioSample),
            2 => Some(Unit::VideoFrame),
            _ => None,
        }
    }
}

/// Hasher for the address index. Addresses are keccak outputs and accounts are only
/// created by the operator or by (bounded) provider registration, so a fast fixed
/// mix is safe here, and it keeps SipHash off the hot path. It never affects
/// outputs: the index is not iterated.
#[derive(Default, Clone, Copy)]
pub struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let mixed = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.0 = mixed ^ (mixed >> 29);
        }
    }
}

pub type AddressBuildHasher = std::hash::BuildHasherDefault<AddressHasher>;
