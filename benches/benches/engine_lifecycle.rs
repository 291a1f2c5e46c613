//! Placeholder until its owner fills it in.
fn main() {}
