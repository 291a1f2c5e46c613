"""Every golden vector of wire/golden/vectors.json and wire/golden/merkle.json,
decoded, re-encoded and verified by this client."""

import json
import pathlib

import pytest

from yellowstone_client import protocol as p


def _load(repo_root, name):
    return json.loads((repo_root / "wire" / "golden" / name).read_text())


def _as_json(kind, value):
    """A decoded value in the golden file's notation."""
    if kind == "u128":
        return str(value)
    if kind == "address":
        return p.checksummed(value)
    if kind in ("bytes32", "signature"):
        return value.hex()
    if kind.startswith("list<"):
        fields = p.RECORDS[kind[5:-1]]
        return [{n: _as_json(k, item[n]) for n, k in fields} for item in value]
    return value


def _from_json(kind, value):
    if kind == "u128":
        return int(value)
    if kind == "address":
        return p.parse_address(value)
    if kind in ("bytes32", "signature"):
        return bytes.fromhex(value)
    if kind.startswith("list<"):
        fields = p.RECORDS[kind[5:-1]]
        return [{n: _from_json(k, item[n]) for n, k in fields} for item in value]
    return value


def test_the_golden_file_covers_every_message_of_the_client(repo_root):
    golden = _load(repo_root, "vectors.json")
    # A type may have several vectors (Report: pass and void).
    assert sorted({v["msg_type"] for v in golden["vectors"]}) == sorted(p.MESSAGES)
    assert golden["domain_tag"].encode() == p.DOMAIN_TAG


def test_keys_give_their_addresses(repo_root):
    for key in _load(repo_root, "vectors.json")["keys"]:
        assert p.checksummed(p.Key.from_hex(key["secret_hex"]).address) == key["address"]


_VECTORS = pathlib.Path(__file__).resolve().parents[3] / "wire" / "golden" / "vectors.json"


@pytest.mark.parametrize("index", range(len(json.loads(_VECTORS.read_text())["vectors"])))
def test_vector(repo_root, index):
    golden = _load(repo_root, "vectors.json")
    vector = golden["vectors"][index]
    network_id = golden["network_id"]
    keys = {k["address"]: p.Key.from_hex(k["secret_hex"]) for k in golden["keys"]}
    frame = bytes.fromhex(vector["frame_hex"])
    flags, msg_type, name, fields, body = p.decode_frame(frame)
    assert (msg_type, name) == (vector["msg_type"], vector["name"])
    expected_flags = p.FLAG_RESPONSE if vector["sender"] == "router" else 0
    assert flags == expected_flags
    layout = p.MESSAGES[msg_type][1]
    assert {n: _as_json(k, fields[n]) for n, k in layout} == vector["values"]
    # Encoding the values given gives the same body, byte for byte.
    values = {n: _from_json(k, vector["values"][n]) for n, k in layout}
    assert p.encode_body(msg_type, values) == body
    if vector["signer"] is not None:
        signer = p.parse_address(vector["signer"])
        p.verify_message(network_id, msg_type, fields, body, signer)
        # Signing anew (RFC 6979) reproduces the frame.
        resigned = p.sign_message(keys[vector["signer"]], network_id, msg_type, values, flags)
        assert resigned == frame
        if name == "RegisterProvider":
            for offer in fields["offers"]:
                d = p.weights_proof_digest(network_id, offer["model_id"], offer["weights_hash"])
                assert p.recover_signer(d, offer["weights_proof"]) == signer
    else:
        assert p.encode_frame(msg_type, body, flags) == frame


def test_a_tampered_body_or_high_s_signature_is_refused(repo_root):
    golden = _load(repo_root, "vectors.json")
    vector = next(v for v in golden["vectors"] if v["name"] == "Rfc")
    _, msg_type, _, fields, body = p.decode_frame(bytes.fromhex(vector["frame_hex"]))
    signer = p.parse_address(vector["signer"])
    tampered = bytearray(body)
    tampered[30] ^= 1
    with pytest.raises(p.SignatureError):
        p.verify_message(golden["network_id"], msg_type, fields, bytes(tampered), signer)
    signature = fields["signature"]
    s = int.from_bytes(signature[32:64], "big")
    high = signature[:32] + (p.CURVE_ORDER - s).to_bytes(32, "big") + bytes([signature[64] ^ 1])
    with pytest.raises(p.SignatureError, match="high s"):
        p.recover_signer(p.signed_digest(golden["network_id"], msg_type, body), high)


def test_merkle_vectors(repo_root):
    golden = _load(repo_root, "merkle.json")
    assert golden["leaf_key"] == p.LEAF_KEY.hex()
    assert golden["node_key"] == p.NODE_KEY.hex()
    assert p.merkle_root([]).hex() == golden["empty_root"]
    leaves = []
    for r in golden["receipts"]:
        leaf = p.receipt_leaf(r["session_id"], bytes.fromhex(r["user"]), bytes.fromhex(r["provider"]),
                              r["model_id"], r["tokens"], int(r["price_wei_per_token"]),
                              r["elapsed_ms"], bytes.fromhex(r["report_digest"]))
        assert leaf.hex() == r["leaf"]
        leaves.append(leaf)
        assert p.merkle_root(leaves).hex() == r["root_after"]
    assert len(leaves) >= 5
