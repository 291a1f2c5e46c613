//! Outsider review 3, findings 1 and 2 (R-HA-3), through the real binaries: what a
//! node signs or holds while its router connection is down or was failed over must
//! not be lost.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const EARNED: &str = "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}";
const LOST: &str = "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"error\"}";

/// Finding 1: a session that ends while the consumer's router connection is down
/// (cut, then refused for 1.5 s) is reported once the connection is back, and the
/// router credits it (`earned`). Before the fix the report was refused locally
/// ("not connected ... (reconnecting)", `ack="error"`) and never sent: the provider
/// was not paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_ha_3_a_report_made_while_reconnecting_is_sent_when_the_link_is_back() {
    let switch = SwitchProxy::bind();
    let routed = switch.clone();
    let stack = Stack::start(Tuning {
        consumer: "reconnect_initial_ms = 100\nreconnect_max_ms = 200\n".into(),
        consumer_routers: Some(Box::new(move |router| {
            routed.start(router);
            format!("router_addr = \"{}\"", routed.addr)
        })),
        ..Tuning::default()
    })
    .await;
    // 8 tokens at 250 ms each: the answer takes about 2 s after its ticket.
    stack.standin_mode(json!({"delay_ms_per_token": 250})).await;
    let url = stack.consumer_url("/v1/chat/completions");
    let body = json!({"model": "demo-model-1", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "stream": false});
    let request = stack.http.post(&url).json(&body).send();
    let cutter = async {
        // The ticket is in hand once the stand-in has the request.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stack.standin_last_request().await.is_null() {
            assert!(std::time::Instant::now() < deadline, "no request reached the model");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        switch.cut();
    };
    let (response, ()) = tokio::join!(request, cutter);
    let response = response.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    // The report is made now, with the connection down; it is kept.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(stack.consumer_metric(EARNED).await, 0.0, "the link was down");
    switch.restore();
    stack.wait_metric(EARNED, 1.0).await;
    // `earned` is the router's acknowledgement: it credited the session.
    assert_eq!(stack.consumer_metric(LOST).await, 0.0);
}
