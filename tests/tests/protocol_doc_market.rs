//! Keeps the market's numbers in `docs/PROTOCOL.md` equal to the engine's: the
//! `RfcFailed` reasons, the `ReportAck` reasons and the offer units are written in the
//! doc as "<number> <words>", the words being the engine variant's name.
//! (The message and error tables are checked in `wire/tests/protocol_doc.rs`, the
//! SetParams ids in `refusals.rs`.)

use yellowstone_engine::{CreditReason, RfcFailure, Unit};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// "ReportedFail" -> "reported fail".
fn words(variant: &str) -> String {
    let mut out = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The doc's text under `heading` up to the next heading.
fn section(heading: &str) -> &'static str {
    let start = DOC
        .find(heading)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no `{heading}`"));
    let rest = &DOC[start + heading.len()..];
    &rest[..rest.find("\n#").unwrap_or(rest.len())]
}

fn check(heading: &str, values: &[(u8, String)]) {
    let text = section(heading).replace('\n', " ");
    for (number, words) in values {
        let needle = format!("{number} {words}");
        assert!(
            text.contains(&needle),
            "`{heading}` does not say `{needle}`"
        );
    }
}

#[test]
fn rfc_failed_reasons_are_the_engines() {
    let values: Vec<(u8, String)> = [
        RfcFailure::Expired,
        RfcFailure::NoProvider,
        RfcFailure::Cancelled,
    ]
    .iter()
    .map(|r| (*r as u8, words(&format!("{r:?}"))))
    .collect();
    check("### 0x0023 RfcFailed", &values);
}

#[test]
fn report_ack_reasons_are_the_engines() {
    let values: Vec<(u8, String)> = [
        CreditReason::Credited,
        CreditReason::ReportedFail,
        CreditReason::TooSlow,
        CreditReason::CreditedDespiteFail,
        CreditReason::ZeroTokens,
    ]
    .iter()
    .map(|r| (*r as u8, words(&format!("{r:?}"))))
    .collect();
    check("### 0x0051 ReportAck", &values);
}

#[test]
fn offer_units_are_the_engines() {
    let values: Vec<(u8, String)> = (0..=u8::MAX)
        .filter_map(|n| Unit::from_u8(n).map(|u| (n, words(&format!("{u:?}")))))
        .collect();
    assert_eq!(values.len(), 3);
    check("### Record Offer", &values);
}
