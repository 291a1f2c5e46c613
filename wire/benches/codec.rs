//! The wire crate's own micro-benchmarks: the per-message costs the gateway pays on
//! every frame. Encode and decode of an RFC frame (target: under 100 ns each without
//! the signature), the stream splitter, the BLAKE3 digest, signing, signer recovery
//! and whole-message verification on one core, single-pass pre-signing, and keccak
//! address derivation. Short by default (2 shared cores): about 2.5 s per figure.
//!
//! Run: `cargo bench -p yellowstone-wire --bench codec`
//!
//! Decode benches return a field, not the 208-byte `Message`: criterion 0.5 passes
//! every routine output through its own volatile-read black_box, which copies it byte
//! by byte and adds about 80 ns that no real caller pays.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use yellowstone_wire::frame::{FrameDecoder, FrameHeader, HEADER_LEN};
use yellowstone_wire::signature::{digest, recover_signer, SIGNATURE_LEN};
use yellowstone_wire::*;

const NET: u32 = 1;

fn signed_rfc(key: &SigningKey) -> (Message, Vec<u8>) {
    let mut rfc: Message = Rfc {
        from: key.address(),
        nonce: 1_700_000_000_000_001,
        model_id: 7,
        tokens_max: 512,
        expires_at_ms: 1_767_225_600_000,
        signature: Signature::default(),
    }
    .into();
    let frame = rfc.sign(key, NET);
    (rfc, frame)
}

fn tokens_of(message: Result<Message, DecodeError>) -> u64 {
    match message {
        Ok(Message::Rfc(rfc)) => rfc.tokens_max ^ u64::from(rfc.signature.0[64]),
        _ => unreachable!("an RFC frame"),
    }
}

fn codec(c: &mut Criterion) {
    let key = SigningKey::from_seed(b"bench-user");
    let (rfc, frame) = signed_rfc(&key);
    let mut group = c.benchmark_group("wire_rfc");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode_frame", |b| {
        b.iter(|| {
            out.clear();
            black_box(&rfc).write_frame(0, &mut out);
            out.len()
        })
    });
    group.bench_function("decode_frame", |b| {
        b.iter(|| {
            let bytes = black_box(&frame[..]);
            let mut header_bytes = [0u8; HEADER_LEN];
            header_bytes.copy_from_slice(&bytes[..HEADER_LEN]);
            let header = FrameHeader::decode(&header_bytes, 16 * 1024).expect("header");
            tokens_of(Message::decode(header.msg_type, &bytes[HEADER_LEN..]))
        })
    });
    // The stream path: append bytes, split frames off (zero-copy bodies), decode.
    let mut stream = Vec::new();
    for _ in 0..64 {
        stream.extend_from_slice(&frame);
    }
    group.throughput(Throughput::Elements(64));
    group.bench_function("stream_split_and_decode_x64", |b| {
        let mut decoder = FrameDecoder::new(16 * 1024);
        b.iter(|| {
            decoder.extend(black_box(&stream));
            let mut sum = 0u64;
            while let Ok(Some(frame)) = decoder.next_frame() {
                sum = sum.wrapping_add(tokens_of(Message::decode(
                    frame.header.msg_type,
                    &frame.body,
                )));
            }
            sum
        })
    });
    group.finish();
}

fn signatures(c: &mut Criterion) {
    let key = SigningKey::from_seed(b"bench-user");
    let (rfc, frame) = signed_rfc(&key);
    let body = &frame[HEADER_LEN..];
    let unsigned = &body[..body.len() - SIGNATURE_LEN];
    let d = digest(NET, rfc.msg_type(), unsigned);
    let signature = rfc.signature().expect("signed");
    let mut group = c.benchmark_group("wire_sig");
    group.throughput(Throughput::Elements(1));
    group.bench_function("blake3_digest_rfc", |b| {
        b.iter(|| digest(NET, 0x0020, black_box(unsigned)))
    });
    group.bench_function("sign", |b| b.iter(|| key.sign_digest(black_box(&d))));
    group.bench_function("recover", |b| {
        b.iter(|| recover_signer(black_box(&d), black_box(&signature)).expect("valid"))
    });
    group.bench_function("verify_rfc_message", |b| {
        b.iter(|| black_box(&rfc).verify(NET, black_box(body)).expect("valid"))
    });
    let mut buffer = Vec::with_capacity(256);
    let mut message = rfc.clone();
    group.bench_function("presign_rfc_frame", |b| {
        b.iter(|| {
            buffer.clear();
            message.sign_frame_into(&key, NET, 0, &mut buffer);
            buffer.len()
        })
    });
    let xy = key.public_key_xy();
    group.bench_function("keccak_address_from_public_key", |b| {
        b.iter(|| Address::from_public_key_xy(black_box(&xy)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = codec, signatures
}
criterion_main!(benches);
