"""Client arguments (outsider review 3, findings 6-8): every one validated with a
ValueError naming the argument, its value and the bound (before: TypeErrors from a
comparison, and NaN, inf, negative deadlines or a 1 ns liveness bound accepted), the
liveness watch off with None for either setting, and one group member's connect
attempt bounded at 1 s (MEMBER_ATTEMPT_MAX, docs/PROTOCOL.md section 3) with the
watch off too: a silent member listed first no longer eats the whole connect deadline."""

import math
import socket
import time

import pytest

from yellowstone_client import Client, Key, NoRouterError

from .test_session import router  # noqa: F401 (the fixture)

KEY = Key.from_seed(b"python-arguments")


def _silent_member():
    """Accepts TCP in its kernel (the backlog) and never greets: a frozen member."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


@pytest.mark.parametrize("kwargs, names", [
    ({"ping_after_s": "0.5"}, ["ping_after_s", "'0.5'"]),
    ({"liveness_s": "2"}, ["liveness_s", "'2'"]),
    ({"ping_after_s": 1e-9, "liveness_s": 2e-9}, ["ping_after_s", "0.05"]),
    ({"ping_after_s": 0.001, "liveness_s": 0.002}, ["ping_after_s", "0.05"]),
    ({"ping_after_s": 0.1, "liveness_s": 0.2}, ["liveness_s", "0.5"]),
    ({"liveness_s": math.inf}, ["liveness_s", "finite"]),
    ({"liveness_s": 601}, ["liveness_s", "600"]),
    ({"ping_after_s": math.nan}, ["ping_after_s", "finite"]),
    ({"ping_after_s": True}, ["ping_after_s", "True"]),
    ({"ping_after_s": 2.0, "liveness_s": 2.0}, ["ping_after_s", "below liveness_s"]),
    ({"connect_deadline_s": math.nan}, ["connect_deadline_s", "finite"]),
    ({"connect_deadline_s": math.inf}, ["connect_deadline_s", "finite"]),
    ({"connect_deadline_s": -1}, ["connect_deadline_s", "above 0"]),
    ({"connect_deadline_s": 0}, ["connect_deadline_s", "above 0"]),
    ({"connect_deadline_s": "10"}, ["connect_deadline_s", "'10'"]),
    ({"timeout_s": 0}, ["timeout_s", "above 0"]),
    ({"timeout_s": math.inf}, ["timeout_s", "finite"]),
    ({"key": "11" * 32}, ["key must be a yellowstone_client.Key"]),
    ({"endpoints": "127.0.0.1:7401"}, ["endpoints must be a list", "['127.0.0.1:7401']"]),
    ({"endpoints": ["127.0.0.1:99999"]}, ["99999", "1..=65535"]),
    ({"endpoints": ["127.0.0.1:0"]}, ["port 0", "1..=65535"]),
    ({"endpoints": [("127.0.0.1", "7401")]}, ["the port must be an int"]),
    ({"endpoints": [":7401"]}, ["has no host"]),
    ({"endpoints": [7401]}, ["neither"]),
    ({"endpoints": ["127.0.0.1:7401", ("127.0.0.1", 7401)]}, ["127.0.0.1:7401 is listed twice"]),
    ({"endpoints": []}, ["no router endpoint given"]),
])
def test_every_argument_is_validated_with_a_value_error_naming_it(kwargs, names):
    kwargs = dict({"key": KEY, "endpoints": ["127.0.0.1:1"]}, **kwargs)
    with pytest.raises(ValueError) as refused:
        Client(**kwargs)
    for name in names:
        assert name in str(refused.value), (kwargs, str(refused.value))


@pytest.mark.parametrize("off", [{"ping_after_s": None}, {"liveness_s": None},
                                 {"ping_after_s": None, "liveness_s": None}])
def test_none_turns_the_watch_off_either_way(router, off):
    client = Client(key=KEY, endpoints=[(router["host"], router["port"])], **off)
    assert client.ping_after_s is None and client.liveness_s is None
    client.send("Ping", {"payload": 9})
    assert client.expect(lambda n, f: f if n == "Pong" else None)["payload"] == 9
    client.close()


@pytest.mark.parametrize("watch", [{"liveness_s": None}, {"ping_after_s": None}, {}])
def test_a_silent_first_member_costs_at_most_one_second_watch_on_or_off(router, watch):
    silent = _silent_member()
    try:
        started = time.monotonic()
        client = Client(key=KEY, endpoints=[silent.getsockname(), (router["host"], router["port"])], **watch)
        elapsed = time.monotonic() - started
        assert client.peer == (router["host"], router["port"])
        assert elapsed < 1.6, f"connected after {elapsed:.2f} s"
        client.close()
    finally:
        silent.close()


def test_no_router_error_counts_every_endpoint_given():
    silent = [_silent_member() for _ in range(2)]
    try:
        endpoints = [s.getsockname() for s in silent]
        with pytest.raises(NoRouterError) as error:
            Client(key=KEY, endpoints=endpoints, liveness_s=None, connect_deadline_s=0.6)
        assert "any of 2 routers" in str(error.value), str(error.value)
        assert set(error.value.tried) == set(endpoints), "each member got its share of the deadline"
        assert error.value.endpoints == endpoints
    finally:
        for s in silent:
            s.close()


def test_an_endpoint_not_tried_before_the_deadline_is_named():
    silent = [_silent_member() for _ in range(3)]
    try:
        endpoints = [s.getsockname() for s in silent]
        client_error = None
        try:
            # Each attempt is at least 50 ms: 0.06 s leaves the last member untried.
            Client(key=KEY, endpoints=endpoints, connect_deadline_s=0.06)
        except NoRouterError as error:
            client_error = error
        assert client_error is not None
        assert "any of 3 routers" in str(client_error)
        untried = [e for e in endpoints if e not in client_error.tried]
        assert untried, client_error.tried
        assert "not tried before the deadline" in str(client_error)
    finally:
        for s in silent:
            s.close()


def test_expect_and_answer_refuse_a_bad_timeout(router):
    client = Client(router["host"], router["port"], KEY)
    for bad in (math.nan, -1, "5"):
        with pytest.raises(ValueError, match="timeout_s"):
            client.expect(lambda n, f: f, timeout_s=bad)
        with pytest.raises(ValueError, match="timeout_s"):
            client.answer(1, "Ack", timeout_s=bad)
    client.close()
