//! yellowstone-chain against a real anvil (R-CHAIN-2, R-CHAIN-3, R-CLAIM-1; issue 24):
//! a real router runs epochs of one block (12 s) under loadgen traffic, the relayer
//! settles them on anvil, providers claim, and every provider's MOR balance equals
//! what the router credited it, to the wei. Faults: the relayer killed and restarted,
//! anvil restarted, a reorg removing settlements, an unfunded contract, a settlement
//! for another network or contract.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use yellowstone_tests::market::operator_key;
use yellowstone_tests::RouterProcess;

/// A router whose settlement domain is the contract `DEPLOYER_KEY` will create at
/// its nonce `contract_nonce` on anvil (one-block epochs, genesis 10.5 s ago so the
/// first block ends soon after start), with `extra` appended to its TOML.
struct Setup {
    _dir: tempfile::TempDir,
    data: String,
    config: String,
    contract: String,
    router: Option<RouterProcess>,
}

fn setup(contract_nonce: u64, network_id: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let contract = address_of(DEPLOYER_KEY).create(contract_nonce).to_string();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!(
            "[identity]\nnetwork_id = {network_id}\n[market]\ngenesis_ms = {}\nuser_sessions_open_max = 4096\nsettlement_epoch_blocks = 1\nsettlement_chain_id = {CHAIN_ID}\nsettlement_contract = \"{contract}\"\n",
            now_ms() - 10_500
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let operator = operator_key().address().to_string();
    let router = RouterProcess::start(&[
        "--config",
        &config,
        "--data-dir",
        &data,
        "--operator",
        &operator,
        "--backend",
        "mio",
    ]);
    Setup {
        _dir: dir,
        data,
        config,
        contract,
        router: Some(router),
    }
}

impl Setup {
    fn router_args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.config.clone(),
            "--data-dir".into(),
            self.data.clone(),
        ]
    }

    /// Deploys the test token and the contract, funded with `fund_wei`.
    fn deploy(&self, anvil: &Anvil, fund_wei: u128) -> (String, String) {
        let mut args: Vec<String> = vec!["deploy".into()];
        args.extend(self.router_args());
        args.extend(
            [
                "--rpc",
                &anvil.url(),
                "--key-hex",
                DEPLOYER_KEY,
                "--test-token",
                "--fund-wei",
                &fund_wei.to_string(),
                "--poll-ms",
                "50",
            ]
            .map(String::from),
        );
        let out = chain_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            out["contract"].as_str().unwrap().to_lowercase(),
            self.contract.to_lowercase(),
            "{out}"
        );
        assert_eq!(out["verified"], true);
        (
            out["token"].as_str().unwrap().to_string(),
            self.contract.clone(),
        )
    }

    fn relay(&self, anvil: &Anvil, extra: &[&str]) -> Relayer {
        let mut args: Vec<String> = self.router_args();
        args.extend(
            [
                "--rpc",
                &anvil.url(),
                "--key-hex",
                RELAYER_KEY,
                "--contract",
                &self.contract,
                "--poll-ms",
                "200",
                "--resubmit-ms",
                "3000",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        Relayer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Traffic from the loadgen for `seconds` (4 users, 4 providers).
    fn traffic(&self, seconds: u64) {
        let router = self.router.as_ref().unwrap();
        let status = Command::new(loadgen_binary())
            .args(["--target", &router.ready.listen.to_string()])
            .args([
                "--operator-key",
                &hex::encode(operator_key().secret_bytes()),
            ])
            .args(["--duration", &seconds.to_string(), "--rate", "40"])
            // Providers that come and go (half of them reconnect now and then): the
            // cheapest alone would take every RFC at this rate (R-MATCH-1), and the
            // settlement's Merkle tree must hold several providers.
            .args(["--scenario", "churn"])
            .args([
                "--users",
                "4",
                "--providers",
                "4",
                "--quiet",
                "--fail-reports",
                "0",
            ])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "loadgen failed");
    }

    /// The router's last sealed epoch.
    fn router_last_epoch(&self) -> u64 {
        let out = router_json(&[
            "settlement",
            "--data-dir",
            &self.data,
            "--config",
            &self.config,
            "--json",
        ]);
        out["epoch"].as_u64().unwrap()
    }

    /// Waits until the router has sealed an epoch after everything credited so far
    /// (the traffic stopped: later epochs credit nothing), and returns that epoch.
    fn epoch_after_traffic(&self) -> u64 {
        let first = self.router_last_epoch();
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            let last = self.router_last_epoch();
            if last > first {
                return last;
            }
            assert!(std::time::Instant::now() < deadline, "no new epoch sealed");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The operator's key in a file (for the relayer's ChainPaid).
    fn operator_key_file(&self) -> String {
        let path = self._dir.path().join("operator.key");
        std::fs::write(&path, hex::encode(operator_key().secret_bytes())).unwrap();
        // R-OPS-2: a key file is its owner's alone, or the relayer refuses it.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    }

    fn listen(&self) -> String {
        self.router.as_ref().unwrap().ready.listen.to_string()
    }

    /// (provider, cumulative credited) from the router's ledger (no in-router claim
    /// happened: owed is the cumulative credit).
    fn credited(&self) -> Vec<(String, u128)> {
        let ledger = router_json(&["ledger", "--data-dir", &self.data, "--json"]);
        assert_eq!(ledger["paid_wei"], "0");
        ledger["providers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["provider"].as_str().unwrap().to_string(),
                    p["owed_wei"].as_str().unwrap().parse().unwrap(),
                )
            })
            .filter(|(_, wei)| *wei > 0)
            .collect()
    }

    /// Every provider claims on the chain (the relayer's key pays the gas; MOR goes
    /// to the provider) and ends with exactly its cumulative credit.
    fn claim_all_and_check(
        &self,
        anvil: &Anvil,
        token: &str,
        providers_min: usize,
    ) -> Vec<(String, u128)> {
        let credited = self.credited();
        assert!(
            credited.len() >= providers_min,
            "providers earned: {credited:?}"
        );
        for (provider, wei) in &credited {
            let mut args: Vec<String> = vec!["claim".into()];
            args.extend(self.router_args());
            args.extend(
                [
                    "--rpc",
                    &anvil.url(),
                    "--key-hex",
                    SPARE_KEY,
                    "--contract",
                    &self.contract,
                    "--provider",
                    provider,
                    "--poll-ms",
                    "50",
                ]
                .map(String::from),
            );
            let out = chain_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(out["paid_wei"], wei.to_string(), "{out}");
            eprintln!(
                "GAS claim: {} (proof against epoch {})",
                out["gas_used"], out["epoch"]
            );
            let balance = anvil.call_u128(token, "balanceOf(address)(uint256)", &[provider]);
            assert_eq!(
                balance, *wei,
                "{provider} holds its cumulative credit to the wei"
            );
            let paid_to = anvil.call_u128(&self.contract, "paidTo(address)(uint256)", &[provider]);
            assert_eq!(paid_to, *wei);
        }
        credited
    }

    /// `claim-proof --epoch N` for an epoch whose cumulative credit is below the
    /// last one's proves against that epoch's root (what the chain holds while the
    /// relayer is behind), and differs from the newest proof.
    fn check_older_epoch_proof(&self, last: u64) {
        let total = |epoch: u64| -> (u128, String) {
            let out = router_json(&[
                "settlement",
                "--data-dir",
                &self.data,
                "--epoch",
                &epoch.to_string(),
                "--json",
            ]);
            (
                out["credited_cumulative_wei"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
                out["merkle_root"].as_str().unwrap().to_string(),
            )
        };
        let (final_total, _) = total(last);
        let older = (0..last)
            .rev()
            .map(|epoch| (epoch, total(epoch)))
            .find(|(_, (cumulative, _))| *cumulative > 0 && *cumulative < final_total)
            .expect("an epoch with part of the credit");
        let (epoch, (_, root)) = older;
        let mut proved = 0;
        for (provider, _) in self.credited() {
            let out = Command::new(yellowstone_tests::router_binary())
                .args([
                    "claim-proof",
                    "--data-dir",
                    &self.data,
                    "--provider",
                    &provider,
                    "--epoch",
                    &epoch.to_string(),
                    "--json",
                ])
                .output()
                .unwrap();
            if !out.status.success() {
                // Not credited yet at that epoch: said so, not guessed.
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(stderr.contains("never credited"), "claim-proof: {stderr}");
                continue;
            }
            let proof: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                proof["merkle_root"].as_str().unwrap(),
                root,
                "epoch {epoch}'s root"
            );
            assert_eq!(proof["epoch"], epoch);
            let newest = router_json(&[
                "claim-proof",
                "--data-dir",
                &self.data,
                "--provider",
                &provider,
                "--json",
            ]);
            assert_ne!(newest["merkle_root"], proof["merkle_root"]);
            proved += 1;
        }
        assert!(proved > 0, "some provider proved against epoch {epoch}");
    }

    fn chain_next_epoch(&self, anvil: &Anvil) -> u64 {
        anvil.call_u128(&self.contract, "nextEpoch()(uint64)", &[]) as u64
    }
}

const FUND_WEI: u128 = 3_456 * 1_000_000_000_000_000_000 * 2;

/// The whole path under traffic, with the relayer killed (SIGKILL) and restarted
/// and anvil stopped and restarted on its saved state mid-run: no epoch skipped or
/// settled twice, providers paid their cumulative credit to the wei, and the
/// router's ledger and metrics learn what the chain paid (R-CHAIN-3).
#[test]
fn r_chain_2_relayer_settles_every_epoch_and_providers_are_paid_to_the_wei() {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("anvil-state.json");
    let port = free_port();
    let mut anvil = Anvil::start_on(port, Some(&state));
    let s = setup(1, 1);
    let (token, contract) = s.deploy(&anvil, FUND_WEI);
    assert_eq!(
        anvil.call_u128(&token, "balanceOf(address)(uint256)", &[&contract]),
        FUND_WEI
    );
    let operator_key_file = s.operator_key_file();
    let listen = s.listen();
    let reconcile = [
        "--router-listen",
        listen.as_str(),
        "--operator-key-file",
        operator_key_file.as_str(),
    ];

    let relayer = s.relay(&anvil, &reconcile);
    s.traffic(14);
    relayer.wait_for("settled epochs", Duration::from_secs(60), |r| {
        r.metric("yellowstone_relay_settled_total") >= 2.0
    });
    // anvil goes down under the running relayer and comes back with its chain: the
    // relayer retries the node and goes on.
    anvil.stop();
    std::thread::sleep(Duration::from_secs(3));
    anvil = Anvil::start_on(port, Some(&state));
    let settled_before = relayer.metric("yellowstone_relay_settled_total");
    relayer.wait_for(
        "settling again after the node's restart",
        Duration::from_secs(60),
        |r| {
            r.metric("yellowstone_relay_rpc_errors_total") >= 1.0
                && r.metric("yellowstone_relay_settled_total") > settled_before
        },
    );
    // The relayer is killed (SIGKILL) and started again: it goes on from the
    // contract's next epoch, skipping and doubling nothing.
    let mut gas = relayer.settled();
    let before_kill = s.chain_next_epoch(&anvil);
    relayer.kill();
    let relayer = s.relay(&anvil, &reconcile);
    s.traffic(14);
    let last = s.epoch_after_traffic();
    relayer.wait_for("every epoch settled", Duration::from_secs(90), |r| {
        r.metric("yellowstone_relay_chain_last_epoch") >= last as f64
    });
    let after_restart = relayer.settled();
    let restarted: Vec<u64> = after_restart.iter().map(|(epoch, _, _)| *epoch).collect();
    gas.extend(after_restart);
    // Measured figures for BENCHMARKS.md (gas from anvil's receipts).
    eprintln!("GAS settle per epoch (epoch, gas, lag ms): {gas:?}");
    assert!(s.chain_next_epoch(&anvil) > last);
    assert!(
        restarted
            .first()
            .is_some_and(|first| *first >= before_kill.saturating_sub(1))
            && restarted.windows(2).all(|w| w[1] == w[0] + 1),
        "the restarted relayer went on in order from epoch {before_kill}: {restarted:?}"
    );
    // On the chain: one Settled event per epoch, 0 to the contract's last, in order.
    let logs = anvil.cast(&[
        "logs",
        "--from-block",
        "0",
        "--address",
        &contract,
        "Settled(uint64 indexed,uint64 indexed,uint256,uint256,bytes32)",
        "--json",
    ]);
    let logs: serde_json::Value = serde_json::from_str(&logs).unwrap();
    let epochs: Vec<u64> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|log| {
            u64::from_str_radix(
                log["topics"][1].as_str().unwrap().trim_start_matches("0x"),
                16,
            )
            .unwrap()
        })
        .collect();
    let next = s.chain_next_epoch(&anvil);
    assert_eq!(
        epochs,
        (0..next).collect::<Vec<u64>>(),
        "each epoch settled once, none skipped"
    );
    // Issue 24 case 3: the proof of an older epoch is that epoch's, not the newest.
    s.check_older_epoch_proof(last);
    let credited = s.claim_all_and_check(&anvil, &token, 2);
    // The credit the contract holds is the router's, to the wei.
    let total: u128 = credited.iter().map(|(_, w)| w).sum();
    assert_eq!(
        anvil.call_u128(&contract, "credited()(uint256)", &[]),
        total
    );
    assert_eq!(anvil.call_u128(&contract, "owedTotal()(uint256)", &[]), 0);
    // R-CHAIN-3: the relayer tells the router what the chain paid; its ledger and
    // metrics then agree with paidTo.
    relayer.wait_for("the ledger reconciled", Duration::from_secs(60), |r| {
        r.metric("yellowstone_relay_reconciled_wei_total") >= total as f64
    });
    let ledger = router_json(&["ledger", "--data-dir", &s.data, "--json"]);
    assert_eq!(ledger["paid_wei"], total.to_string(), "{ledger}");
    assert_eq!(ledger["owed_wei"], "0", "{ledger}");
    let metrics = yellowstone_tests::metrics_text(s.router.as_ref().unwrap().ready.metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("yellowstone_market_paid_wei_total {total}")),
        "router metrics agree with the chain:\n{metrics}"
    );
    // The in-router claim is refused now that a chain is configured.
    drop(relayer);
}

/// An unfunded contract refuses settlements that credit anything (`Underfunded`):
/// the relayer raises its funding alarm and waits, and continues once funded. Then a
/// reorg removes the last settlements (`anvil_reorg`) and the relayer sends them again.
#[test]
fn r_chain_2_relayer_waits_on_underfunded_and_resends_after_a_reorg() {
    let anvil = Anvil::start();
    let s = setup(1, 1);
    let (token, contract) = s.deploy(&anvil, 0);
    let relayer = s.relay(&anvil, &[]);
    s.traffic(10);
    relayer.wait_for("an Underfunded refusal", Duration::from_secs(60), |r| {
        r.metric("yellowstone_relay_reverts_total{error=\"Underfunded\"}") >= 1.0
    });
    assert_eq!(relayer.metric("yellowstone_relay_funding_alarm"), 1.0);
    let stuck = s.chain_next_epoch(&anvil);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.chain_next_epoch(&anvil),
        stuck,
        "it waits, skipping nothing"
    );
    // Fund it (anyone may mint the test token): the relayer goes on by itself.
    anvil.cast(&[
        "send",
        &token,
        "mint(address,uint256)",
        &contract,
        &FUND_WEI.to_string(),
        "--private-key",
        SPARE_KEY,
    ]);
    let last = s.epoch_after_traffic();
    relayer.wait_for("every epoch settled", Duration::from_secs(90), |r| {
        r.metric("yellowstone_relay_chain_last_epoch") >= last as f64
    });
    assert_eq!(relayer.metric("yellowstone_relay_funding_alarm"), 0.0);
    // A reorg two blocks deep drops the last settlements (automine: one
    // transaction a block, and only the relayer sends now); the relayer finds the
    // contract behind and sends them again.
    let before = s.chain_next_epoch(&anvil);
    let settled_before = relayer.metric("yellowstone_relay_settled_total");
    anvil.cast(&["rpc", "anvil_reorg", "2", "[]"]);
    let after = s.chain_next_epoch(&anvil);
    assert!(
        after < before,
        "the reorg removed settlements: next epoch {before} -> {after}"
    );
    relayer.wait_for(
        "the dropped settlements sent again",
        Duration::from_secs(60),
        |r| r.metric("yellowstone_relay_settled_total") >= settled_before + (before - after) as f64,
    );
    assert!(s.chain_next_epoch(&anvil) >= before);
    drop(relayer);
    s.claim_all_and_check(&anvil, &token, 1);
}

/// A relayer pointed at another contract, at a node of another chain, at a contract
/// deployed for another network, or given a config of another network than the
/// data directory's, refuses before sending anything.
#[test]
fn r_chain_3_relayer_refuses_another_contract_chain_or_network_before_sending() {
    let anvil = Anvil::start();
    let s = setup(1, 1);
    let router_address = s.router.as_ref().unwrap().ready.router_address.clone();
    // The contract at the router's configured address, but deployed for network 2
    // (a config saying network 2, no data directory).
    let config2 = Path::new(&s.config).with_file_name("router2.toml");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("network_id = 1", "network_id = 2");
    std::fs::write(&config2, text).unwrap();
    let config2 = config2.display().to_string();
    let out = chain_json(&[
        "deploy",
        "--config",
        &config2,
        "--router",
        &router_address,
        "--rpc",
        &anvil.url(),
        "--key-hex",
        DEPLOYER_KEY,
        "--test-token",
        "--poll-ms",
        "50",
    ]);
    assert_eq!(out["parameters"]["network_id"], 2);
    let relayer_address = address_of(RELAYER_KEY).to_string();
    let relay = |router: &[&str], rpc: &str, contract: &str| {
        let mut args = vec!["relay"];
        args.extend_from_slice(router);
        args.extend_from_slice(&[
            "--rpc",
            rpc,
            "--key-hex",
            RELAYER_KEY,
            "--metrics-listen",
            "127.0.0.1:0",
            "--contract",
            contract,
            "--until-epoch",
            "0",
        ]);
        let (ok, _, stderr) = chain(&args);
        assert!(!ok, "refused");
        stderr
    };
    let ours = ["--config", s.config.as_str(), "--data-dir", s.data.as_str()];
    // The deployed contract is of network 2, the data directory of network 1.
    let stderr = relay(&ours, &anvil.url(), &s.contract);
    assert!(
        stderr.contains("networkId()") && stderr.contains("network 2"),
        "{stderr}"
    );
    // Another contract than market.settlement_contract.
    let other = address_of(DEPLOYER_KEY).create(7).to_string();
    let stderr = relay(&ours, &anvil.url(), &other);
    assert!(
        stderr.contains("refusing to send") && stderr.contains("market.settlement_contract"),
        "{stderr}"
    );
    // The data directory read with a config of another network.
    let stderr = relay(
        &["--config", &config2, "--data-dir", &s.data],
        &anvil.url(),
        &s.contract,
    );
    assert!(
        stderr.contains("identity.network_id is 2, the data directory is of network 1"),
        "{stderr}"
    );
    // A node of another chain id.
    let port = free_port();
    let mut other_chain = Command::new(anvil_binary())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--chain-id",
            "5",
            "--silent",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let stderr = relay(&ours, &format!("http://127.0.0.1:{port}"), &s.contract);
    let _ = other_chain.kill();
    let _ = other_chain.wait();
    assert!(
        stderr.contains("chain 5") && stderr.contains("chain 31337"),
        "{stderr}"
    );
    assert_eq!(
        anvil.cast(&["nonce", &relayer_address]),
        "0",
        "nothing was sent"
    );

    // Issue 24 case 4: the router's export signs only for the data directory's network.
    let out = Command::new(yellowstone_tests::router_binary())
        .args([
            "settlement",
            "--data-dir",
            &s.data,
            "--network-id",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--network-id 2") && stderr.contains("network 1"),
        "{stderr}"
    );

    // R-CHAIN-3 on the wire: the in-router claim is refused naming the chain's;
    // ChainPaid for another contract, or above a provider's credit, is refused.
    use yellowstone_wire::*;
    let listen = s.router.as_ref().unwrap().ready.listen;
    let mut provider =
        yellowstone_tests::market::connect(listen, SigningKey::from_seed(b"chain-provider"));
    // A claim from an address that holds no MOR and never had a message accepted is
    // refused `unknown_sender` before the market sees it (R-PROV-3): a provider
    // claims, so fund it as one.
    let mut operator = yellowstone_tests::market::connect(listen, operator_key());
    yellowstone_tests::market::fund(
        &mut operator,
        &[(provider.address(), 1_000_000_000_000_000_000)],
    );
    let nonce = provider.next_nonce();
    let from = provider.address();
    provider
        .send_signed(
            Claim {
                from,
                nonce,
                amount_wei: 0,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    let refusal =
        yellowstone_tests::market::expect(&mut provider, Duration::from_secs(10), |m| match m {
            Message::ErrorReply(e) if e.ref_nonce == nonce => Some(e.clone()),
            _ => None,
        });
    assert_eq!(refusal.code, codes::CLAIM_ON_CHAIN);
    assert!(
        refusal.reason.contains("yellowstone-chain claim"),
        "{}",
        refusal.reason
    );
    let mut operator = yellowstone_tests::market::connect(listen, operator_key());
    let contract: Address = s.contract.parse().unwrap();
    let mut chain_paid = |contract: Address, paid_to_wei: u128| {
        let nonce = operator.next_nonce();
        let from = operator.address();
        operator
            .send_signed(
                ChainPaid {
                    from,
                    nonce,
                    chain_id: CHAIN_ID,
                    contract,
                    entries: vec![PaidEntry {
                        provider: from,
                        paid_to_wei,
                    }],
                    signature: Signature::default(),
                }
                .into(),
            )
            .unwrap();
        yellowstone_tests::market::expect(&mut operator, Duration::from_secs(10), |m| match m {
            Message::ErrorReply(e) if e.ref_nonce == nonce => Some(e.code),
            Message::Ack(a) if a.nonce == nonce => Some(0),
            _ => None,
        })
    };
    assert_eq!(chain_paid(Address([0xC0; 20]), 0), codes::WRONG_CHAIN);
    assert_eq!(
        chain_paid(contract, 1),
        codes::PAID_ABOVE_CREDIT,
        "never above the credit"
    );
    assert_eq!(
        chain_paid(contract, 0),
        0,
        "a figure within the credit is taken"
    );
}

/// `deploy --dry-run` prints every deployment parameter and where the contract
/// would land; `verify-deployment` refuses a contract deployed with other values.
#[test]
fn r_chain_2_deploy_dry_run_prints_every_parameter_and_verify_refuses_a_mismatch() {
    let anvil = Anvil::start();
    let s = setup(1, 1);
    let mut args: Vec<String> = vec!["deploy".into(), "--dry-run".into()];
    args.extend(s.router_args());
    args.extend(
        [
            "--rpc",
            &anvil.url(),
            "--key-hex",
            DEPLOYER_KEY,
            "--test-token",
        ]
        .map(String::from),
    );
    let out = chain_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let p = &out["parameters"];
    for key in [
        "router",
        "network_id",
        "epochs_per_day",
        "compute_emission_wei_per_day",
        "bootstrap_bonus_wei_per_day",
        "bootstrap_days",
        "pool_spend_bps",
        "burn_unused",
        "emission_wei_per_day",
        "settlement_chain_id",
        "settlement_contract",
    ] {
        assert!(!p[key].is_null(), "{key} missing: {out}");
    }
    assert_eq!(p["epochs_per_day"], 7_200);
    // Issue 24 case 5: print-config shows the same deployment parameters.
    let printed = Command::new(yellowstone_tests::router_binary())
        .args(["print-config", "--config", &s.config])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let text = String::from_utf8_lossy(&printed.stdout);
    for key in [
        "compute_emission_wei_per_day",
        "bootstrap_bonus_wei_per_day",
        "bootstrap_days",
        "pool_spend_bps",
        "burn_unused",
        "epochs_per_day",
    ] {
        let line = format!(
            "# {key} = {}",
            p[key].as_str().map_or(p[key].to_string(), str::to_string)
        );
        assert!(
            text.contains(&line),
            "{line} missing from print-config:\n{text}"
        );
    }
    assert_eq!(
        out["contract"].as_str().unwrap().to_lowercase(),
        s.contract.to_lowercase()
    );
    assert_eq!(out["matches_router_domain"], true);
    assert_eq!(
        anvil.cast(&["nonce", &address_of(DEPLOYER_KEY).to_string()]),
        "0",
        "a dry run sends nothing"
    );
    let (token, contract) = s.deploy(&anvil, 0);
    // The same contract checked against a router of other parameters.
    let other = Path::new(&s.config).with_file_name("other.toml");
    let text = std::fs::read_to_string(&s.config).unwrap() + "unused_budget = \"burn\"\n";
    std::fs::write(&other, text).unwrap();
    let router = address_of(DEPLOYER_KEY).to_string(); // any address: compared too
    let (ok, _, stderr) = chain(&[
        "verify-deployment",
        "--config",
        other.to_str().unwrap(),
        "--router",
        &router,
        "--rpc",
        &anvil.url(),
        "--contract",
        &contract,
        "--token",
        &token,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("burnUnused: deployed false, router true")
            && stderr.contains("router: deployed"),
        "{stderr}"
    );
}

/// Issue 24 case 2: a data directory created without a settlement contract refuses a
/// restart with one unless `--set-settlement-domain` (and says so), takes it once with
/// the flag (journaled: the export and `yellowstone-chain` then use it), and refuses
/// any other domain afterwards.
#[test]
fn r_chain_3_a_settlement_domain_is_set_once_on_a_directory_created_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let base = format!(
        "[market]\ngenesis_ms = {}\nsettlement_epoch_blocks = 1\n",
        now_ms() - 10_500
    );
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let none = write("none.toml", base.clone());
    let contract = address_of(DEPLOYER_KEY).create(1).to_string();
    let other = address_of(DEPLOYER_KEY).create(2).to_string();
    let with = |c: &str| {
        format!("{base}settlement_chain_id = {CHAIN_ID}\nsettlement_contract = \"{c}\"\n")
    };
    let set = write("set.toml", with(&contract));
    let moved = write("moved.toml", with(&other));
    let run = |config: &str, extra: &[&str]| {
        let mut args = vec![
            "--config",
            config,
            "--data-dir",
            data.as_str(),
            "--backend",
            "mio",
        ];
        args.extend_from_slice(extra);
        RouterProcess::start(&args)
    };
    let refused_with = |config: &str| {
        yellowstone_tests::refused(
            dir.path(),
            &[
                "run",
                "--config",
                config,
                "--data-dir",
                &data,
                "--backend",
                "mio",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        )
    };
    assert!(run(&none, &[]).terminate(Duration::from_secs(20)));
    let (code, stderr) = refused_with(&set);
    assert_ne!(code, 0);
    assert!(stderr.contains("--set-settlement-domain"), "{stderr}");
    assert!(run(&set, &["--set-settlement-domain"]).terminate(Duration::from_secs(20)));
    // Fixed from then on: the same domain starts without the flag; another is refused.
    let router = run(&set, &[]);
    std::thread::sleep(Duration::from_secs(13));
    assert!(router.terminate(Duration::from_secs(20)));
    let (code, stderr) = refused_with(&moved);
    assert_ne!(code, 0);
    assert!(stderr.contains("fixed once set"), "{stderr}");
    // The router's export signs for the domain now set.
    let out = router_json(&["settlement", "--data-dir", &data, "--json"]);
    assert_eq!(
        out["contract"].as_str().unwrap().to_lowercase(),
        contract.to_lowercase()
    );
    assert_eq!(out["chain_id"], CHAIN_ID);
    // And yellowstone-chain reads the same domain from the data directory.
    let out = chain_json(&[
        "deploy",
        "--dry-run",
        "--config",
        &set,
        "--data-dir",
        &data,
        "--test-token",
    ]);
    assert_eq!(
        out["parameters"]["settlement_contract"]
            .as_str()
            .unwrap()
            .to_lowercase(),
        contract.to_lowercase()
    );
}

/// The relayer stops rather than skip an epoch: the contract's next epoch is older
/// than the router still keeps (`market.settlements_kept_max`), so it exits naming
/// the epoch and sends nothing.
#[test]
fn r_chain_2_relayer_stops_rather_than_skip_an_epoch() {
    let anvil = Anvil::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let contract = address_of(DEPLOYER_KEY).create(1).to_string();
    let config = dir.path().join("router.toml");
    // Genesis 40 s ago: three epochs are sealed at once, and only the last two kept.
    std::fs::write(
        &config,
        format!(
            "[market]\ngenesis_ms = {}\nsettlement_epoch_blocks = 1\nsettlements_kept_max = 2\nsettlement_chain_id = {CHAIN_ID}\nsettlement_contract = \"{contract}\"\n",
            now_ms() - 40_000
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let router =
        RouterProcess::start(&["--config", &config, "--data-dir", &data, "--backend", "mio"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while router_json(&["ledger", "--data-dir", &data, "--json"])["block"]
        .as_u64()
        .unwrap()
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "three blocks sealed");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = chain_json(&[
        "deploy",
        "--config",
        &config,
        "--data-dir",
        &data,
        "--rpc",
        &anvil.url(),
        "--key-hex",
        DEPLOYER_KEY,
        "--test-token",
        "--poll-ms",
        "50",
    ]);
    assert_eq!(out["verified"], true);
    let (ok, _, stderr) = chain(&[
        "relay",
        "--config",
        &config,
        "--data-dir",
        &data,
        "--rpc",
        &anvil.url(),
        "--key-hex",
        RELAYER_KEY,
        "--contract",
        &contract,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    drop(router);
    assert!(!ok, "stopped");
    assert!(
        stderr.contains("epoch 0 is the contract's next")
            && stderr.contains("cannot skip an epoch"),
        "{stderr}"
    );
    assert_eq!(
        anvil.cast(&["nonce", &address_of(RELAYER_KEY).to_string()]),
        "0",
        "nothing was sent"
    );
}
