//! Issue 18 item 1 (ARCHITECTURE.md, "Latency: what waits for the disk"): a probe
//! leaves as soon as the engine has matched, before the RFC's record is durable. If
//! a crash then loses that record (a power cut loses what was not yet fsynced), the
//! provider's answer to the probe, after the restart, must get a clear refusal
//! (UNKNOWN_PROBE), no session, and nothing charged twice: the user's RFC, sent
//! again, is accepted with the quota of one RFC.
//!
//! The power cut is simulated through the real binary: SIGKILL, then the journal's
//! last segment is cut back to its length before the RFC was sent (what the disk
//! would hold had the RFC's write never reached it), then a restart on the same
//! data directory. Both network backends.

use std::path::{Path, PathBuf};
use std::time::Duration;
use yellowstone_tests::market::*;
use yellowstone_tests::RouterProcess;
use yellowstone_wire::*;

fn last_segment(data_dir: &Path) -> PathBuf {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(data_dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            let first = name.strip_prefix("journal-")?.strip_suffix(".log")?;
            Some((first.parse().ok()?, path))
        })
        .collect();
    segments.sort();
    segments.pop().expect("a journal segment").1
}

/// Where the segment's records end: the file is zero-filled ahead of them
/// (journal.preallocate_bytes), so its size says nothing.
fn data_end(segment: &Path) -> u64 {
    let bytes = std::fs::read(segment).unwrap();
    let mut at = yellowstone_gateway::journal::files::SEGMENT_HEADER_BYTES;
    while let Ok(record) = yellowstone_gateway::journal::record::parse(&bytes[at..]) {
        at += record.framed_len;
    }
    assert!(
        bytes[at..].iter().all(|b| *b == 0),
        "only zeros after the records"
    );
    at as u64
}

fn lost_rfc_probe_is_refused_after_restart(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("router.toml");
    // Block 0 ends far after the test: no seal, no batch in the way.
    std::fs::write(
        &config,
        format!("[market]\ngenesis_ms = {}\n", now_ms() - 1_000),
    )
    .unwrap();
    let operator_key = operator_key();
    let operator_address = operator_key.address().to_string();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--backend",
        backend,
        "--durability",
        "always",
        "--operator",
        &operator_address,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    let user_key = SigningKey::from_seed(b"lost-probe-user");
    let provider_key = SigningKey::from_seed(b"lost-probe-provider");

    let router = RouterProcess::start(&args);
    let (addr, network_id) = (router.ready.listen, router.ready.network_id);
    let mut operator = connect(addr, operator_key.clone());
    let mut user = connect(addr, user_key.clone());
    let mut provider = connect(addr, provider_key.clone());
    fund(
        &mut operator,
        &[
            (user.address(), 5 * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    register(&mut provider, network_id, 1, 1_000_000, 4);
    // Acknowledged in `always`: funding and registration are on disk by now.
    let segment = last_segment(&data_dir);
    let kept_len = data_end(&segment);

    let rfc = |user: &mut yellowstone_wire::client::Client| {
        let nonce = user.next_nonce();
        let rfc = Rfc {
            from: user.address(),
            nonce,
            model_id: 1,
            tokens_max: 500,
            expires_at_ms: now_ms() + 30_000,
            signature: Signature::default(),
        };
        user.send_signed(rfc.into()).unwrap();
        nonce
    };
    rfc(&mut user);
    let lost_probe = expect(&mut provider, Duration::from_secs(10), |m| match m {
        Message::Probe(p) => Some(p.probe_id),
        _ => None,
    });
    // The power cut: the RFC's record (and whatever followed) never reached the disk.
    router.kill_hard();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    // The journal thread may not even have written it yet (the probe does not wait):
    // then there is nothing to cut. Whatever follows is lost as the disk would lose
    // it; the preallocated room stays (zeros), as it would on the disk.
    let file_len = file.metadata().unwrap().len();
    assert!(data_end(&segment) >= kept_len);
    file.set_len(kept_len).unwrap();
    file.set_len(file_len).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let router = RouterProcess::start(&args);
    let addr = router.ready.listen;
    let mut provider = connect(addr, provider_key);
    assert_eq!(router.ready.network_id, network_id);
    let mut user = connect(addr, user_key);
    // The provider answers the probe it got before the crash: the recovered engine
    // never sent it.
    let nonce = provider.next_nonce();
    provider
        .send_signed(
            ProbeAnswer {
                from: provider.address(),
                nonce,
                probe_id: lost_probe,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    let refusal = expect(&mut provider, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(e.clone()),
        Message::SessionTicket(t) => panic!("{backend}: a lost probe opened a session: {t:?}"),
        _ => None,
    });
    assert_eq!(refusal.code, codes::UNKNOWN_PROBE, "{backend}: {refusal:?}");
    // The provider registers on its new connection (routes are per connection).
    register(&mut provider, network_id, 1, 1_000_000, 4);
    // Nothing was charged for the lost RFC: sent again, it reserves one RFC's tokens.
    let nonce = rfc(&mut user);
    let tokens_left = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::RfcAccepted(a) if a.nonce == nonce => Some(a.tokens_left),
        Message::ErrorReply(e) => panic!("{backend}: rfc refused: {e:?}"),
        _ => None,
    });
    assert_eq!(tokens_left, 15_000 - 500, "{backend}: charged once");
    // And the market works on: the new probe is answered with a ticket.
    answer_next_probe(&mut provider, Duration::from_secs(10));
    expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) => Some(t.session_id),
        _ => None,
    });
    router.kill_hard();
}

#[test]
fn a_probe_whose_rfc_record_a_crash_lost_is_refused_after_restart_uring() {
    lost_rfc_probe_is_refused_after_restart("uring");
}

#[test]
fn a_probe_whose_rfc_record_a_crash_lost_is_refused_after_restart_mio() {
    lost_rfc_probe_is_refused_after_restart("mio");
}
