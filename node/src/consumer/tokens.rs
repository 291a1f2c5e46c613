//! R-NODE-4: the completion tokens the consumer reports are never more than it can
//! count in the text it received, whatever usage the provider claims.
//!
//! - With a tokenizer the operator names for the model (`[[tokenizers]]` in the
//!   consumer's configuration: a Hugging Face `tokenizer.json`, pinned by its BLAKE3
//!   hash), the bound is the tokenizer's count of the received text.
//! - Without one, the bound is the received text's UTF-8 bytes: every token a model
//!   emits decodes to at least one byte of output (byte-level vocabularies emit a
//!   character cut across tokens as one byte per token at most), so no honest answer
//!   has more tokens than bytes.
//!
//! The figure reported is the smallest of: what the provider claims (its `usage`;
//! without usage, the streamed chunks that stand for a token, or the bound for a
//! whole answer), the bound, and the ticket's TokenMax.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One `[[tokenizers]]` entry of the consumer's configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerEntry {
    /// The model's name in the router's catalog (`GET /v1/models` ids).
    pub model: String,
    /// The model's `tokenizer.json` (Hugging Face tokenizers format).
    pub file: PathBuf,
    /// The file's BLAKE3 hash, 64 hex digits: the start is refused if the file
    /// differs, so the operator and the provider agree which tokenizer counts
    /// (empty: not pinned; the hash the node computed is logged and listed in
    /// `GET /v1/models` as `tokenizer_blake3`).
    #[serde(default)]
    pub blake3: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizers: {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("tokenizers: {file}: not a tokenizer.json: {reason}")]
    Parse { file: PathBuf, reason: String },
    #[error("tokenizers: {file}: BLAKE3 is {found}, the configuration pins {expected}")]
    Hash {
        file: PathBuf,
        expected: String,
        found: String,
    },
    #[error("tokenizers: model {0:?} is named twice")]
    Duplicate(String),
}

struct Loaded {
    tokenizer: tokenizers::Tokenizer,
    blake3: String,
}

/// The tokenizers the operator named, by catalog model name.
#[derive(Default)]
pub struct TokenCounter {
    models: HashMap<String, Loaded>,
}

impl TokenCounter {
    /// Reads and checks every entry (errors name the file and the mismatch).
    pub fn load(entries: &[TokenizerEntry], base: &Path) -> Result<TokenCounter, TokenizerError> {
        let mut models = HashMap::new();
        for entry in entries {
            let file = base.join(&entry.file);
            let bytes = std::fs::read(&file).map_err(|source| TokenizerError::Read {
                file: file.clone(),
                source,
            })?;
            let found = blake3::hash(&bytes).to_hex().to_string();
            let expected = entry.blake3.trim().trim_start_matches("0x").to_lowercase();
            if !expected.is_empty() && expected != found {
                return Err(TokenizerError::Hash {
                    file,
                    expected,
                    found,
                });
            }
            let tokenizer =
                tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Parse {
                    file: file.clone(),
                    reason: e.to_string(),
                })?;
            tracing::info!(model = entry.model, file = %file.display(), blake3 = found, "tokenizer loaded");
            let loaded = Loaded {
                tokenizer,
                blake3: found,
            };
            if models.insert(entry.model.clone(), loaded).is_some() {
                return Err(TokenizerError::Duplicate(entry.model.clone()));
            }
        }
        Ok(TokenCounter { models })
    }

    /// The BLAKE3 (hex) of `model`'s tokenizer, if one is named.
    pub fn blake3(&self, model: &str) -> Option<&str> {
        self.models.get(model).map(|l| l.blake3.as_str())
    }

    /// The most tokens `text` can hold for `model`: its tokenizer's count, else its
    /// UTF-8 bytes.
    pub fn bound(&self, model: &str, text: &str) -> u64 {
        match self.models.get(model) {
            Some(loaded) => match loaded.tokenizer.encode_fast(text, false) {
                Ok(encoding) => encoding.len() as u64,
                Err(error) => {
                    // Cannot happen for a loaded tokenizer and a &str; if it does,
                    // the byte bound still holds.
                    tracing::warn!(model, %error, "tokenizer failed: counting bytes");
                    text.len() as u64
                }
            },
            None => text.len() as u64,
        }
    }
}

/// R-NODE-4: the completion tokens to report: `claimed` (the provider's usage), else
/// `token_chunks` for a stream or the bound for a whole answer; never above `bound`
/// (what the received text can hold) nor `tokens_max` (the ticket's TokenMax).
pub fn verified_tokens(
    claimed: Option<u64>,
    token_chunks: Option<u64>,
    bound: u64,
    tokens_max: u64,
) -> u64 {
    claimed
        .or(token_chunks)
        .unwrap_or(bound)
        .min(bound)
        .min(tokens_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_node_4_claims_are_cut_to_what_was_received() {
        // Issue 23 case 2: one word and a usage of a million tokens.
        assert_eq!(verified_tokens(Some(1_000_000), None, 6, 500), 6);
        // An honest usage below the bound is believed.
        assert_eq!(verified_tokens(Some(3), Some(9), 20, 500), 3);
        // No usage: the stream's token chunks (case 4: empty chunks count).
        assert_eq!(verified_tokens(None, Some(24), 48, 500), 24);
        // No usage, whole answer: the bound.
        assert_eq!(verified_tokens(None, None, 17, 500), 17);
        // Never above TokenMax.
        assert_eq!(verified_tokens(Some(90), None, 100, 64), 64);
    }

    #[test]
    fn without_a_tokenizer_the_bound_is_utf8_bytes() {
        let counter = TokenCounter::default();
        assert_eq!(counter.bound("m", "héllo"), 6);
        assert_eq!(counter.bound("m", ""), 0);
        assert_eq!(counter.blake3("m"), None);
    }

    #[test]
    fn a_tokenizer_file_is_pinned_by_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        // A word-level tokenizer over a tiny vocabulary, whitespace-split.
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1,"world":2},
            "unk_token":"[UNK]"}}"#;
        std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
        let hash = blake3::hash(json.as_bytes()).to_hex().to_string();
        let entry = TokenizerEntry {
            model: "m".into(),
            file: "tokenizer.json".into(),
            blake3: hash.clone(),
        };
        let counter = TokenCounter::load(std::slice::from_ref(&entry), dir.path()).unwrap();
        assert_eq!(counter.bound("m", "hello world hello"), 3);
        assert_eq!(counter.blake3("m"), Some(hash.as_str()));
        // Another model has no tokenizer: bytes.
        assert_eq!(counter.bound("other", "hello"), 5);
        let wrong = TokenizerEntry {
            blake3: "00".repeat(32),
            ..entry.clone()
        };
        let error = TokenCounter::load(&[wrong], dir.path()).err().unwrap();
        assert!(matches!(error, TokenizerError::Hash { .. }), "{error}");
        let twice = TokenCounter::load(&[entry.clone(), entry], dir.path())
            .err()
            .unwrap();
        assert!(matches!(twice, TokenizerError::Duplicate(_)), "{twice}");
        std::fs::write(dir.path().join("bad.json"), "{}").unwrap();
        let bad = TokenizerEntry {
            model: "m".into(),
            file: "bad.json".into(),
            blake3: String::new(),
        };
        let error = TokenCounter::load(&[bad], dir.path()).err().unwrap();
        assert!(matches!(error, TokenizerError::Parse { .. }), "{error}");
    }
}
