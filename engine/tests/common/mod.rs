//! A small driver for the engine tests: fixed addresses, a two-model catalog, and
//! helpers that apply a command and return its effects, checking invariants.
#![allow(dead_code)]

use yellowstone_engine::*;

pub const OPERATOR: Address = Address([0xEE; 20]);
pub const MODEL_A: ModelId = 7;
pub const MODEL_B: ModelId = 8;
pub const GENESIS_MS: u64 = 1_700_000_000_000;

pub fn weights(model: ModelId) -> [u8; 32] {
    *blake3::hash(&model.to_le_bytes()).as_bytes()
}

pub fn user(n: u32) -> Address {
    let mut bytes = [0u8; 20];
    bytes[0] = 0x10;
    bytes[16..].copy_from_slice(&n.to_be_bytes());
    Address(bytes)
}

pub fn provider(n: u32) -> Address {
    let mut bytes = [0u8; 20];
    bytes[0] = 0x20;
    bytes[16..].copy_from_slice(&n.to_be_bytes());
    Address(bytes)
}

pub fn config() -> MarketConfig {
    MarketConfig {
        genesis_ms: GENESIS_MS,
        operator: OPERATOR,
        models: vec![
            ModelSpec {
                id: MODEL_A,
                weights_hash: weights(MODEL_A),
                unit: Unit::Token,
            },
            ModelSpec {
                id: MODEL_B,
                weights_hash: weights(MODEL_B),
                unit: Unit::Token,
            },
        ],
        speed_reports_min: 3,
        ..MarketConfig::default()
    }
}

pub struct Market {
    pub engine: Engine,
    pub now: u64,
    nonces: std::collections::HashMap<Address, u64>,
}

impl Default for Market {
    fn default() -> Self {
        Market::new()
    }
}

impl Market {
    pub fn new() -> Market {
        Market::with(config())
    }

    pub fn with(config: MarketConfig) -> Market {
        let now = config.genesis_ms;
        Market {
            engine: Engine::new(config),
            now,
            nonces: Default::default(),
        }
    }

    pub fn nonce(&mut self, who: Address) -> u64 {
        let n = self.nonces.entry(who).or_insert(0);
        *n += 1;
        *n
    }

    pub fn apply(&mut self, command: Command) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.engine.apply(&command, self.now, &mut effects);
        self.engine.check_invariants();
        effects
    }

    pub fn advance(&mut self, ms: u64) -> Vec<Effect> {
        self.now += ms;
        self.apply(Command::Tick)
    }

    pub fn fund(&mut self, who: Address, mor: u128) {
        self.fund_wei(who, mor * WEI_PER_MOR);
    }

    /// R-QUOTA-6: sets a balance in wei; the engine reports what it applied.
    pub fn fund_wei(&mut self, who: Address, balance_wei: u128) {
        let nonce = self.nonce(OPERATOR);
        let effects = self.apply(Command::SetBalances {
            operator: OPERATOR,
            nonce,
            entries: vec![(who, balance_wei)],
        });
        assert_eq!(
            effects,
            vec![
                Effect::BalancesSet {
                    entries: vec![(who, balance_wei)]
                },
                Effect::Done {
                    to: OPERATOR,
                    nonce
                }
            ]
        );
    }

    pub fn offer(model: ModelId, price: u128, capacity: u32) -> OfferSpec {
        OfferSpec {
            model,
            unit: 0,
            weights_hash: weights(model),
            price_wei_per_token: price,
            capacity,
        }
    }

    pub fn register(&mut self, who: Address, offers: Vec<OfferSpec>) -> Vec<Effect> {
        let nonce = self.nonce(who);
        self.apply(Command::RegisterProvider {
            provider: who,
            nonce,
            endpoint: b"127.0.0.1:9000".to_vec(),
            offers,
        })
    }

    pub fn rfc(&mut self, who: Address, model: ModelId, tokens_max: u64) -> Vec<Effect> {
        let nonce = self.nonce(who);
        let expires_at_ms = self.now + 60_000;
        self.apply(Command::SubmitRfc {
            user: who,
            nonce,
            model,
            tokens_max,
            expires_at_ms,
        })
    }

    pub fn answer(&mut self, who: Address, probe: ProbeId) -> Vec<Effect> {
        let nonce = self.nonce(who);
        self.apply(Command::ProbeAnswer {
            provider: who,
            nonce,
            probe,
        })
    }

    pub fn report(
        &mut self,
        who: Address,
        session: SessionId,
        elapsed_ms: u64,
        tokens: u64,
        pass: bool,
    ) -> Vec<Effect> {
        let outcome = if pass {
            ReportOutcome::Pass
        } else {
            ReportOutcome::Fail
        };
        // The first token at once, an empty prompt: the whole time is generation.
        self.report_with(who, session, outcome, [elapsed_ms, 0, tokens, 0])
    }

    /// A report with every figure: `[elapsed_ms, ttft_ms, tokens, prompt_tokens]`.
    pub fn report_with(
        &mut self,
        who: Address,
        session: SessionId,
        outcome: ReportOutcome,
        [elapsed_ms, ttft_ms, tokens, prompt_tokens]: [u64; 4],
    ) -> Vec<Effect> {
        let nonce = self.nonce(who);
        self.apply(Command::Report {
            user: who,
            nonce,
            session,
            elapsed_ms,
            ttft_ms,
            tokens,
            prompt_tokens,
            outcome,
            report_digest: [nonce as u8; 32],
        })
    }

    /// R-SESSION-1: the provider signs the session's start.
    pub fn start(&mut self, who: Address, session: SessionId) -> Vec<Effect> {
        let nonce = self.nonce(who);
        self.apply(Command::StartSession {
            provider: who,
            nonce,
            session,
        })
    }

    /// RFC -> probe -> answer -> the provider signs the start (R-SESSION-1):
    /// returns the ticket.
    pub fn open_session(&mut self, who: Address, model: ModelId, tokens_max: u64) -> Ticket {
        let ticket = self.open_session_unstarted(who, model, tokens_max);
        let effects = self.start(ticket.provider, ticket.session);
        assert_eq!(rejection_in(&effects), None, "the start is accepted");
        ticket
    }

    /// RFC -> probe -> answer, and no start: returns the ticket.
    pub fn open_session_unstarted(
        &mut self,
        who: Address,
        model: ModelId,
        tokens_max: u64,
    ) -> Ticket {
        let effects = self.rfc(who, model, tokens_max);
        let (probe, provider) = probe_in(&effects).expect("a probe was sent");
        let effects = self.answer(provider, probe);
        ticket_in(&effects).expect("a ticket was issued")
    }
}

pub fn probe_in(effects: &[Effect]) -> Option<(ProbeId, Address)> {
    effects.iter().find_map(|e| match e {
        Effect::Probe {
            probe, provider, ..
        } => Some((*probe, *provider)),
        _ => None,
    })
}

pub fn ticket_in(effects: &[Effect]) -> Option<Ticket> {
    effects.iter().find_map(|e| match e {
        Effect::SessionOpened { ticket } => Some(ticket.clone()),
        _ => None,
    })
}

pub fn rejection_in(effects: &[Effect]) -> Option<MarketError> {
    effects.iter().find_map(|e| match e {
        Effect::Rejected { error, .. } => Some(error.clone()),
        _ => None,
    })
}

pub fn batches_in(effects: &[Effect]) -> Vec<(CreditBatch, BatchApplied)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::BatchSealed { batch, applied } => Some((batch.clone(), applied.clone())),
            _ => None,
        })
        .collect()
}
