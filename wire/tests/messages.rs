//! Round trips for every message, every malformed case with its specific error, and
//! signature checks on whole frames (R-ID-2, R-ID-3).

mod common;
use proptest::prelude::*;
use yellowstone_wire::frame::{FrameDecoder, FrameError, HEADER_LEN};
use yellowstone_wire::signature::{to_high_s, weights_proof_digest};
use yellowstone_wire::*;

const NET: u32 = 7;

fn key(name: &str) -> SigningKey {
    SigningKey::from_seed(name.as_bytes())
}

/// One instance of every message type, with every field set.
pub fn samples() -> Vec<Message> {
    let a = key("alice").address();
    let p = key("provider").address();
    let offer = Offer {
        model_id: 3,
        unit: 0,
        weights_hash: [9; 32],
        weights_proof: key("provider").sign_digest(&weights_proof_digest(NET, 3, &[9; 32])),
        price_wei_per_token: 1_000_000_000,
        capacity: 8,
    };
    vec![
        LoginChallenge {
            challenge: [1; 32],
            network_id: NET,
            router: p,
        }
        .into(),
        LoginAnswer {
            address: a,
            challenge: [1; 32],
            signature: Signature::default(),
        }
        .into(),
        LoginOk { address: a }.into(),
        RegisterProvider {
            from: p,
            nonce: 1,
            endpoint: "10.0.0.1:9000".into(),
            offers: vec![offer.clone(), offer],
            signature: Signature::default(),
        }
        .into(),
        UpdateBid {
            from: p,
            nonce: 2,
            model_id: 3,
            price_wei_per_token: 5,
            capacity: 4,
            signature: Signature::default(),
        }
        .into(),
        WithdrawBid {
            from: p,
            nonce: 3,
            model_id: 3,
            signature: Signature::default(),
        }
        .into(),
        ProviderAnnounce {
            from: p,
            nonce: 4,
            signature: Signature::default(),
        }
        .into(),
        Rfc {
            from: a,
            nonce: 5,
            model_id: 3,
            tokens_max: 100,
            expires_at_ms: 1_700_000_060_000,
            signature: Signature::default(),
        }
        .into(),
        RfcCancel {
            from: a,
            nonce: 6,
            rfc_id: 77,
            signature: Signature::default(),
        }
        .into(),
        RfcAccepted {
            nonce: 5,
            rfc_id: 77,
            tokens_left: 14_900,
        }
        .into(),
        RfcFailed {
            nonce: 5,
            rfc_id: 77,
            reason: 1,
            refunded_tokens: 100,
        }
        .into(),
        Probe {
            probe_id: 88,
            model_id: 3,
            tokens_max: 100,
            deadline_ms: 1_700_000_002_000,
        }
        .into(),
        ProbeAnswer {
            from: p,
            nonce: 7,
            probe_id: 88,
            signature: Signature::default(),
        }
        .into(),
        SessionTicket {
            session_id: 99,
            user: a,
            provider: p,
            endpoint: "10.0.0.1:9000".into(),
            model_id: 3,
            tokens_max: 100,
            price_wei_per_token: 1_000_000_000,
            expires_at_ms: 1_700_000_600_000,
            rfc_nonce: 5,
            signature: Signature::default(),
        }
        .into(),
        Report {
            from: a,
            nonce: 8,
            session_id: 99,
            elapsed_ms: 1_234,
            ttft_ms: 234,
            tokens: 90,
            prompt_tokens: 1_523,
            outcome: Outcome::Pass,
            signature: Signature::default(),
        }
        .into(),
        ReportAck {
            nonce: 8,
            session_id: 99,
            earned: true,
            reason: 0,
            earned_wei: 90_000_000_000,
        }
        .into(),
        SubscribeBatches {
            from: a,
            nonce: 9,
            signature: Signature::default(),
        }
        .into(),
        CreditBatch {
            block: 12,
            merkle_root: [4; 32],
            receipts: 1,
            credited_wei: 90_000_000_000,
            shortfall_wei: 0,
            totals: vec![BatchTotals {
                provider: p,
                earned_wei: 90_000_000_000,
                credited_wei: 90_000_000_000,
                tokens: 90,
                sessions: 1,
            }],
            signature: Signature::default(),
        }
        .into(),
        Settlement {
            epoch: 3,
            day: 0,
            first_block: 900,
            last_block: 1_199,
            credited_wei: 90_000_000_000,
            bootstrap_wei: 0,
            credited_cumulative_wei: 180_000_000_000,
            providers: 1,
            merkle_root: [5; 32],
            chain_id: 31_337,
            contract: a,
            eip712_signature: Signature([7; 65]),
            signature: Signature::default(),
        }
        .into(),
        Claim {
            from: p,
            nonce: 10,
            amount_wei: 0,
            signature: Signature::default(),
        }
        .into(),
        ClaimAck {
            nonce: 10,
            amount_wei: 90_000_000_000,
            owed_left_wei: 0,
        }
        .into(),
        BalanceUpdate {
            from: a,
            nonce: 11,
            entries: vec![BalanceEntry {
                address: a,
                balance_wei: 5,
            }],
            signature: Signature::default(),
        }
        .into(),
        SetParams {
            from: a,
            nonce: 12,
            params: vec![ParamEntry {
                param_id: 4,
                value: 50,
            }],
            signature: Signature::default(),
        }
        .into(),
        Ack { nonce: 12 }.into(),
        Notice {
            kind: 2,
            until_ms: 5,
        }
        .into(),
        Ping { payload: 42 }.into(),
        Pong { payload: 42 }.into(),
        CatalogQuery { query_id: 7 }.into(),
        Catalog {
            query_id: 7,
            as_of_ms: 1_700_000_000_000,
            models: vec![
                CatalogModel {
                    model_id: 1,
                    unit: 0,
                    weights_hash: [9; 32],
                    best_price_wei_per_token: 1_000_000_000,
                    offers_live: 2,
                    name: "llama-3.1-8b-instruct".into(),
                },
                CatalogModel {
                    model_id: 2,
                    name: String::new(),
                    ..CatalogModel::default()
                },
            ],
        }
        .into(),
        MarketStateQuery { query_id: 7 }.into(),
        common::sample_market_state().into(),
        ErrorReply {
            code: 0x0203,
            ref_msg_type: 0x0020,
            ref_nonce: 5,
            retry_after_ms: 0,
            detail: 1_000,
            reason: "quota exceeded: 1000 tokens left today".into(),
        }
        .into(),
    ]
}

fn decode_frame(bytes: &[u8]) -> (u16, bytes::Bytes) {
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.extend(bytes);
    let frame = decoder.next_frame().unwrap().unwrap();
    assert_eq!(decoder.buffered_len(), 0);
    (frame.header.msg_type, frame.body)
}

#[test]
fn every_message_round_trips_through_a_frame() {
    let samples = samples();
    let mut types: Vec<u16> = samples.iter().map(Message::msg_type).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), samples.len(), "one sample per type");
    for message in samples {
        let frame = message.to_frame();
        let (msg_type, body) = decode_frame(&frame);
        assert_eq!(msg_type, message.msg_type());
        assert_eq!(
            Message::decode(msg_type, &body).unwrap(),
            message,
            "{}",
            message.name()
        );
    }
}

#[test]
fn r_id_2_signed_frames_verify_and_tampering_is_caught() {
    let alice = key("alice");
    for mut message in samples()
        .into_iter()
        .filter(|m| m.claimed_origin().is_some())
    {
        let signer = match message.claimed_origin().unwrap().0 {
            a if a == alice.address() => alice.clone(),
            _ => key("provider"),
        };
        let frame = message.sign(&signer, NET);
        let (msg_type, body) = decode_frame(&frame);
        let decoded = Message::decode(msg_type, &body).unwrap();
        assert_eq!(
            decoded.verify(NET, &body),
            Ok(signer.address()),
            "{}",
            message.name()
        );
        // Another network id: the signature no longer matches the claimed address.
        assert!(
            matches!(
                decoded.verify(NET + 1, &body),
                Err(SigError::SignerMismatch { .. })
            ),
            "{}",
            message.name()
        );
        if !matches!(decoded, Message::LoginAnswer(_)) {
            let mut tampered = body.to_vec();
            tampered[21] ^= 1; // inside the nonce / first field after `from`
            let tampered_msg = Message::decode(msg_type, &tampered).unwrap();
            assert!(
                tampered_msg.verify(NET, &tampered).is_err(),
                "{}",
                message.name()
            );
        }
    }
}

#[test]
fn r_id_3_signer_not_the_claimed_address() {
    let mallory = key("mallory");
    let mut message: Message = Rfc {
        from: key("alice").address(),
        nonce: 1,
        model_id: 1,
        tokens_max: 1,
        expires_at_ms: 1,
        ..Rfc::default()
    }
    .into();
    let frame = message.sign(&mallory, NET);
    let (msg_type, body) = decode_frame(&frame);
    let decoded = Message::decode(msg_type, &body).unwrap();
    assert_eq!(
        decoded.verify(NET, &body),
        Err(SigError::SignerMismatch {
            recovered: mallory.address()
        })
    );
}

#[test]
fn r_id_2_high_s_and_garbage_signatures_are_refused() {
    let alice = key("alice");
    let mut message: Message = Rfc {
        from: alice.address(),
        nonce: 1,
        model_id: 1,
        tokens_max: 1,
        expires_at_ms: 1,
        ..Rfc::default()
    }
    .into();
    message.sign(&alice, NET);
    let Message::Rfc(mut rfc) = message else {
        unreachable!()
    };
    rfc.signature = to_high_s(&rfc.signature);
    let high: Message = rfc.clone().into();
    let (t, body) = decode_frame(&high.to_frame());
    assert_eq!(
        Message::decode(t, &body).unwrap().verify(NET, &body),
        Err(SigError::HighS)
    );
    rfc.signature = Signature::default();
    let zero: Message = rfc.into();
    let (t, body) = decode_frame(&zero.to_frame());
    assert_eq!(
        Message::decode(t, &body).unwrap().verify(NET, &body),
        Err(SigError::BadSignature)
    );
}

#[test]
fn malformed_bodies_get_specific_errors() {
    let rfc: Message = Rfc {
        from: Address([1; 20]),
        nonce: 1,
        model_id: 1,
        tokens_max: 1,
        expires_at_ms: 1,
        ..Rfc::default()
    }
    .into();
    let mut body = Vec::new();
    rfc.encode(&mut body);
    assert_eq!(
        Message::decode(0x0020, &body[..body.len() - 1]),
        Err(DecodeError::Truncated {
            field: "Rfc.signature"
        })
    );
    assert_eq!(
        Message::decode(0x0020, &body[..3]),
        Err(DecodeError::Truncated { field: "Rfc.from" })
    );
    let mut long = body.clone();
    long.push(0);
    assert_eq!(
        Message::decode(0x0020, &long),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    assert_eq!(
        Message::decode(0x7777, &body),
        Err(DecodeError::UnknownMessageType { msg_type: 0x7777 })
    );
    // R-REPORT-2: an outcome that is neither 0 (fail), 1 (pass) nor 2 (void).
    let report: Message = Report {
        outcome: Outcome::Void,
        ..Report::default()
    }
    .into();
    let mut body = Vec::new();
    report.encode(&mut body);
    assert_eq!(body[20 + 8 + 8 + 8 + 8 + 8 + 8], 2);
    body[20 + 8 + 8 + 8 + 8 + 8 + 8] = 3;
    let refused = Message::decode(0x0050, &body);
    assert_eq!(
        refused,
        Err(DecodeError::BadEnumValue {
            field: "Report.outcome",
            value: 3
        })
    );
    assert_eq!(
        yellowstone_wire::codes::of_decode_error(&refused.unwrap_err()),
        yellowstone_wire::codes::BAD_FIELD
    );
    // A list claiming more items than allowed, and more than the bytes hold.
    let mut body = Vec::new();
    body.extend_from_slice(&[0; 28]);
    body.extend_from_slice(&(100_001u32).to_le_bytes());
    assert!(matches!(
        Message::decode(0x0080, &body),
        Err(DecodeError::ListTooLong { max: 100_000, .. })
    ));
    let mut body = Vec::new();
    body.extend_from_slice(&[0; 28]);
    body.extend_from_slice(&(1000u32).to_le_bytes());
    assert_eq!(
        Message::decode(0x0080, &body),
        Err(DecodeError::Truncated {
            field: "BalanceUpdate.entries"
        })
    );
    // A string that is not UTF-8.
    let mut body = vec![0u8; 28];
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    assert_eq!(
        Message::decode(0x0010, &body),
        Err(DecodeError::NotUtf8 {
            field: "RegisterProvider.endpoint"
        })
    );
}

#[test]
fn malformed_frames_get_specific_errors() {
    let frame = Message::from(Ping { payload: 1 }).to_frame();
    let mut decoder = FrameDecoder::new(64);
    decoder.extend(&frame[..HEADER_LEN - 1]);
    assert_eq!(decoder.next_frame(), Ok(None), "short header waits");
    let mut bad = frame.clone();
    bad[8..12].copy_from_slice(&1000u32.to_le_bytes());
    let mut decoder = FrameDecoder::new(64);
    decoder.extend(&bad);
    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::TooLarge {
            frame_bytes: 1012,
            frame_bytes_max: 64
        })
    );
    assert_eq!(
        codes::of_frame_error(&FrameError::TooLarge {
            frame_bytes: 1,
            frame_bytes_max: 0
        }),
        codes::FRAME_TOO_LARGE
    );
    assert_eq!(codes::name(0x0203), "quota_exceeded");
}

fn arb_address() -> impl Strategy<Value = Address> {
    any::<[u8; 20]>().prop_map(Address)
}

proptest! {
    #[test]
    fn rfc_and_report_round_trip(from in arb_address(), nonce: u64, model_id: u32, tokens_max: u64, expires_at_ms: u64, sig in prop::collection::vec(any::<u8>(), 65)) {
        let mut signature = Signature::default();
        signature.0.copy_from_slice(&sig);
        let rfc: Message = Rfc { from, nonce, model_id, tokens_max, expires_at_ms, signature }.into();
        let (t, body) = decode_frame(&rfc.to_frame());
        prop_assert_eq!(Message::decode(t, &body).unwrap(), rfc);
        let outcome = [Outcome::Fail, Outcome::Pass, Outcome::Void][(nonce % 3) as usize];
        let report: Message = Report { from, nonce, session_id: tokens_max, elapsed_ms: expires_at_ms, ttft_ms: model_id as u64, tokens: nonce, prompt_tokens: !nonce, outcome, signature }.into();
        let (t, body) = decode_frame(&report.to_frame());
        prop_assert_eq!(Message::decode(t, &body).unwrap(), report);
    }

    #[test]
    fn arbitrary_bodies_never_panic(msg_type in 0u16..0x100, body in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(message) = Message::decode(msg_type, &body) {
            let mut again = Vec::new();
            message.encode(&mut again);
            prop_assert_eq!(again, body);
        }
    }
}

#[test]
fn strings_over_their_bound_are_refused() {
    // R-PROV-1: an endpoint of ENDPOINT_BYTES_MAX + 1 bytes.
    let register: Message = RegisterProvider {
        endpoint: "e".repeat(ENDPOINT_BYTES_MAX + 1),
        ..RegisterProvider::default()
    }
    .into();
    let mut body = Vec::new();
    register.encode(&mut body);
    assert_eq!(
        Message::decode(register.msg_type(), &body),
        Err(DecodeError::StringTooLong {
            field: "RegisterProvider.endpoint",
            len: ENDPOINT_BYTES_MAX as u64 + 1,
            max: ENDPOINT_BYTES_MAX as u64
        })
    );
    let at_bound: Message = RegisterProvider {
        endpoint: "e".repeat(ENDPOINT_BYTES_MAX),
        ..RegisterProvider::default()
    }
    .into();
    let mut body = Vec::new();
    at_bound.encode(&mut body);
    assert_eq!(Message::decode(at_bound.msg_type(), &body), Ok(at_bound));
    let reply: Message = ErrorReply {
        reason: "r".repeat(REASON_BYTES_MAX + 1),
        ..ErrorReply::default()
    }
    .into();
    let mut body = Vec::new();
    reply.encode(&mut body);
    assert!(matches!(
        Message::decode(reply.msg_type(), &body),
        Err(DecodeError::StringTooLong {
            field: "ErrorReply.reason",
            ..
        })
    ));
    assert_eq!(
        codes::of_decode_error(&DecodeError::StringTooLong {
            field: "x",
            len: 2,
            max: 1
        }),
        codes::BAD_FIELD
    );
}

#[test]
fn every_error_maps_to_its_code() {
    use yellowstone_wire::frame::FrameError as F;
    assert_eq!(
        codes::of_frame_error(&F::BadMagic { found: *b"XX" }),
        codes::BAD_MAGIC
    );
    assert_eq!(
        codes::of_frame_error(&F::UnsupportedVersion { found: 2 }),
        codes::UNSUPPORTED_VERSION
    );
    assert_eq!(
        codes::of_frame_error(&F::UnknownFlags { flags: 2 }),
        codes::MALFORMED_FRAME
    );
    assert_eq!(
        codes::of_decode_error(&DecodeError::Truncated { field: "x" }),
        codes::TRUNCATED_BODY
    );
    assert_eq!(
        codes::of_decode_error(&DecodeError::TrailingBytes { count: 1 }),
        codes::TRAILING_BYTES
    );
    assert_eq!(
        codes::of_decode_error(&DecodeError::UnknownMessageType { msg_type: 9 }),
        codes::UNKNOWN_MESSAGE_TYPE
    );
    assert_eq!(
        codes::of_sig_error(&SigError::HighS),
        codes::HIGH_S_SIGNATURE
    );
    assert_eq!(
        codes::of_sig_error(&SigError::BadSignature),
        codes::BAD_SIGNATURE
    );
    assert_eq!(
        codes::of_sig_error(&SigError::SignerMismatch {
            recovered: Address::default()
        }),
        codes::SIGNER_MISMATCH
    );
}

#[test]
fn sign_frame_into_appends_the_same_frame_as_sign() {
    let alice = key("alice");
    let mut buffer = b"prefix".to_vec();
    for sample in samples() {
        let mut a = sample.clone();
        let mut b = sample;
        let alone = a.sign(&alice, NET);
        let start = buffer.len();
        b.sign_frame_into(&alice, NET, 0, &mut buffer);
        assert_eq!(&buffer[start..], &alone[..], "{}", a.name());
        assert_eq!(a, b);
    }
}

proptest! {
    /// Every message type: random bytes in a valid body's shape decode to a message
    /// that re-encodes to exactly those bytes, or to a specific error (never a panic).
    #[test]
    fn every_type_mutated_bodies_decode_to_themselves_or_error(seed: u64, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let samples = samples();
        let sample = &samples[(seed % samples.len() as u64) as usize];
        let mut body = Vec::new();
        sample.encode(&mut body);
        for (at, value) in flips {
            let at = at % body.len();
            body[at] = value;
        }
        match Message::decode(sample.msg_type(), &body) {
            Ok(message) => {
                let mut again = Vec::new();
                message.encode(&mut again);
                prop_assert_eq!(again, body);
            }
            Err(error) => prop_assert_ne!(codes::of_decode_error(&error), 0),
        }
    }
}

#[test]
fn r_node_2_catalog_model_names_are_bounded_and_empty_lists_decode() {
    let too_long: Message = Catalog {
        query_id: 1,
        as_of_ms: 2,
        models: vec![CatalogModel {
            name: "m".repeat(MODEL_NAME_BYTES_MAX + 1),
            ..CatalogModel::default()
        }],
    }
    .into();
    let mut body = Vec::new();
    too_long.encode(&mut body);
    assert!(matches!(
        Message::decode(too_long.msg_type(), &body),
        Err(DecodeError::StringTooLong {
            field: "CatalogModel.name",
            ..
        })
    ));
    let empty: Message = Catalog::default().into();
    let mut body = Vec::new();
    empty.encode(&mut body);
    assert_eq!(Message::decode(empty.msg_type(), &body).unwrap(), empty);
}

#[test]
fn r_node_1_inference_digest_binds_network_session_and_body() {
    use yellowstone_wire::signature::inference_request_digest;
    let base = inference_request_digest(NET, 5, b"{\"model\":\"m\"}");
    assert_ne!(
        base,
        inference_request_digest(NET + 1, 5, b"{\"model\":\"m\"}")
    );
    assert_ne!(base, inference_request_digest(NET, 6, b"{\"model\":\"m\"}"));
    assert_ne!(base, inference_request_digest(NET, 5, b"{\"model\":\"n\"}"));
    assert_eq!(base, inference_request_digest(NET, 5, b"{\"model\":\"m\"}"));
}
