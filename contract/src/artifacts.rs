//! The compiled contracts (committed in `contract/build/`, produced by
//! `npm run build` in `contract/` with the pinned solc-js) and the deployment of the
//! Compute Contract with the parameters of a router's market (R-CONTRACT-2..4).

use serde_json::Value;

/// `build/ComputeContract.json`: contractName, abi, bytecode, deployedBytecode.
pub const COMPUTE_CONTRACT_JSON: &str = include_str!("../build/ComputeContract.json");
/// `build/TestMOR.json`: the test ERC-20 MOR token.
pub const TEST_MOR_JSON: &str = include_str!("../build/TestMOR.json");

/// A compiled contract's ABI and creation bytecode.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub abi: Value,
    pub bytecode: Vec<u8>,
}

impl Artifact {
    /// Parses an artifact written by `scripts/compile.js`. Panics on a malformed
    /// artifact: they are committed files checked by the tests, not input.
    pub fn parse(json: &str) -> Artifact {
        let value: Value = serde_json::from_str(json).expect("artifact is JSON");
        let code = value["bytecode"].as_str().expect("artifact has bytecode");
        let bytecode = hex::decode(code.trim_start_matches("0x")).expect("bytecode is hex");
        assert!(!bytecode.is_empty(), "empty bytecode");
        Artifact {
            abi: value["abi"].clone(),
            bytecode,
        }
    }

    pub fn compute_contract() -> Artifact {
        Artifact::parse(COMPUTE_CONTRACT_JSON)
    }

    pub fn test_mor() -> Artifact {
        Artifact::parse(TEST_MOR_JSON)
    }
}

/// The Compute Contract's constructor arguments (`yellowstone-settlement`, where the
/// router derives them from its market without linking an EVM library).
pub use yellowstone_settlement::DeployParams;

/// The creation code of the Compute Contract for a set of deployment parameters.
pub trait DeployCode {
    /// The bytecode followed by the constructor's arguments.
    fn deploy_code(&self) -> Vec<u8>;
}

impl DeployCode for DeployParams {
    fn deploy_code(&self) -> Vec<u8> {
        let mut code = Artifact::compute_contract().bytecode;
        code.extend_from_slice(&self.constructor_args());
        code
    }
}
