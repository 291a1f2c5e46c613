//! The open block's per-provider totals (R-BLOCK-2), indexed by provider so that a
//! credit finds its provider's totals in O(1) (issue 18 item 5: this was a B-tree of
//! up to `providers_max` entries, searched on every report).
//!
//! Encoded exactly as the `BTreeMap<ProviderIdx, ProviderTotals>` it replaces: a
//! length, then `(provider index, totals)` pairs by provider index. The index is
//! derived and rebuilt on decode.

use crate::command::ProviderTotals;
use crate::state::ProviderIdx;
use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

const NIL: u32 = u32::MAX;

/// The open block's totals per provider (R-BLOCK-2), indexed by provider so that
/// a credited report finds its provider's totals without a search.
#[derive(Clone, Default)]
pub struct BlockTotals {
    /// Position in `entries` by provider index, `NIL` when the provider has none.
    index: Vec<u32>,
    /// In the order providers were first credited in the block.
    entries: Vec<(ProviderIdx, ProviderTotals)>,
}

impl BlockTotals {
    /// Providers credited in the block.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no provider was credited in the block.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The provider's totals in the block, if it was credited.
    pub fn get(&self, provider: ProviderIdx) -> Option<&ProviderTotals> {
        match self.index.get(provider as usize) {
            Some(&at) if at != NIL => Some(&self.entries[at as usize].1),
            _ => None,
        }
    }

    /// The provider's totals, created empty (default) on its first credit.
    pub fn entry(&mut self, provider: ProviderIdx) -> &mut ProviderTotals {
        let p = provider as usize;
        if p >= self.index.len() {
            self.index.resize(p + 1, NIL);
        }
        if self.index[p] == NIL {
            self.index[p] = self.entries.len() as u32;
            self.entries.push((provider, ProviderTotals::default()));
        }
        let at = self.index[p] as usize;
        debug_assert_eq!(self.entries[at].0, provider);
        &mut self.entries[at].1
    }

    /// Every provider's totals (in no particular order), leaving the set empty with
    /// its memory kept for the next block.
    pub fn take_values(&mut self) -> Vec<ProviderTotals> {
        let mut values = Vec::with_capacity(self.entries.len());
        for (provider, totals) in self.entries.drain(..) {
            self.index[provider as usize] = NIL;
            values.push(totals);
        }
        values
    }

    /// `(provider index, totals)` by provider index.
    pub fn sorted(&self) -> Vec<(ProviderIdx, ProviderTotals)> {
        let mut all = self.entries.clone();
        all.sort_unstable_by_key(|(provider, _)| *provider);
        all
    }

    fn from_entries(entries: Vec<(ProviderIdx, ProviderTotals)>) -> Result<Self, DecodeError> {
        let mut totals = BlockTotals::default();
        for (provider, value) in entries {
            if totals.get(provider).is_some() {
                return Err(DecodeError::OtherString(format!(
                    "block totals list provider {provider} twice"
                )));
            }
            *totals.entry(provider) = value;
        }
        Ok(totals)
    }
}

impl PartialEq for BlockTotals {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.sorted() == other.sorted()
    }
}

impl Eq for BlockTotals {}

impl std::fmt::Debug for BlockTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.sorted()).finish()
    }
}

impl Encode for BlockTotals {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        // A map and a list of pairs encode alike: a length, then key, value, ...
        self.sorted().encode(encoder)
    }
}

impl<Context> Decode<Context> for BlockTotals {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        BlockTotals::from_entries(Vec::decode(decoder)?)
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for BlockTotals {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        BlockTotals::from_entries(Vec::borrow_decode(decoder)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Address;
    use std::collections::BTreeMap;

    #[test]
    fn block_totals_encode_as_the_btreemap_they_replace() {
        let mut totals = BlockTotals::default();
        let mut map = BTreeMap::new();
        for provider in [7u32, 2, 9_999, 0, 7] {
            let value = ProviderTotals {
                provider: Address([provider as u8; 20]),
                earned_wei: provider as u128 * 3,
                credited_wei: 0,
                tokens: provider as u64,
                sessions: 1,
            };
            *totals.entry(provider) = value.clone();
            map.insert(provider, value);
        }
        assert_eq!(totals.len(), 4);
        assert_eq!(totals.get(7), map.get(&7));
        assert_eq!(totals.get(8), None);
        let config = bincode::config::standard();
        let bytes = bincode::encode_to_vec(&totals, config).unwrap();
        assert_eq!(bytes, bincode::encode_to_vec(&map, config).unwrap());
        let (decoded, _): (BlockTotals, usize) =
            bincode::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(decoded, totals);
        let mut values = totals.take_values();
        values.sort_unstable_by_key(|t| t.provider);
        assert_eq!(values, map.into_values().collect::<Vec<_>>());
        assert!(totals.is_empty() && totals.get(7).is_none());
        // A provider listed twice does not decode.
        let twice = vec![
            (1u32, ProviderTotals::default()),
            (1, ProviderTotals::default()),
        ];
        let bytes = bincode::encode_to_vec(&twice, config).unwrap();
        assert!(bincode::decode_from_slice::<BlockTotals, _>(&bytes, config).is_err());
    }
}
