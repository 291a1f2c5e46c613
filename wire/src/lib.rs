//! yellowstone-wire: the binary protocol spoken to the router (SPEC.md section 2).

pub mod frame;
