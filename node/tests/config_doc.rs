//! Keeps `docs/nodes.md` current: every key that `yellowstone-provider print-config`
//! and `yellowstone-consumer print-config` print (their `NodeConfig::example()`,
//! serialised as `print-config` serialises it) has a row in the doc's table for that
//! node. Keys of an array of tables (`[[models]]`, `[[tokenizers]]`) are rows named
//! `array.key`. A key added without its row fails here (the docs fell behind issue
//! 23's keys once; the router's keys are checked in tests/tests/docs_current.rs).

use yellowstone_node::cli::NodeConfig;
use yellowstone_node::consumer::config::ConsumerConfig;
use yellowstone_node::provider::config::ProviderConfig;

const NODES: &str = include_str!("../../docs/nodes.md");

/// Every key of `print-config`'s TOML, `array.key` inside arrays of tables.
fn keys_of<C: NodeConfig>() -> Vec<String> {
    let text = toml::to_string_pretty(&C::example()).expect("print-config serialises");
    let value: toml::Table = text.parse().expect("print-config reads back");
    let mut keys = Vec::new();
    for (key, value) in &value {
        match value {
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for item in items.iter().filter_map(toml::Value::as_table) {
                    for inner in item.keys() {
                        let name = format!("{key}.{inner}");
                        if !keys.contains(&name) {
                            keys.push(name);
                        }
                    }
                }
            }
            _ => keys.push(key.clone()),
        }
    }
    keys
}

/// The lines under `### {heading}` up to the next heading.
fn section(heading: &str) -> Vec<&'static str> {
    let lines: Vec<&str> = NODES.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == format!("### {heading}"))
        .unwrap_or_else(|| panic!("docs/nodes.md has no heading `### {heading}`"));
    lines[at + 1..]
        .iter()
        .take_while(|l| !l.starts_with('#'))
        .copied()
        .collect()
}

fn check<C: NodeConfig>(heading: &str, arrays: &[&str]) {
    let keys = keys_of::<C>();
    // The example must show its arrays' keys, or their rows go unchecked.
    for array in arrays {
        assert!(
            keys.iter().any(|k| k.starts_with(&format!("{array}."))),
            "{heading}: print-config shows no key of [[{array}]]: {keys:?}"
        );
    }
    let rows = section(heading);
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| !rows.iter().any(|l| l.starts_with(&format!("| `{key}` |"))))
        .collect();
    assert!(
        missing.is_empty(),
        "{heading}: keys print-config prints without a row in docs/nodes.md: {missing:?}"
    );
}

#[test]
fn every_provider_print_config_key_has_a_row_in_nodes_md() {
    check::<ProviderConfig>("The provider's keys", &["models"]);
}

#[test]
fn every_consumer_print_config_key_has_a_row_in_nodes_md() {
    check::<ConsumerConfig>("The consumer's keys", &["tokenizers"]);
}
