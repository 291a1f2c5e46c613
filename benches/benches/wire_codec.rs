//! Wire benchmarks (issue 3): encode and decode of an RFC frame (without the
//! signature work), and each signature operation the router performs per session:
//! recover/verify of a client message, signing a ticket, and address derivation.
//!
//! Run: `cargo bench -p yellowstone-benches --bench wire_codec`

use criterion::{criterion_group, Criterion, Throughput};
// std's black_box: criterion 0.5's is a volatile read, which copies a `Message` (208
// bytes) byte by byte, about 160 ns that no real caller pays. For the same reason the
// decode benches return one field, not the message (criterion passes every routine
// output through its own black_box).
use std::hint::black_box;
use std::time::{Duration, Instant};
use yellowstone_wire::frame::FrameDecoder;
use yellowstone_wire::signature::{digest, recover_signer};
use yellowstone_wire::*;

fn rfc() -> Message {
    let key = SigningKey::from_seed(b"bench-user");
    let mut message: Message = Rfc {
        from: key.address(),
        nonce: 42,
        model_id: 1,
        tokens_max: 512,
        expires_at_ms: 1_767_225_600_000,
        signature: Signature::default(),
    }
    .into();
    message.sign(&key, 1);
    message
}

fn rfc_nonce(message: Result<Message, DecodeError>) -> u64 {
    match message {
        Ok(Message::Rfc(rfc)) => rfc.nonce,
        other => panic!("an RFC frame, got {other:?}"),
    }
}

fn codec(c: &mut Criterion) {
    let message = rfc();
    let frame = message.to_frame();
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut out = Vec::with_capacity(256);
    group.bench_function("rfc_frame_encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&message).write_frame(0, &mut out);
            black_box(out.len())
        })
    });
    let body = frame[yellowstone_wire::frame::HEADER_LEN..].to_vec();
    group.bench_function("rfc_body_decode", |b| {
        b.iter(|| rfc_nonce(Message::decode(0x0020, black_box(&body))))
    });
    let rounds = 2_000_000u32;
    let start = Instant::now();
    let mut sink = 0u64;
    for _ in 0..rounds {
        let message = black_box(Message::decode(0x0020, black_box(&body)));
        if let Ok(Message::Rfc(rfc)) = &message {
            sink = sink.wrapping_add(rfc.nonce);
        }
    }
    println!(
        "plain loop: rfc body decode {:.1} ns ({sink})",
        start.elapsed().as_nanos() as f64 / rounds as f64
    );
    let mut decoder = FrameDecoder::new(16 * 1024);
    group.bench_function("rfc_frame_decode", |b| {
        b.iter(|| {
            decoder.extend(black_box(&frame));
            let frame = decoder.next_frame().expect("valid").expect("whole");
            rfc_nonce(Message::decode(frame.header.msg_type, &frame.body))
        })
    });
    group.finish();
}

fn signatures(c: &mut Criterion) {
    let key = SigningKey::from_seed(b"bench-signer");
    let d = digest(
        1,
        0x20,
        b"a body of about the size of an rfc, 100 bytes or so ..........................",
    );
    let signature = key.sign_digest(&d);
    let message = rfc();
    let mut body = Vec::new();
    message.encode(&mut body);
    let mut group = c.benchmark_group("signature");
    group.throughput(Throughput::Elements(1));
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function("recover", |b| {
        b.iter(|| black_box(recover_signer(black_box(&d), &signature).expect("valid")))
    });
    group.bench_function("verify_rfc_message", |b| {
        b.iter(|| black_box(message.verify(1, black_box(&body)).expect("valid")))
    });
    group.bench_function("sign_ticket", |b| {
        b.iter(|| black_box(key.sign_digest(black_box(&d))))
    });
    let public = secp256k1::PublicKey::from_secret_key(
        secp256k1::SECP256K1,
        &secp256k1::SecretKey::from_slice(&key.secret_bytes()).expect("valid"),
    );
    group.bench_function("address_from_public_key", |b| {
        b.iter(|| black_box(Address::from_public_key(black_box(&public))))
    });
    group.finish();

    // Plain per-second figures on one core, printed whatever criterion decides.
    let count = 20_000;
    let start = Instant::now();
    for _ in 0..count {
        black_box(recover_signer(&d, &signature).expect("valid"));
    }
    let recover_per_s = count as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..count {
        black_box(key.sign_digest(&d));
    }
    let sign_per_s = count as f64 / start.elapsed().as_secs_f64();
    println!("one core: {recover_per_s:.0} recoveries/s ({:.1} us each), {sign_per_s:.0} signatures/s ({:.1} us each)", 1e6 / recover_per_s, 1e6 / sign_per_s);
}

criterion_group!(benches, codec, signatures);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
