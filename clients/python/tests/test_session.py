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
            # Its default data directory (R-OPS-1) goes into the temporary directory.
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env, cwd=tmp)
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

    # The market's figures (MarketStateQuery, any logged-in address): the seed's
    # MaxT and access rate, and, once the provider figures are republished (every
    # 100 ms of the router's time), the provider live on model 1 at its bid.
    for query_id in range(1, 41):
        user.send("MarketStateQuery", {"query_id": query_id})
        state = user.expect(
            lambda n, f: f if n == "MarketState" and f["query_id"] == query_id else None)
        assert state["max_tokens_per_day"] == 30_000_000_000
        assert state["access_rate_tokens_per_mor"] == 3_000
        model_1 = next(m for m in state["models"] if m["model_id"] == 1)
        if model_1["providers_live"] == 1:
            break
        time.sleep(0.05)
    assert model_1["providers_live"] == 1, state
    assert model_1["best_bid_wei_per_token"] == PRICE_WEI_PER_TOKEN

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

    # R-SESSION-1: the provider signs the start before serving.
    start_nonce = provider.send_signed("SessionStart", session_id=ticket["session_id"])
    provider.answer(start_nonce, "Ack")
    with pytest.raises(RouterError) as refused:
        provider.answer(provider.send_signed("SessionStart", session_id=ticket["session_id"]), "Ack")
    assert refused.value.name == "session_already_started"

    report = {"from": user.address, "nonce": user.next_nonce(), "session_id": ticket["session_id"],
              "elapsed_ms": 900, "ttft_ms": 120, "tokens": 300, "prompt_tokens": 40,
              "outcome": p.OUTCOME_PASS}
    frame = p.sign_message(user.key, network_id, p.TYPE_OF["Report"], report)
    user.send_frame(frame)
    ack = user.answer(report["nonce"], "ReportAck")
    assert ack["earned"] and ack["reason"] == 0
    assert ack["earned_wei"] == 300 * PRICE_WEI_PER_TOKEN

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
    assert batch["totals"] == [{"provider": provider.address, "earned_wei": 300 * PRICE_WEI_PER_TOKEN,
                                "credited_wei": 300 * PRICE_WEI_PER_TOKEN, "tokens": 300, "sessions": 1}]
    assert batch["credited_wei"] == 300 * PRICE_WEI_PER_TOKEN
    assert batch["merkle_root"] == p.merkle_root([leaf])

    # The provider claims everything owed, then has nothing left to claim.
    claim_nonce = provider.send_signed("Claim", amount_wei=0)
    claimed = provider.answer(claim_nonce, "ClaimAck")
    assert claimed["amount_wei"] == 300 * PRICE_WEI_PER_TOKEN
    assert claimed["owed_left_wei"] == 0
    nonce = provider.send_signed("Claim", amount_wei=0)
    with pytest.raises(RouterError) as refused:
        provider.answer(nonce, "ClaimAck")
    assert refused.value.name == "nothing_owed"

    # R-HA-3: the very same signed claim sent again (as after a lost connection) gets
    # the original answer from the router's reply cache; nothing is paid twice.
    provider.send_signed("Claim", nonce=claim_nonce, amount_wei=0)
    assert provider.answer(claim_nonce, "ClaimAck") == claimed
    # Another message under a spent nonce: refused with the last accepted one in
    # detail (a refused message spends no nonce, so that is the accepted claim's).
    with pytest.raises(RouterError) as refused:
        provider.send_signed("Claim", nonce=claim_nonce, amount_wei=1)
        provider.answer(claim_nonce, "ClaimAck")
    assert refused.value.name == "replay" and refused.value.fields["detail"] == claim_nonce

    for client in (operator, user, provider):
        client.close()


def test_probe_time_out_cancel_announce_and_set_params(router):
    """A provider that misses its probe is told it is unreachable; the RFC keeps its
    place and, cancelled, fails with reason 3 and the RFC's own nonce; the provider
    announces itself back; SetParams by id sets the probe time-out."""
    host, port = router["host"], router["port"]
    operator = Client(host, port, router["operator"])
    user = Client(host, port, Key.from_seed(b"python-client-user-2"))
    provider = Client(host, port, Key.from_seed(b"python-client-provider-2"))
    network_id = user.network_id

    # A provider is matched only with a MOR balance above 0 (R-PROV-2).
    nonce = operator.send_signed("BalanceUpdate", entries=[
        {"address": user.address, "balance_wei": 5 * WEI_PER_MOR},
        {"address": provider.address, "balance_wei": WEI_PER_MOR}])
    operator.answer(nonce, "Ack")
    # Param 10 is probe_timeout_ms (docs/PROTOCOL.md, ParamEntry).
    nonce = operator.send_signed("SetParams", params=[{"param_id": 10, "value": 300}])
    operator.answer(nonce, "Ack")
    # Only the operator may: others get not_operator.
    nonce = user.send_signed("SetParams", params=[{"param_id": 10, "value": 300}])
    with pytest.raises(RouterError) as refused:
        user.answer(nonce, "Ack")
    assert refused.value.name == "not_operator"

    weights_hash = blake3.blake3(b"yellowstone-demo-model-2").digest()
    proof = provider.key.sign_digest(p.weights_proof_digest(network_id, 2, weights_hash))
    nonce = provider.send_signed("RegisterProvider", endpoint="127.0.0.1:9998", offers=[{
        "model_id": 2, "unit": 0, "weights_hash": weights_hash, "weights_proof": proof,
        "price_wei_per_token": PRICE_WEI_PER_TOKEN, "capacity": 1}])
    provider.answer(nonce, "Ack")

    rfc_nonce = user.send_signed("Rfc", model_id=2, tokens_max=400, expires_at_ms=now_ms() + 60_000)
    accepted = user.answer(rfc_nonce, "RfcAccepted")
    probe = provider.expect(lambda n, f: f if n == "Probe" else None)
    started = now_ms()
    assert probe["deadline_ms"] - started <= 300 + 1_000
    # No answer: the provider hears it is unreachable (kind 1).
    notice = provider.expect(lambda n, f: f if n == "Notice" else None)
    assert (notice["kind"], notice["until_ms"]) == (1, 0)
    # Answering too late is refused.
    late = provider.send_signed("ProbeAnswer", probe_id=probe["probe_id"])
    with pytest.raises(RouterError) as refused:
        provider.answer(late, "Ack")
    assert refused.value.name == "unknown_probe"

    # The RFC waits in the queue (no reachable provider); cancelling it is answered by
    # RfcFailed carrying the RFC's nonce, not the cancel's.
    cancel_nonce = user.send_signed("RfcCancel", rfc_id=accepted["rfc_id"])
    failed = user.expect(lambda n, f: f if n == "RfcFailed" else None)
    assert failed["nonce"] == rfc_nonce != cancel_nonce
    assert (failed["rfc_id"], failed["reason"], failed["refunded_tokens"]) == (accepted["rfc_id"], 3, 400)
    # Cancelling it again: unknown_rfc, naming the cancel's nonce.
    again = user.send_signed("RfcCancel", rfc_id=accepted["rfc_id"])
    with pytest.raises(RouterError) as refused:
        user.answer(again, "RfcFailed")
    assert refused.value.name == "unknown_rfc"

    # Back in matching after ProviderAnnounce: the next RFC gets a ticket.
    nonce = provider.send_signed("ProviderAnnounce")
    provider.answer(nonce, "Ack")
    rfc_nonce = user.send_signed("Rfc", model_id=2, tokens_max=400, expires_at_ms=now_ms() + 60_000)
    user.answer(rfc_nonce, "RfcAccepted")
    probe = provider.expect(lambda n, f: f if n == "Probe" else None)
    provider.send_signed("ProbeAnswer", probe_id=probe["probe_id"])
    ticket = user.expect(lambda n, f: f if n == "SessionTicket" else None)
    assert ticket["rfc_nonce"] == rfc_nonce and ticket["model_id"] == 2

    for client in (operator, user, provider):
        client.close()


def test_a_broken_header_is_refused_and_closes_only_that_connection(router):
    import socket
    host, port = router["host"], router["port"]
    bystander = Client(host, port, Key.from_seed(b"python-client-bystander"))
    raw = socket.create_connection((host, port), timeout=10)
    raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
    data = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        data += chunk
    frames = []
    while data:
        _, _, body_len = p.decode_header(data[:p.HEADER_LEN])
        frames.append(p.decode_frame(data[:p.HEADER_LEN + body_len]))
        data = data[p.HEADER_LEN + body_len:]
    names = [(name, fields.get("code")) for _, _, name, fields, _ in frames]
    assert names == [("LoginChallenge", None), ("ErrorReply", 0x0102)], names
    raw.close()
    bystander.send("Ping", {"payload": 5})
    assert bystander.expect(lambda n, f: f if n == "Pong" else None)["payload"] == 5
    bystander.close()


def test_r_id_8_a_second_program_signing_with_the_key_does_not_stall_the_client(router):
    """R-ID-8: another program signs with the operator's key far ahead of this
    client's counter; this client's next message is refused `replay` (detail = the
    last accepted nonce), and `request` resynchronises and succeeds with one resend."""
    host, port = router["host"], router["port"]
    mine = Client(host, port, router["operator"])
    other = Client(host, port, router["operator"])
    ahead = mine.next_nonce() + 10**9
    other.answer(other.send_signed("SubscribeBatches", nonce=ahead), "Ack")
    other.answer(other.send_signed("BalanceUpdate", nonce=ahead + 1, entries=[
        {"address": Key.from_seed(b"r-id-8").address, "balance_wei": 1}]), "Ack")
    # The plain path sees the refusal and its detail ...
    with pytest.raises(RouterError) as refused:
        mine.answer(mine.send_signed("BalanceUpdate", entries=[
            {"address": Key.from_seed(b"r-id-8").address, "balance_wei": 3}]), "Ack")
    assert refused.value.name == "replay" and refused.value.fields["detail"] == ahead + 1
    # ... and `request` goes on above it.
    ack = mine.request("BalanceUpdate", "Ack", entries=[
        {"address": Key.from_seed(b"r-id-8").address, "balance_wei": 2}])
    assert ack["nonce"] > ahead + 1
    assert mine.next_nonce() > ack["nonce"]
