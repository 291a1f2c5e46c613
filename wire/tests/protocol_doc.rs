//! Keeps `docs/PROTOCOL.md` honest: its message table, every message's field table,
//! the record tables and the error code table are parsed and checked against the
//! code (`CATALOG`, `RECORDS`, `codes::ALL`). A message, field, record or code added
//! or changed without its row fails here, and so does a row the code does not have.

use std::collections::BTreeMap;
use yellowstone_wire::codes;
use yellowstone_wire::messages::{Message, CATALOG, RECORDS};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// The cells of each table row (`| a | b |`), header and separator rows skipped.
fn table_rows(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('\\', ""))
                .collect()
        })
        .collect()
}

/// The first table after the heading line that equals `heading`.
fn table_after(heading: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = DOC.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == heading)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no heading `{heading}`"));
    let start = lines[at + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('|'))
        .map(|i| at + 1 + i)
        .unwrap_or_else(|| panic!("no table after `{heading}`"));
    assert!(
        !lines[at + 1..start].iter().any(|l| l.starts_with('#')),
        "the table after `{heading}` belongs to another heading"
    );
    table_rows(&lines[start..])
}

fn hex_code(cell: &str) -> u16 {
    let digits = cell
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("code `{cell}` is not 0x…"));
    u16::from_str_radix(digits, 16).unwrap_or_else(|_| panic!("code `{cell}`"))
}

/// The doc's type word for a Rust field type, and its size (None: variable).
fn doc_type(rust: &str) -> (String, Option<usize>) {
    match rust {
        "u8" => ("u8".into(), Some(1)),
        "u16" => ("u16".into(), Some(2)),
        "u32" => ("u32".into(), Some(4)),
        "u64" => ("u64".into(), Some(8)),
        "u128" => ("u128".into(), Some(16)),
        "bool" => ("bool".into(), Some(1)),
        // R-REPORT-2: one byte, 0 fail, 1 pass, 2 void.
        "Outcome" => ("u8".into(), Some(1)),
        "[u8; 32]" => ("bytes32".into(), Some(32)),
        "Address" => ("address".into(), Some(20)),
        "Signature" => ("signature".into(), Some(65)),
        "String" => ("string".into(), None),
        other => {
            let item = other
                .strip_prefix("Vec<")
                .and_then(|t| t.strip_suffix('>'))
                .unwrap_or_else(|| panic!("no doc type for Rust type `{other}`"));
            (format!("list<{item}>"), None)
        }
    }
}

fn record_fields(name: &str) -> &'static [(&'static str, &'static str)] {
    RECORDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("record `{name}` is not in wire's RECORDS"))
}

/// A record's fixed size (a string counting its 2-byte length), and whether it
/// holds a string (then its size is a minimum).
fn record_size(name: &str) -> (usize, bool) {
    record_fields(name)
        .iter()
        .fold((0, false), |(size, variable), (_, ty)| {
            match doc_type(ty).1 {
                Some(bytes) => (size + bytes, variable),
                None => {
                    assert_eq!(*ty, "String", "{name}: records hold no lists");
                    (size + 2, true)
                }
            }
        })
}

/// Checks one field table (columns offset, size, field, type, …) against the code's
/// fields; returns the size of the fixed part (strings and lists counting only their
/// length prefix).
fn check_fields(what: &str, rows: &[Vec<String>], fields: &[(&str, &str)]) -> usize {
    let doc_fields: Vec<(&str, &str)> = rows.iter().map(|r| (&r[2][..], &r[3][..])).collect();
    let code_fields: Vec<(String, String)> = fields
        .iter()
        .map(|(name, ty)| (name.to_string(), doc_type(ty).0))
        .collect();
    assert_eq!(
        doc_fields
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>(),
        code_fields,
        "{what}: the doc's fields (name, type) differ from the code's"
    );
    let mut offset = Some(0usize);
    let mut fixed = 0usize;
    for (row, (name, ty)) in rows.iter().zip(fields) {
        let (doc_offset, doc_size) = (&row[0], &row[1]);
        match offset {
            Some(at) => assert_eq!(doc_offset, &at.to_string(), "{what}.{name}: offset"),
            None => assert_eq!(
                doc_offset, "…",
                "{what}.{name}: offset after a variable field"
            ),
        }
        match doc_type(ty) {
            (_, Some(size)) => {
                assert_eq!(doc_size, &size.to_string(), "{what}.{name}: size");
                offset = offset.map(|at| at + size);
                fixed += size;
            }
            (word, None) if word == "string" => {
                assert_eq!(doc_size, "2+n", "{what}.{name}: size of a string");
                offset = None;
                fixed += 2;
            }
            (word, None) => {
                let item = &word["list<".len()..word.len() - 1];
                let (size, variable) = record_size(item);
                let at_least = if variable { "≥" } else { "" };
                assert_eq!(
                    doc_size,
                    &format!("4+n×{at_least}{size}"),
                    "{what}.{name}: size of a list of {item}"
                );
                offset = None;
                fixed += 4;
            }
        }
    }
    fixed
}

#[test]
fn every_message_has_its_row_and_every_row_its_message() {
    let table = table_after("## 5. Messages");
    let doc: BTreeMap<u16, (String, String, String)> = table
        .iter()
        .map(|r| (hex_code(&r[0]), (r[1].clone(), r[2].clone(), r[3].clone())))
        .collect();
    assert_eq!(doc.len(), table.len(), "a type listed twice");
    let code: BTreeMap<u16, &str> = CATALOG.iter().map(|i| (i.msg_type, i.name)).collect();
    assert_eq!(
        doc.iter()
            .map(|(t, (n, _, _))| (*t, n.as_str()))
            .collect::<BTreeMap<_, _>>(),
        code,
        "docs/PROTOCOL.md's message table differs from the code's catalog"
    );
    for info in CATALOG {
        let (_, direction, signed) = &doc[&info.msg_type];
        let message = Message::decode(info.msg_type, &(info.default_body)()).unwrap();
        let from_client = message.is_sent_by_client();
        let expected = if from_client {
            "client → router"
        } else {
            "router → client"
        };
        assert_eq!(direction, expected, "{}: direction", info.name);
        assert_eq!(
            signed.starts_with("yes"),
            info.signed,
            "{}: signed column",
            info.name
        );
    }
}

#[test]
fn every_message_field_table_matches_the_code_and_its_encoded_size() {
    for info in CATALOG {
        let heading = format!("### 0x{:04X} {}", info.msg_type, info.name);
        let rows = table_after(&heading);
        let fixed = check_fields(info.name, &rows, info.fields);
        assert_eq!(
            fixed,
            (info.default_body)().len(),
            "{}: the doc's sizes do not add up to the encoded size",
            info.name
        );
        if info.signed {
            assert_eq!(
                info.fields.last().map(|f| f.1),
                Some("Signature"),
                "{}: a signed body ends with its signature",
                info.name
            );
        }
    }
}

#[test]
fn every_record_table_matches_the_code() {
    for (name, fields) in RECORDS {
        let rows = table_after(&format!("### Record {name}"));
        let size = check_fields(name, &rows, fields);
        assert_eq!(size, record_size(name).0);
    }
    // Every list in a message is of a record that has its table.
    for info in CATALOG {
        for (_, ty) in info.fields {
            if let Some(item) = ty.strip_prefix("Vec<").and_then(|t| t.strip_suffix('>')) {
                record_fields(item);
            }
        }
    }
}

#[test]
fn every_error_code_has_its_row_with_the_same_name_and_vice_versa() {
    let table = table_after("## 9. Error codes");
    let doc: BTreeMap<u16, (String, String)> = table
        .iter()
        .map(|r| (hex_code(&r[0]), (r[1].clone(), r[2].clone())))
        .collect();
    assert_eq!(doc.len(), table.len(), "a code listed twice");
    let code: BTreeMap<u16, &str> = codes::ALL.iter().copied().collect();
    assert_eq!(
        doc.iter()
            .map(|(c, (n, _))| (*c, n.as_str()))
            .collect::<BTreeMap<_, _>>(),
        code,
        "docs/PROTOCOL.md's error table differs from wire's codes::ALL"
    );
    for (code, (name, layer)) in &doc {
        let expected = match codes::layer(*code) {
            codes::Layer::Protocol => "protocol",
            codes::Layer::Market => "market",
            codes::Layer::Router => "router",
            codes::Layer::Unknown => "unknown",
        };
        assert_eq!(layer, expected, "{name}: layer");
    }
}

#[test]
fn the_doc_states_the_constants_the_code_uses() {
    use yellowstone_wire::frame::{FLAG_RESPONSE, FRAME_BYTES_MAX_DEFAULT, HEADER_LEN};
    use yellowstone_wire::signature::{DOMAIN_TAG, LOGIN_TYPE, WEIGHTS_PROOF_TYPE};
    let domain = std::str::from_utf8(DOMAIN_TAG).unwrap();
    for needle in [
        format!("`{domain}`"),
        format!("the {} ASCII bytes", DOMAIN_TAG.len()),
        format!("0x{LOGIN_TYPE:04X}"),
        format!("0x{WEIGHTS_PROOF_TYPE:04X}"),
        format!("A frame is a\n{HEADER_LEN}-byte header"),
        "bit 0 `FLAG_RESPONSE`".to_string(),
        "(default 16,384)".to_string(),
    ] {
        assert!(DOC.contains(&needle), "docs/PROTOCOL.md lacks `{needle}`");
    }
    assert_eq!(FLAG_RESPONSE, 1);
    assert_eq!(FRAME_BYTES_MAX_DEFAULT, 16_384);
}
