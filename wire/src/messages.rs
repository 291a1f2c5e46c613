//! The message catalog: one struct per message type with a fixed little-endian
//! layout (fields in declaration order), and `Message`, the enum over all of them.
//!
//! Signed messages end with the 65-byte signature; their digest covers the exact body
//! bytes before it (`signed_digest`), so verifying needs no re-encoding. Every list
//! and string is bounded by a named constant. Type codes are stable: new messages get
//! new codes; an unknown code decodes to `DecodeError::UnknownMessageType`, which the
//! router answers with an error reply without closing the connection.

use crate::address::Address;
use crate::codec::{DecodeError, Reader, Writer};
use crate::signature::{self, SigError, Signature, SigningKey, SIGNATURE_LEN};

/// Bytes of a provider's endpoint (R-PROV-1).
pub const ENDPOINT_BYTES_MAX: usize = 255;
/// Bytes of an error reply's reason.
pub const REASON_BYTES_MAX: usize = 1024;
/// Offers in one `RegisterProvider`.
pub const OFFERS_MAX: usize = 64;
/// Entries in one `BalanceUpdate` (and one `ChainPaid`).
pub const BALANCE_ENTRIES_MAX: usize = 100_000;
/// Parameters in one `SetParams`.
pub const PARAMS_MAX: usize = 64;
/// Provider rows in one `CreditBatch`.
pub const BATCH_TOTALS_MAX: usize = 1_000_000;
/// Models in one `Catalog` answer (the router's catalog has at most this many).
pub const CATALOG_MODELS_MAX: usize = 4096;
/// Bytes of a model's name in the catalog (UTF-8).
pub const MODEL_NAME_BYTES_MAX: usize = 128;
/// Models in a `MarketState` (the catalog holds at most u16::MAX models).
pub const MARKET_MODELS_MAX: usize = 65_535;

/// A value carried in a message: how it is written and read.
pub trait Field: Sized {
    /// Appends the value's wire bytes.
    fn write(&self, w: &mut Writer<'_>);
    /// Reads a value; errors name `field` (`Message.field`).
    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError>;
}

macro_rules! scalar_field {
    ($($t:ty => $m:ident),*) => {$(
        impl Field for $t {
            fn write(&self, w: &mut Writer<'_>) { w.$m(*self); }
            fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> { r.$m(field) }
        }
    )*};
}
scalar_field!(u8 => u8, u16 => u16, u32 => u32, u64 => u64, u128 => u128, bool => bool);

impl Field for [u8; 32] {
    fn write(&self, w: &mut Writer<'_>) {
        w.bytes(self);
    }
    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.bytes32(field)
    }
}

impl Field for Address {
    fn write(&self, w: &mut Writer<'_>) {
        w.address(self);
    }
    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.address(field)
    }
}

impl Field for Signature {
    fn write(&self, w: &mut Writer<'_>) {
        w.signature(self);
    }
    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.signature(field)
    }
}

/// R-REPORT-2: a report's outcome. One byte on the wire: 0 fail, 1 pass (the bytes
/// of the former `pass: bool`), 2 void; any other byte decodes to
/// `DecodeError::BadEnumValue` (`bad_field`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The provider failed the request (an error, a time-out, a cut stream).
    #[default]
    Fail = 0,
    /// A complete answer.
    Pass = 1,
    /// The request failed for the user's own reason (a prompt the model refuses as
    /// invalid or too long, a request cancelled before any output): no credit and
    /// no penalty point.
    Void = 2,
}

impl Outcome {
    /// The outcome of a wire byte, `None` for an unknown one.
    pub fn from_u8(byte: u8) -> Option<Outcome> {
        match byte {
            0 => Some(Outcome::Fail),
            1 => Some(Outcome::Pass),
            2 => Some(Outcome::Void),
            _ => None,
        }
    }

    /// Lower-case name: "fail", "pass" or "void".
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Fail => "fail",
            Outcome::Pass => "pass",
            Outcome::Void => "void",
        }
    }
}

impl Field for Outcome {
    fn write(&self, w: &mut Writer<'_>) {
        w.u8(*self as u8);
    }
    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let byte = r.u8(field)?;
        Outcome::from_u8(byte).ok_or(DecodeError::BadEnumValue {
            field,
            value: byte as u64,
        })
    }
}

/// The bound of each string field, by its qualified name: endpoints (R-PROV-1,
/// R-MATCH-6) are `ENDPOINT_BYTES_MAX`, model names `MODEL_NAME_BYTES_MAX`, every
/// other string (error reasons) is `REASON_BYTES_MAX`. Field names are compile-time
/// constants, so this folds.
pub fn string_bytes_max(field: &'static str) -> usize {
    if field.ends_with(".endpoint") {
        ENDPOINT_BYTES_MAX
    } else if field.ends_with(".name") {
        MODEL_NAME_BYTES_MAX
    } else {
        REASON_BYTES_MAX
    }
}

impl Field for String {
    fn write(&self, w: &mut Writer<'_>) {
        w.string(self);
    }
    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.string(field, string_bytes_max(field))
    }
}

/// A list item type with its bound and minimum encoded size.
pub trait ListItem: Field {
    /// Items a list of this type may hold.
    const MAX: usize;
    /// The fewest bytes one item takes (checked against the bytes left before the
    /// list is allocated).
    const BYTES: usize;
}

impl<T: ListItem> Field for Vec<T> {
    fn write(&self, w: &mut Writer<'_>) {
        w.list_len(self.len());
        for item in self {
            item.write(w);
        }
    }
    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let len = r.list_len(field, T::MAX, T::BYTES)?;
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(T::read(r, field)?);
        }
        Ok(out)
    }
}

macro_rules! record {
    ($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? } max = $max:expr) => {
        $(#[$doc])*
        #[doc = concat!("\n\nRecord `", stringify!($name), "`: its table in `docs/PROTOCOL.md` (\"Record ", stringify!($name), "\").")]
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name { $(#[doc = concat!("`", stringify!($field), "`, ", stringify!($ty), ": the record's table in `docs/PROTOCOL.md` gives its unit and limits.")] pub $field: $ty),* }
        impl Field for $name {
            fn write(&self, w: &mut Writer<'_>) { $(self.$field.write(w);)* }
            fn read(r: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
                Ok($name { $($field: <$ty as Field>::read(r, concat!(stringify!($name), ".", stringify!($field)))?),* })
            }
        }
        impl ListItem for $name {
            const MAX: usize = $max;
            const BYTES: usize = 0 $(+ std::mem::size_of::<$ty>())*;
        }
        impl $name {
            /// Field names and Rust types in wire order (docs/PROTOCOL.md is checked
            /// against this).
            pub const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), stringify!($ty))),*];
        }
    };
}

record!(
    /// One model a provider offers (R-PROV-1). `unit`: 0 token (SPEC section 8).
    Offer { model_id: u32, unit: u8, weights_hash: [u8; 32], weights_proof: Signature, price_wei_per_token: u128, capacity: u32 }
    max = OFFERS_MAX
);
record!(BalanceEntry { address: Address, balance_wei: u128 } max = BALANCE_ENTRIES_MAX);
record!(ParamEntry { param_id: u16, value: u128 } max = PARAMS_MAX);
record!(
    /// R-CHAIN-3: what the Compute Contract has paid `provider` since genesis
    /// (`paidTo`, MOR wei).
    PaidEntry { provider: Address, paid_to_wei: u128 } max = BALANCE_ENTRIES_MAX
);
record!(
    /// One provider's totals in a block (R-BLOCK-2): `earned_wei` is Σ tokens × price
    /// of its credited sessions, `credited_wei` what the ledger credited of it after
    /// the day's cap (pro rata when the cap cuts the block; never above earned).
    BatchTotals { provider: Address, earned_wei: u128, credited_wei: u128, tokens: u64, sessions: u32 }
    max = BATCH_TOTALS_MAX
);
record!(
    /// One model's side of the market in `MarketState` (R-OPS-3): RFCs queued,
    /// providers with an active offer that are live (reachable, not suspended, funded)
    /// or suspended, offers with a free session slot now, and the lowest live bid in
    /// wei per token (0 when `providers_live` is 0).
    MarketModel { model_id: u32, queue_depth: u64, providers_live: u64, providers_suspended: u64, offers_available: u64, best_bid_wei_per_token: u128 }
    max = MARKET_MODELS_MAX
);

/// One model of the router's catalog with its best live bid (`Catalog`, R-NODE-2).
///
/// Layout: `model_id` u32, `unit` u8 (0 token, SPEC section 8), `weights_hash`
/// 32 bytes (BLAKE3 of the weights, R-PROV-1), `best_price_wei_per_token` u128 (0:
/// no live offer), `offers_live` u32 (offers that could take a session now),
/// `name` string (u16 length + UTF-8, at most `MODEL_NAME_BYTES_MAX` bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogModel {
    /// The model's id.
    pub model_id: u32,
    /// 0: tokens (SPEC section 8).
    pub unit: u8,
    /// BLAKE3 of the weights (R-PROV-1).
    pub weights_hash: [u8; 32],
    /// The lowest live bid, wei per token (0: no live offer).
    pub best_price_wei_per_token: u128,
    /// Offers that could take a session now.
    pub offers_live: u32,
    /// The catalog name (at most `MODEL_NAME_BYTES_MAX` bytes).
    pub name: String,
}

impl Field for CatalogModel {
    fn write(&self, w: &mut Writer<'_>) {
        self.model_id.write(w);
        self.unit.write(w);
        self.weights_hash.write(w);
        self.best_price_wei_per_token.write(w);
        self.offers_live.write(w);
        self.name.write(w);
    }
    fn read(r: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(CatalogModel {
            model_id: Field::read(r, "CatalogModel.model_id")?,
            unit: Field::read(r, "CatalogModel.unit")?,
            weights_hash: Field::read(r, "CatalogModel.weights_hash")?,
            best_price_wei_per_token: Field::read(r, "CatalogModel.best_price_wei_per_token")?,
            offers_live: Field::read(r, "CatalogModel.offers_live")?,
            name: Field::read(r, "CatalogModel.name")?,
        })
    }
}

impl CatalogModel {
    /// Field names and Rust types in wire order (docs/PROTOCOL.md is checked
    /// against this).
    pub const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("model_id", "u32"),
        ("unit", "u8"),
        ("weights_hash", "[u8; 32]"),
        ("best_price_wei_per_token", "u128"),
        ("offers_live", "u32"),
        ("name", "String"),
    ];
}

impl ListItem for CatalogModel {
    const MAX: usize = CATALOG_MODELS_MAX;
    /// The fixed fields and the name's u16 length (an empty name is valid).
    const BYTES: usize = 4 + 1 + 32 + 16 + 4 + 2;
}

/// One row of the message catalog (`CATALOG`).
#[derive(Clone, Copy, Debug)]
pub struct MessageInfo {
    /// Its type code (`msg_type`).
    pub msg_type: u16,
    /// Its name, as in `docs/PROTOCOL.md`.
    pub name: &'static str,
    /// The body ends with a 65-byte signature (the sender's or the router's).
    pub signed: bool,
    /// (name, Rust type) in wire order.
    pub fields: &'static [(&'static str, &'static str)],
    /// The body of the message with every field zero or empty (the size of its
    /// fixed part, strings and lists counting their length prefixes only).
    pub default_body: fn() -> Vec<u8>,
}

/// The list records carried inside messages, with their fields in wire order.
pub const RECORDS: &[(&str, &[(&str, &str)])] = &[
    ("Offer", Offer::FIELDS),
    ("BalanceEntry", BalanceEntry::FIELDS),
    ("ParamEntry", ParamEntry::FIELDS),
    ("PaidEntry", PaidEntry::FIELDS),
    ("BatchTotals", BatchTotals::FIELDS),
    ("CatalogModel", CatalogModel::FIELDS),
    ("MarketModel", MarketModel::FIELDS),
];

/// The stable message type codes (`docs/PROTOCOL.md`, "Messages"): never renumbered.
pub mod msg_type {
    /// `LoginChallenge`: router → client.
    pub const LOGIN_CHALLENGE: u16 = 0x0001;
    /// `LoginAnswer`: client → router.
    pub const LOGIN_ANSWER: u16 = 0x0002;
    /// `LoginOk`: router → client.
    pub const LOGIN_OK: u16 = 0x0003;
    /// `RegisterProvider`: client → router.
    pub const REGISTER_PROVIDER: u16 = 0x0010;
    /// `UpdateBid`: client → router.
    pub const UPDATE_BID: u16 = 0x0011;
    /// `WithdrawBid`: client → router.
    pub const WITHDRAW_BID: u16 = 0x0012;
    /// `ProviderAnnounce`: client → router.
    pub const PROVIDER_ANNOUNCE: u16 = 0x0013;
    /// `Rfc`: client → router.
    pub const RFC: u16 = 0x0020;
    /// `RfcCancel`: client → router.
    pub const RFC_CANCEL: u16 = 0x0021;
    /// `RfcAccepted`: router → client.
    pub const RFC_ACCEPTED: u16 = 0x0022;
    /// `RfcFailed`: router → client.
    pub const RFC_FAILED: u16 = 0x0023;
    /// `Probe`: router → client.
    pub const PROBE: u16 = 0x0030;
    /// `ProbeAnswer`: client → router.
    pub const PROBE_ANSWER: u16 = 0x0031;
    /// `SessionTicket`: router → user and provider, signed by the router.
    pub const SESSION_TICKET: u16 = 0x0040;
    /// R-SESSION-1: provider -> router, the inference of a session began.
    pub const SESSION_START: u16 = 0x0041;
    /// `Report`: client → router.
    pub const REPORT: u16 = 0x0050;
    /// `ReportAck`: router → client.
    pub const REPORT_ACK: u16 = 0x0051;
    /// `SubscribeBatches`: client → router.
    pub const SUBSCRIBE_BATCHES: u16 = 0x0060;
    /// `CreditBatch`: router → subscribers, signed by the router (R-BLOCK-2).
    pub const CREDIT_BATCH: u16 = 0x0061;
    /// `Settlement`: router → subscribers, signed by the router (R-CHAIN-1).
    pub const SETTLEMENT: u16 = 0x0062;
    /// `Claim`: client → router.
    pub const CLAIM: u16 = 0x0070;
    /// `ClaimAck`: router → client.
    pub const CLAIM_ACK: u16 = 0x0071;
    /// `BalanceUpdate`: client → router.
    pub const BALANCE_UPDATE: u16 = 0x0080;
    /// `SetParams`: client → router.
    pub const SET_PARAMS: u16 = 0x0081;
    /// `Ack`: router → client.
    pub const ACK: u16 = 0x0082;
    /// `Notice`: router → client.
    pub const NOTICE: u16 = 0x0083;
    /// `Ping`: client → router.
    pub const PING: u16 = 0x0090;
    /// `Pong`: router → client.
    pub const PONG: u16 = 0x0091;
    /// `CatalogQuery`: client → router.
    pub const CATALOG_QUERY: u16 = 0x00A0;
    /// `Catalog`: router → client.
    pub const CATALOG: u16 = 0x00A1;
    /// `MarketStateQuery`: client → router.
    pub const MARKET_STATE_QUERY: u16 = 0x00B0;
    /// `MarketState`: router → client.
    pub const MARKET_STATE: u16 = 0x00B1;
    /// `ErrorReply`: router → client.
    pub const ERROR_REPLY: u16 = 0x00F0;
    /// `ChainPaid`: client → router.
    pub const CHAIN_PAID: u16 = 0x0072;
}

macro_rules! messages {
    ($($(#[$doc:meta])* $name:ident = $code:ident, signed: $signed:tt { $($field:ident : $ty:ty),* $(,)? })*) => {
        $(
            $(#[$doc])*
            #[doc = concat!("\n\nMessage `", stringify!($name), "` (`msg_type::", stringify!($code), "`): its table in `docs/PROTOCOL.md`.")]
            #[derive(Clone, Debug, Default, PartialEq, Eq)]
            pub struct $name { $(#[doc = concat!("`", stringify!($field), "`, ", stringify!($ty), ": the message's table in `docs/PROTOCOL.md` gives its unit and limits.")] pub $field: $ty),* }
            impl $name {
                /// Its type code.
                pub const MSG_TYPE: u16 = msg_type::$code;
                /// Field names and Rust types in wire order.
                pub const FIELDS: &'static [(&'static str, &'static str)] =
                    &[$((stringify!($field), stringify!($ty))),*];
                /// Appends the body (signature included, as it is) to `out`.
                pub fn encode(&self, out: &mut Vec<u8>) {
                    let mut w = Writer(out);
                    $(self.$field.write(&mut w);)*
                }
                /// Decodes a whole body; every byte must be used.
                pub fn decode(body: &[u8]) -> Result<$name, DecodeError> {
                    let mut r = Reader::new(body);
                    let message = $name { $($field: <$ty as Field>::read(&mut r, concat!(stringify!($name), ".", stringify!($field)))?),* };
                    r.finish()?;
                    Ok(message)
                }
            }
            impl From<$name> for Message {
                fn from(m: $name) -> Message { Message::$name(m) }
            }
        )*

        /// Any message of the catalog.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message { $(#[doc = concat!("`", stringify!($name), "`.")] $name($name)),* }

        /// Every message type: code, name, whether signed, fields in wire order
        /// (what docs/PROTOCOL.md's tables are checked against).
        pub const CATALOG: &[MessageInfo] = &[$(MessageInfo {
            msg_type: msg_type::$code,
            name: stringify!($name),
            signed: $signed,
            fields: $name::FIELDS,
            default_body: || {
                let mut body = Vec::new();
                $name::default().encode(&mut body);
                body
            },
        }),*];

        impl Message {
            /// Its type code.
            pub fn msg_type(&self) -> u16 {
                match self { $(Message::$name(_) => msg_type::$code),* }
            }
            /// Its name.
            pub fn name(&self) -> &'static str {
                match self { $(Message::$name(_) => stringify!($name)),* }
            }
            /// Whether the body ends with an originator's (or the router's) signature.
            pub fn is_signed(&self) -> bool {
                match self { $(Message::$name(_) => $signed),* }
            }
            /// Appends its body to `out`.
            pub fn encode(&self, out: &mut Vec<u8>) {
                match self { $(Message::$name(m) => m.encode(out)),* }
            }
            /// Decodes a body of type `msg_type`; `UnknownMessageType` for a code
            /// the catalog lacks.
            pub fn decode(msg_type: u16, body: &[u8]) -> Result<Message, DecodeError> {
                // Hot messages of exact size: fields at fixed offsets, no cursor.
                if let Some(message) = fast::decode(msg_type, body) {
                    return Ok(message);
                }
                match msg_type {
                    $(msg_type::$code => Ok(Message::$name($name::decode(body)?)),)*
                    other => Err(DecodeError::UnknownMessageType { msg_type: other }),
                }
            }
            /// Whether bodies of `msg_type` end with a signature; None for an unknown type.
            pub fn type_is_signed(msg_type: u16) -> Option<bool> {
                match msg_type { $(msg_type::$code => Some($signed),)* _ => None }
            }
        }
    };
}

messages! {
    /// Router -> client on connect: sign this challenge to prove your address.
    LoginChallenge = LOGIN_CHALLENGE, signed: false { challenge: [u8; 32], network_id: u32, router: Address }
    /// Client -> router: `signature` over `signature::login_digest(network_id, challenge)`.
    LoginAnswer = LOGIN_ANSWER, signed: true { address: Address, challenge: [u8; 32], signature: Signature }
    LoginOk = LOGIN_OK, signed: false { address: Address }
    /// R-PROV-1.
    RegisterProvider = REGISTER_PROVIDER, signed: true { from: Address, nonce: u64, endpoint: String, offers: Vec<Offer>, signature: Signature }
    UpdateBid = UPDATE_BID, signed: true { from: Address, nonce: u64, model_id: u32, price_wei_per_token: u128, capacity: u32, signature: Signature }
    WithdrawBid = WITHDRAW_BID, signed: true { from: Address, nonce: u64, model_id: u32, signature: Signature }
    ProviderAnnounce = PROVIDER_ANNOUNCE, signed: true { from: Address, nonce: u64, signature: Signature }
    /// R-RFC-1.
    Rfc = RFC, signed: true { from: Address, nonce: u64, model_id: u32, tokens_max: u64, expires_at_ms: u64, signature: Signature }
    RfcCancel = RFC_CANCEL, signed: true { from: Address, nonce: u64, rfc_id: u64, signature: Signature }
    RfcAccepted = RFC_ACCEPTED, signed: false { nonce: u64, rfc_id: u64, tokens_left: u64 }
    /// `reason`: 1 expired, 2 no provider available, 3 cancelled.
    RfcFailed = RFC_FAILED, signed: false { nonce: u64, rfc_id: u64, reason: u8, refunded_tokens: u64 }
    /// R-MATCH-2: router -> provider liveness check.
    Probe = PROBE, signed: false { probe_id: u64, model_id: u32, tokens_max: u64, deadline_ms: u64 }
    ProbeAnswer = PROBE_ANSWER, signed: true { from: Address, nonce: u64, probe_id: u64, signature: Signature }
    /// R-MATCH-6: router-signed, sent to both sides.
    SessionTicket = SESSION_TICKET, signed: true {
        session_id: u64, user: Address, provider: Address, endpoint: String, model_id: u32, tokens_max: u64,
        price_wei_per_token: u128, expires_at_ms: u64, rfc_nonce: u64, signature: Signature
    }
    /// R-SESSION-1: the session's provider signs that its inference began (sent when
    /// it starts serving the ticket's request). A session not started within
    /// `market.ticket_start_timeout_ms` of its ticket is closed without credit and
    /// without penalty. Answered by `Ack`.
    SessionStart = SESSION_START, signed: true { from: Address, nonce: u64, session_id: u64, signature: Signature }
    /// R-REPORT-1..3: `elapsed_ms` from sending the query to the whole result,
    /// `ttft_ms` from sending it to the first completion token (≤ `elapsed_ms`),
    /// `tokens` completion tokens received, `prompt_tokens` the prompt's tokens,
    /// `outcome` 0 fail, 1 pass, 2 void (any other byte: `bad_field`).
    Report = REPORT, signed: true {
        from: Address, nonce: u64, session_id: u64, elapsed_ms: u64, ttft_ms: u64, tokens: u64,
        prompt_tokens: u64, outcome: Outcome, signature: Signature
    }
    /// `reason`: 0 earned, 1 reported fail, 2 too slow (generation), 3 earned despite
    /// fail, 4 zero tokens, 5 void (R-REPORT-2), 6 too slow to the first token.
    /// `earned`/`earned_wei`: whether the session earned a credit and how much
    /// (tokens × price), to be credited subject to the day's cap when its block is
    /// sealed; the block's CreditBatch says what was credited (R-BLOCK-2).
    ReportAck = REPORT_ACK, signed: false { nonce: u64, session_id: u64, earned: bool, reason: u8, earned_wei: u128 }
    SubscribeBatches = SUBSCRIBE_BATCHES, signed: true { from: Address, nonce: u64, signature: Signature }
    /// R-BLOCK-2: router-signed.
    CreditBatch = CREDIT_BATCH, signed: true {
        block: u64, merkle_root: [u8; 32], receipts: u64, credited_wei: u128, shortfall_wei: u128,
        totals: Vec<BatchTotals>, signature: Signature
    }
    /// R-CHAIN-1: router-signed, sent to batch subscribers at each epoch's end.
    /// `eip712_signature` (r ‖ s ‖ v, v 27 or 28) is the router's signature over the
    /// EIP-712 typed data `Settlement(uint64 networkId,uint64 epoch,uint256 credited,
    /// uint256 bootstrap,bytes32 root)` in the domain ("Yellowstone Compute Contract",
    /// "1", `chain_id`, `contract`): what anyone relays to the Compute Contract.
    Settlement = SETTLEMENT, signed: true {
        epoch: u64, day: u64, first_block: u64, last_block: u64, credited_wei: u128, bootstrap_wei: u128,
        credited_cumulative_wei: u128, providers: u32, merkle_root: [u8; 32], chain_id: u64, contract: Address,
        eip712_signature: Signature, signature: Signature
    }
    /// R-CLAIM-1: `amount_wei` 0 claims all that is owed.
    Claim = CLAIM, signed: true { from: Address, nonce: u64, amount_wei: u128, signature: Signature }
    ClaimAck = CLAIM_ACK, signed: false { nonce: u64, amount_wei: u128, owed_left_wei: u128 }
    /// R-QUOTA-6: operator balance snapshot or update.
    BalanceUpdate = BALANCE_UPDATE, signed: true { from: Address, nonce: u64, entries: Vec<BalanceEntry>, signature: Signature }
    SetParams = SET_PARAMS, signed: true { from: Address, nonce: u64, params: Vec<ParamEntry>, signature: Signature }
    /// Acknowledges a command that has no other answer (registration, bids, operator).
    Ack = ACK, signed: false { nonce: u64 }
    /// Unsolicited news for a provider: `kind` 1 unreachable, 2 suspended (until_ms),
    /// 3 registered without a MOR balance: not matched until funded (R-PROV-2).
    Notice = NOTICE, signed: false { kind: u8, until_ms: u64 }
    Ping = PING, signed: false { payload: u64 }
    Pong = PONG, signed: false { payload: u64 }
    /// R-NODE-2: a logged-in client asks for the router's model catalog; `query_id`
    /// is echoed in the answer. Unsigned: it changes nothing and promises nothing.
    CatalogQuery = CATALOG_QUERY, signed: false { query_id: u64 }
    /// The answer to `CatalogQuery`: every model of the market's catalog with its
    /// name and best live bid, as of `as_of_ms` (Unix ms of the engine's clock; the
    /// figures may lag the engine by up to one of its ticks).
    Catalog = CATALOG, signed: false { query_id: u64, as_of_ms: u64, models: Vec<CatalogModel> }
    /// R-OPS-3: asks for the market's figures. Any logged-in address may ask (the
    /// figures are public, as the Prometheus metrics are); unsigned, no nonce: it
    /// changes nothing. Answered by `MarketState` echoing `query_id`.
    MarketStateQuery = MARKET_STATE_QUERY, signed: false { query_id: u64 }
    /// R-OPS-3: the market's figures as the engine last published them (republished
    /// every 100 ms of engine time, and at once for a new block, an operator command
    /// or a claim, before its `Ack`/`ClaimAck` leaves; the per-model provider
    /// figures every 100 ms, or less often in a market so large that their pass over
    /// every offer would take over 2 % of the engine thread). Amounts in MOR wei; `max_tokens_per_day` is MaxT
    /// (R-QUOTA-1), `access_rate_tokens_per_mor` tokens per day per whole MOR
    /// (R-QUOTA-2); emitted, paid, owed, burned, credited and shortfall are since
    /// genesis; the pool is received and neither paid, owed nor burned;
    /// `last_batch_*` describe the last sealed block (`batch_sealed` false: none yet);
    /// `params` holds every run-time parameter's value in force (choices as indexes).
    MarketState = MARKET_STATE, signed: false {
        query_id: u64, now_ms: u64, block: u64, day: u64,
        max_tokens_per_day: u128, access_rate_tokens_per_mor: u128, budget_wei_today: u128,
        emitted_wei: u128, paid_wei: u128, owed_wei: u128, burned_wei: u128, pool_wei: u128,
        credited_wei: u128, shortfall_wei: u128, day_cap_wei: u128, day_spent_wei: u128,
        batch_sealed: bool, last_batch_block: u64, last_batch_credited_wei: u128, last_batch_shortfall_wei: u128,
        sessions_open: u64, params: Vec<ParamEntry>, models: Vec<MarketModel>
    }
    /// SPEC section 9: every refusal. `detail` holds e.g. the quota left.
    ErrorReply = ERROR_REPLY, signed: false { code: u16, ref_msg_type: u16, ref_nonce: u64, retry_after_ms: u32, detail: u128, reason: String }
    /// R-CHAIN-3: operator only: what the Compute Contract at (`chain_id`,
    /// `contract`) has paid each provider (`paidTo`), read from the chain, so that
    /// the router's ledger agrees with it. Entries strictly ascending by provider.
    ChainPaid = CHAIN_PAID, signed: true { from: Address, nonce: u64, chain_id: u64, contract: Address, entries: Vec<PaidEntry>, signature: Signature }
}

/// What a user measured of a session, for [`Report::new`] (R-REPORT-1, R-REPORT-3).
/// Milliseconds from sending the query; tokens as the user counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportFigures {
    /// To the whole result.
    pub elapsed_ms: u64,
    /// To the first completion token; at most `elapsed_ms` (the router refuses
    /// more with `ttft_over_elapsed`).
    pub ttft_ms: u64,
    /// Completion tokens received (at most the ticket's TokenMax).
    pub tokens: u64,
    /// The prompt's tokens (at most `market.prompt_tokens_max`).
    pub prompt_tokens: u64,
}

impl Report {
    /// An unsigned report (sign it with `Message::sign` or `client::presign_report`).
    pub fn new(
        from: Address,
        nonce: u64,
        session_id: u64,
        outcome: Outcome,
        figures: ReportFigures,
    ) -> Report {
        Report {
            from,
            nonce,
            session_id,
            elapsed_ms: figures.elapsed_ms,
            ttft_ms: figures.ttft_ms,
            tokens: figures.tokens,
            prompt_tokens: figures.prompt_tokens,
            outcome,
            signature: Signature::default(),
        }
    }

    /// The figures the report carries.
    pub fn figures(&self) -> ReportFigures {
        ReportFigures {
            elapsed_ms: self.elapsed_ms,
            ttft_ms: self.ttft_ms,
            tokens: self.tokens,
            prompt_tokens: self.prompt_tokens,
        }
    }
}

/// `Notice.kind`: the provider is out of matching until it announces itself again
/// (R-MATCH-2).
pub const NOTICE_UNREACHABLE: u8 = 1;
/// `Notice.kind`: the provider is suspended until `until_ms` (R-PERF-4).
pub const NOTICE_SUSPENDED: u8 = 2;
/// `Notice.kind`: the registration was accepted but the provider holds no MOR
/// balance and will not be matched until funded (R-PROV-2).
pub const NOTICE_UNFUNDED: u8 = 3;

/// The digest of a signed body: everything before the trailing signature.
pub fn signed_digest(network_id: u32, msg_type: u16, body: &[u8]) -> Option<[u8; 32]> {
    let unsigned = body.len().checked_sub(SIGNATURE_LEN)?;
    Some(signature::digest(network_id, msg_type, &body[..unsigned]))
}

impl Message {
    /// Whether clients send this message to the router: every message with a signed
    /// originator, and the unsigned queries (`Ping`, `MarketStateQuery`). The router
    /// sends all the others, with FLAG_RESPONSE.
    pub fn is_sent_by_client(&self) -> bool {
        self.claimed_origin().is_some()
            || matches!(
                self,
                Message::Ping(_) | Message::MarketStateQuery(_) | Message::CatalogQuery(_)
            )
    }

    /// The nonce of a signed client message of type `msg_type`, read at its fixed
    /// offset (bytes 20..28, after the 20-byte `from`, little-endian) from a body
    /// that did not decode: every signed client message (not `LoginAnswer`) starts
    /// with `from` and `nonce`, so a refusal of a body broken further on (a bad
    /// outcome byte, a truncated list) can still name the message it answers
    /// (`ErrorReply.ref_nonce`, docs/PROTOCOL.md). None for other types or a body
    /// shorter than 28 bytes.
    pub fn nonce_at_fixed_offset(msg_type: u16, body: &[u8]) -> Option<u64> {
        use msg_type::*;
        const WITH_FROM_AND_NONCE: [u16; 14] = [
            REGISTER_PROVIDER,
            UPDATE_BID,
            WITHDRAW_BID,
            PROVIDER_ANNOUNCE,
            RFC,
            RFC_CANCEL,
            PROBE_ANSWER,
            REPORT,
            SESSION_START,
            SUBSCRIBE_BATCHES,
            CLAIM,
            BALANCE_UPDATE,
            SET_PARAMS,
            CHAIN_PAID,
        ];
        if !WITH_FROM_AND_NONCE.contains(&msg_type) {
            return None;
        }
        let bytes: [u8; 8] = body.get(20..28)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    /// The address a signed client message claims to come from, and its nonce.
    pub fn claimed_origin(&self) -> Option<(Address, u64)> {
        match self {
            Message::RegisterProvider(m) => Some((m.from, m.nonce)),
            Message::UpdateBid(m) => Some((m.from, m.nonce)),
            Message::WithdrawBid(m) => Some((m.from, m.nonce)),
            Message::ProviderAnnounce(m) => Some((m.from, m.nonce)),
            Message::Rfc(m) => Some((m.from, m.nonce)),
            Message::RfcCancel(m) => Some((m.from, m.nonce)),
            Message::ProbeAnswer(m) => Some((m.from, m.nonce)),
            Message::Report(m) => Some((m.from, m.nonce)),
            Message::SessionStart(m) => Some((m.from, m.nonce)),
            Message::SubscribeBatches(m) => Some((m.from, m.nonce)),
            Message::Claim(m) => Some((m.from, m.nonce)),
            Message::BalanceUpdate(m) => Some((m.from, m.nonce)),
            Message::SetParams(m) => Some((m.from, m.nonce)),
            Message::ChainPaid(m) => Some((m.from, m.nonce)),
            Message::LoginAnswer(m) => Some((m.address, 0)),
            _ => None,
        }
    }

    /// The signature slot, without copying the message (verify is on the hot path).
    pub fn signature_ref(&self) -> Option<&Signature> {
        Some(match self {
            Message::LoginAnswer(m) => &m.signature,
            Message::RegisterProvider(m) => &m.signature,
            Message::UpdateBid(m) => &m.signature,
            Message::WithdrawBid(m) => &m.signature,
            Message::ProviderAnnounce(m) => &m.signature,
            Message::Rfc(m) => &m.signature,
            Message::RfcCancel(m) => &m.signature,
            Message::ProbeAnswer(m) => &m.signature,
            Message::SessionTicket(m) => &m.signature,
            Message::Report(m) => &m.signature,
            Message::SessionStart(m) => &m.signature,
            Message::SubscribeBatches(m) => &m.signature,
            Message::CreditBatch(m) => &m.signature,
            Message::Settlement(m) => &m.signature,
            Message::Claim(m) => &m.signature,
            Message::BalanceUpdate(m) => &m.signature,
            Message::SetParams(m) => &m.signature,
            Message::ChainPaid(m) => &m.signature,
            _ => return None,
        })
    }

    fn signature_mut(&mut self) -> Option<&mut Signature> {
        Some(match self {
            Message::LoginAnswer(m) => &mut m.signature,
            Message::RegisterProvider(m) => &mut m.signature,
            Message::UpdateBid(m) => &mut m.signature,
            Message::WithdrawBid(m) => &mut m.signature,
            Message::ProviderAnnounce(m) => &mut m.signature,
            Message::Rfc(m) => &mut m.signature,
            Message::RfcCancel(m) => &mut m.signature,
            Message::ProbeAnswer(m) => &mut m.signature,
            Message::SessionTicket(m) => &mut m.signature,
            Message::Report(m) => &mut m.signature,
            Message::SessionStart(m) => &mut m.signature,
            Message::SubscribeBatches(m) => &mut m.signature,
            Message::CreditBatch(m) => &mut m.signature,
            Message::Settlement(m) => &mut m.signature,
            Message::Claim(m) => &mut m.signature,
            Message::BalanceUpdate(m) => &mut m.signature,
            Message::SetParams(m) => &mut m.signature,
            Message::ChainPaid(m) => &mut m.signature,
            _ => return None,
        })
    }

    /// Its signature, if it is a signed message.
    pub fn signature(&self) -> Option<Signature> {
        self.signature_ref().copied()
    }

    /// Signs the message in place (the signature field is replaced) and returns the
    /// whole frame bytes. Login answers sign the challenge digest instead.
    pub fn sign(&mut self, key: &SigningKey, network_id: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.sign_frame_into(key, network_id, 0, &mut out);
        out
    }

    /// Appends the signed frame to `out` with one encoding pass: the body is written,
    /// its digest taken over the bytes before the signature slot, and the signature
    /// written over the slot (and into `self`). Unsigned messages are appended as
    /// they are. This is what pre-signing load generators call in a loop.
    pub fn sign_frame_into(
        &mut self,
        key: &SigningKey,
        network_id: u32,
        flags: u8,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        self.write_frame(flags, out);
        if self.signature_ref().is_none() {
            return;
        }
        let body_start = start + crate::frame::HEADER_LEN;
        let slot_start = out.len() - SIGNATURE_LEN;
        assert!(
            slot_start >= body_start,
            "a signed body ends with its signature"
        );
        let digest = match self {
            Message::LoginAnswer(m) => signature::login_digest(network_id, &m.challenge),
            _ => signature::digest(network_id, self.msg_type(), &out[body_start..slot_start]),
        };
        let signed = key.sign_digest(&digest);
        out[slot_start..].copy_from_slice(&signed.0);
        if let Some(slot) = self.signature_mut() {
            *slot = signed;
        }
        debug_assert_eq!(self.signature_ref(), Some(&signed));
    }

    /// Header + body.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_frame(0, &mut out);
        out
    }

    /// Appends header + body to `out` (no intermediate buffer).
    pub fn write_frame(&self, flags: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; crate::frame::HEADER_LEN]);
        self.encode(out);
        let body_len = out.len() - start - crate::frame::HEADER_LEN;
        let header = crate::frame::FrameHeader::new(self.msg_type(), flags, body_len);
        out[start..start + crate::frame::HEADER_LEN].copy_from_slice(&header.encode());
    }

    /// R-ID-2/3: recovers the signer from the received body bytes and checks it is
    /// the claimed originator. Returns the verified address. Router-signed messages
    /// (tickets, batches) are checked with `verify_router`.
    pub fn verify(&self, network_id: u32, body: &[u8]) -> Result<Address, SigError> {
        let (claimed, _) = self.claimed_origin().ok_or(SigError::BadSignature)?;
        let signature = self.signature_ref().ok_or(SigError::BadSignature)?;
        let digest = match self {
            Message::LoginAnswer(m) => signature::login_digest(network_id, &m.challenge),
            _ => signed_digest(network_id, self.msg_type(), body).ok_or(SigError::BadSignature)?,
        };
        signature::verify_signer(&digest, signature, &claimed)?;
        Ok(claimed)
    }

    /// Checks a router-signed message (ticket, batch) against the router's address.
    pub fn verify_router(
        &self,
        network_id: u32,
        body: &[u8],
        router: &Address,
    ) -> Result<(), SigError> {
        let signature = self.signature_ref().ok_or(SigError::BadSignature)?;
        let digest =
            signed_digest(network_id, self.msg_type(), body).ok_or(SigError::BadSignature)?;
        signature::verify_signer(&digest, signature, router)
    }
}

/// Fixed-offset decoding of the hot client messages (RFC, report, probe answer): one
/// length check, then every field read at its offset. Any other length goes through
/// the general decoder, which names the exact error.
mod fast {
    use super::*;

    pub(super) const RFC_BODY_LEN: usize = 20 + 8 + 4 + 8 + 8 + SIGNATURE_LEN;
    pub(super) const REPORT_BODY_LEN: usize = 20 + 8 + 8 + 8 + 8 + 8 + 8 + 1 + SIGNATURE_LEN;
    pub(super) const PROBE_ANSWER_BODY_LEN: usize = 20 + 8 + 8 + SIGNATURE_LEN;

    fn array<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&body[at..at + N]);
        out
    }

    fn u64_at(body: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(array(body, at))
    }

    pub(super) fn decode(msg_type: u16, body: &[u8]) -> Option<Message> {
        match (msg_type, body.len()) {
            (msg_type::RFC, RFC_BODY_LEN) => Some(Message::Rfc(Rfc {
                from: Address(array(body, 0)),
                nonce: u64_at(body, 20),
                model_id: u32::from_le_bytes(array(body, 28)),
                tokens_max: u64_at(body, 32),
                expires_at_ms: u64_at(body, 40),
                signature: Signature(array(body, 48)),
            })),
            // An unknown outcome byte takes the general decoder, which names it.
            (msg_type::REPORT, REPORT_BODY_LEN) => Some(Message::Report(Report {
                from: Address(array(body, 0)),
                nonce: u64_at(body, 20),
                session_id: u64_at(body, 28),
                elapsed_ms: u64_at(body, 36),
                ttft_ms: u64_at(body, 44),
                tokens: u64_at(body, 52),
                prompt_tokens: u64_at(body, 60),
                outcome: Outcome::from_u8(body[68])?,
                signature: Signature(array(body, 69)),
            })),
            (msg_type::PROBE_ANSWER, PROBE_ANSWER_BODY_LEN) => {
                Some(Message::ProbeAnswer(ProbeAnswer {
                    from: Address(array(body, 0)),
                    nonce: u64_at(body, 20),
                    probe_id: u64_at(body, 28),
                    signature: Signature(array(body, 36)),
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod nonce_at_fixed_offset_tests {
    use super::*;
    use crate::signature::SigningKey;

    /// Every signed client message's encoded body has its nonce at bytes 20..28.
    #[test]
    fn every_signed_client_message_has_its_nonce_at_the_fixed_offset() {
        let key = SigningKey::from_seed(b"offset");
        let from = key.address();
        let nonce = 0x0102_0304_0506_0708;
        let messages: Vec<Message> = vec![
            RegisterProvider {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            UpdateBid {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            WithdrawBid {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            ProviderAnnounce {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            Rfc {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            RfcCancel {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            ProbeAnswer {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            Report {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            SessionStart {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            SubscribeBatches {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            Claim {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            BalanceUpdate {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            SetParams {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
            ChainPaid {
                from,
                nonce,
                ..Default::default()
            }
            .into(),
        ];
        assert_eq!(messages.len(), 14);
        for mut message in messages {
            let frame = message.sign(&key, 1);
            let mut decoder = crate::frame::FrameDecoder::new(1 << 20);
            decoder.extend(&frame);
            let decoded = decoder.next_frame().expect("a frame").expect("whole");
            let (msg_type, body) = (decoded.header.msg_type, &decoded.body[..]);
            assert_eq!(
                Message::nonce_at_fixed_offset(msg_type, body),
                Some(nonce),
                "{}",
                message.name()
            );
            assert_eq!(Message::nonce_at_fixed_offset(msg_type, &body[..27]), None);
        }
        assert_eq!(
            Message::nonce_at_fixed_offset(msg_type::PING, &[0; 64]),
            None
        );
        assert_eq!(
            Message::nonce_at_fixed_offset(msg_type::LOGIN_ANSWER, &[0; 64]),
            None
        );
    }
}
