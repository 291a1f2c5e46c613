//! The relayer's Prometheus metrics (text format 0.0.4 at GET /metrics).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the relayer reports. Amounts in MOR wei, gas in gas units, ages in seconds.
#[derive(Default, Debug, Clone)]
pub struct RelayMetrics {
    /// The last epoch this relayer saw confirmed on the contract (`nextEpoch() - 1`).
    pub chain_last_epoch: Option<u64>,
    /// The router's last sealed epoch.
    pub router_last_epoch: Option<u64>,
    /// Epochs the router sealed that the contract has not settled.
    pub lag_epochs: u64,
    /// Age of the oldest unsettled epoch's end, seconds (0 when none).
    pub lag_seconds: f64,
    /// From the last settled epoch's end to its settle's confirmation, seconds.
    pub last_settle_lag_seconds: f64,
    /// Settlements this relayer got confirmed.
    pub settled_total: u64,
    /// Replacements sent (dropped or underpriced transactions).
    pub resubmits_total: u64,
    /// Settlements found removed by a reorg (then sent again).
    pub reorgs_total: u64,
    /// Reverts by decoded custom error (simulated or mined).
    pub reverts_total: BTreeMap<String, u64>,
    /// JSON-RPC failures (node down or refusing), retried.
    pub rpc_errors_total: u64,
    pub gas_used_total: u64,
    pub gas_spent_wei_total: u128,
    /// The contract's MOR balance, what it owes, and what the rest of today may add.
    pub contract_balance_wei: u128,
    pub owed_wei: u128,
    pub due_today_wei: u128,
    /// 1 when the balance does not cover owed + due today, or a settlement was
    /// refused `Underfunded`: fund the contract.
    pub funding_alarm: bool,
    /// 1 once the relayer stopped on an error it must not skip.
    pub stopped: bool,
    /// R-CHAIN-3: `ChainPaid` commands the router took, and the wei they reported.
    pub chain_paid_sent_total: u64,
    pub reconciled_wei_total: u128,
}

impl RelayMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            "yellowstone_relay_chain_last_epoch",
            "Last epoch settled on the contract (nextEpoch - 1; -1 none).",
            "gauge",
            self.chain_last_epoch.map_or("-1".into(), |e| e.to_string()),
        );
        gauge(
            "yellowstone_relay_router_last_epoch",
            "The router's last sealed epoch (-1 none).",
            "gauge",
            self.router_last_epoch
                .map_or("-1".into(), |e| e.to_string()),
        );
        gauge(
            "yellowstone_relay_lag_epochs",
            "Epochs sealed by the router and not yet settled on the contract.",
            "gauge",
            self.lag_epochs.to_string(),
        );
        gauge(
            "yellowstone_relay_lag_seconds",
            "Seconds since the end of the oldest epoch not yet settled (0 none).",
            "gauge",
            format!("{:.3}", self.lag_seconds),
        );
        gauge(
            "yellowstone_relay_settled_total",
            "Settlements this relayer got confirmed.",
            "counter",
            self.settled_total.to_string(),
        );
        gauge(
            "yellowstone_relay_resubmits_total",
            "Transactions sent again (dropped or underpriced).",
            "counter",
            self.resubmits_total.to_string(),
        );
        gauge(
            "yellowstone_relay_reorgs_total",
            "Settlements removed by a reorg after being mined (then sent again).",
            "counter",
            self.reorgs_total.to_string(),
        );
        gauge(
            "yellowstone_relay_rpc_errors_total",
            "JSON-RPC failures (retried).",
            "counter",
            self.rpc_errors_total.to_string(),
        );
        gauge(
            "yellowstone_relay_gas_used_total",
            "Gas used by this relayer's settlements.",
            "counter",
            self.gas_used_total.to_string(),
        );
        gauge(
            "yellowstone_relay_gas_spent_wei_total",
            "Wei paid for this relayer's settlements (gas used x effective price).",
            "counter",
            self.gas_spent_wei_total.to_string(),
        );
        gauge(
            "yellowstone_relay_contract_balance_wei",
            "The Compute Contract's MOR balance.",
            "gauge",
            self.contract_balance_wei.to_string(),
        );
        gauge(
            "yellowstone_relay_owed_wei",
            "MOR the contract owes providers (owedTotal).",
            "gauge",
            self.owed_wei.to_string(),
        );
        gauge(
            "yellowstone_relay_due_today_wei",
            "What the rest of today's cap may still credit (dayCap - daySpent).",
            "gauge",
            self.due_today_wei.to_string(),
        );
        gauge("yellowstone_relay_funding_alarm", "1: the balance does not cover owed + due today, or a settlement was refused Underfunded.", "gauge", u8::from(self.funding_alarm).to_string());
        gauge(
            "yellowstone_relay_chain_paid_sent_total",
            "ChainPaid commands the router took (R-CHAIN-3).",
            "counter",
            self.chain_paid_sent_total.to_string(),
        );
        gauge(
            "yellowstone_relay_reconciled_wei_total",
            "Wei paid on chain reported to the router's ledger.",
            "counter",
            self.reconciled_wei_total.to_string(),
        );
        gauge(
            "yellowstone_relay_stopped",
            "1: the relayer stopped on an error it must not skip.",
            "gauge",
            u8::from(self.stopped).to_string(),
        );
        let _ = writeln!(out, "# HELP yellowstone_relay_reverts_total Reverts by the contract's custom error.\n# TYPE yellowstone_relay_reverts_total counter");
        for (error, count) in &self.reverts_total {
            let _ = writeln!(
                out,
                "yellowstone_relay_reverts_total{{error=\"{error}\"}} {count}"
            );
        }
        out
    }
}

pub type Shared = Arc<Mutex<RelayMetrics>>;

/// Serves `metrics` at `listen` until the runtime stops; returns the bound address.
pub async fn serve(listen: SocketAddr, metrics: Shared) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // One request a connection; the request line and headers are small.
                let mut buffer = [0u8; 4096];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buffer),
                )
                .await;
                let body = match metrics.lock() {
                    Ok(m) => m.render(),
                    Err(poisoned) => poisoned.into_inner().render(),
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(bound)
}
