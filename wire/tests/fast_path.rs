//! The fixed-offset fast path of `Message::decode` (RFC, report, probe answer) must
//! agree with the general field-by-field decoder on every input: same message, or
//! the general decoder's specific error. Checked with random bodies of the exact
//! length (where the fast path runs) and of every nearby length (where it must not).

use proptest::prelude::*;
use yellowstone_wire::*;

fn general(msg_type: u16, body: &[u8]) -> Result<Message, DecodeError> {
    match msg_type {
        Rfc::MSG_TYPE => Rfc::decode(body).map(Message::from),
        Report::MSG_TYPE => Report::decode(body).map(Message::from),
        ProbeAnswer::MSG_TYPE => ProbeAnswer::decode(body).map(Message::from),
        _ => unreachable!("only the fast-path types"),
    }
}

const HOT: [(u16, usize); 3] = [
    (Rfc::MSG_TYPE, 20 + 8 + 4 + 8 + 8 + 65),
    (Report::MSG_TYPE, 20 + 8 + 8 + 8 + 8 + 8 + 8 + 1 + 65),
    (ProbeAnswer::MSG_TYPE, 20 + 8 + 8 + 65),
];

#[test]
fn hot_body_lengths_match_the_encoders() {
    for (msg_type, len) in HOT {
        let message = general(msg_type, &vec![0u8; len]).expect("zero body decodes");
        let mut body = Vec::new();
        message.encode(&mut body);
        assert_eq!(body.len(), len, "{msg_type:#06x}");
    }
}

proptest! {
    #[test]
    fn fast_path_agrees_with_the_general_decoder(
        which in 0usize..3,
        delta in -2i64..=2,
        bytes in prop::collection::vec(any::<u8>(), 200),
        outcome_byte in 0u8..5,
    ) {
        let (msg_type, len) = HOT[which];
        let len = (len as i64 + delta) as usize;
        let mut body = bytes[..len].to_vec();
        if msg_type == Report::MSG_TYPE && len > 68 {
            body[68] = outcome_byte; // 0, 1 and 2 valid, 3 and 4 a bad enum value
        }
        prop_assert_eq!(Message::decode(msg_type, &body), general(msg_type, &body));
    }
}
