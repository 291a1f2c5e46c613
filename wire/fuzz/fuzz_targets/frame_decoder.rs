//! Feeds arbitrary bytes, in arbitrary pieces, to the frame decoder and decodes every
//! whole frame's body. Invariants beyond "no panic": every byte is accounted for
//! (consumed + buffered == input), and whatever decodes re-encodes to the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yellowstone_wire::frame::{FrameDecoder, HEADER_LEN};
use yellowstone_wire::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut decoder = FrameDecoder::new(4096);
    let piece = (split as usize % 64).max(1);
    let mut consumed = 0usize;
    let mut fed = 0usize;
    for chunk in rest.chunks(piece) {
        decoder.extend(chunk);
        fed += chunk.len();
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    consumed += HEADER_LEN + frame.body.len();
                    if let Ok(message) = Message::decode(frame.header.msg_type, &frame.body) {
                        let mut again = Vec::new();
                        message.encode(&mut again);
                        assert_eq!(&again[..], &frame.body[..], "decode(encode(x)) == x");
                        assert_eq!(message.msg_type(), frame.header.msg_type);
                    }
                }
                Ok(None) => break,
                Err(_) => return, // a header error ends the stream, as in the router
            }
        }
        assert_eq!(consumed + decoder.buffered_len(), fed, "every byte accounted for");
    }
});
