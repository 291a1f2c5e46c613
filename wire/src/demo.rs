//! The demo model catalog: what a router serves when `[[market.models]]` is empty,
//! and what the load generator, the nodes' quick start and the tests assume. Models
//! 1 to 4; the weights of model `id` are the ASCII string `yellowstone-demo-model-<id>`,
//! so a file holding exactly that passes for them (R-PROV-1: providers present the
//! BLAKE3 hash of their weights).

/// The demo catalog's model ids.
pub const DEMO_MODELS: [u32; 4] = [1, 2, 3, 4];

/// The weights hash of demo model `model_id`: BLAKE3("yellowstone-demo-model-<id>"),
/// 32 bytes. Defined for any id (the loadgen's attack runs use demo models 1..64).
pub fn demo_weights_hash(model_id: u32) -> [u8; 32] {
    *blake3::hash(format!("yellowstone-demo-model-{model_id}").as_bytes()).as_bytes()
}

/// The catalog name of demo model `model_id`: `demo-model-<id>` (R-NODE-2).
pub fn demo_model_name(model_id: u32) -> String {
    format!("demo-model-{model_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_weights_are_the_blake3_of_their_ascii_name() {
        assert_eq!(
            demo_weights_hash(1),
            *blake3::hash(b"yellowstone-demo-model-1").as_bytes()
        );
        assert_ne!(demo_weights_hash(1), demo_weights_hash(2));
        assert_eq!(demo_model_name(3), "demo-model-3");
    }
}
