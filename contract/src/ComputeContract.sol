// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title The Yellowstone Compute Contract (SPEC R-CONTRACT-1..4, R-CHAIN-1)
/// @notice Receives the compute share of MOR emissions as ERC-20 transfers, applies the
/// router's signed settlements once per epoch, in order, within the day's cap, and pays
/// each provider `cumulative - already paid` on a Merkle proof. The router's ledger is
/// the reference; this contract keeps the same day accounting (emission, cap, carry or
/// burn, bootstrap bonus) so that it refuses anything the reference would not credit.
/// No owner: the router's address and every parameter are fixed at deployment.
/// @dev Amounts are MOR wei. Leaf of the Merkle tree (OpenZeppelin StandardMerkleTree
/// rule): keccak256(bytes.concat(keccak256(abi.encode(provider, cumulative)))), pairs
/// hashed sorted (MerkleProof). A day is `epochsPerDay` epochs; epoch e is in day
/// e / epochsPerDay.
contract ComputeContract is EIP712 {
    using SafeERC20 for IERC20;

    /// @notice What the router signs once per epoch (EIP-712 typed data).
    /// @param networkId the router's network id (R-ID-2): a settlement of another
    ///        network is refused even when the router key is the same.
    /// @param epoch the epoch number, from 0, without gaps.
    /// @param credited MOR wei the epoch's credit batches credited (after the day's cap).
    /// @param bootstrap MOR wei of bootstrap bonus (R-CONTRACT-4) shared at the end of
    ///        the day this epoch closes; 0 for every other epoch.
    /// @param root Merkle root over (provider, cumulative credited) for every provider
    ///        ever credited, as of the end of this epoch.
    struct Settlement {
        uint64 networkId;
        uint64 epoch;
        uint256 credited;
        uint256 bootstrap;
        bytes32 root;
    }

    bytes32 public constant SETTLEMENT_TYPEHASH =
        keccak256("Settlement(uint64 networkId,uint64 epoch,uint256 credited,uint256 bootstrap,bytes32 root)");

    /// @notice Where burned MOR goes (R-CONTRACT-3 `burn`): tokens need no burn function.
    address public constant BURN_ADDRESS = 0x000000000000000000000000000000000000dEaD;

    /// A settlement for another network id.
    error WrongNetwork(uint64 expected, uint64 got);
    /// The signature does not recover the router's address (other key, other chain,
    /// other contract, or altered fields).
    error BadSigner(address recovered);
    /// This epoch was already settled (a replay).
    error AlreadySettled(uint64 epoch);
    /// Epochs come in order and without gaps.
    error EpochOutOfOrder(uint64 expected, uint64 got);
    /// The epoch credits more than is left of the day's cap or of the pool (R-CONTRACT-2).
    error OverDailyCap(uint256 allowed, uint256 credited);
    /// The bootstrap bonus exceeds the day's bonus, or comes outside a day's last epoch
    /// or after the bootstrap period (R-CONTRACT-4).
    error BootstrapOverLimit(uint256 allowed, uint256 bootstrap);
    /// The contract's MOR balance would not cover what it owes (and burns).
    error Underfunded(uint256 balance, uint256 required);
    /// The proof does not lead from (provider, cumulative) to the current root.
    error InvalidProof(address provider, uint256 cumulative);
    /// The provider was already paid at least `cumulative`.
    error NothingToClaim(address provider, uint256 paid);
    /// A deployment parameter out of range.
    error BadParameter(string name);

    event Settled(uint64 indexed epoch, uint64 indexed day, uint256 credited, uint256 bootstrap, bytes32 root);
    event Claimed(address indexed provider, uint256 amount, uint256 cumulative);
    event DayStarted(uint64 indexed day, uint256 emission, uint256 cap);
    event Burned(uint64 indexed day, uint256 amount);

    IERC20 public immutable token;
    address public immutable router;
    uint64 public immutable networkId;
    uint64 public immutable epochsPerDay;
    uint256 public immutable computeEmissionPerDay;
    uint256 public immutable bootstrapBonusPerDay;
    uint64 public immutable bootstrapDays;
    uint16 public immutable poolSpendBps;
    bool public immutable burnUnused;

    /// The next epoch to settle.
    uint64 public nextEpoch;
    /// The current day and its accounting (as the router's ledger keeps it).
    uint64 public day;
    uint256 public dayEmission;
    uint256 public dayCap;
    uint256 public daySpent;
    /// Totals since deployment: scheduled emission (with distributed bonus), burned,
    /// credited (batches and bonus), paid.
    uint256 public emitted;
    uint256 public burned;
    uint256 public credited;
    uint256 public paid;
    /// The latest settlement's root; claims prove against it only.
    bytes32 public root;
    /// Cumulative MOR wei paid to each provider.
    mapping(address provider => uint256) public paidTo;

    /// @param token_ the MOR ERC-20 token.
    /// @param router_ the router's address (signer of settlements).
    /// @param networkId_ the router's network id.
    /// @param epochsPerDay_ 7,200 / the router's `settlement_epoch_blocks`.
    /// @param computeEmissionPerDay_ the compute share of the daily emission, wei.
    /// @param bootstrapBonusPerDay_ the bootstrap share of the daily emission, wei.
    /// @param bootstrapDays_ days (from day 0) that carry a bootstrap bonus.
    /// @param poolSpendBps_ share of the unused pool a day may spend beyond its emission.
    /// @param burnUnused_ burn (true) or carry (false) the unspent emission at day end.
    constructor(
        IERC20 token_,
        address router_,
        uint64 networkId_,
        uint64 epochsPerDay_,
        uint256 computeEmissionPerDay_,
        uint256 bootstrapBonusPerDay_,
        uint64 bootstrapDays_,
        uint16 poolSpendBps_,
        bool burnUnused_
    ) EIP712("Yellowstone Compute Contract", "1") {
        if (address(token_) == address(0)) revert BadParameter("token");
        if (router_ == address(0)) revert BadParameter("router");
        if (epochsPerDay_ == 0) revert BadParameter("epochsPerDay");
        if (poolSpendBps_ > 10_000) revert BadParameter("poolSpendBps");
        token = token_;
        router = router_;
        networkId = networkId_;
        epochsPerDay = epochsPerDay_;
        computeEmissionPerDay = computeEmissionPerDay_;
        bootstrapBonusPerDay = bootstrapBonusPerDay_;
        bootstrapDays = bootstrapDays_;
        poolSpendBps = poolSpendBps_;
        burnUnused = burnUnused_;
        _startDay(0);
    }

    /// @notice MOR received (by schedule) and neither burned, credited nor paid.
    function pool() public view returns (uint256) {
        return emitted - burned - credited;
    }

    /// @notice MOR credited and not yet paid.
    function owedTotal() public view returns (uint256) {
        return credited - paid;
    }

    /// @notice The EIP-712 digest the router signs for `s`.
    function settlementDigest(Settlement calldata s) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(SETTLEMENT_TYPEHASH, s.networkId, s.epoch, s.credited, s.bootstrap, s.root))
        );
    }

    /// @notice The EIP-712 domain separator (chain id and this contract's address).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice Applies the router's settlement for the next epoch (R-CHAIN-1). Anyone
    /// may relay it. Refuses, with a custom error and no change: another network id, a
    /// signature not by the router, a replay, a gap, credits over the day's cap, a bonus
    /// over the day's bonus, and a balance that would not cover what is owed.
    function settle(Settlement calldata s, bytes calldata signature) external {
        if (s.networkId != networkId) revert WrongNetwork(networkId, s.networkId);
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(settlementDigest(s), signature);
        if (err != ECDSA.RecoverError.NoError || recovered != router) revert BadSigner(recovered);
        if (s.epoch < nextEpoch) revert AlreadySettled(s.epoch);
        if (s.epoch > nextEpoch) revert EpochOutOfOrder(nextEpoch, s.epoch);

        uint256 allowed = dayCap - daySpent;
        uint256 poolNow = pool();
        if (poolNow < allowed) allowed = poolNow;
        if (s.credited > allowed) revert OverDailyCap(allowed, s.credited);
        bool lastOfDay = (s.epoch + 1) % epochsPerDay == 0;
        uint256 bonusAllowed = lastOfDay && day < bootstrapDays ? bootstrapBonusPerDay : 0;
        if (s.bootstrap > bonusAllowed) revert BootstrapOverLimit(bonusAllowed, s.bootstrap);

        daySpent += s.credited;
        // The bonus is emission earmarked for bootstrap providers: it arrives and is
        // owed in the same step (as in the router's ledger), so the pool is untouched.
        emitted += s.bootstrap;
        credited += s.credited + s.bootstrap;
        root = s.root;
        nextEpoch = s.epoch + 1;
        emit Settled(s.epoch, day, s.credited, s.bootstrap, s.root);

        if (lastOfDay) {
            _endDay();
            _startDay(day + 1);
        }
        uint256 balance = token.balanceOf(address(this));
        if (balance < credited - paid) revert Underfunded(balance, credited - paid);
        assert(credited + burned <= emitted); // R-CONTRACT-2: paid + owed + burned <= emitted
    }

    /// @notice Pays `provider` what the current root says it was credited, less what it
    /// was already paid (R-CLAIM-1). Anyone may call it; MOR goes only to `provider`.
    /// @param cumulative the provider's cumulative credit in the latest settlement, wei.
    /// @param proof sibling hashes from the provider's leaf to the root.
    /// @return amount the MOR wei paid.
    function claim(address provider, uint256 cumulative, bytes32[] calldata proof)
        external
        returns (uint256 amount)
    {
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(provider, cumulative))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof(provider, cumulative);
        uint256 already = paidTo[provider];
        if (cumulative <= already) revert NothingToClaim(provider, already);
        amount = cumulative - already;
        paidTo[provider] = cumulative;
        paid += amount;
        assert(paid <= credited);
        emit Claimed(provider, amount, cumulative);
        token.safeTransfer(provider, amount);
    }

    /// Ends the current day (R-CONTRACT-3): burns the unspent emission if so deployed.
    function _endDay() private {
        if (burnUnused) {
            uint256 burnt;
            uint256 unused = dayEmission > daySpent ? dayEmission - daySpent : 0;
            uint256 poolNow = pool();
            burnt = unused < poolNow ? unused : poolNow;
            burned += burnt;
            emit Burned(day, burnt);
            if (burnt > 0) {
                uint256 balance = token.balanceOf(address(this));
                uint256 required = credited - paid + burnt;
                if (balance < required) revert Underfunded(balance, required);
                token.safeTransfer(BURN_ADDRESS, burnt);
            }
        }
    }

    /// Starts day `d`: the day's compute emission is scheduled and its cap set to the
    /// emission plus `poolSpendBps` of the pool unused at the day's start (R-CONTRACT-2).
    function _startDay(uint64 d) private {
        uint256 poolBefore = pool();
        emitted += computeEmissionPerDay;
        day = d;
        dayEmission = computeEmissionPerDay;
        dayCap = computeEmissionPerDay + poolBefore * poolSpendBps / 10_000;
        daySpent = 0;
        emit DayStarted(d, computeEmissionPerDay, dayCap);
    }
}
