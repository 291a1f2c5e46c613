//! Keeps the operator docs current with the real router binary: every key that
//! `yellowstone-router print-config` prints has a row in its section's table of
//! `docs/configuration.md`, and every series a running router exports (`# TYPE`
//! lines of `GET /metrics`) is named in `docs/metrics.md`. A key or series added
//! without its documentation fails here (the docs fell behind issues 23, 26 and 27
//! once; the nodes' keys are checked in node/tests/config_doc.rs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use yellowstone_tests::{router_binary, RouterProcess};

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const METRICS: &str = include_str!("../../docs/metrics.md");

/// The lines of `doc` from the heading that starts with `## \`[section]\`` up to
/// the next `## ` heading.
fn section<'a>(doc: &'a str, section: &str) -> Vec<&'a str> {
    let opening = format!("## `[{section}]`");
    let lines: Vec<&str> = doc.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&opening))
        .unwrap_or_else(|| panic!("docs/configuration.md has no heading `{opening}…`"));
    lines[at + 1..]
        .iter()
        .take_while(|l| !l.starts_with("## "))
        .copied()
        .collect()
}

/// `(section, key)` of every key in a `print-config` text: `[section]` headers and
/// `key = value` lines (comments, `[[…]]` array tables of the commented demo
/// catalog and blank lines skipped).
fn printed_keys(text: &str) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    let mut current = None::<String>;
    for line in text.lines().map(str::trim) {
        if line.starts_with("[[") || line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            continue;
        }
        if let (Some(section), Some((key, _))) = (&current, line.split_once(" = ")) {
            keys.push((section.clone(), key.trim().to_string()));
        }
    }
    keys
}

#[test]
fn every_print_config_key_has_a_row_in_configuration_md() {
    let output = Command::new(router_binary())
        .arg("print-config")
        .output()
        .expect("run yellowstone-router print-config");
    assert!(output.status.success(), "print-config failed: {output:?}");
    let text = String::from_utf8(output.stdout).expect("print-config prints UTF-8");
    let keys = printed_keys(&text);
    // The parser must see the sections it checks, or the test checks nothing.
    for section in [
        "network", "threads", "metrics", "identity", "market", "journal",
    ] {
        assert!(
            keys.iter().any(|(s, _)| s == section),
            "print-config printed no key of [{section}]:\n{text}"
        );
    }
    let missing: Vec<String> = keys
        .iter()
        .filter(|(section_name, key)| {
            let row = format!("| `{key}` |");
            !section(CONFIGURATION, section_name)
                .iter()
                .any(|l| l.starts_with(&row))
        })
        .map(|(s, k)| format!("{s}.{k}"))
        .collect();
    assert!(
        missing.is_empty(),
        "keys print-config prints without a row in docs/configuration.md: {missing:?}"
    );
}

/// One `GET /metrics` answer's body.
fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .expect("an HTTP answer has a head");
    assert!(head.starts_with("HTTP/1.1 200"), "metrics answered {head}");
    body.to_string()
}

#[test]
fn every_router_series_is_named_in_metrics_md() {
    let data = tempfile::tempdir().expect("data directory");
    let data_dir = data.path().to_str().expect("a UTF-8 temporary path");
    // With a data directory: the journal's and snapshots' series exist only then.
    let router = RouterProcess::start(&["--data-dir", data_dir, "--backend", "mio"]);
    let body = scrape(router.ready.metrics);
    let series: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        series.len() > 50,
        "too few series scraped ({}): {body}",
        series.len()
    );
    let missing: Vec<&str> = series
        .iter()
        .copied()
        .filter(|name| !METRICS.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "series the router exports that docs/metrics.md does not name: {missing:?}"
    );
}
