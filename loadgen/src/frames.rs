//! Every message the load generator signs, built in one place: the honest simulation
//! (`sim`) and the attack scenarios (`attack`) call these, so that a protocol change
//! (a new field of `Report`, say) is made here once for both.

use yellowstone_wire::demo::demo_weights_hash;
use yellowstone_wire::signature::weights_proof_digest;
use yellowstone_wire::*;

/// What a user's report says about a session (R-REPORT-1, R-REPORT-2): pass, fail
/// or void, as the wire carries it.
pub use yellowstone_wire::Outcome;

/// The facts a user reports about one session (R-REPORT-1): `elapsed_ms` from sending
/// the query to receiving the whole result, `tokens` delivered (at most the ticket's
/// TokenMax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportFacts {
    pub session_id: u64,
    pub elapsed_ms: u64,
    /// To the first token, at most `elapsed_ms` (R-REPORT-3).
    pub ttft_ms: u64,
    pub tokens: u64,
    /// The prompt's tokens (R-REPORT-3).
    pub prompt_tokens: u64,
    pub outcome: Outcome,
}

/// The signed `Report` frame of `facts`, from `key`'s address with `nonce`.
pub fn report(key: &SigningKey, network_id: u32, nonce: u64, facts: &ReportFacts) -> Vec<u8> {
    let figures = ReportFigures {
        elapsed_ms: facts.elapsed_ms,
        ttft_ms: facts.ttft_ms,
        tokens: facts.tokens,
        prompt_tokens: facts.prompt_tokens,
    };
    let mut message: Message = Report::new(
        key.address(),
        nonce,
        facts.session_id,
        facts.outcome,
        figures,
    )
    .into();
    message.sign(key, network_id)
}

/// The signed `Rfc` frame (R-RFC-1): `expires_at_ms` is Unix ms.
pub fn rfc(
    key: &SigningKey,
    network_id: u32,
    nonce: u64,
    model_id: u32,
    tokens_max: u64,
    expires_at_ms: u64,
) -> Vec<u8> {
    let mut message: Message = Rfc {
        from: key.address(),
        nonce,
        model_id,
        tokens_max,
        expires_at_ms,
        signature: Signature::default(),
    }
    .into();
    message.sign(key, network_id)
}

/// One offer of a registration: the model (of the demo catalog, whose weights hash
/// the load generator knows), the bid in wei per token, the concurrent sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferSpec {
    pub model_id: u32,
    pub price_wei_per_token: u128,
    pub capacity: u32,
}

/// The signed `RegisterProvider` frame (R-PROV-1), each offer with its weights proof
/// (the demo weights hash signed with `key`): one signature per offer, plus the
/// message's own.
pub fn register_provider(
    key: &SigningKey,
    network_id: u32,
    nonce: u64,
    endpoint: &str,
    offers: &[OfferSpec],
) -> Vec<u8> {
    let offers = offers
        .iter()
        .map(|spec| {
            let weights_hash = demo_weights_hash(spec.model_id);
            let weights_proof = key.sign_digest(&weights_proof_digest(
                network_id,
                spec.model_id,
                &weights_hash,
            ));
            Offer {
                model_id: spec.model_id,
                unit: 0,
                weights_hash,
                weights_proof,
                price_wei_per_token: spec.price_wei_per_token,
                capacity: spec.capacity,
            }
        })
        .collect();
    let mut message: Message = RegisterProvider {
        from: key.address(),
        nonce,
        endpoint: endpoint.to_string(),
        offers,
        signature: Signature::default(),
    }
    .into();
    message.sign(key, network_id)
}

/// The signed `ProbeAnswer` frame (R-MATCH-2).
pub fn probe_answer(key: &SigningKey, network_id: u32, nonce: u64, probe_id: u64) -> Vec<u8> {
    let mut message: Message = ProbeAnswer {
        from: key.address(),
        nonce,
        probe_id,
        signature: Signature::default(),
    }
    .into();
    message.sign(key, network_id)
}

/// The signed `ProviderAnnounce` frame (R-MATCH-2: back in matching).
pub fn provider_announce(key: &SigningKey, network_id: u32, nonce: u64) -> Vec<u8> {
    let mut message: Message = ProviderAnnounce {
        from: key.address(),
        nonce,
        signature: Signature::default(),
    }
    .into();
    message.sign(key, network_id)
}

/// The signed `Claim` frame (R-CLAIM-1): `amount_wei` 0 claims all that is owed.
pub fn claim(key: &SigningKey, network_id: u32, nonce: u64, amount_wei: u128) -> Vec<u8> {
    let mut message: Message = Claim {
        from: key.address(),
        nonce,
        amount_wei,
        signature: Signature::default(),
    }
    .into();
    message.sign(key, network_id)
}

/// The signed `RfcCancel` frame.
pub fn rfc_cancel(key: &SigningKey, network_id: u32, nonce: u64, rfc_id: u64) -> Vec<u8> {
    let mut message: Message = RfcCancel {
        from: key.address(),
        nonce,
        rfc_id,
        signature: Signature::default(),
    }
    .into();
    message.sign(key, network_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_to_what_was_asked() {
        let key = SigningKey::from_seed(b"frames-test");
        let facts = ReportFacts {
            session_id: 7,
            elapsed_ms: 120,
            tokens: 33,
            ttft_ms: 1,
            prompt_tokens: crate::sim::SIM_PROMPT_TOKENS,
            outcome: Outcome::Fail,
        };
        let frame = report(&key, 1, 9, &facts);
        let mut decoder = yellowstone_wire::frame::FrameDecoder::new(1 << 20);
        decoder.extend(&frame);
        let decoded = decoder.next_frame().unwrap().unwrap();
        match Message::decode(decoded.header.msg_type, &decoded.body).unwrap() {
            Message::Report(r) => {
                assert_eq!((r.session_id, r.elapsed_ms, r.tokens), (7, 120, 33));
                assert_eq!(r.outcome, Outcome::Fail);
                assert_eq!((r.from, r.nonce), (key.address(), 9));
            }
            other => panic!("expected a report, got {other:?}"),
        }
        let offers: Vec<OfferSpec> = (1..=64)
            .map(|model_id| OfferSpec {
                model_id,
                price_wei_per_token: 1,
                capacity: 1,
            })
            .collect();
        let big = register_provider(&key, 1, 10, &"x".repeat(255), &offers);
        assert!(big.len() > 7_800, "64 offers: {} bytes", big.len());
    }
}
