// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title A test MOR token for the Compute Contract's tests (anyone may mint).
/// @dev Tests only: the real MOR token is deployed by Morpheus.
contract TestMOR is ERC20 {
    constructor() ERC20("Test MOR", "tMOR") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
