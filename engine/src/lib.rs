//! yellowstone-engine: the market as a pure state machine (see SPEC.md sections 4-7).
