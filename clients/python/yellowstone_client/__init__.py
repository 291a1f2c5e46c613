"""A client of the Yellowstone router, written from docs/PROTOCOL.md."""

from .client import AnswerLostError, Client, NoRouterError, RouterError, SilentRouterError
from .protocol import (
    ERROR_NAMES, MESSAGES, TYPE_OF, Key, ProtocolError, SignatureError, checksummed,
    decode_frame, digest, encode_frame, merkle_root, parse_address, receipt_leaf,
    parse_not_leader, recover_signer, sign_message, signed_digest, verify_batch,
    verify_message, weights_proof_digest,
)

__all__ = [
    "AnswerLostError", "Client", "NoRouterError", "RouterError", "SilentRouterError", "parse_not_leader", "ERROR_NAMES", "MESSAGES", "TYPE_OF", "Key", "ProtocolError",
    "SignatureError", "checksummed", "decode_frame", "digest", "encode_frame", "merkle_root",
    "parse_address", "receipt_leaf", "recover_signer", "sign_message", "signed_digest",
    "verify_batch", "verify_message", "weights_proof_digest",
]
