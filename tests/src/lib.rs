//! Helpers for the end-to-end tests: locating and starting the router binary.
