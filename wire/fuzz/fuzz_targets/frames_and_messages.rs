//! Fuzzes the stream splitter and the message decoder together, the way the router
//! sees hostile bytes. Invariants beyond "no panic":
//! - accounting: bytes in frames taken + bytes still buffered == bytes fed (until a
//!   header error, which is sticky: every later call repeats it);
//! - every frame respects frame_bytes_max;
//! - decode is exact: a body that decodes re-encodes to the same bytes, and
//!   decode(encode(x)) == x;
//! - a signed body's digest is computable and verification returns a typed result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yellowstone_wire::frame::{FrameDecoder, HEADER_LEN};
use yellowstone_wire::{codes, Message};

const FRAME_BYTES_MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // First byte picks the chunk size, so frames arrive split at arbitrary points.
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = (chunk as usize % 64) + 1;
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let mut fed = 0usize;
    let mut consumed = 0usize;
    for piece in input.chunks(chunk) {
        decoder.extend(piece);
        fed += piece.len();
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let frame_len = HEADER_LEN + frame.body.len();
                    assert!(frame_len <= FRAME_BYTES_MAX);
                    assert_eq!(frame.header.body_len as usize, frame.body.len());
                    consumed += frame_len;
                    check_message(frame.header.msg_type, &frame.body);
                }
                Ok(None) => break,
                Err(error) => {
                    assert_ne!(codes::of_frame_error(&error), 0);
                    assert_eq!(decoder.next_frame(), Err(error), "errors are sticky");
                    return;
                }
            }
        }
        assert_eq!(consumed + decoder.buffered_len(), fed, "consumed + remaining");
    }
    assert_eq!(fed, input.len());
});

fn check_message(msg_type: u16, body: &[u8]) {
    match Message::decode(msg_type, body) {
        Ok(message) => {
            assert_eq!(message.msg_type(), msg_type);
            let mut again = Vec::with_capacity(body.len());
            message.encode(&mut again);
            assert_eq!(again, body, "encode(decode(body)) == body");
            assert_eq!(Message::decode(msg_type, &again).as_ref(), Ok(&message));
            if message.claimed_origin().is_some() {
                // Typed result, no panic; success needs a real signature.
                let _ = message.verify(1, body);
            }
        }
        Err(error) => {
            assert_ne!(codes::of_decode_error(&error), 0);
        }
    }
}
