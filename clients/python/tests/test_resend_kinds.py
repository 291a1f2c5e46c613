"""R-HA-3 (outsider review 3, finding 5): every kind of signed message is resent after
a lost connection, not only RFCs and operator messages. Before the fix a
SubscribeBatches, RegisterProvider, ProviderAnnounce or ProbeAnswer sent to a leader
that then froze was never resent: answer() reconnected, then waited out its whole
timeout and raised a bare TimeoutError, and the subscription or the provider's route
stayed behind on the dead connection. A message the client holds no copy of raises
AnswerLostError at once instead."""

import time

import blake3
import pytest

from yellowstone_client import AnswerLostError, Client, Key
from yellowstone_client import protocol as p

from .test_follow_leader import _FreezableProxy
from .test_session import PRICE_WEI_PER_TOKEN, WEI_PER_MOR, now_ms, router  # noqa: F401

# A fast watch: a frozen member is left within 0.1 + 0.5 s.
FAST = {"ping_after_s": 0.1, "liveness_s": 0.5}
# Well under the answer timeout (15 s): the old code's wait.
LEFT_WITHIN_S = 4.0


def _fund(router, *keys):
    operator = Client(router["host"], router["port"], router["operator"])
    operator.answer(operator.send_signed("BalanceUpdate", entries=[
        {"address": k.address, "balance_wei": 5 * WEI_PER_MOR} for k in keys]), "Ack")
    # Probes wait 10 s for their answer: longer than the watch takes to leave a frozen
    # member, so a ProbeAnswer resent to the next one is still in time.
    operator.answer(operator.send_signed("SetParams", params=[{"param_id": 10, "value": 10_000}]), "Ack")
    return operator


def _register(provider: Client, model_id: int) -> int:
    weights_hash = blake3.blake3(f"yellowstone-demo-model-{model_id}".encode()).digest()
    proof = provider.key.sign_digest(p.weights_proof_digest(provider.network_id, model_id, weights_hash))
    return provider.send_signed("RegisterProvider", endpoint="127.0.0.1:9997", offers=[{
        "model_id": model_id, "unit": 0, "weights_hash": weights_hash, "weights_proof": proof,
        "price_wei_per_token": PRICE_WEI_PER_TOKEN, "capacity": 4}])


def test_a_subscription_through_a_frozen_leader_is_resent_and_follows_every_reconnect(router):
    host, port = router["host"], router["port"]
    frozen = _FreezableProxy((host, port))
    try:
        watcher = Client(key=Key.from_seed(b"python-sub-watcher"), endpoints=[frozen.addr, (host, port)], **FAST)
        assert watcher.peer == frozen.addr
        frozen.frozen.set()
        started = time.monotonic()
        nonce = watcher.send_signed("SubscribeBatches")
        ack = watcher.answer(nonce, "Ack", timeout_s=15.0)
        assert ack["nonce"] == nonce
        assert watcher.peer == (host, port), "reconnected past the frozen member"
        assert time.monotonic() - started < LEFT_WITHIN_S
        # Subscribed on the new connection: the newest sealed batch comes at once.
        batch = watcher.expect(lambda n, f: f if n == "CreditBatch" else None, timeout_s=3.0)
        # The subscription lives on a connection: any later reconnect subscribes again.
        watcher.sock.close()
        assert watcher.reconnect() == 1
        again = watcher.expect(lambda n, f: f if n == "CreditBatch" else None, timeout_s=3.0)
        assert again["block"] >= batch["block"]
    finally:
        frozen.close()


def test_a_registration_through_a_frozen_leader_is_resent_and_takes_the_route(router):
    host, port = router["host"], router["port"]
    provider_key, user_key = Key.from_seed(b"python-reg-provider"), Key.from_seed(b"python-reg-user")
    _fund(router, provider_key, user_key)
    frozen = _FreezableProxy((host, port))
    try:
        provider = Client(key=provider_key, endpoints=[frozen.addr, (host, port)], **FAST)
        frozen.frozen.set()
        started = time.monotonic()
        nonce = _register(provider, 3)
        assert provider.answer(nonce, "Ack", timeout_s=15.0)["nonce"] == nonce
        assert time.monotonic() - started < LEFT_WITHIN_S
        assert provider.peer == (host, port)
        # The route is the new connection: a user's RFC probes the provider there.
        user = Client(host, port, user_key)
        user.answer(user.send_signed("Rfc", model_id=3, tokens_max=100,
                                     expires_at_ms=now_ms() + 30_000), "RfcAccepted")
        probe = provider.expect(lambda n, f: f if n == "Probe" else None, timeout_s=5.0)
        assert probe["model_id"] == 3
    finally:
        frozen.close()


def test_a_probe_answer_through_a_frozen_leader_is_resent_and_its_ticket_answers_it(router):
    """The provider registered (and took its route) through the member that then
    froze; its ProbeAnswer is swallowed. answer() leaves the silent member, sends the
    acknowledged registration again first (the cache answers it and moves the route),
    then the ProbeAnswer: both sides get the ticket, and answer() returns it."""
    host, port = router["host"], router["port"]
    provider_key, user_key = Key.from_seed(b"python-probe-provider"), Key.from_seed(b"python-probe-user")
    _fund(router, provider_key, user_key)
    frozen = _FreezableProxy((host, port))
    try:
        provider = Client(key=provider_key, endpoints=[frozen.addr, (host, port)], **FAST)
        provider.answer(_register(provider, 4), "Ack")
        user = Client(host, port, user_key)
        rfc = user.send_signed("Rfc", model_id=4, tokens_max=100, expires_at_ms=now_ms() + 30_000)
        user.answer(rfc, "RfcAccepted")
        probe = provider.expect(lambda n, f: f if n == "Probe" else None, timeout_s=5.0)
        frozen.frozen.set()
        started = time.monotonic()
        answer = provider.send_signed("ProbeAnswer", probe_id=probe["probe_id"])
        assert answer in provider.unanswered, "a ProbeAnswer is kept for a resend"
        ticket = provider.answer(answer, "SessionTicket", timeout_s=15.0)
        assert time.monotonic() - started < LEFT_WITHIN_S
        assert (ticket["provider"], ticket["user"], ticket["rfc_nonce"]) == (provider.address, user.address, rfc)
        assert answer not in provider.unanswered, "the provider's ticket answers its ProbeAnswer"
        assert user.answer(rfc, "SessionTicket", timeout_s=5.0) == ticket
    finally:
        frozen.close()


def test_a_message_sent_without_a_copy_raises_answer_lost_at_once_after_the_reconnect(router):
    host, port = router["host"], router["port"]
    operator = Client(key=router["operator"], endpoints=[(host, port)])
    nonce = operator.next_nonce()
    frame = p.sign_message(operator.key, operator.network_id, p.TYPE_OF["BalanceUpdate"], {
        "from": operator.address, "nonce": nonce,
        "entries": [{"address": Key.from_seed(b"python-lost").address, "balance_wei": 1}]})
    operator.send_frame(frame)  # sent raw: the client holds no copy
    time.sleep(0.3)  # applied; its Ack is lost with the socket
    operator.sock.close()
    started = time.monotonic()
    with pytest.raises(AnswerLostError) as lost:
        operator.answer(nonce, "Ack", timeout_s=15.0)
    assert time.monotonic() - started < 2.0, "no wait for an answer that cannot come"
    assert lost.value.nonce == nonce and "send it again" in str(lost.value)
    # Connected again, and the same frame sent again gets the original answer.
    operator.send_frame(frame)
    assert operator.answer(nonce, "Ack", timeout_s=5.0)["nonce"] == nonce


def test_not_leader_naming_a_message_keeps_it_for_the_resend(router):
    """A leader losing office answers a message it could not hand to its engine with
    not_leader naming it (PROTOCOL.md section 3: resend it to the leader): that is no
    answer, the frame stays kept and goes out again on the next connection."""
    host, port = router["host"], router["port"]
    operator = Client(key=router["operator"], endpoints=[(host, port)])
    nonce = operator.send_signed("BalanceUpdate", entries=[
        {"address": Key.from_seed(b"python-nl").address, "balance_wei": 2}])
    # What a deposed leader sends for it, read before the real Ack (which is then
    # lost with the socket).
    operator._answered("ErrorReply", {"code": p.NOT_LEADER, "ref_msg_type": p.TYPE_OF["BalanceUpdate"],
                                      "ref_nonce": nonce, "retry_after_ms": 0, "detail": 0,
                                      "reason": "not the leader: no leader known (election in progress)"})
    assert nonce in operator.unanswered
    operator.sock.close()
    assert operator.reconnect() == 1
    # The resend is answered from the reply cache: the original Ack.
    assert operator.answer(nonce, "Ack", timeout_s=5.0)["nonce"] == nonce


def test_a_cancel_is_answered_by_the_rfc_failed_of_its_rfc(router):
    """RfcFailed carries the RFC's nonce, not the cancel's: before, the cancel stayed
    kept for ever (resent after every reconnect) and answer() on it never matched."""
    user_key = Key.from_seed(b"python-cancel-user")
    _fund(router, user_key)
    user = Client(router["host"], router["port"], user_key)
    rfc = user.send_signed("Rfc", model_id=1, tokens_max=100, expires_at_ms=now_ms() + 30_000)
    accepted = user.answer(rfc, "RfcAccepted")
    cancel = user.send_signed("RfcCancel", rfc_id=accepted["rfc_id"])
    failed = user.answer(cancel, "RfcFailed", timeout_s=5.0)
    assert (failed["nonce"], failed["reason"]) == (rfc, 3)
    assert cancel not in user.unanswered and rfc not in user.unanswered



def test_a_provider_is_reachable_again_after_any_reconnect(router):
    """The provider's connection closes while the router keeps running (it marks the
    provider unreachable, R-ID-6): reconnect() resends the registration (its cached
    answer moves the route) and announces afresh, so the provider is probed again
    on the new connection. Before, nothing was sent and the provider stayed out of
    matching."""
    host, port = router["host"], router["port"]
    provider_key, user_key = Key.from_seed(b"python-back-provider"), Key.from_seed(b"python-back-user")
    _fund(router, provider_key, user_key)
    provider = Client(key=provider_key, endpoints=[(host, port)], **FAST)
    provider.answer(_register(provider, 2), "Ack")
    provider.sock.close()
    time.sleep(0.3)  # the router saw the close: the provider is unreachable
    provider.reconnect()
    user = Client(host, port, user_key)
    user.answer(user.send_signed("Rfc", model_id=2, tokens_max=100,
                                 expires_at_ms=now_ms() + 30_000), "RfcAccepted")
    probe = provider.expect(lambda n, f: f if n == "Probe" else None, timeout_s=5.0)
    assert probe["model_id"] == 2


def test_a_batch_follower_as_the_readme_writes_it_survives_a_frozen_leader(router):
    """README: expect() raises SilentRouterError on a frozen leader and does not
    reconnect; reconnect() subscribes the new connection again, and the newest sealed
    batch comes at once (a follower skips blocks it holds)."""
    from yellowstone_client import SilentRouterError
    host, port = router["host"], router["port"]
    frozen = _FreezableProxy((host, port))
    try:
        follower = Client(key=Key.from_seed(b"python-follower"), endpoints=[frozen.addr, (host, port)], **FAST)
        follower.answer(follower.send_signed("SubscribeBatches"), "Ack")
        first = follower.expect(lambda n, f: f if n == "CreditBatch" else None, timeout_s=3.0)
        frozen.frozen.set()
        with pytest.raises(SilentRouterError):
            follower.expect(lambda n, f: f if n == "CreditBatch" else None, timeout_s=15.0)
        assert follower.peer == frozen.addr, "expect() leaves the reconnect to the caller"
        follower.reconnect()
        assert follower.peer == (host, port)
        batch = follower.expect(lambda n, f: f if n == "CreditBatch" else None, timeout_s=3.0)
        assert batch["block"] >= first["block"]
    finally:
        frozen.close()
