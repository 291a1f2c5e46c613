//! The blocking client against an in-process fake router on loopback: login answers
//! the challenge with a signature the router can check (R-ID-2/3), signed messages
//! verify, router-signed tickets are checked (R-ID-5), pre-signed frames are the
//! same bytes as those the client sends.

use std::io::{Read, Write};
use std::net::TcpListener;
use yellowstone_wire::client::{presign_rfc, Client, ClientError};
use yellowstone_wire::frame::{FrameDecoder, FRAME_BYTES_MAX_DEFAULT};
use yellowstone_wire::signature::login_digest;
use yellowstone_wire::*;

const NET: u32 = 11;

/// Reads one frame from `stream` through `decoder`.
fn read_frame(stream: &mut std::net::TcpStream, decoder: &mut FrameDecoder) -> (u16, Vec<u8>) {
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.next_frame().expect("valid frame") {
            return (frame.header.msg_type, frame.body.to_vec());
        }
        let n = stream.read(&mut buffer).expect("read");
        assert!(n > 0, "client closed early");
        decoder.extend(&buffer[..n]);
    }
}

#[test]
fn r_id_3_client_logs_in_sends_signed_rfc_and_checks_router_tickets() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let router_key = SigningKey::from_seed(b"router");
    let alice = SigningKey::from_seed(b"alice");
    let alice_address = alice.address();
    let router = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
        let challenge = [7u8; 32];
        let hello = LoginChallenge {
            challenge,
            network_id: NET,
            router: router_key.address(),
        };
        stream.write_all(&Message::from(hello).to_frame()).unwrap();
        let (t, body) = read_frame(&mut stream, &mut decoder);
        let answer = Message::decode(t, &body).unwrap();
        assert_eq!(answer.verify(NET, &body), Ok(alice_address));
        let Message::LoginAnswer(answer) = answer else {
            panic!("expected a login answer")
        };
        assert_eq!(answer.challenge, challenge);
        assert_eq!(
            signature::recover_signer(&login_digest(NET, &challenge), &answer.signature),
            Ok(alice_address)
        );
        stream
            .write_all(
                &Message::from(LoginOk {
                    address: alice_address,
                })
                .to_frame(),
            )
            .unwrap();
        // The RFC, verified over the received bytes.
        let (t, body) = read_frame(&mut stream, &mut decoder);
        let rfc = Message::decode(t, &body).unwrap();
        assert_eq!(rfc.verify(NET, &body), Ok(alice_address));
        // The same RFC pre-signed by a pure function: the same bytes.
        let Message::Rfc(rfc) = rfc else {
            panic!("expected an RFC")
        };
        let again = presign_rfc(&SigningKey::from_seed(b"alice"), NET, rfc.nonce, 3, 100, 9);
        assert_eq!(&again[12..], &body[..]);
        // A ticket signed by the router, then one signed by someone else.
        let mut ticket: Message = SessionTicket {
            session_id: 1,
            user: alice_address,
            model_id: 3,
            ..Default::default()
        }
        .into();
        stream.write_all(&ticket.sign(&router_key, NET)).unwrap();
        stream
            .write_all(&ticket.sign(&SigningKey::from_seed(b"mallory"), NET))
            .unwrap();
    });
    let mut client = Client::connect(addr, alice).unwrap();
    assert_eq!(client.network_id(), NET);
    assert_eq!(client.router(), SigningKey::from_seed(b"router").address());
    let nonce = client.next_nonce();
    assert!(
        client.next_nonce() > nonce,
        "R-ID-4: nonces strictly increase"
    );
    let rfc = Rfc {
        from: client.address(),
        nonce,
        model_id: 3,
        tokens_max: 100,
        expires_at_ms: 9,
        ..Rfc::default()
    };
    client.send_signed(rfc.into()).unwrap();
    assert!(matches!(
        client.recv_verified(),
        Ok(Message::SessionTicket(_))
    ));
    assert!(matches!(
        client.recv_verified(),
        Err(ClientError::RouterSignature(
            SigError::SignerMismatch { .. }
        ))
    ));
    router.join().unwrap();
    assert!(matches!(client.recv(), Err(ClientError::Closed)));
}

#[test]
fn login_refused_when_the_router_does_not_challenge() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let router = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .write_all(&Message::from(Ping { payload: 1 }).to_frame())
            .unwrap();
    });
    let result = Client::connect(addr, SigningKey::from_seed(b"bob"));
    assert!(matches!(result, Err(ClientError::Login(_))));
    router.join().unwrap();
}
