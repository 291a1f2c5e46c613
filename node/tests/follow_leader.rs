//! R-HA-3 (issue 25) through the real processes: a consumer node configured with a
//! router group's members (`router_endpoints`: a dead member, then a follower that
//! names the leader) reaches the leader; its connection there loses the RFC's
//! acceptance (as when a leader dies after taking the RFC); the node reconnects,
//! resends the same signed RFC, and the application's request still completes, with
//! one session: the router answered the resend from its reply cache.

mod common;

use common::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use yellowstone_tests::cut_proxy::{fake_follower, CutProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_ha_3_the_consumer_follows_the_leader_and_its_resent_rfc_completes_the_request() {
    let proxy_slot: Arc<Mutex<Option<CutProxy>>> = Arc::new(Mutex::new(None));
    let slot = proxy_slot.clone();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let stack = Stack::start(Tuning {
        consumer_routers: Some(Box::new(move |router| {
            // The first connection that carries an RfcAccepted loses it.
            let leader =
                CutProxy::start_cutting_at(router, yellowstone_wire::msg_type::RFC_ACCEPTED, 1);
            let follower = fake_follower(2, Some(leader.addr));
            *slot.lock().unwrap() = Some(leader);
            format!("router_endpoints = [\"{dead}\", \"{follower}\"]")
        })),
        ..Tuning::default()
    })
    .await;
    let response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&json!({"model": "demo-model-1",
            "messages": [{"role": "user", "content": "after a failover"}],
            "max_tokens": 8, "stream": false}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let cuts = proxy_slot.lock().unwrap().as_ref().map(CutProxy::cuts);
    assert_eq!(cuts, Some(1), "the RFC's acceptance was lost once");
    assert_eq!(
        stack
            .router_metric("yellowstone_reply_cache_hits_total")
            .await,
        1.0,
        "the resent RFC was answered from the cache"
    );
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            1.0,
        )
        .await;
}
