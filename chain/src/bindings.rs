//! `sol!` bindings generated from the committed compiler output in
//! `contract/build/` (the same files the contract crate's tests check against a
//! fresh compile), so the ABI used on the chain is the ABI that was deployed.

// The generated deploy functions take the constructor's nine arguments.
#![allow(clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    ComputeContract,
    "../contract/build/ComputeContract.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    TestMOR,
    "../contract/build/TestMOR.json"
);

use ComputeContract::ComputeContractErrors;

/// A custom-error revert of the Compute Contract in words, with its data (what to act
/// on), e.g. `Underfunded(balance 10, required 12)`.
pub fn describe(error: &ComputeContractErrors) -> String {
    use ComputeContractErrors as E;
    match error {
        E::WrongNetwork(e) => format!("WrongNetwork(expected {}, got {})", e.expected, e.got),
        E::BadSigner(e) => format!("BadSigner(recovered {})", e.recovered),
        E::AlreadySettled(e) => format!("AlreadySettled(epoch {})", e.epoch),
        E::EpochOutOfOrder(e) => {
            format!("EpochOutOfOrder(expected {}, got {})", e.expected, e.got)
        }
        E::OverDailyCap(e) => format!(
            "OverDailyCap(allowed {} wei, credited {} wei)",
            e.allowed, e.credited
        ),
        E::BootstrapOverLimit(e) => format!(
            "BootstrapOverLimit(allowed {} wei, bootstrap {} wei)",
            e.allowed, e.bootstrap
        ),
        E::Underfunded(e) => format!(
            "Underfunded(balance {} wei, required {} wei)",
            e.balance, e.required
        ),
        E::InvalidProof(e) => format!(
            "InvalidProof(provider {}, cumulative {} wei)",
            e.provider, e.cumulative
        ),
        E::NothingToClaim(e) => {
            format!(
                "NothingToClaim(provider {}, paid {} wei)",
                e.provider, e.paid
            )
        }
        E::BadParameter(e) => format!("BadParameter({})", e.name),
        other => format!("{other:?}"),
    }
}

/// The error's name, a stable metric label.
pub fn name(error: &ComputeContractErrors) -> &'static str {
    use ComputeContractErrors as E;
    match error {
        E::WrongNetwork(_) => "WrongNetwork",
        E::BadSigner(_) => "BadSigner",
        E::AlreadySettled(_) => "AlreadySettled",
        E::EpochOutOfOrder(_) => "EpochOutOfOrder",
        E::OverDailyCap(_) => "OverDailyCap",
        E::BootstrapOverLimit(_) => "BootstrapOverLimit",
        E::Underfunded(_) => "Underfunded",
        E::InvalidProof(_) => "InvalidProof",
        E::NothingToClaim(_) => "NothingToClaim",
        E::BadParameter(_) => "BadParameter",
        _ => "Other",
    }
}
