//! Golden vectors (`wire/golden/vectors.json`): hex frames with the keys that signed
//! them, the network id, the decoded fields and the recovered signer, so that a
//! client in another language can be checked against them. This test checks that the
//! code still produces those exact bytes and accepts them.
//!
//! Regenerate (only when the protocol changes on purpose):
//! `YELLOWSTONE_WRITE_GOLDEN=1 cargo test -p yellowstone-wire --test golden`

mod common;
use serde_json::{json, Value};
use yellowstone_wire::codec::Reader;
use yellowstone_wire::frame::{FrameDecoder, FLAG_RESPONSE, HEADER_LEN};
use yellowstone_wire::signature::weights_proof_digest;
use yellowstone_wire::*;

const NET: u32 = 1;
const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/vectors.json");

fn keys() -> Vec<(&'static str, SigningKey)> {
    vec![
        ("user", SigningKey::from_bytes(&[0x11; 32]).unwrap()),
        ("provider", SigningKey::from_bytes(&[0x22; 32]).unwrap()),
        ("operator", SigningKey::from_bytes(&[0x33; 32]).unwrap()),
        ("router", SigningKey::from_bytes(&[0x44; 32]).unwrap()),
    ]
}

fn vectors() -> Vec<(String, Message, Option<&'static str>)> {
    let k = keys();
    let user = k[0].1.address();
    let provider = k[1].1.address();
    let operator = k[2].1.address();
    let router = k[3].1.address();
    let weights = [0xAB; 32];
    let proof = k[1].1.sign_digest(&weights_proof_digest(NET, 1, &weights));
    let sig = Signature::default();
    let list: Vec<(Message, Option<&'static str>)> = vec![
        (
            LoginChallenge {
                challenge: [0x5A; 32],
                network_id: NET,
                router,
            }
            .into(),
            None,
        ),
        (
            LoginAnswer {
                address: user,
                challenge: [0x5A; 32],
                signature: sig,
            }
            .into(),
            Some("user"),
        ),
        (LoginOk { address: user }.into(), None),
        (
            RegisterProvider {
                from: provider,
                nonce: 1,
                endpoint: "203.0.113.7:8443".into(),
                offers: vec![Offer {
                    model_id: 1,
                    unit: 0,
                    weights_hash: weights,
                    weights_proof: proof,
                    price_wei_per_token: 100_000_000_000,
                    capacity: 16,
                }],
                signature: sig,
            }
            .into(),
            Some("provider"),
        ),
        (
            UpdateBid {
                from: provider,
                nonce: 2,
                model_id: 1,
                price_wei_per_token: 90_000_000_000,
                capacity: 32,
                signature: sig,
            }
            .into(),
            Some("provider"),
        ),
        (
            WithdrawBid {
                from: provider,
                nonce: 3,
                model_id: 1,
                signature: sig,
            }
            .into(),
            Some("provider"),
        ),
        (
            ProviderAnnounce {
                from: provider,
                nonce: 4,
                signature: sig,
            }
            .into(),
            Some("provider"),
        ),
        (
            Rfc {
                from: user,
                nonce: 1,
                model_id: 1,
                tokens_max: 512,
                expires_at_ms: 1_767_225_600_000,
                signature: sig,
            }
            .into(),
            Some("user"),
        ),
        (
            RfcCancel {
                from: user,
                nonce: 2,
                rfc_id: 16_777_217,
                signature: sig,
            }
            .into(),
            Some("user"),
        ),
        (
            RfcAccepted {
                nonce: 1,
                rfc_id: 16_777_217,
                tokens_left: 14_488,
            }
            .into(),
            None,
        ),
        (
            RfcFailed {
                nonce: 1,
                rfc_id: 16_777_217,
                reason: 1,
                refunded_tokens: 512,
            }
            .into(),
            None,
        ),
        (
            Probe {
                probe_id: 33_554_432,
                model_id: 1,
                tokens_max: 512,
                deadline_ms: 1_767_225_602_000,
            }
            .into(),
            None,
        ),
        (
            ProbeAnswer {
                from: provider,
                nonce: 5,
                probe_id: 33_554_432,
                signature: sig,
            }
            .into(),
            Some("provider"),
        ),
        (
            SessionTicket {
                session_id: 50_331_648,
                user,
                provider,
                endpoint: "203.0.113.7:8443".into(),
                model_id: 1,
                tokens_max: 512,
                price_wei_per_token: 90_000_000_000,
                expires_at_ms: 1_767_226_200_000,
                rfc_nonce: 1,
                signature: sig,
            }
            .into(),
            Some("router"),
        ),
        (
            Report {
                from: user,
                nonce: 3,
                session_id: 50_331_648,
                elapsed_ms: 2_048,
                ttft_ms: 312,
                tokens: 400,
                prompt_tokens: 1_523,
                outcome: Outcome::Pass,
                signature: sig,
            }
            .into(),
            Some("user"),
        ),
        (
            // R-REPORT-2: a void report (the prompt was over the model's context).
            Report {
                from: user,
                nonce: 4,
                session_id: 50_331_649,
                elapsed_ms: 35,
                ttft_ms: 35,
                tokens: 0,
                prompt_tokens: 200_000,
                outcome: Outcome::Void,
                signature: sig,
            }
            .into(),
            Some("user"),
        ),
        (
            // R-SESSION-1: the provider signs that the session's inference began.
            SessionStart {
                from: provider,
                nonce: 6,
                session_id: 50_331_648,
                signature: sig,
            }
            .into(),
            Some("provider"),
        ),
        (
            ReportAck {
                nonce: 3,
                session_id: 50_331_648,
                earned: true,
                reason: 0,
                earned_wei: 36_000_000_000_000,
            }
            .into(),
            None,
        ),
        (
            SubscribeBatches {
                from: operator,
                nonce: 1,
                signature: sig,
            }
            .into(),
            Some("operator"),
        ),
        (
            CreditBatch {
                block: 42,
                merkle_root: [0xCD; 32],
                receipts: 1,
                credited_wei: 36_000_000_000_000,
                shortfall_wei: 0,
                totals: vec![BatchTotals {
                    provider,
                    earned_wei: 36_000_000_000_000,
                    credited_wei: 36_000_000_000_000,
                    tokens: 400,
                    sessions: 1,
                }],
                signature: sig,
            }
            .into(),
            Some("router"),
        ),
        (
            Settlement {
                epoch: 3,
                day: 0,
                first_block: 900,
                last_block: 1_199,
                credited_wei: 36_000_000_000_000,
                bootstrap_wei: 0,
                credited_cumulative_wei: 72_000_000_000_000,
                providers: 1,
                merkle_root: [0xEF; 32],
                chain_id: 31_337,
                contract: provider,
                eip712_signature: Signature([0x1B; 65]),
                signature: sig,
            }
            .into(),
            Some("router"),
        ),
        (
            Claim {
                from: provider,
                nonce: 6,
                amount_wei: 0,
                signature: sig,
            }
            .into(),
            Some("provider"),
        ),
        (
            ClaimAck {
                nonce: 6,
                amount_wei: 36_000_000_000_000,
                owed_left_wei: 0,
            }
            .into(),
            None,
        ),
        (
            BalanceUpdate {
                from: operator,
                nonce: 2,
                entries: vec![BalanceEntry {
                    address: user,
                    balance_wei: 5_000_000_000_000_000_000,
                }],
                signature: sig,
            }
            .into(),
            Some("operator"),
        ),
        (
            SetParams {
                from: operator,
                nonce: 3,
                params: vec![ParamEntry {
                    param_id: 4,
                    value: 50,
                }],
                signature: sig,
            }
            .into(),
            Some("operator"),
        ),
        (Ack { nonce: 3 }.into(), None),
        (
            ChainPaid {
                from: operator,
                nonce: 4,
                chain_id: 31_337,
                contract: Address([0xC0; 20]),
                entries: vec![PaidEntry {
                    provider,
                    paid_to_wei: 1_250_000_000_000_000_000,
                }],
                signature: sig,
            }
            .into(),
            Some("operator"),
        ),
        (
            Notice {
                kind: 2,
                until_ms: 1_767_225_660_000,
            }
            .into(),
            None,
        ),
        (
            Ping {
                payload: 0x0102030405060708,
            }
            .into(),
            None,
        ),
        (
            Pong {
                payload: 0x0102030405060708,
            }
            .into(),
            None,
        ),
        (CatalogQuery { query_id: 9 }.into(), None),
        (
            Catalog {
                query_id: 9,
                as_of_ms: 1_767_225_600_000,
                models: vec![
                    CatalogModel {
                        model_id: 1,
                        unit: 0,
                        weights_hash: *blake3::hash(b"yellowstone-demo-model-1").as_bytes(),
                        best_price_wei_per_token: 1_000_000_000,
                        offers_live: 2,
                        name: "demo-model-1".into(),
                    },
                    CatalogModel {
                        model_id: 2,
                        unit: 0,
                        weights_hash: *blake3::hash(b"yellowstone-demo-model-2").as_bytes(),
                        best_price_wei_per_token: 0,
                        offers_live: 0,
                        name: "demo-model-2".into(),
                    },
                ],
            }
            .into(),
            None,
        ),
        (MarketStateQuery { query_id: 7 }.into(), None),
        (common::sample_market_state().into(), None),
        (
            ErrorReply {
                code: 0x0203,
                ref_msg_type: 0x0020,
                ref_nonce: 1,
                retry_after_ms: 0,
                detail: 15_000,
                reason: "quota exceeded: 15000 tokens left today".into(),
            }
            .into(),
            None,
        ),
        // R-HA-3: the greeting of a member that does not lead (docs/PROTOCOL.md §3).
        (
            not_leader_reply(2, Some("127.0.0.1:7401".parse().unwrap()), 600).into(),
            None,
        ),
    ];
    list.into_iter()
        .map(|(m, signer)| (m.name().to_string(), m, signer))
        .collect()
}

/// Who sends a message (`Message::is_sent_by_client`). Router frames carry
/// FLAG_RESPONSE.
fn sent_by_router(message: &Message) -> bool {
    !message.is_sent_by_client()
}

/// A second, table-driven decoder: walks a body by the catalog's field types
/// (`CATALOG`, `RECORDS`) and gives the values as JSON (u128 as decimal strings,
/// bytes as hex, addresses EIP-55), for clients in other languages to compare.
fn walk(ty: &str, r: &mut Reader<'_>) -> Value {
    match ty {
        "u8" => json!(r.u8("u8").unwrap()),
        "u16" => json!(r.u16("u16").unwrap()),
        "u32" => json!(r.u32("u32").unwrap()),
        "u64" => json!(r.u64("u64").unwrap()),
        "u128" => json!(r.u128("u128").unwrap().to_string()),
        "bool" => json!(r.bool("bool").unwrap()),
        "Outcome" => json!(r.u8("outcome").unwrap()),
        "[u8; 32]" => json!(hex::encode(r.bytes32("bytes32").unwrap())),
        "Address" => json!(r.address("address").unwrap().to_string()),
        "Signature" => json!(hex::encode(r.signature("signature").unwrap().0)),
        "String" => json!(r.string("string", usize::MAX).unwrap()),
        list => {
            let item = list
                .strip_prefix("Vec<")
                .and_then(|t| t.strip_suffix('>'))
                .unwrap_or_else(|| panic!("unknown field type {list}"));
            let (_, fields) = RECORDS
                .iter()
                .find(|(name, _)| *name == item)
                .unwrap_or_else(|| panic!("record {item} not in RECORDS"));
            let len = r.list_len("list", usize::MAX, 0).unwrap();
            (0..len).map(|_| walk_fields(fields, r)).collect()
        }
    }
}

fn walk_fields(fields: &[(&str, &str)], r: &mut Reader<'_>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, ty) in fields {
        out.insert(name.to_string(), walk(ty, r));
    }
    Value::Object(out)
}

fn fields_of(msg_type: u16, body: &[u8]) -> Value {
    let info = CATALOG
        .iter()
        .find(|i| i.msg_type == msg_type)
        .expect("in the catalog");
    let mut r = Reader::new(body);
    let value = walk_fields(info.fields, &mut r);
    assert_eq!(r.remaining(), 0, "{} walked whole", info.name);
    value
}

fn build() -> Value {
    let keys = keys();
    let key_of = |name: &str| {
        keys.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| k.clone())
            .unwrap()
    };
    let mut out = Vec::new();
    for (name, mut message, signer) in vectors() {
        let flags = if sent_by_router(&message) {
            FLAG_RESPONSE
        } else {
            0
        };
        let mut frame = Vec::new();
        match signer {
            Some(signer) => message.sign_frame_into(&key_of(signer), NET, flags, &mut frame),
            None => message.write_frame(flags, &mut frame),
        }
        out.push(json!({
            "name": name,
            "msg_type": message.msg_type(),
            "sender": if flags == FLAG_RESPONSE { "router" } else { "client" },
            "frame_hex": hex::encode(&frame),
            "signer": signer.map(|s| key_of(s).address().to_string()),
            "fields": format!("{message:?}"),
            "values": fields_of(message.msg_type(), &frame[HEADER_LEN..]),
        }));
    }
    json!({
        "network_id": NET,
        "domain_tag": "yellowstone/v1",
        "digest": "BLAKE3(domain_tag || network_id u32 LE || msg_type u16 LE || body without the trailing 65-byte signature); login answers sign BLAKE3(domain_tag || network_id || 0xFF02 LE || challenge); weights proofs sign BLAKE3(domain_tag || network_id || 0xFF01 LE || model_id u32 LE || weights_hash); see docs/PROTOCOL.md",
        "flags": "router frames carry flags 0x01 (FLAG_RESPONSE), client frames 0x00",
        "values": "the fields decoded by type: u128 as a decimal string, bytes and signatures as lower-case hex, addresses EIP-55",
        "keys": keys.iter().map(|(n, k)| json!({"name": n, "secret_hex": hex::encode(k.secret_bytes()), "address": k.address().to_string()})).collect::<Vec<_>>(),
        "vectors": out,
    })
}

#[test]
fn golden_vectors_are_produced_and_accepted_byte_for_byte() {
    let fresh = build();
    if std::env::var("YELLOWSTONE_WRITE_GOLDEN").is_ok() {
        std::fs::create_dir_all(std::path::Path::new(PATH).parent().unwrap()).unwrap();
        std::fs::write(PATH, serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("golden file exists")).unwrap();
    assert_eq!(
        stored, fresh,
        "the code no longer produces the committed golden frames"
    );
    let mut names: Vec<&str> = stored["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names.dedup(); // a message type may have several vectors (Report: pass and void)
    let mut catalog: Vec<&str> = CATALOG.iter().map(|i| i.name).collect();
    catalog.sort_unstable();
    assert_eq!(names, catalog, "every message type has a golden vector");
    let router = stored["keys"][3]["address"]
        .as_str()
        .unwrap()
        .parse::<Address>()
        .unwrap();
    for vector in stored["vectors"].as_array().unwrap() {
        let bytes = hex::decode(vector["frame_hex"].as_str().unwrap()).unwrap();
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.extend(&bytes);
        let frame = decoder.next_frame().unwrap().unwrap();
        let message = Message::decode(frame.header.msg_type, &frame.body).unwrap();
        assert_eq!(format!("{message:?}"), vector["fields"].as_str().unwrap());
        let router_flag = frame.header.flags == FLAG_RESPONSE;
        assert_eq!(router_flag, sent_by_router(&message), "{}", vector["name"]);
        assert_eq!(
            fields_of(frame.header.msg_type, &frame.body),
            vector["values"]
        );
        if let Some(signer) = vector["signer"].as_str() {
            let signer: Address = signer.parse().unwrap();
            if message.claimed_origin().is_some() {
                assert_eq!(
                    message.verify(NET, &frame.body),
                    Ok(signer),
                    "{}",
                    vector["name"]
                );
            } else {
                assert_eq!(signer, router);
                assert_eq!(
                    message.verify_router(NET, &frame.body, &router),
                    Ok(()),
                    "{}",
                    vector["name"]
                );
            }
        }
    }
}
