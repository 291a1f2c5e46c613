"""R-HA-3 (issue 25): the client follows the leader of a replicated router group and
resends its unanswered signed messages after a lost connection. Pinned: the
`not_leader` reason is parsed as docs/PROTOCOL.md section 3 writes it (the golden
vector), `Client(endpoints=[...])` goes past a dead member and a follower to the
leader, gives up naming every endpoint, and a message whose answer was lost is
answered again, byte for byte, by the router's reply cache (no second effect)."""

import json
import socket
import threading
import time

import pytest

from yellowstone_client import Client, Key, NoRouterError, RouterError
from yellowstone_client import protocol as p

from .test_session import WEI_PER_MOR, now_ms, router  # noqa: F401 (the fixture)


def _not_leader_frame(reason: str, member: int) -> bytes:
    fields = {"code": p.NOT_LEADER, "ref_msg_type": 0, "ref_nonce": 0,
              "retry_after_ms": 0 if member else 50, "detail": member, "reason": reason}
    msg_type = p.TYPE_OF["ErrorReply"]
    return p.encode_frame(msg_type, p.encode_body(msg_type, fields), p.FLAG_RESPONSE)


def _fake_follower(leader=None):
    """A member that greets every connection with not_leader naming `leader`
    ((host, port), member 2) or no leader, then closes it. Returns its (host, port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    if leader is None:
        frame = _not_leader_frame("not the leader: no leader known (election in progress)", 0)
    else:
        frame = _not_leader_frame(f"not the leader: leader is member 2 at {leader[0]}:{leader[1]}", 2)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(frame)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()


def _dead():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    s.close()
    return addr


def test_the_golden_not_leader_reply_names_its_leader(repo_root):
    golden = json.loads((repo_root / "wire" / "golden" / "vectors.json").read_text())
    vector = next(v for v in golden["vectors"] if v["name"] == "ErrorReply"
                  and v["values"]["code"] == p.NOT_LEADER)
    _, _, name, fields, _ = p.decode_frame(bytes.fromhex(vector["frame_hex"]))
    assert name == "ErrorReply" and p.ERROR_NAMES[fields["code"]] == "not_leader"
    assert p.parse_not_leader(fields) == ("127.0.0.1", 7401)
    assert fields["detail"] == 2 and fields["retry_after_ms"] == 0
    for reason in ["not the leader: no leader known (election in progress)",
                   "not the leader: leader is member x at 127.0.0.1:1",
                   "not the leader: leader is member 0 at 127.0.0.1:1",
                   "not the leader: leader is member 3 at nowhere"]:
        assert p.parse_not_leader(dict(fields, reason=reason)) is None, reason
    assert p.parse_not_leader(dict(fields, code=0x0301)) is None
    assert p.parse_not_leader(dict(fields, reason="not the leader: leader is member 5 at [::1]:7400")) == ("::1", 7400)


def test_endpoints_lead_past_a_dead_member_and_a_follower_to_the_leader(router):
    leader = (router["host"], router["port"])
    follower = _fake_follower(leader)
    client = Client(key=Key.from_seed(b"python-follow"), endpoints=[_dead(), f"{follower[0]}:{follower[1]}"])
    assert client.peer == leader
    assert client.router == router["router"]
    client.close()


def test_no_leader_anywhere_gives_up_by_the_deadline_naming_every_endpoint():
    dead, electing = _dead(), _fake_follower(None)
    started = time.monotonic()
    with pytest.raises(NoRouterError) as error:
        Client(key=Key.from_seed(b"python-none"), endpoints=[dead, electing], connect_deadline_s=0.5)
    assert time.monotonic() - started < 2.0
    assert set(error.value.tried) == {dead, electing}
    assert "not_leader" in error.value.tried[electing]
    assert error.value.attempts >= 2


def test_a_lost_answer_is_answered_again_by_the_resend_byte_for_byte(router):
    host, port = router["host"], router["port"]
    operator = Client(host, port, router["operator"])
    user_key = Key.from_seed(b"python-resend-user")
    nonce = operator.send_signed("BalanceUpdate", entries=[
        {"address": user_key.address, "balance_wei": 5 * WEI_PER_MOR}])
    operator.answer(nonce, "Ack")

    # An RFC no provider serves: accepted, then it waits (no final answer yet).
    user = Client(endpoints=[(host, port)], key=user_key)
    rfc = user.send_signed("Rfc", model_id=1, tokens_max=100, expires_at_ms=now_ms() + 30_000)
    first = user.expect(lambda n, f: f if n == "RfcAccepted" else None)
    first_body = p.encode_body(p.TYPE_OF["RfcAccepted"], first)
    assert rfc in user.unanswered, "an RFC is unanswered until its ticket or failure"
    # The connection is lost; the client reconnects and resends the very same frame.
    frame = user.unanswered[rfc]
    user.sock.close()
    assert user.reconnect() == 1
    assert user.unanswered[rfc] == frame
    again = user.answer(rfc, "RfcAccepted")
    assert p.encode_body(p.TYPE_OF["RfcAccepted"], again) == first_body, "the original answer"

    # answer() reconnects by itself when the connection is lost before the answer.
    nonce = operator.send_signed("BalanceUpdate", entries=[
        {"address": user_key.address, "balance_wei": 6 * WEI_PER_MOR}])
    time.sleep(0.3)  # the router applied it; its Ack is lost with the socket
    operator.sock.close()
    assert operator.answer(nonce, "Ack")["nonce"] == nonce
    assert nonce not in operator.unanswered

    # Another message under the spent nonce is still a replay.
    operator.send_signed("BalanceUpdate", nonce=nonce, entries=[
        {"address": user_key.address, "balance_wei": 7 * WEI_PER_MOR}])
    with pytest.raises(RouterError) as refused:
        operator.answer(nonce, "Ack")
    assert refused.value.name == "replay"


class _FreezableProxy:
    """A member in front of the real router that can freeze like a SIGSTOPped leader:
    its connections stay open and nothing passes either way (no close, no reset)."""

    def __init__(self, target):
        self.target = target
        self.frozen = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.addr = self.listener.getsockname()
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.frozen.is_set():
                self.held.append(client)  # accepted, never greeted, never closed
                continue
            server = socket.create_connection(self.target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink):
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            if self.frozen.is_set():
                continue  # swallowed: the frozen member neither answers nor closes
            try:
                sink.sendall(chunk)
            except OSError:
                return

    def close(self):
        self.listener.close()


def test_a_frozen_leader_is_left_within_the_liveness_bound_and_the_resend_answered(router):
    """Issue 25: the connection to a frozen member stays open and silent. Before the
    fix answer() waited out its whole timeout (then TimeoutError); now a Ping
    unanswered for liveness_s makes the connection dead, the client reconnects to the
    next member and resends the same frame, answered there."""
    host, port = router["host"], router["port"]
    frozen = _FreezableProxy((host, port))
    try:
        client = Client(key=router["operator"], endpoints=[frozen.addr, (host, port)])
        assert client.peer == frozen.addr
        frozen.frozen.set()
        user = Key.from_seed(b"python-frozen-user")
        started = time.monotonic()
        nonce = client.send_signed("BalanceUpdate", entries=[
            {"address": user.address, "balance_wei": 3 * WEI_PER_MOR}])
        ack = client.answer(nonce, "Ack", timeout_s=15.0)
        elapsed = time.monotonic() - started
        assert ack["nonce"] == nonce
        assert client.peer == (host, port), "reconnected past the frozen member"
        # Quiet 0.5 s + unanswered Ping 2 s + the reconnect: well under the 15 s wait.
        assert elapsed < 5.0, f"left the frozen member after {elapsed:.1f} s"
    finally:
        frozen.close()


def test_the_liveness_bound_must_exceed_the_ping_interval():
    with pytest.raises(ValueError, match="ping_after_s"):
        Client("127.0.0.1", 1, Key.from_seed(b"x"), ping_after_s=2.0, liveness_s=2.0)



def test_an_election_under_way_is_waited_for_before_the_silent_member(router):
    """Reconnecting after a silent member: another member says no leader is known yet;
    the client waits its suggested time and asks it again before spending an attempt
    on the silent member (which would cost the whole liveness bound)."""
    asked, dialled = [], []
    electing = socket.socket()
    electing.bind(("127.0.0.1", 0))
    electing.listen(16)
    frame = _not_leader_frame("not the leader: no leader known (election in progress)", 0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held = []

    def serve_electing():
        while True:
            try:
                conn, _ = electing.accept()
            except OSError:
                return
            asked.append(time.monotonic())
            with conn:
                conn.sendall(frame)

    def serve_silent():
        while True:
            try:
                conn, _ = silent.accept()
            except OSError:
                return
            dialled.append(time.monotonic())
            held.append(conn)  # never greeted, never closed

    threading.Thread(target=serve_electing, daemon=True).start()
    threading.Thread(target=serve_silent, daemon=True).start()
    client = Client(router["host"], router["port"], router["operator"],
                    ping_after_s=0.1, liveness_s=0.5)
    # Its connection went silent on `silent`; the group is these two members now.
    client.endpoints = [silent.getsockname(), electing.getsockname()]
    client.peer = silent.getsockname()
    client.connect_deadline_s = 0.5
    try:
        with pytest.raises(NoRouterError) as error:
            client.reconnect()
        assert len(asked) >= 2 and dialled, error.value
        assert asked[1] < dialled[0], "the electing member is asked again before the silent one"
        assert "no greeting" in error.value.tried[silent.getsockname()] or \
            "timed out" in error.value.tried[silent.getsockname()], error.value
    finally:
        electing.close()
        silent.close()
