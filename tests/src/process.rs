//! The process harness every test and bench shares (issue 26 item 4: one copy each):
//! the `READY key=value …` line the binaries print once serving, the Prometheus
//! text of a `/metrics` endpoint and a sample's value in it, a child process killed
//! and reaped when its handle drops, and a child's stdout as a channel of lines.
//! `RouterProcess` (this crate), the benches' `RouterChild`, the nodes' test stack,
//! the ctl and chain tests all use these.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::process::{Child, ChildStdout};
use std::sync::mpsc;
use std::time::Duration;

/// The `key=value` fields of a READY line, in order: the router prints
/// `READY listen=… metrics=… router=… network_id=… data_dir=…`, the nodes
/// `READY listen=… metrics=… address=…`. None unless the line starts with `READY `
/// and every field has a `=`.
pub fn ready_fields(line: &str) -> Option<Vec<(&str, &str)>> {
    let rest = line.strip_prefix("READY ")?;
    rest.split_whitespace()
        .map(|field| field.split_once('='))
        .collect()
}

/// One field of a READY line (see [`ready_fields`]); None when the line is not a
/// READY line or lacks the key.
pub fn ready_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    ready_fields(line)?
        .into_iter()
        .find_map(|(k, value)| (k == key).then_some(value))
}

/// The value of the first sample of `series` (its name with labels exactly as the
/// endpoint prints them, e.g. `yellowstone_signature_ops_total{op="sign"}`) in a
/// Prometheus text, as printed: wei amounts keep every digit. Comment lines are
/// skipped; None when the series is absent.
pub fn metric_text_value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.trim())
        })
}

/// [`metric_text_value`] as a number; None when absent or not a number (`NaN`, a
/// summary without samples, parses as NaN).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    metric_text_value(text, series)?.parse().ok()
}

/// The Prometheus page at `addr` (`GET /metrics` over a fresh connection, the whole
/// HTTP answer, headers included); errors when it cannot connect or read within
/// 10 s.
pub fn try_metrics_text(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// [`try_metrics_text`] for tests: panics naming the address when it fails.
pub fn metrics_text(addr: SocketAddr) -> String {
    try_metrics_text(addr).unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"))
}

/// A child process that is SIGKILLed and reaped when this handle drops, unless it
/// has already exited: a failing test or bench never leaves a process behind.
/// Derefs to the `Child` (its own pid only: nothing is killed by name).
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILL and reap now (a no-op when it has exited).
    pub fn kill_and_reap(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// A child's stdout as a channel of lines, read by a thread of its own that ends
/// with the stream.
pub fn forward_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_fields_and_metric_values_parse_and_reject_others() {
        let line = "READY listen=127.0.0.1:8400 metrics=127.0.0.1:8401 address=0xAb";
        assert_eq!(ready_field(line, "address"), Some("0xAb"));
        assert_eq!(ready_field(line, "router"), None);
        assert!(ready_fields("starting up").is_none());
        assert!(ready_fields("READY listen").is_none());
        let text =
            "# HELP x\nyellowstone_block 7\nyellowstone_signature_ops_total{op=\"sign\"} 3\n\
                    yellowstone_market_owed_wei 340282366920938463463374607431768211455\n";
        assert_eq!(metric_value(text, "yellowstone_block"), Some(7.0));
        assert_eq!(
            metric_value(text, "yellowstone_signature_ops_total{op=\"sign\"}"),
            Some(3.0)
        );
        assert_eq!(
            metric_text_value(text, "yellowstone_market_owed_wei"),
            Some("340282366920938463463374607431768211455")
        );
        assert_eq!(metric_value(text, "yellowstone_bloc"), None);
    }
}
