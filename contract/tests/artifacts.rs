//! The committed ABI and bytecode are what the sources compile to (solc-js pinned in
//! package.json), and the Rust interface matches the compiled ABI.

use alloy_sol_types::SolInterface;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use yellowstone_contract::artifacts::Artifact;
use yellowstone_contract::IComputeContract;
use yellowstone_engine::settlement::keccak256;

#[test]
fn r_chain_1_committed_artifacts_equal_a_fresh_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        dir.join("node_modules/solc").exists() && dir.join("node_modules/@openzeppelin").exists(),
        "contract/node_modules is missing: run `npm ci` in contract/ (.ci/run does)"
    );
    let output = Command::new("node")
        .current_dir(dir)
        .args(["scripts/compile.js", "--check"])
        .output()
        .expect("node runs (Node.js is needed to compile the contract)");
    assert!(
        output.status.success(),
        "fresh compile differs from contract/build/: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The canonical type of an ABI parameter (tuples expanded).
fn canonical(param: &Value) -> String {
    let ty = param["type"].as_str().expect("type");
    match ty.strip_prefix("tuple") {
        Some(suffix) => {
            let inner: Vec<String> = param["components"]
                .as_array()
                .expect("components")
                .iter()
                .map(canonical)
                .collect();
            format!("({}){suffix}", inner.join(","))
        }
        None => ty.to_string(),
    }
}

fn selectors_of(abi: &Value, kind: &str) -> BTreeSet<[u8; 4]> {
    abi.as_array()
        .expect("abi is an array")
        .iter()
        .filter(|item| item["type"] == kind)
        .map(|item| {
            let inputs: Vec<String> = item["inputs"]
                .as_array()
                .expect("inputs")
                .iter()
                .map(canonical)
                .collect();
            let signature = format!(
                "{}({})",
                item["name"].as_str().expect("name"),
                inputs.join(",")
            );
            keccak256(signature.as_bytes())[..4]
                .try_into()
                .expect("4 bytes")
        })
        .collect()
}

#[test]
fn r_chain_1_rust_interface_matches_the_compiled_abi() {
    let abi = Artifact::compute_contract().abi;
    let functions = selectors_of(&abi, "function");
    for selector in IComputeContract::IComputeContractCalls::selectors() {
        assert!(
            functions.contains(&selector),
            "function {selector:02x?} not in the ABI"
        );
    }
    let errors = selectors_of(&abi, "error");
    for selector in IComputeContract::IComputeContractErrors::selectors() {
        assert!(
            errors.contains(&selector),
            "error {selector:02x?} not in the ABI"
        );
    }
    assert_eq!(
        errors.len(),
        IComputeContract::IComputeContractErrors::selectors().count() + 3,
        "every custom error is known to the router side (besides OpenZeppelin's \
         SafeERC20FailedOperation, InvalidShortString and StringTooLong)"
    );
}
