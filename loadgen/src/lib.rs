//! yellowstone-loadgen: simulated users and providers over the real protocol.
