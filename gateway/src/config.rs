//! Operator configuration (TOML + CLI), every limit named with its unit last.
