//! R-NODE-2: the catalog query through the real binary: model names from the
//! configuration, the best live bid per model, and refusal before login.

use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::RouterProcess;
use yellowstone_wire::client::Client;
use yellowstone_wire::*;

fn query(client: &mut Client, query_id: u64) -> Catalog {
    client.send(&CatalogQuery { query_id }.into()).unwrap();
    expect(client, Duration::from_secs(10), |m| match m {
        Message::Catalog(c) if c.query_id == query_id => Some(c.clone()),
        Message::ErrorReply(e) => panic!("catalog query refused: {e:?}"),
        _ => None,
    })
}

/// Queries until `accept` holds (the catalog is published at least once per tick).
fn query_until(client: &mut Client, mut accept: impl FnMut(&Catalog) -> bool) -> Catalog {
    let deadline = Instant::now() + Duration::from_secs(10);
    for query_id in 1.. {
        let catalog = query(client, query_id);
        if accept(&catalog) {
            return catalog;
        }
        assert!(
            Instant::now() < deadline,
            "catalog never showed: {catalog:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

#[test]
fn r_node_2_catalog_lists_configured_names_and_the_best_live_bid() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    let hash = hex::encode(yellowstone_wire::demo::demo_weights_hash(1));
    let hash2 = hex::encode(yellowstone_wire::demo::demo_weights_hash(2));
    std::fs::write(
        &config,
        format!(
            "[[market.models]]\nid = 1\nweights_hash = \"{hash}\"\nname = \"llama-3.1-8b\"\n\
             [[market.models]]\nid = 2\nweights_hash = \"{hash2}\"\n"
        ),
    )
    .unwrap();
    let operator = operator_key();
    let operator_address = operator.address().to_string();
    let router = RouterProcess::start(&[
        "--config",
        &config.display().to_string(),
        "--operator",
        &operator_address,
        "--data-dir",
        &dir.path().join("data").display().to_string(),
    ]);
    let addr = router.ready.listen;
    let network_id = router.ready.network_id;

    // Before login: refused with a typed error, the connection stays usable.
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stranger = Client::from_stream(stream, SigningKey::from_seed(b"stranger"));
    assert!(matches!(
        stranger.recv().unwrap(),
        Message::LoginChallenge(_)
    ));
    stranger.send(&CatalogQuery { query_id: 1 }.into()).unwrap();
    match stranger.recv().unwrap() {
        Message::ErrorReply(e) => assert_eq!(e.code, codes::NOT_LOGGED_IN, "{e:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut stranger = connect(addr, SigningKey::from_seed(b"stranger"));
    let catalog = query(&mut stranger, 2);
    assert_eq!(catalog.models.len(), 2);
    assert_eq!(catalog.models[0].name, "llama-3.1-8b");
    assert_eq!(catalog.models[1].name, "model-2");
    assert_eq!(
        catalog.models[0].weights_hash,
        yellowstone_wire::demo::demo_weights_hash(1)
    );
    assert!(catalog.models.iter().all(|m| m.offers_live == 0));

    let mut operator = connect(addr, operator);
    let mut cheap = connect(addr, SigningKey::from_seed(b"catalog-cheap"));
    let mut dear = connect(addr, SigningKey::from_seed(b"catalog-dear"));
    fund(
        &mut operator,
        &[
            (cheap.address(), WEI_PER_MOR),
            (dear.address(), WEI_PER_MOR),
        ],
    );
    register(&mut dear, network_id, 1, 9_000, 2);
    register(&mut cheap, network_id, 1, 5_000, 2);
    let catalog = query_until(&mut stranger, |c| c.models[0].offers_live == 2);
    assert_eq!(catalog.models[0].best_price_wei_per_token, 5_000);
    assert_eq!(catalog.models[1].offers_live, 0);
    assert_eq!(catalog.models[1].best_price_wei_per_token, 0);
    assert!(catalog.as_of_ms > 0);

    // The cheap provider leaves: its bid is no longer live.
    drop(cheap);
    let catalog = query_until(&mut stranger, |c| c.models[0].offers_live == 1);
    assert_eq!(catalog.models[0].best_price_wei_per_token, 9_000);
}
