"""Hostile frames against the real yellowstone-router (docs/PROTOCOL.md sections 2-3):
each bad header gets one ErrorReply and the connection closes; each bad body gets an
ErrorReply naming the frame's type and the connection stays usable; nothing before
login but Ping and LoginAnswer is served; the router keeps serving everyone else."""

import socket
import struct

from yellowstone_client import Client, Key
from yellowstone_client import protocol as p

from .test_session import router  # noqa: F401  (the fixture)

PING = p.TYPE_OF["Ping"]
QUERY = p.TYPE_OF["MarketStateQuery"]
ERROR = p.TYPE_OF["ErrorReply"]


def header(msg_type, body_len, flags=0, magic=b"YS", version=1, reserved=0):
    return magic + bytes([version, flags]) + struct.pack("<HHI", msg_type, reserved, body_len)


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock):
    """(msg_type, fields), or None when the router closed the connection."""
    head = read_exact(sock, p.HEADER_LEN)
    if head is None:
        return None
    assert head[0:2] == b"YS" and head[3] & 1, "router frames carry FLAG_RESPONSE"
    msg_type, body_len = struct.unpack("<H", head[4:6])[0], struct.unpack("<I", head[8:12])[0]
    return msg_type, p.decode_body(msg_type, read_exact(sock, body_len))


def anonymous(router):  # noqa: F811
    sock = socket.create_connection((router["host"], router["port"]), timeout=10)
    msg_type, _ = read_frame(sock)
    assert msg_type == p.TYPE_OF["LoginChallenge"]
    return sock


def test_bad_headers_get_one_error_and_close(router):  # noqa: F811
    for frame, reason in [
        (header(PING, 8, flags=2) + bytes(8), "flag"),
        (header(PING, 8, magic=b"XX") + bytes(8), "magic"),
        (header(PING, 8, version=2) + bytes(8), "version 2"),
        (header(PING, 8, reserved=1) + bytes(8), "reserved"),
        (header(PING, 0xFFFFFFFF), "over the limit of 16384"),
    ]:
        sock = anonymous(router)
        sock.sendall(frame)
        msg_type, fields = read_frame(sock)
        assert msg_type == ERROR and fields["ref_msg_type"] == 0, fields
        assert reason in fields["reason"], fields
        assert read_frame(sock) is None, "closed after a bad header"
        sock.close()


def test_bad_bodies_and_queries_before_login_keep_the_connection(router):  # noqa: F811
    sock = anonymous(router)
    for frame, reason in [
        (header(QUERY, 8) + struct.pack("<Q", 7), "log in first"),
        (header(0x7777, 0), "unknown message type 0x7777"),
        (header(PING, 3) + b"abc", "truncated"),
        (header(PING, 9) + bytes(9), "trailing"),
    ]:
        sock.sendall(frame)
        msg_type, fields = read_frame(sock)
        assert msg_type == ERROR, (frame, fields)
        assert reason in fields["reason"], fields
        assert fields["ref_msg_type"] == struct.unpack("<H", frame[4:6])[0]
    # Still open and served: Ping before login.
    sock.sendall(header(PING, 8) + struct.pack("<Q", 42))
    assert read_frame(sock) == (p.TYPE_OF["Pong"], {"payload": 42})
    # A frame cut short, then the connection closed: the router keeps serving.
    sock.sendall(header(PING, 8) + b"\0\0")
    sock.close()

    client = Client(router["host"], router["port"], Key.from_seed(b"python-hostile"))
    for body in (b"", bytes(7), bytes(9)):
        client.send_frame(header(QUERY, len(body)) + body)
        name, fields = client.recv()[:2]
        assert name == "ErrorReply" and fields["ref_msg_type"] == QUERY, fields
    client.send("MarketStateQuery", {"query_id": 5})
    state = client.expect(lambda n, f: f if n == "MarketState" else None)
    assert state["query_id"] == 5 and state["max_tokens_per_day"] == 30_000_000_000
