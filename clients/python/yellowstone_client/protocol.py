"""The Yellowstone wire protocol, version 1, as docs/PROTOCOL.md specifies it: frames,
every message's layout, digests, signatures, addresses and the receipt Merkle rule.

Messages are plain dicts of field name -> value: integers as int, bool as bool,
bytes32 / address / signature as bytes, strings as str, lists as lists of dicts.
"""

import struct

import blake3
import coincurve

from .keccak import keccak256

MAGIC = b"YS"
VERSION = 1
HEADER_LEN = 12
FLAG_RESPONSE = 0x01
FRAME_BYTES_MAX_DEFAULT = 16 * 1024
DOMAIN_TAG = b"yellowstone/v1"
WEIGHTS_PROOF_TYPE = 0xFF01
LOGIN_TYPE = 0xFF02
SIGNATURE_LEN = 65
# secp256k1 group order; low-s means s <= n // 2.
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# Section 1 of the document: the fixed sizes of the field types.
FIXED_SIZES = {
    "u8": 1, "u16": 2, "u32": 4, "u64": 8, "u128": 16, "bool": 1,
    "bytes32": 32, "address": 20, "signature": 65,
}
_INT_FORMATS = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}

# Section 6: records carried in lists.
RECORDS = {
    "Offer": [("model_id", "u32"), ("unit", "u8"), ("weights_hash", "bytes32"),
              ("weights_proof", "signature"), ("price_wei_per_token", "u128"),
              ("capacity", "u32")],
    "BalanceEntry": [("address", "address"), ("balance_wei", "u128")],
    "PaidEntry": [("provider", "address"), ("paid_to_wei", "u128")],
    "ParamEntry": [("param_id", "u16"), ("value", "u128")],
    "BatchTotals": [("provider", "address"), ("earned_wei", "u128"), ("credited_wei", "u128"),
                    ("tokens", "u64"), ("sessions", "u32")],
    "CatalogModel": [("model_id", "u32"), ("unit", "u8"), ("weights_hash", "bytes32"),
                     ("best_price_wei_per_token", "u128"), ("offers_live", "u32"),
                     ("name", "string")],
    "MarketModel": [("model_id", "u32"), ("queue_depth", "u64"), ("providers_live", "u64"),
                    ("providers_suspended", "u64"), ("offers_available", "u64"),
                    ("best_bid_wei_per_token", "u128")],
}

# Report.outcome (R-REPORT-2): fail (the provider's fault), pass (a whole answer),
# void (the user's own fault: no credit, no penalty point). Any other byte: bad_field.
OUTCOME_FAIL = 0
OUTCOME_PASS = 1
OUTCOME_VOID = 2

# Section 5: type -> (name, fields in wire order).
MESSAGES = {
    0x0001: ("LoginChallenge", [("challenge", "bytes32"), ("network_id", "u32"), ("router", "address")]),
    0x0002: ("LoginAnswer", [("address", "address"), ("challenge", "bytes32"), ("signature", "signature")]),
    0x0003: ("LoginOk", [("address", "address")]),
    0x0010: ("RegisterProvider", [("from", "address"), ("nonce", "u64"), ("endpoint", "string"),
                                  ("offers", "list<Offer>"), ("signature", "signature")]),
    0x0011: ("UpdateBid", [("from", "address"), ("nonce", "u64"), ("model_id", "u32"),
                           ("price_wei_per_token", "u128"), ("capacity", "u32"), ("signature", "signature")]),
    0x0012: ("WithdrawBid", [("from", "address"), ("nonce", "u64"), ("model_id", "u32"), ("signature", "signature")]),
    0x0013: ("ProviderAnnounce", [("from", "address"), ("nonce", "u64"), ("signature", "signature")]),
    0x0020: ("Rfc", [("from", "address"), ("nonce", "u64"), ("model_id", "u32"), ("tokens_max", "u64"),
                     ("expires_at_ms", "u64"), ("signature", "signature")]),
    0x0021: ("RfcCancel", [("from", "address"), ("nonce", "u64"), ("rfc_id", "u64"), ("signature", "signature")]),
    0x0022: ("RfcAccepted", [("nonce", "u64"), ("rfc_id", "u64"), ("tokens_left", "u64")]),
    0x0023: ("RfcFailed", [("nonce", "u64"), ("rfc_id", "u64"), ("reason", "u8"), ("refunded_tokens", "u64")]),
    0x0030: ("Probe", [("probe_id", "u64"), ("model_id", "u32"), ("tokens_max", "u64"), ("deadline_ms", "u64")]),
    0x0031: ("ProbeAnswer", [("from", "address"), ("nonce", "u64"), ("probe_id", "u64"), ("signature", "signature")]),
    0x0040: ("SessionTicket", [("session_id", "u64"), ("user", "address"), ("provider", "address"),
                               ("endpoint", "string"), ("model_id", "u32"), ("tokens_max", "u64"),
                               ("price_wei_per_token", "u128"), ("expires_at_ms", "u64"),
                               ("rfc_nonce", "u64"), ("signature", "signature")]),
    # R-SESSION-1: the provider signs that the session's inference began.
    0x0041: ("SessionStart", [("from", "address"), ("nonce", "u64"), ("session_id", "u64"),
                              ("signature", "signature")]),
    # R-REPORT-1..3: outcome is OUTCOME_FAIL, OUTCOME_PASS or OUTCOME_VOID.
    0x0050: ("Report", [("from", "address"), ("nonce", "u64"), ("session_id", "u64"), ("elapsed_ms", "u64"),
                        ("ttft_ms", "u64"), ("tokens", "u64"), ("prompt_tokens", "u64"), ("outcome", "u8"),
                        ("signature", "signature")]),
    0x0051: ("ReportAck", [("nonce", "u64"), ("session_id", "u64"), ("earned", "bool"), ("reason", "u8"),
                           ("earned_wei", "u128")]),
    0x0060: ("SubscribeBatches", [("from", "address"), ("nonce", "u64"), ("signature", "signature")]),
    0x0061: ("CreditBatch", [("block", "u64"), ("merkle_root", "bytes32"), ("receipts", "u64"),
                             ("credited_wei", "u128"), ("shortfall_wei", "u128"),
                             ("totals", "list<BatchTotals>"), ("signature", "signature")]),
    0x0062: ("Settlement", [("epoch", "u64"), ("day", "u64"), ("first_block", "u64"), ("last_block", "u64"),
                            ("credited_wei", "u128"), ("bootstrap_wei", "u128"),
                            ("credited_cumulative_wei", "u128"), ("providers", "u32"),
                            ("merkle_root", "bytes32"), ("chain_id", "u64"), ("contract", "address"),
                            ("eip712_signature", "signature"), ("signature", "signature")]),
    0x0070: ("Claim", [("from", "address"), ("nonce", "u64"), ("amount_wei", "u128"), ("signature", "signature")]),
    0x0071: ("ClaimAck", [("nonce", "u64"), ("amount_wei", "u128"), ("owed_left_wei", "u128")]),
    0x0072: ("ChainPaid", [("from", "address"), ("nonce", "u64"), ("chain_id", "u64"), ("contract", "address"),
                           ("entries", "list<PaidEntry>"), ("signature", "signature")]),
    0x0080: ("BalanceUpdate", [("from", "address"), ("nonce", "u64"), ("entries", "list<BalanceEntry>"),
                               ("signature", "signature")]),
    0x0081: ("SetParams", [("from", "address"), ("nonce", "u64"), ("params", "list<ParamEntry>"),
                           ("signature", "signature")]),
    0x0082: ("Ack", [("nonce", "u64")]),
    0x0083: ("Notice", [("kind", "u8"), ("until_ms", "u64")]),
    0x0090: ("Ping", [("payload", "u64")]),
    0x0091: ("Pong", [("payload", "u64")]),
    0x00A0: ("CatalogQuery", [("query_id", "u64")]),
    0x00A1: ("Catalog", [("query_id", "u64"), ("as_of_ms", "u64"), ("models", "list<CatalogModel>")]),
    0x00B0: ("MarketStateQuery", [("query_id", "u64")]),
    0x00B1: ("MarketState", [("query_id", "u64"), ("now_ms", "u64"), ("block", "u64"), ("day", "u64"),
                             ("max_tokens_per_day", "u128"), ("access_rate_tokens_per_mor", "u128"),
                             ("budget_wei_today", "u128"), ("emitted_wei", "u128"), ("paid_wei", "u128"),
                             ("owed_wei", "u128"), ("burned_wei", "u128"), ("pool_wei", "u128"),
                             ("credited_wei", "u128"), ("shortfall_wei", "u128"), ("day_cap_wei", "u128"),
                             ("day_spent_wei", "u128"), ("batch_sealed", "bool"), ("last_batch_block", "u64"),
                             ("last_batch_credited_wei", "u128"), ("last_batch_shortfall_wei", "u128"),
                             ("sessions_open", "u64"), ("params", "list<ParamEntry>"),
                             ("models", "list<MarketModel>")]),
    0x00F0: ("ErrorReply", [("code", "u16"), ("ref_msg_type", "u16"), ("ref_nonce", "u64"),
                            ("retry_after_ms", "u32"), ("detail", "u128"), ("reason", "string")]),
}
TYPE_OF = {name: msg_type for msg_type, (name, _) in MESSAGES.items()}
# Router-signed messages (section 4).
ROUTER_SIGNED = {"SessionTicket", "CreditBatch", "Settlement"}

# Section 9 (names only; the document explains when and what `detail` holds).
ERROR_NAMES = {
    0x0101: "malformed_frame", 0x0102: "bad_magic", 0x0103: "unsupported_version",
    0x0104: "frame_too_large", 0x0105: "truncated_body", 0x0106: "trailing_bytes",
    0x0107: "unknown_message_type", 0x0108: "bad_signature", 0x0109: "high_s_signature",
    0x010A: "signer_mismatch", 0x010B: "not_logged_in", 0x010C: "bad_field",
    0x010D: "not_allowed", 0x010E: "wrong_sender",
    0x0201: "replay", 0x0202: "zero_balance", 0x0203: "quota_exceeded", 0x0204: "unknown_model",
    0x0205: "queue_full", 0x0206: "not_your_session", 0x0207: "already_reported",
    0x0208: "unknown_session", 0x0209: "tokens_over_max", 0x020A: "session_expired",
    0x020B: "not_operator", 0x020C: "unknown_provider", 0x020D: "unsupported_unit",
    0x020E: "weights_hash_mismatch", 0x020F: "invalid_expiry", 0x0210: "invalid_tokens_max",
    0x0211: "unknown_probe", 0x0212: "limit_reached", 0x0213: "claim_exceeds_owed",
    0x0214: "nothing_owed", 0x0215: "unknown_rfc", 0x0216: "invalid_param",
    0x0217: "arithmetic_overflow", 0x0218: "no_offer", 0x0219: "invalid_capacity",
    0x021A: "duplicate_model",
    0x021B: "bid_above_max",
    0x021C: "credit_unrepresentable",
    0x021D: "credit_overflow",
    0x021E: "invalid_param_set", 0x021F: "nonce_gap",
    0x0222: "user_sessions_full", 0x0223: "ttft_over_elapsed", 0x0224: "prompt_tokens_over_max",
    0x0225: "session_not_started", 0x0226: "session_already_started",
    0x0301: "overloaded", 0x0302: "too_many_connections", 0x0303: "slow_consumer",
    0x0304: "idle_timeout", 0x0305: "shutting_down", 0x0306: "unknown_sender",
    0x0307: "login_timeout", 0x0308: "evicted", 0x0309: "too_many_refusals",
    0x030A: "not_leader",
}


# R-HA-3: the not_leader reason (docs/PROTOCOL.md section 3, "Replicated routers").
NOT_LEADER = 0x030A
_NOT_LEADER_KNOWN = "not the leader: leader is member "


def parse_not_leader(fields: dict):
    """The leader's (host, port) named by a `not_leader` ErrorReply's fields, or None
    (another code, no leader known, or a reason that does not parse)."""
    if fields.get("code") != NOT_LEADER:
        return None
    reason = fields.get("reason", "")
    if not reason.startswith(_NOT_LEADER_KNOWN):
        return None
    member, sep, endpoint = reason[len(_NOT_LEADER_KNOWN):].partition(" at ")
    if not sep or not member.isdigit() or int(member) == 0:
        return None
    host, colon, port = endpoint.strip().rpartition(":")
    if not colon or not port.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port)
    return (host, port) if 0 < port < 65536 else None


class ProtocolError(Exception):
    """A frame or body that does not follow docs/PROTOCOL.md."""


class SignatureError(Exception):
    """A signature that is malformed, high-s, or not by the expected address."""


# --- encoding -----------------------------------------------------------------------


def _encode_value(kind: str, value, out: bytearray) -> None:
    if kind in _INT_FORMATS:
        out += struct.pack(_INT_FORMATS[kind], value)
    elif kind == "u128":
        out += int(value).to_bytes(16, "little")
    elif kind == "bool":
        out.append(1 if value else 0)
    elif kind in ("bytes32", "address", "signature"):
        value = bytes(value)
        if len(value) != FIXED_SIZES[kind]:
            raise ProtocolError(f"{kind} must be {FIXED_SIZES[kind]} bytes, got {len(value)}")
        out += value
    elif kind == "string":
        data = value.encode("utf-8")
        if len(data) > 0xFFFF:
            raise ProtocolError("string longer than 65535 bytes")
        out += struct.pack("<H", len(data)) + data
    elif kind.startswith("list<"):
        fields = RECORDS[kind[5:-1]]
        out += struct.pack("<I", len(value))
        for item in value:
            for name, item_kind in fields:
                _encode_value(item_kind, item[name], out)
    else:
        raise ProtocolError(f"unknown field type {kind}")


def encode_body(msg_type: int, fields: dict) -> bytes:
    """The body of a message: its fields in wire order (a missing signature is 65 zeros)."""
    _, layout = MESSAGES[msg_type]
    out = bytearray()
    for name, kind in layout:
        value = fields.get(name)
        if value is None and kind == "signature":
            value = bytes(SIGNATURE_LEN)
        _encode_value(kind, value, out)
    return bytes(out)


def encode_frame(msg_type: int, body: bytes, flags: int = 0) -> bytes:
    return MAGIC + bytes([VERSION, flags]) + struct.pack("<HHI", msg_type, 0, len(body)) + body


# --- decoding -----------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.at = 0

    def take(self, n: int, field: str) -> bytes:
        if self.at + n > len(self.data):
            raise ProtocolError(f"body truncated at field {field}")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def value(self, kind: str, field: str):
        if kind in _INT_FORMATS:
            return struct.unpack(_INT_FORMATS[kind], self.take(FIXED_SIZES[kind], field))[0]
        if kind == "u128":
            return int.from_bytes(self.take(16, field), "little")
        if kind == "bool":
            byte = self.take(1, field)[0]
            if byte > 1:
                raise ProtocolError(f"field {field} has invalid bool {byte}")
            return byte == 1
        if kind in ("bytes32", "address", "signature"):
            return self.take(FIXED_SIZES[kind], field)
        if kind == "string":
            (length,) = struct.unpack("<H", self.take(2, field))
            return self.take(length, field).decode("utf-8")
        if kind.startswith("list<"):
            fields = RECORDS[kind[5:-1]]
            (count,) = struct.unpack("<I", self.take(4, field))
            return [{name: self.value(k, f"{field}.{name}") for name, k in fields} for _ in range(count)]
        raise ProtocolError(f"unknown field type {kind}")


def decode_body(msg_type: int, body: bytes) -> dict:
    if msg_type not in MESSAGES:
        raise ProtocolError(f"unknown message type {msg_type:#06x}")
    name, layout = MESSAGES[msg_type]
    reader = _Reader(body)
    fields = {field: reader.value(kind, f"{name}.{field}") for field, kind in layout}
    if reader.at != len(body):
        raise ProtocolError(f"{len(body) - reader.at} trailing bytes after {name}")
    return fields


def decode_header(header: bytes, frame_bytes_max: int = 64 * 1024 * 1024):
    """(flags, msg_type, body_len) of a 12-byte header, checked as section 2 says."""
    if header[:2] != MAGIC:
        raise ProtocolError(f"bad magic {header[:2].hex()}")
    if header[2] != VERSION:
        raise ProtocolError(f"unsupported version {header[2]}")
    flags = header[3]
    if flags & ~FLAG_RESPONSE:
        raise ProtocolError(f"unknown flag bits {flags:#04x}")
    msg_type, reserved, body_len = struct.unpack("<HHI", header[4:12])
    if reserved:
        raise ProtocolError("reserved header field is not 0")
    if HEADER_LEN + body_len > frame_bytes_max:
        raise ProtocolError(f"frame of {HEADER_LEN + body_len} bytes is over the limit")
    return flags, msg_type, body_len


def decode_frame(frame: bytes):
    """(flags, msg_type, name, fields, body) of one whole frame."""
    flags, msg_type, body_len = decode_header(frame[:HEADER_LEN])
    body = frame[HEADER_LEN:]
    if len(body) != body_len:
        raise ProtocolError(f"frame body is {len(body)} bytes, header says {body_len}")
    fields = decode_body(msg_type, body)
    return flags, msg_type, MESSAGES[msg_type][0], fields, body


# --- digests, signatures, addresses -------------------------------------------------


def digest(network_id: int, msg_type: int, payload: bytes) -> bytes:
    """BLAKE3(DOMAIN_TAG || network_id u32 LE || type u16 LE || payload)."""
    return blake3.blake3(DOMAIN_TAG + struct.pack("<IH", network_id, msg_type) + payload).digest()


def signed_digest(network_id: int, msg_type: int, body: bytes) -> bytes:
    """The digest of a signed body: everything before its last 65 bytes."""
    if len(body) < SIGNATURE_LEN:
        raise ProtocolError("a signed body ends with a 65-byte signature")
    return digest(network_id, msg_type, body[:-SIGNATURE_LEN])


def login_digest(network_id: int, challenge: bytes) -> bytes:
    return digest(network_id, LOGIN_TYPE, challenge)


def weights_proof_digest(network_id: int, model_id: int, weights_hash: bytes) -> bytes:
    return digest(network_id, WEIGHTS_PROOF_TYPE, struct.pack("<I", model_id) + weights_hash)


def address_of_public_key(public_key: coincurve.PublicKey) -> bytes:
    return keccak256(public_key.format(compressed=False)[1:])[12:]


def checksummed(address: bytes) -> str:
    """EIP-55: hex digit i upper case when nibble i of keccak(lower-case hex) >= 8."""
    lower = address.hex()
    hashed = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if c.isalpha() and int(hashed[i], 16) >= 8 else c
                          for i, c in enumerate(lower))


def parse_address(text: str) -> bytes:
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    address = bytes.fromhex(digits)
    if len(address) != 20:
        raise ValueError("an address is 0x followed by 40 hex digits")
    if digits != digits.lower() and digits != digits.upper() and checksummed(address)[2:] != digits:
        raise ValueError("mixed-case address fails its EIP-55 checksum")
    return address


def recover_signer(digest32: bytes, signature: bytes) -> bytes:
    """The address whose key made `signature` over `digest32` (low-s only)."""
    if len(signature) != SIGNATURE_LEN:
        raise SignatureError("a signature is 65 bytes")
    s = int.from_bytes(signature[32:64], "big")
    if s > CURVE_ORDER // 2:
        raise SignatureError("high s value (only low-s is accepted)")
    v = signature[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1):
        raise SignatureError("recovery id must be 0, 1, 27 or 28")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), digest32, hasher=None)
    except Exception as error:  # coincurve raises ValueError / its own errors
        raise SignatureError(f"bad signature: {error}") from error
    return address_of_public_key(public)


def verify_signer(digest32: bytes, signature: bytes, expected: bytes) -> None:
    recovered = recover_signer(digest32, signature)
    if recovered != expected:
        raise SignatureError(f"signed by {checksummed(recovered)}, not {checksummed(expected)}")


class Key:
    """A secp256k1 key that signs digests (RFC 6979, low-s) and knows its address."""

    def __init__(self, secret: bytes):
        self._key = coincurve.PrivateKey(secret)
        self.address = address_of_public_key(self._key.public_key)

    @classmethod
    def from_hex(cls, text: str) -> "Key":
        return cls(bytes.fromhex(text[2:] if text.startswith("0x") else text))

    @classmethod
    def from_seed(cls, seed: bytes) -> "Key":
        """A deterministic key (tests): BLAKE3 of the seed, re-hashed if out of range."""
        secret = blake3.blake3(seed).digest()
        while not 0 < int.from_bytes(secret, "big") < CURVE_ORDER:
            secret = blake3.blake3(secret).digest()
        return cls(secret)

    def sign_digest(self, digest32: bytes) -> bytes:
        return self._key.sign_recoverable(digest32, hasher=None)


def sign_message(key: Key, network_id: int, msg_type: int, fields: dict, flags: int = 0) -> bytes:
    """The whole frame of a signed message: body encoded, signed over the bytes before
    the signature slot (or the login digest for LoginAnswer), signature written last."""
    body = bytearray(encode_body(msg_type, dict(fields, signature=None)))
    if msg_type == TYPE_OF["LoginAnswer"]:
        signature = key.sign_digest(login_digest(network_id, bytes(fields["challenge"])))
    else:
        signature = key.sign_digest(signed_digest(network_id, msg_type, bytes(body)))
    body[-SIGNATURE_LEN:] = signature
    return encode_frame(msg_type, bytes(body), flags)


def verify_message(network_id: int, msg_type: int, fields: dict, body: bytes, expected: bytes) -> None:
    """Checks a received signed message's signature against `expected`."""
    if msg_type == TYPE_OF["LoginAnswer"]:
        d = login_digest(network_id, fields["challenge"])
    else:
        d = signed_digest(network_id, msg_type, body)
    verify_signer(d, fields["signature"], expected)


# --- receipts and the Merkle root (section 7) ----------------------------------------

LEAF_KEY = b"yellowstone/receipt-leaf/v1".ljust(32, b"\0")
NODE_KEY = b"yellowstone/merkle-node/v1".ljust(32, b"\0")


def receipt_leaf(session_id: int, user: bytes, provider: bytes, model_id: int, tokens: int,
                 price_wei_per_token: int, elapsed_ms: int, report_digest: bytes) -> bytes:
    data = (struct.pack("<Q", session_id) + user + provider + struct.pack("<IQ", model_id, tokens)
            + price_wei_per_token.to_bytes(16, "little") + struct.pack("<Q", elapsed_ms)
            + report_digest + bytes(20))
    assert len(data) == 136
    return blake3.blake3(data, key=LEAF_KEY).digest()


def merkle_node(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(left + right, key=NODE_KEY).digest()


def _perfect_root(leaves):
    if len(leaves) == 1:
        return leaves[0]
    half = len(leaves) // 2
    return merkle_node(_perfect_root(leaves[:half]), _perfect_root(leaves[half:]))


def merkle_root(leaves) -> bytes:
    """The block root over leaves in acceptance order: perfect trees by the binary
    decomposition of the count (largest first), bagged from the right."""
    if not leaves:
        return bytes(32)
    peaks, start = [], 0
    for bit in reversed(range(len(leaves).bit_length())):
        size = 1 << bit
        if len(leaves) & size:
            peaks.append(_perfect_root(leaves[start:start + size]))
            start += size
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = merkle_node(peak, root)
    return root


def verify_batch(network_id: int, router: bytes, fields: dict, body: bytes, previous_block=None) -> None:
    """Section 7: a credit batch's signature, receipt count and sequence."""
    verify_message(network_id, TYPE_OF["CreditBatch"], fields, body, router)
    sessions = sum(t["sessions"] for t in fields["totals"])
    if sessions != fields["receipts"]:
        raise ProtocolError(f"batch {fields['block']}: {fields['receipts']} receipts, totals say {sessions}")
    if previous_block is not None and fields["block"] != previous_block + 1:
        raise ProtocolError(f"batch {fields['block']} after {previous_block}: batches were missed")
