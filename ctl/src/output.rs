//! How yellowstone-ctl prints the market's state: JSON (keys as in
//! `yellowstone-router ledger --json` where they overlap; wei amounts and MaxT as
//! decimal strings, since they exceed what JSON numbers carry exactly) and text.

use serde_json::{json, Map, Value};
use yellowstone_engine::ParamId;
use yellowstone_wire::messages::MarketState;

/// The market state as one JSON object.
pub fn market_json(state: &MarketState) -> Value {
    let mut params = Map::new();
    for entry in &state.params {
        match ParamId::from_u16(entry.param_id) {
            Some(param) => {
                let value = match param.kind() {
                    yellowstone_engine::ParamKind::Integer => {
                        Value::String(entry.value.to_string())
                    }
                    yellowstone_engine::ParamKind::Choice(_) => {
                        Value::String(param.format_value(entry.value))
                    }
                };
                params.insert(param.name().to_string(), value);
            }
            None => {
                params.insert(
                    format!("param_{}", entry.param_id),
                    Value::String(entry.value.to_string()),
                );
            }
        }
    }
    let models: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            json!({
                "model_id": m.model_id,
                "queue_depth": m.queue_depth,
                "providers_live": m.providers_live,
                "providers_suspended": m.providers_suspended,
                "offers_available": m.offers_available,
                "best_bid_wei_per_token": (m.providers_live > 0)
                    .then(|| m.best_bid_wei_per_token.to_string()),
            })
        })
        .collect();
    json!({
        "now_ms": state.now_ms,
        "block": state.block,
        "day": state.day,
        "max_tokens_per_day": state.max_tokens_per_day.to_string(),
        "access_rate_tokens_per_mor": state.access_rate_tokens_per_mor.to_string(),
        "budget_wei_today": state.budget_wei_today.to_string(),
        "emitted_wei": state.emitted_wei.to_string(),
        "paid_wei": state.paid_wei.to_string(),
        "owed_wei": state.owed_wei.to_string(),
        "burned_wei": state.burned_wei.to_string(),
        "pool_wei": state.pool_wei.to_string(),
        "credited_wei": state.credited_wei.to_string(),
        "shortfall_wei": state.shortfall_wei.to_string(),
        "day_cap_wei": state.day_cap_wei.to_string(),
        "day_spent_wei": state.day_spent_wei.to_string(),
        "last_batch_block": state.batch_sealed.then_some(state.last_batch_block),
        "last_batch_credited_wei": state.last_batch_credited_wei.to_string(),
        "last_batch_shortfall_wei": state.last_batch_shortfall_wei.to_string(),
        "sessions_open": state.sessions_open,
        "params": params,
        "models": models,
    })
}

/// The market state as an operator reads it.
pub fn market_text(state: &MarketState) -> String {
    let json = market_json(state);
    let field = |key: &str| match &json[key] {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    };
    let mut text = String::new();
    for (label, key) in [
        ("block (open)", "block"),
        ("day", "day"),
        ("MaxT (tokens/day)", "max_tokens_per_day"),
        ("access rate (T/day/MOR)", "access_rate_tokens_per_mor"),
        ("budget today (wei)", "budget_wei_today"),
        ("pool (wei)", "pool_wei"),
        ("emitted (wei)", "emitted_wei"),
        ("credited (wei)", "credited_wei"),
        ("paid (wei)", "paid_wei"),
        ("owed (wei)", "owed_wei"),
        ("burned (wei)", "burned_wei"),
        ("shortfall (wei)", "shortfall_wei"),
        ("day cap / spent (wei)", "day_cap_wei"),
        ("last batch block", "last_batch_block"),
        ("last batch credited", "last_batch_credited_wei"),
        ("last batch shortfall", "last_batch_shortfall_wei"),
        ("sessions open", "sessions_open"),
    ] {
        let mut value = field(key);
        if key == "day_cap_wei" {
            value = format!("{value} / {}", field("day_spent_wei"));
        }
        text.push_str(&format!("{label:<26}{value}\n"));
    }
    text.push_str("models:\n  model  queue  live  suspended  available  best bid (wei/T)\n");
    for m in json["models"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "  {:<5}  {:<5}  {:<4}  {:<9}  {:<9}  {}\n",
            m["model_id"],
            m["queue_depth"],
            m["providers_live"],
            m["providers_suspended"],
            m["offers_available"],
            m["best_bid_wei_per_token"].as_str().unwrap_or("none"),
        ));
    }
    text.push_str("parameters:\n");
    for (name, value) in json["params"].as_object().into_iter().flatten() {
        text.push_str(&format!("  {name:<28}{}\n", value.as_str().unwrap_or("?")));
    }
    text
}

/// `params list`: every run-time parameter with its id, kind and meaning.
pub fn params_list() -> String {
    let mut text =
        String::from("name                         id  value                          meaning\n");
    for param in ParamId::ALL {
        let kind = match param.kind() {
            yellowstone_engine::ParamKind::Integer => "integer".to_string(),
            yellowstone_engine::ParamKind::Choice(labels) => labels.join("|"),
        };
        text.push_str(&format!(
            "{:<28} {:>2}  {:<30} {}\n",
            param.name(),
            param as u16,
            kind,
            param.help()
        ));
    }
    text
}
