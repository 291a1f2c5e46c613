//! End to end (R-CHAIN-1, R-CLAIM-1): the real `yellowstone-router` binary runs a
//! market with one-block epochs for a few epochs; its SETTLEMENT messages reach a
//! batch subscriber; after it stops, `yellowstone-router settlement --json` exports
//! every epoch and `claim-proof --json` each provider's proof; the exported calldata
//! is relayed to the Compute Contract in the EVM, and the providers' claims pay what
//! the router credited them.

mod common;

use common::Deployment;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use yellowstone_contract::artifacts::DeployParams;
use yellowstone_contract::settlement_digest;
use yellowstone_engine::settlement::SettlementRecord;
use yellowstone_engine::MarketConfig;
use yellowstone_tests::market::*;
use yellowstone_tests::{router_binary, RouterProcess};
use yellowstone_wire::*;

const CHAIN_ID: u64 = 31_337;

fn run_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(router_binary())
        .args(args)
        .output()
        .expect("run yellowstone-router");
    assert!(
        output.status.success(),
        "yellowstone-router {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn bytes_of(value: &serde_json::Value) -> Vec<u8> {
    hex::decode(value.as_str().expect("hex string").trim_start_matches("0x")).expect("hex")
}

/// Opens a session of `user` on model 1 (RFC, probe answer, ticket).
fn open(user: &mut client::Client, providers: &mut [client::Client]) -> SessionTicket {
    let rfc_nonce = user.next_nonce();
    user.send_signed(
        Rfc {
            from: user.address(),
            nonce: rfc_nonce,
            model_id: 1,
            tokens_max: 400,
            expires_at_ms: now_ms() + 30_000,
            signature: Signature::default(),
        }
        .into(),
    )
    .unwrap();
    // The cheapest provider with free capacity gets the probe.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (index, probe) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no probe reached a provider"
        );
        let found = providers.iter_mut().enumerate().find_map(|(i, p)| {
            p.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            match p.recv() {
                Ok(Message::Probe(probe)) => Some((i, probe)),
                _ => None,
            }
        });
        if let Some(found) = found {
            break found;
        }
    };
    let provider = &mut providers[index];
    provider
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let nonce = provider.next_nonce();
    provider
        .send_signed(
            ProbeAnswer {
                from: provider.address(),
                nonce,
                probe_id: probe.probe_id,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    expect(user, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) => Some(t.clone()),
        Message::ErrorReply(e) => panic!("refused: {e:?}"),
        _ => None,
    })
}

/// Reports a session as passed; returns the provider credited and the amount.
fn report(user: &mut client::Client, ticket: &SessionTicket) -> (Address, u128) {
    let nonce = user.next_nonce();
    user.send_signed(
        Report {
            from: user.address(),
            nonce,
            session_id: ticket.session_id,
            elapsed_ms: 800,
            tokens: 300,
            ttft_ms: 0,
            prompt_tokens: 0,
            outcome: Outcome::Pass,
            signature: Signature::default(),
        }
        .into(),
    )
    .unwrap();
    let ack = expect(user, Duration::from_secs(10), |m| match m {
        Message::ReportAck(a) if a.nonce == nonce => Some(a.clone()),
        Message::ErrorReply(e) => panic!("report refused: {e:?}"),
        _ => None,
    });
    assert!(ack.earned);
    (ticket.provider, ack.earned_wei)
}

#[test]
fn r_chain_1_router_settlements_relayed_to_the_contract_pay_the_providers() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.display().to_string();
    // The contract's address is known before it exists: the deployer's second creation.
    let deployer = yellowstone_engine::Address([0xD0; 20]);
    let contract = alloy_primitives::Address::from(deployer.0).create(1);
    let config_path = dir.path().join("router.toml");
    // Block 0 ends about 1.5 s after start; every block is an epoch.
    std::fs::write(
        &config_path,
        format!(
            "[market]\ngenesis_ms = {}\nsettlement_epoch_blocks = 1\nsettlement_chain_id = {CHAIN_ID}\nsettlement_contract = \"{contract}\"\n",
            now_ms() - 10_500
        ),
    )
    .unwrap();
    let config = config_path.display().to_string();
    let operator_key = operator_key();
    let operator_address = operator_key.address().to_string();
    let router = RouterProcess::start(&[
        "--config",
        &config,
        "--data-dir",
        &data,
        "--operator",
        &operator_address,
    ]);
    let addr = router.ready.listen;
    let network_id = router.ready.network_id;
    let router_address: Address = router.ready.router_address.parse().unwrap();

    let mut operator = connect(addr, operator_key);
    let mut user = connect(addr, SigningKey::from_seed(b"e2e-settlement-user"));
    let mut providers: Vec<client::Client> = (0..2u8)
        .map(|i| connect(addr, SigningKey::from_seed(&[b'p', i])))
        .collect();
    let mut entries = vec![(user.address(), 500 * WEI_PER_MOR)];
    entries.extend(providers.iter().map(|p| (p.address(), WEI_PER_MOR)));
    fund(&mut operator, &entries);
    let nonce = operator.next_nonce();
    operator
        .send_signed(
            SubscribeBatches {
                from: operator.address(),
                nonce,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    for (i, provider) in providers.iter_mut().enumerate() {
        // Capacity 1 each: a second session at once goes to the dearer provider.
        register(provider, network_id, 1, 1_000_000 + i as u128 * 500_000, 1);
    }

    // Two rounds of sessions, each in its own epoch, waiting for its settlement.
    let mut credited: BTreeMap<Address, u128> = BTreeMap::new();
    let mut published: Vec<messages::Settlement> = Vec::new();
    for _round in 0..2 {
        // Two sessions at once (capacity 1 each: both providers serve one), then one.
        let first = open(&mut user, &mut providers);
        let second = open(&mut user, &mut providers);
        assert_ne!(first.provider, second.provider);
        let third = {
            let (provider, amount) = report(&mut user, &first);
            *credited.entry(provider).or_insert(0) += amount;
            let (provider, amount) = report(&mut user, &second);
            *credited.entry(provider).or_insert(0) += amount;
            open(&mut user, &mut providers)
        };
        let (provider, amount) = report(&mut user, &third);
        *credited.entry(provider).or_insert(0) += amount;
        let total: u128 = credited.values().sum();
        // SETTLEMENT messages arrive after each epoch; wait for one that has it all.
        loop {
            let settlement = expect(&mut operator, Duration::from_secs(30), |m| match m {
                Message::Settlement(s) => {
                    let mut body = Vec::new();
                    m.encode(&mut body);
                    m.verify_router(network_id, &body, &router_address)
                        .expect("settlement signed by the router");
                    Some(s.clone())
                }
                _ => None,
            });
            // Epoch 0 may end before the subscription; from then on, none is missing.
            if let Some(last) = published.last() {
                assert_eq!(settlement.epoch, last.epoch + 1, "in order, none missing");
            }
            published.push(settlement.clone());
            if settlement.credited_cumulative_wei == total {
                break;
            }
        }
    }
    assert!(
        credited.len() == 2,
        "both providers were credited: {credited:?}"
    );
    assert!(router.terminate(Duration::from_secs(20)), "clean exit");

    // Deploy the contract with the router's market parameters.
    let market = MarketConfig {
        settlement_epoch_blocks: 1,
        ..MarketConfig::default()
    };
    let params = DeployParams::from_market(
        &market,
        yellowstone_engine::Address::default(),
        yellowstone_engine::Address(router_address.0),
        network_id,
    );
    let mut d = Deployment::new(CHAIN_ID, params.clone());
    assert_eq!(
        d.contract.0, contract.0 .0,
        "deployed where the router was told"
    );
    d.fund(params.compute_emission_wei_per_day + params.bootstrap_bonus_wei_per_day);
    let relayer = yellowstone_engine::Address([0x5E; 20]);
    d.chain.open_account(&relayer);

    // Relay every exported settlement from epoch 0, checking each against the
    // published one where the subscriber saw it.
    let last_epoch = published.last().expect("settlements published").epoch;
    for number in 0..=last_epoch {
        let epoch = number.to_string();
        let exported = run_json(&[
            "settlement",
            "--data-dir",
            &data,
            "--epoch",
            &epoch,
            "--json",
            "--config",
            &config,
        ]);
        let contract = d.contract;
        let Some(message) = published.iter().find(|m| m.epoch == number) else {
            d.chain
                .send(&relayer, &contract, bytes_of(&exported["calldata"]))
                .expect_ok(&format!("settle epoch {epoch}"));
            continue;
        };
        assert_eq!(
            bytes_of(&exported["signature"]),
            message.eip712_signature.0.to_vec()
        );
        assert_eq!(
            bytes_of(&exported["merkle_root"]),
            message.merkle_root.to_vec()
        );
        let record = SettlementRecord {
            epoch: message.epoch,
            day: message.day,
            first_block: message.first_block,
            last_block: message.last_block,
            credited_wei: message.credited_wei,
            bootstrap_wei: message.bootstrap_wei,
            credited_cumulative_wei: message.credited_cumulative_wei,
            providers: message.providers,
            merkle_root: message.merkle_root,
        };
        let digest = settlement_digest(&record, network_id, CHAIN_ID, &d.contract);
        assert_eq!(bytes_of(&exported["eip712_digest"]), digest.to_vec());
        d.chain
            .send(&relayer, &contract, bytes_of(&exported["calldata"]))
            .expect_ok(&format!("settle epoch {epoch}"));
        d.check_solvent();
    }
    // Each provider claims with the proof the router prints.
    for (provider, amount) in &credited {
        let provider_text = provider.to_string();
        let proof = run_json(&[
            "claim-proof",
            "--data-dir",
            &data,
            "--provider",
            &provider_text,
            "--json",
        ]);
        assert_eq!(proof["cumulative_wei"], amount.to_string());
        let contract = d.contract;
        d.chain
            .send(&relayer, &contract, bytes_of(&proof["calldata"]))
            .expect_ok("claim");
        assert_eq!(
            d.balance_of(&yellowstone_engine::Address(provider.0)),
            *amount,
            "paid to the wei"
        );
    }
    d.check_solvent();
    // An epoch not settled yet is a clear error, not a guess.
    let output = Command::new(router_binary())
        .args([
            "settlement",
            "--data-dir",
            &data,
            "--epoch",
            "999999",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not settled yet"));
}
