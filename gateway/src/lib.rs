//! yellowstone-gateway: the router process (ARCHITECTURE.md).
