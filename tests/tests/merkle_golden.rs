//! Golden vectors of the credit batch's Merkle rule (R-BLOCK-2, docs/PROTOCOL.md
//! "Receipts and the Merkle root"): receipts, their leaf hashes and the root after
//! each of them, in `wire/golden/merkle.json`, so that a client in another language
//! can check its own implementation of the rule. This test checks that the engine
//! still produces exactly those hashes, incrementally and naively.
//!
//! Regenerate (only when the rule changes on purpose):
//! `YELLOWSTONE_WRITE_GOLDEN=1 cargo test -p yellowstone-tests --test merkle_golden`

use serde_json::{json, Value};
use yellowstone_engine::merkle::{root_of, MerkleAccumulator, Receipt, LEAF_KEY, NODE_KEY};
use yellowstone_engine::Address;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../wire/golden/merkle.json");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn receipts() -> Vec<Receipt> {
    (1..=7u64)
        .map(|i| Receipt {
            session: (i << 24) | (i * 3),
            user: Address([0x10 + i as u8; 20]),
            provider: Address([0x20 + (i % 2) as u8; 20]),
            model: (i % 3) as u32 + 1,
            tokens: 100 * i,
            price_wei_per_token: 1_000_000_000 * i as u128 + u64::MAX as u128,
            elapsed_ms: 250 * i,
            report_digest: [0x40 + i as u8; 32],
        })
        .collect()
}

fn build() -> Value {
    let mut accumulator = MerkleAccumulator::default();
    let mut leaves = Vec::new();
    let mut rows = Vec::new();
    for receipt in receipts() {
        let leaf = receipt.leaf_hash();
        leaves.push(leaf);
        accumulator.push(leaf);
        let root = accumulator.root();
        assert_eq!(root, root_of(&leaves), "incremental root equals naive root");
        rows.push(json!({
            "session_id": receipt.session,
            "user": hex(&receipt.user.0),
            "provider": hex(&receipt.provider.0),
            "model_id": receipt.model,
            "tokens": receipt.tokens,
            "price_wei_per_token": receipt.price_wei_per_token.to_string(),
            "elapsed_ms": receipt.elapsed_ms,
            "report_digest": hex(&receipt.report_digest),
            "leaf": hex(&leaf),
            "root_after": hex(&root),
        }));
    }
    json!({
        "rule": "docs/PROTOCOL.md, section Receipts and the Merkle root",
        "leaf_key": hex(&LEAF_KEY),
        "node_key": hex(&NODE_KEY),
        "empty_root": hex(&MerkleAccumulator::default().root()),
        "receipts": rows,
    })
}

#[test]
fn merkle_golden_vectors_are_produced_by_the_engine() {
    let fresh = build();
    if std::env::var("YELLOWSTONE_WRITE_GOLDEN").is_ok() {
        std::fs::write(PATH, serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("merkle.json exists")).unwrap();
    assert_eq!(
        stored, fresh,
        "the engine no longer produces the committed Merkle vectors"
    );
}
