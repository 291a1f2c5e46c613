"""A full session against the real yellowstone-router binary, spoken only by this
client: the provider registers, the user's RFC is accepted, the provider answers the
probe, both get the router-signed ticket, the user reports, the block's credit batch is
verified (signature, totals, Merkle root recomputed from the receipt), and the provider
claims what it is owed."""

import os
import queue
import subprocess
import tempfile
import threading
import time

import blake3
import pytest

from yellowstone_client import Client, Key, RouterError
from yellowstone_client import protocol as p

from .conftest import router_binary

WEI_PER_MOR = 10 ** 18
PRICE_WEI_PER_TOKEN = 1_000_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def router():
    """Starts the router on loopback (block 0 ends about 1.5 s after start) and stops
    it, by its own pid, afterwards."""
    operator = Key.from_seed(b"python-client-operator")
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "router.toml")
        with open(config, "w") as f:
            f.write(f"[market]\ngenesis_ms = {now_ms() - 10_500}\n")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        process = subprocess.Popen(
            [str(router_binary()), "run", "--config", config, "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--backend", "mio",
             "--operator", p.checksummed(operator.address)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
        try:
            ready = None
            deadline = time.monotonic() + 60
            while ready is None and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if line.startswith("READY "):
                    ready = dict(item.split("=", 1) for item in line.split()[1:])
            assert ready is not None, "the router did not print READY"
            host, port = ready["listen"].rsplit(":", 1)
            yield {"host": host, "port": int(port), "operator": operator,
                   "router": p.parse_address(ready["router"]), "network_id": int(ready["network_id"])}
        finally:
            process.terminate()
            try:
                assert process.wait(timeout=20) == 0, "clean exit on SIGTERM"
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def test_full_session_with_batch_verification_and_claim(router):
    host, port = router["host"], router["port"]
    operator = Client(host, port, router["operator"])
    user = Client(host, port, Key.from_seed(b"python-client-user"))
    provider = Client(host, port, Key.from_seed(b"python-client-provider"))
    assert user.router == router["router"] and user.network_id == router["network_id"]
    network_id = user.network_id

    # Ping before anything else.
    user.send("Ping", {"payload": 77})
    assert user.expect(lambda n, f: f if n == "Pong" else None)["payload"] == 77

    nonce = operator.send_signed("BalanceUpdate", entries=[
        {"address": user.address, "balance_wei": 5 * WEI_PER_MOR},
        {"address": provider.address, "balance_wei": WEI_PER_MOR},
    ])
    operator.answer(nonce, "Ack")
    nonce = operator.send_signed("SubscribeBatches")
    operator.answer(nonce, "Ack")

    # The provider registers model 1 of the demo catalog with its weights proof.
    weights_hash = blake3.blake3(b"yellowstone-demo-model-1").digest()
    proof = provider.key.sign_digest(p.weights_proof_digest(network_id, 1, weights_hash))
    nonce = provider.send_signed("RegisterProvider", endpoint="127.0.0.1:9999", offers=[{
        "model_id": 1, "unit": 0, "weights_hash": weights_hash, "weights_proof": proof,
        "price_wei_per_token": PRICE_WEI_PER_TOKEN, "capacity": 4}])
    provider.answer(nonce, "Ack")

    # A refusal names its code, and the expiry's time base is Unix ms.
    nonce = user.send_signed("Rfc", model_id=1, tokens_max=500, expires_at_ms=0)
    with pytest.raises(RouterError) as refused:
        user.answer(nonce, "RfcAccepted")
    assert refused.value.name == "invalid_expiry"
    assert "in the past" in refused.value.fields["reason"]

    rfc_nonce = user.send_signed("Rfc", model_id=1, tokens_max=500, expires_at_ms=now_ms() + 30_000)
    accepted = user.answer(rfc_nonce, "RfcAccepted")
    assert accepted["tokens_left"] == 15_000 - 500

    probe = provider.expect(lambda n, f: f if n == "Probe" else None)
    assert (probe["model_id"], probe["tokens_max"]) == (1, 500)
    assert probe["deadline_ms"] > now_ms() - 5_000
    provider.send_signed("ProbeAnswer", probe_id=probe["probe_id"])

    # recv() verified the router's signature on the ticket.
    provider_ticket = provider.expect(lambda n, f: f if n == "SessionTicket" else None)
    ticket = user.expect(lambda n, f: f if n == "SessionTicket" else None)
    assert ticket == provider_ticket
    assert (ticket["user"], ticket["provider"], ticket["rfc_nonce"]) == (user.address, provider.address, rfc_nonce)
    assert ticket["endpoint"] == "127.0.0.1:9999"
    assert ticket["price_wei_per_token"] == PRICE_WEI_PER_TOKEN

    report = {"from": user.address, "nonce": user.next_nonce(), "session_id": ticket["session_id"],
              "elapsed_ms": 900, "tokens": 300, "pass": True}
    frame = p.sign_message(user.key, network_id, p.TYPE_OF["Report"], report)
    user.send_frame(frame)
    ack = user.answer(report["nonce"], "ReportAck")
    assert ack["credited"] and ack["reason"] == 0
    assert ack["amount_wei"] == 300 * PRICE_WEI_PER_TOKEN

    # The block's batch: signed by the router (checked in recv), totals consistent,
    # and its root is the leaf of our one receipt (the only session of the block).
    report_digest = p.signed_digest(network_id, p.TYPE_OF["Report"], frame[p.HEADER_LEN:])
    leaf = p.receipt_leaf(ticket["session_id"], user.address, provider.address, 1, 300,
                          PRICE_WEI_PER_TOKEN, 900, report_digest)
    previous = None
    deadline = time.monotonic() + 40
    batch = None
    while batch is None and time.monotonic() < deadline:
        name, fields, flags, body = operator.recv()
        if name != "CreditBatch":
            continue
        assert flags & p.FLAG_RESPONSE
        p.verify_batch(network_id, router["router"], fields, body, previous)
        previous = fields["block"]
        if fields["totals"]:
            batch = fields
    assert batch is not None, "no credit batch with the session"
    assert batch["receipts"] == 1
    assert batch["totals"] == [{"provider": provider.address, "wei": 300 * PRICE_WEI_PER_TOKEN,
                                "tokens": 300, "sessions": 1}]
    assert batch["credited_wei"] == 300 * PRICE_WEI_PER_TOKEN
    assert batch["merkle_root"] == p.merkle_root([leaf])

    # The provider claims everything owed, then has nothing left to claim.
    nonce = provider.send_signed("Claim", amount_wei=0)
    claimed = provider.answer(nonce, "ClaimAck")
    assert claimed["amount_wei"] == 300 * PRICE_WEI_PER_TOKEN
    assert claimed["owed_left_wei"] == 0
    nonce = provider.send_signed("Claim", amount_wei=0)
    with pytest.raises(RouterError) as refused:
        provider.answer(nonce, "ClaimAck")
    assert refused.value.name == "nothing_owed"

    # A replayed nonce: refused with the last accepted one in detail.
    with pytest.raises(RouterError) as refused:
        provider.send_signed("Claim", nonce=nonce, amount_wei=0)
        provider.answer(nonce, "ClaimAck")
    assert refused.value.name == "replay" and refused.value.fields["detail"] == nonce

    for client in (operator, user, provider):
        client.close()
