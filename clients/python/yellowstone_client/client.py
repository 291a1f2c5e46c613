"""A blocking TCP client: connect, log in, send signed messages, receive frames
(router-signed tickets and batches verified against the router's address).

Replicated routers (R-HA-3, docs/PROTOCOL.md section 3): `Client(endpoints=[...])`
takes every member of a group. A member that does not lead greets with `not_leader`
naming the leader: the client goes there (at most LEADER_HOPS_MAX redirects in a row),
else tries the next member; one member's attempt waits at most MEMBER_ATTEMPT_MAX_S
(1 s) for the greeting and the login answer, whether the liveness watch is on or off;
after a whole round fails it waits (backoff with jitter) and tries again until
`connect_deadline_s`, then raises NoRouterError naming every endpoint. The client keeps
a copy of every signed message (of every kind) it sent without a final answer;
`reconnect()` (called by `answer()` when the connection is lost) sends, byte-identical,
the provider's last acknowledged registration or announce (its route), the last
subscription (SubscribeBatches lives on one connection) and those copies: the new
leader answers each from its reply cache (the original answer, never a second effect)
or, if it was never committed, evaluates it. A message without a copy (sent with
`send_frame`) makes `answer()` raise AnswerLostError after the reconnection.

A frozen leader (SIGSTOPped, or cut off by a partition that drops packets) keeps the
TCP connection open and answers nothing (issue 25). So while `expect()`/`answer()`
wait, the client sends a Ping after `ping_after_s` (0.5 s) without receiving anything
and takes a Ping unanswered for `liveness_s` (2 s) as a lost connection
(SilentRouterError): `answer()` then reconnects (the silent member tried last) and
resends, as after a closed one; `expect()` raises it and the caller reconnects.
When another member says no leader is known yet (an election under way) before the
silent member's turn, the client waits its suggested time (at most `liveness_s`) and
asks the others once more first. `liveness_s=None` or `ping_after_s=None` turns the
watch off."""

import math
import random
import socket
import time

from . import protocol as p


# The market's replay refusal; its `detail` is the last nonce accepted (R-ID-8).
REPLAY = 0x0201
# An announce from an address that is no provider (its registration dropped).
UNKNOWN_PROVIDER = 0x020C


class RouterError(Exception):
    """An ErrorReply where an answer was expected."""

    def __init__(self, fields: dict):
        self.fields = fields
        self.code = fields["code"]
        self.name = p.ERROR_NAMES.get(self.code, "unknown_code")
        super().__init__(f"{self.name} ({self.code:#06x}): {fields['reason']} (detail {fields['detail']})")


# Redirects by not_leader followed in a row before trying the members in turn.
LEADER_HOPS_MAX = 4
# Signed frames kept for a resend after a lost connection (the oldest dropped first).
RESEND_WINDOW = 1024
# Reconnections (and resends) one answer() may make before it gives up.
RESENDS_MAX = 3
# docs/PROTOCOL.md section 3: with several members, one member's connect-and-login
# attempt waits at most this long (seconds) for the greeting and the login answer,
# whether the liveness watch is on or off (a frozen member accepts in its kernel and
# never greets); Rust's MEMBER_ATTEMPT_MAX.
MEMBER_ATTEMPT_MAX_S = 1.0
# R-HA-3 (issue 25): a Ping after this long without receiving anything (seconds)...
PING_AFTER_S = 0.5
# ...and the connection is dead when nothing at all arrives this long after it: as the
# Rust clients' GROUP_LIVENESS and the nodes' router_liveness_ms (2 s), above a group's
# election timeout.
LIVENESS_S = 2.0
# Bounds of the watch (ValueError outside them): a Ping more often than every 50 ms, or
# a router judged dead after less than 0.5 s (under a group's election timeout), takes
# healthy routers for dead and floods them with Pings; 10 minutes is the nodes' bound.
PING_AFTER_MIN_S = 0.05
LIVENESS_MIN_S = 0.5
LIVENESS_MAX_S = 600.0


class SilentRouterError(ConnectionError):
    """Nothing, not even an answer to a Ping, arrived within the liveness bound: the
    router is taken for dead (frozen, or cut off without a reset)."""


class NoRouterError(ConnectionError):
    """No member of the router group could be logged in to before the deadline;
    `tried` maps each endpoint tried to why its last attempt failed, `endpoints` lists
    every configured one (tried or not)."""

    def __init__(self, tried: dict, attempts: int, elapsed_s: float, endpoints=None):
        self.tried = tried
        self.attempts = attempts
        self.endpoints = list(endpoints) if endpoints is not None else list(tried)
        detail = "; ".join(f"{h}:{pt}: {why}" for (h, pt), why in tried.items())
        untried = [f"{h}:{pt}" for (h, pt) in self.endpoints if (h, pt) not in tried]
        if untried:
            detail += "; not tried before the deadline: " + ", ".join(untried)
        super().__init__(
            f"could not connect to any of {len(self.endpoints)} routers: {attempts} attempts in "
            f"{elapsed_s:.1f} s; {detail}")


class AnswerLostError(ConnectionError):
    """The connection was lost before the answer to `nonce`, and this client holds no
    copy of that message to resend (it was sent with `send_frame`, or pushed out of
    the resend window): the client is connected again (to `peer`), but the caller must
    send the message again itself (the same frame: a committed one gets its original
    answer from the reply cache)."""

    def __init__(self, nonce: int, lost, peer, cause: BaseException):
        self.nonce = nonce
        self.lost = lost
        self.peer = peer
        super().__init__(
            f"the connection to {lost} was lost before the answer to nonce {nonce} ({cause}); "
            f"reconnected to {peer}, but this client holds no copy of that message to resend "
            f"(sent with send_frame, or out of the resend window of {RESEND_WINDOW}): send it again")


class _NotLeader(Exception):
    def __init__(self, fields: dict):
        self.fields = fields
        self.leader = p.parse_not_leader(fields)
        super().__init__(fields["reason"])


def _endpoint(item):
    """(host, port) of a ("host", port) pair or a "host:port" string; ValueError for
    anything else, an empty host or a port outside 1..=65535."""
    if isinstance(item, str):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not port.isdigit():
            raise ValueError(f"router endpoint {item!r} is not host:port")
        host, port = host.strip("[]"), int(port)
    else:
        try:
            host, port = item
        except (TypeError, ValueError):
            raise ValueError(f"router endpoint {item!r} is neither \"host:port\" nor a (host, port) pair") from None
        if isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(f"router endpoint {item!r}: the port must be an int, got {port!r}")
        if not isinstance(host, str):
            raise ValueError(f"router endpoint {item!r}: the host must be a str, got {host!r}")
    if not host:
        raise ValueError(f"router endpoint {item!r} has no host")
    if not 1 <= port <= 65535:
        raise ValueError(f"router endpoint {item!r}: port {port} is outside 1..=65535")
    return host, port


def _seconds(name: str, value, low: float, high: float = math.inf, *, low_open=False):
    """`value` as a finite float within [low, high] (above low when `low_open`);
    ValueError naming the argument, the value and the bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < low or (low_open and value == low):
        raise ValueError(f"{name} ({value}) must be {'above' if low_open else 'at least'} {low} s")
    if value > high:
        raise ValueError(f"{name} ({value}) must be at most {high} s")
    return value


class Client:
    def __init__(self, host: str = None, port: int = None, key: p.Key = None,
                 timeout_s: float = 20.0, *, endpoints=None, connect_deadline_s: float = 10.0,
                 ping_after_s=PING_AFTER_S, liveness_s=LIVENESS_S):
        """Logs in to the router at (host, port), or to the leader of the group whose
        members are `endpoints` (a list of ("host", port) pairs or "host:port" strings,
        tried in order, each listed once). Raises NoRouterError when none could be
        logged in to within `connect_deadline_s` (seconds, finite, above 0), RouterError
        for a refused login. `timeout_s` (seconds, finite, above 0) bounds one socket
        operation (a single router's connect and login). `ping_after_s` and
        `liveness_s` (seconds; None for either: the watch is off) are the liveness
        watch of the module docs: ping_after_s at least 0.05, liveness_s at least 0.5
        and at most 600 and above ping_after_s, both finite. Every refused argument is
        a ValueError naming it, its value and the bound."""
        if not isinstance(key, p.Key):
            raise ValueError(f"key must be a yellowstone_client.Key, got {key!r}" if key is not None
                             else "a key is needed")
        timeout_s = _seconds("timeout_s", timeout_s, 0.0, low_open=True)
        connect_deadline_s = _seconds("connect_deadline_s", connect_deadline_s, 0.0, low_open=True)
        if ping_after_s is None or liveness_s is None:
            ping_after_s = liveness_s = None
        else:
            ping_after_s = _seconds("ping_after_s", ping_after_s, PING_AFTER_MIN_S)
            liveness_s = _seconds("liveness_s", liveness_s, LIVENESS_MIN_S, LIVENESS_MAX_S)
            if not ping_after_s < liveness_s:
                raise ValueError(
                    f"ping_after_s ({ping_after_s}) must be below liveness_s ({liveness_s}): "
                    "the Ping must go out before the connection is judged")
        if isinstance(endpoints, (str, bytes)) or (endpoints is not None and isinstance(endpoints, tuple)
                                                   and len(endpoints) == 2 and isinstance(endpoints[1], int)):
            raise ValueError(f"endpoints must be a list of endpoints, got the single endpoint {endpoints!r}: "
                             f"write [{endpoints!r}]")
        members = []
        if host is not None:
            if port is None:
                raise ValueError(f"host {host!r} given without a port")
            members.append(_endpoint((host, port)))
        elif port is not None:
            raise ValueError(f"port {port!r} given without a host")
        for item in endpoints or []:
            member = _endpoint(item)
            if member in members:
                raise ValueError(f"router endpoint {member[0]}:{member[1]} is listed twice")
            members.append(member)
        if not members:
            raise ValueError("no router endpoint given")
        self.endpoints = members
        self.key = key
        self.address = key.address
        self.timeout_s = timeout_s
        self.connect_deadline_s = connect_deadline_s
        self.ping_after_s = ping_after_s
        self.liveness_s = liveness_s
        # Nonces start from the clock in microseconds, so a restarted client never replays.
        self._nonce = time.time_ns() // 1000
        self.network_id = None
        self.router = None
        self.sock = None
        self.peer = None
        # R-HA-3: nonce -> signed frame sent without a final answer yet, in send order
        # (every signed kind), and nonce -> (kind, what identifies its answer).
        self.unanswered = {}
        self._kinds = {}
        # The last SubscribeBatches frame: a subscription lives on one connection, so
        # reconnect() sends it again on every new one (its nonce is not checked).
        self.subscription = None
        self._subscription_nonce = None
        # R-ID-6: the last RegisterProvider or ProviderAnnounce acknowledged (frame,
        # nonce). A provider's probes and its copy of a ticket go to the connection
        # that sent it; reconnect() sends it again first, byte-identical: the router
        # answers it from its reply cache and moves the route to the new connection.
        self.route = None
        self._route_nonce = None
        # probe_id -> (model_id, tokens_max) of the probes received (bounded): a
        # ProbeAnswer's answer is the ticket, which carries neither its nonce nor the
        # probe id.
        self._probes = {}
        # The nonces the frame recv() returned last answered (see answer()).
        self._finalized = ()
        self._connect()

    def close(self) -> None:
        self.sock.close()

    # --- following the leader (R-HA-3) ---

    def _connect(self, lost=None) -> None:
        """Logs in to the group's leader; `lost` (the member whose connection died) is
        tried last in each round."""
        order = [e for e in self.endpoints if e != lost] + [e for e in self.endpoints if e == lost]
        # A frozen member accepts in its kernel and never greets: in a group one attempt
        # waits at most MEMBER_ATTEMPT_MAX_S (and the liveness bound, and its share of
        # the connect deadline), watch on or off, then the next member is tried.
        attempt_s = self.timeout_s
        if len(self.endpoints) > 1:
            attempt_s = min(attempt_s, MEMBER_ATTEMPT_MAX_S,
                            max(0.05, self.connect_deadline_s / len(self.endpoints)))
            if self.liveness_s is not None:
                attempt_s = min(attempt_s, self.liveness_s)
        started = time.monotonic()
        deadline = started + self.connect_deadline_s
        tried = {}
        attempts = 0
        rounds = 0
        hops = 0
        asked_again = False
        while True:
            queue = list(order)
            wait_s = 0.0
            while queue:
                target = queue.pop(0)
                if target == lost and not queue and wait_s > 0 and not asked_again \
                        and self.liveness_s is not None and len(order) > 1:
                    # Another member knows no leader yet (an election under way): wait
                    # for it rather than for the silent member, and ask the others once
                    # more before spending an attempt on that one.
                    asked_again = True
                    pause = min(wait_s, self.liveness_s, max(0.0, deadline - time.monotonic()))
                    time.sleep(pause)
                    queue = list(order)
                    continue
                attempts += 1
                try:
                    self._attempt(target, max(0.05, min(attempt_s, deadline - time.monotonic())))
                    self.peer = target
                    return
                except _NotLeader as refusal:
                    tried[target] = f"not_leader: {refusal}"
                    if refusal.leader is not None and hops < LEADER_HOPS_MAX and refusal.leader != target:
                        hops += 1
                        queue.insert(0, refusal.leader)
                    else:
                        wait_s = max(wait_s, refusal.fields["retry_after_ms"] / 1000)
                except RouterError as refusal:
                    if refusal.name in ("too_many_connections", "evicted", "login_timeout", "overloaded"):
                        tried[target] = str(refusal)
                    else:
                        raise
                except (OSError, ConnectionError, p.ProtocolError) as error:
                    tried[target] = f"{type(error).__name__}: {error}"
                if time.monotonic() >= deadline:
                    raise NoRouterError(tried, attempts, time.monotonic() - started, self.endpoints)
            hops = 0
            rounds += 1
            backoff = min(2.0, 0.05 * 2 ** min(rounds - 1, 10))
            pause = max(wait_s, backoff / 2 + random.uniform(0, backoff / 2))
            if time.monotonic() + pause >= deadline:
                raise NoRouterError(tried, attempts, time.monotonic() - started, self.endpoints)
            time.sleep(pause)

    def _attempt(self, target, timeout_s: float) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self._buffer = bytearray()
        sock = socket.create_connection(target, timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        try:
            self._login()
        except BaseException:
            sock.close()
            self.sock = None
            raise
        sock.settimeout(self.timeout_s)

    def reconnect(self) -> int:
        """Connects again (to the group's leader) and sends, first and byte-identical,
        the subscription (SubscribeBatches: it lived on the old connection; answered
        `Ack` again, then the newest sealed batch and settlement) and every signed frame
        still without a final answer, of every kind (R-HA-3): the new leader answers a
        committed one from its reply cache (the original answer; a RegisterProvider,
        ProviderAnnounce or Rfc resent so also moves its route to the new connection)
        and evaluates one never committed. A provider's last acknowledged
        RegisterProvider or ProviderAnnounce goes first, byte-identical: answered from
        the reply cache, it moves the provider's route (probes, its copy of tickets) to
        the new connection, so that the tickets of the ProbeAnswers resent after it come
        here; and a fresh ProviderAnnounce goes last (the router may have marked the
        provider unreachable when the old connection closed). Not resent: frames sent
        with `send_frame`. Returns how many frames were sent."""
        self._connect(lost=self.peer)
        frames = list(self.unanswered.values())
        # Standing state of the old connection first: the provider's route (so the
        # probes and tickets of the resends below come here), the subscription.
        for standing in (self.subscription, self.route):
            if standing is not None and standing not in frames:
                frames.insert(0, standing)
        for frame in frames:
            self.send_frame(frame)
        if self.route is not None:
            # The router may have marked the provider unreachable when the old
            # connection closed (R-ID-6), which a cached answer does not undo: announce
            # afresh, after the resends (a higher nonce first would make their
            # uncommitted ones `replay`). Kept and resent like any message.
            self.send_signed("ProviderAnnounce")
            return len(frames) + 1
        return len(frames)

    def _forget(self, nonce: int) -> bool:
        kind = self._kinds.pop(nonce, None)
        return self.unanswered.pop(nonce, None) is not None or kind is not None

    def _answered(self, name: str, fields: dict) -> tuple:
        """Forgets the frames a final answer answers (an RfcAccepted is not final: its
        RFC waits for a ticket or a failure) and returns their nonces: an Ack,
        ReportAck, ClaimAck or ErrorReply by nonce; the user's ticket or RfcFailed its
        RFC's (and an RfcFailed the RfcCancel of that RFC); the provider's ticket the
        oldest ProbeAnswer for a probe of that model and size."""
        done = []
        if name == "SessionTicket":
            if fields["user"] == self.address and self._forget(fields["rfc_nonce"]):
                done.append(fields["rfc_nonce"])
            if fields["provider"] == self.address:
                shape = (fields["model_id"], fields["tokens_max"])
                answers = [n for n, (kind, probe) in self._kinds.items() if kind == "ProbeAnswer"]
                match = next((n for n in answers if self._kinds[n][1] == shape), None)
                if match is None and answers:
                    match = answers[0]
                if match is not None:
                    self._forget(match)
                    done.append(match)
        elif name == "RfcFailed":
            if self._forget(fields["nonce"]):
                done.append(fields["nonce"])
            cancels = [n for n, (kind, rfc_id) in self._kinds.items()
                       if kind == "RfcCancel" and rfc_id == fields["rfc_id"]]
            for n in cancels:
                self._forget(n)
            done += cancels
        elif name == "ErrorReply":
            # not_leader naming a message is no answer: the deposed leader could not
            # hand it to its engine, resend it to the new one (PROTOCOL.md section 3).
            if fields["code"] != p.NOT_LEADER and fields["ref_nonce"]:
                if self._forget(fields["ref_nonce"]):
                    done.append(fields["ref_nonce"])
                if self._subscription_nonce == fields["ref_nonce"]:
                    self.subscription = self._subscription_nonce = None
                if fields["code"] == UNKNOWN_PROVIDER:
                    # The registration is gone: no more announcing after a reconnect.
                    # (A `replay` of the route frame only says its answer left the
                    # reply cache; the fresh ProviderAnnounce of reconnect() follows.)
                    self.route = self._route_nonce = None
        elif name in ("Ack", "ReportAck", "ClaimAck"):
            nonce = fields["nonce"]
            kind = self._kinds.get(nonce, (None,))[0]
            if kind in ("RegisterProvider", "ProviderAnnounce"):
                self.route, self._route_nonce = self.unanswered[nonce], nonce
            if self._forget(nonce):
                done.append(nonce)
        elif name == "Probe":
            if len(self._probes) >= RESEND_WINDOW:
                self._probes.pop(next(iter(self._probes)))
            self._probes[fields["probe_id"]] = (fields["model_id"], fields["tokens_max"])
        return tuple(done)

    def next_nonce(self) -> int:
        """max(clock in µs, last + 1) (R-ID-4, R-ID-8)."""
        self._nonce = max(time.time_ns() // 1000, self._nonce + 1)
        return self._nonce

    def resync(self, error: "RouterError") -> bool:
        """R-ID-8: after a `replay` refusal (another program signed with this key), moves
        the counter above the nonce the router last accepted (the refusal's detail) and
        returns True; False for any other refusal."""
        if error.code != REPLAY:
            return False
        self._nonce = max(self._nonce, error.fields["detail"])
        return True

    def request(self, name: str, *answers, timeout_s: float = 20.0, **fields):
        """Signs and sends `name` with a fresh nonce and returns the answer named in
        `answers` for it; a `replay` refusal resynchronises the nonces and sends the
        message once more with a new nonce (R-ID-8); other refusals raise RouterError."""
        fields.pop("nonce", None)
        try:
            return self.answer(self.send_signed(name, **fields), *answers, timeout_s=timeout_s)
        except RouterError as error:
            if not self.resync(error):
                raise
        return self.answer(self.send_signed(name, **fields), *answers, timeout_s=timeout_s)

    # --- frames ---

    def send_frame(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def send(self, name: str, fields: dict) -> None:
        """An unsigned message (Ping)."""
        msg_type = p.TYPE_OF[name]
        self.send_frame(p.encode_frame(msg_type, p.encode_body(msg_type, fields)))

    def send_signed(self, name: str, **fields) -> int:
        """Signs and sends a client message; fills `from` and a fresh `nonce` unless
        given. Returns the nonce."""
        msg_type = p.TYPE_OF[name]
        layout = dict(p.MESSAGES[msg_type][1])
        if "from" in layout:
            fields.setdefault("from", self.address)
        if "nonce" in layout:
            fields.setdefault("nonce", self.next_nonce())
        frame = p.sign_message(self.key, self.network_id, msg_type, fields)
        nonce = fields.get("nonce", 0)
        # R-HA-3: every signed kind is kept for a byte-identical resend after a lost
        # connection until its final answer (reconnect()); kept before it is sent, so
        # an answer read at once finds it.
        if nonce:
            if len(self.unanswered) >= RESEND_WINDOW:
                self._forget(next(iter(self.unanswered)))
            self.unanswered[nonce] = frame
            if name == "RfcCancel":
                self._kinds[nonce] = (name, fields["rfc_id"])
            elif name == "ProbeAnswer":
                self._kinds[nonce] = (name, self._probes.get(fields["probe_id"]))
            else:
                self._kinds[nonce] = (name, None)
            if name == "SubscribeBatches":
                self.subscription, self._subscription_nonce = frame, nonce
        self.send_frame(frame)
        return nonce

    def recv(self):
        """The next frame as (name, fields, flags, body); router-signed messages are
        verified first (a bad one raises SignatureError)."""
        while True:
            if len(self._buffer) >= p.HEADER_LEN:
                flags, msg_type, body_len = p.decode_header(bytes(self._buffer[:p.HEADER_LEN]))
                end = p.HEADER_LEN + body_len
                if len(self._buffer) >= end:
                    body = bytes(self._buffer[p.HEADER_LEN:end])
                    del self._buffer[:end]
                    name = p.MESSAGES[msg_type][0] if msg_type in p.MESSAGES else None
                    if name is None:
                        raise p.ProtocolError(f"unknown message type {msg_type:#06x}")
                    fields = p.decode_body(msg_type, body)
                    if name in p.ROUTER_SIGNED and self.router is not None:
                        p.verify_message(self.network_id, msg_type, fields, body, self.router)
                    self._finalized = self._answered(name, fields)
                    return name, fields, flags, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the router")
            self._buffer += chunk

    def expect(self, pick, timeout_s: float = 20.0):
        """Reads until pick(name, fields) returns something other than None; TimeoutError
        after `timeout_s`. With the liveness watch on (the module docs) a Ping goes out
        after `ping_after_s` of silence, and SilentRouterError is raised when nothing
        at all arrived within `liveness_s` of it."""
        timeout_s = _seconds("timeout_s", timeout_s, 0.0)
        deadline = time.monotonic() + timeout_s
        heard = time.monotonic()
        pinged = None
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError("no matching message in time")
                if self.liveness_s is None:
                    wake = deadline
                else:
                    if pinged is None and now - heard >= self.ping_after_s:
                        self.send("Ping", {"payload": 0})
                        pinged = now
                    if pinged is not None and now - pinged >= self.liveness_s:
                        raise SilentRouterError(
                            f"the router at {self.peer} answered nothing, not even a Ping, within "
                            f"{self.liveness_s} s (liveness_s): taken for dead")
                    wake = heard + self.ping_after_s if pinged is None else pinged + self.liveness_s
                self.sock.settimeout(max(0.001, min(wake, deadline) - now))
                try:
                    name, fields, _, _ = self.recv()
                except socket.timeout:
                    # A partial frame stays in the buffer; the loop decides what is due.
                    continue
                heard = time.monotonic()
                pinged = None
                value = pick(name, fields)
                if value is not None:
                    return value
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout_s)

    def answer(self, nonce: int, *names, timeout_s: float = 20.0):
        """The answer named in `names` to the message sent under `nonce` (the message
        carrying that nonce, or the final answer that answers it: the ticket for an Rfc
        or a ProbeAnswer, RfcFailed for an RfcCancel), or RouterError for its refusal;
        TimeoutError after `timeout_s`. R-HA-3: when the connection is lost first
        (closed, silent past the liveness bound, or `not_leader` from a leader that
        lost office), reconnects and resends (reconnect(): every kind of signed
        message, at most RESENDS_MAX times) and keeps waiting: the resend's answer is
        the original one. A message the client holds no copy of (sent with
        `send_frame`, or out of the resend window) cannot be resent: AnswerLostError
        after the reconnection, at once, instead of a wait for an answer that cannot
        come. NoRouterError when no member can be reached."""
        timeout_s = _seconds("timeout_s", timeout_s, 0.0)

        def pick(name, fields):
            if name == "ErrorReply" and fields["code"] == p.NOT_LEADER:
                raise ConnectionError(f"not_leader: {fields['reason']}")
            if name == "ErrorReply" and fields["ref_nonce"] == nonce:
                raise RouterError(fields)
            if name in names and (fields.get("nonce") == nonce or nonce in self._finalized):
                return fields
            return None
        deadline = time.monotonic() + timeout_s
        for resends in range(RESENDS_MAX + 1):
            try:
                return self.expect(pick, max(0.0, deadline - time.monotonic()))
            except (ConnectionError, OSError) as lost:
                if isinstance(lost, TimeoutError) or resends == RESENDS_MAX:
                    raise
                held = nonce in self.unanswered or nonce == self._subscription_nonce
                peer = self.peer
                self.reconnect()
                if not held:
                    raise AnswerLostError(nonce, peer, self.peer, lost) from lost
        raise ConnectionError("unreachable")

    # --- login (section 3) ---

    def _login(self) -> None:
        name, fields, flags, _ = self.recv()
        if name == "ErrorReply" and fields["code"] == p.NOT_LEADER:
            raise _NotLeader(fields)
        if name == "ErrorReply":
            raise RouterError(fields)
        if name != "LoginChallenge":
            raise p.ProtocolError(f"expected LoginChallenge, got {name}")
        if not flags & p.FLAG_RESPONSE:
            raise p.ProtocolError("router frames carry FLAG_RESPONSE")
        self.network_id = fields["network_id"]
        self.router = fields["router"]
        frame = p.sign_message(self.key, self.network_id, p.TYPE_OF["LoginAnswer"],
                               {"address": self.address, "challenge": fields["challenge"]})
        self.send_frame(frame)
        name, fields, _, _ = self.recv()
        if name == "ErrorReply" and fields["code"] == p.NOT_LEADER:
            raise _NotLeader(fields)
        if name == "ErrorReply":
            raise RouterError(fields)
        if name != "LoginOk" or fields["address"] != self.address:
            raise p.ProtocolError(f"login answered by {name} {fields}")
