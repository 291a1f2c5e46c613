"""A blocking TCP client: connect, log in, send signed messages, receive frames
(router-signed tickets and batches verified against the router's address)."""

import socket
import time

from . import protocol as p


# The market's replay refusal; its `detail` is the last nonce accepted (R-ID-8).
REPLAY = 0x0201


class RouterError(Exception):
    """An ErrorReply where an answer was expected."""

    def __init__(self, fields: dict):
        self.fields = fields
        self.code = fields["code"]
        self.name = p.ERROR_NAMES.get(self.code, "unknown_code")
        super().__init__(f"{self.name} ({self.code:#06x}): {fields['reason']} (detail {fields['detail']})")


class Client:
    def __init__(self, host: str, port: int, key: p.Key, timeout_s: float = 20.0):
        self.key = key
        self.address = key.address
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        # Nonces start from the clock in microseconds, so a restarted client never replays.
        self._nonce = time.time_ns() // 1000
        self.network_id = None
        self.router = None
        self._login()

    def close(self) -> None:
        self.sock.close()

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
        self.send_frame(p.sign_message(self.key, self.network_id, msg_type, fields))
        return fields.get("nonce", 0)

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
                    return name, fields, flags, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the router")
            self._buffer += chunk

    def expect(self, pick, timeout_s: float = 20.0):
        """Reads until pick(name, fields) returns something other than None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            name, fields, _, _ = self.recv()
            value = pick(name, fields)
            if value is not None:
                return value
        raise TimeoutError("no matching message in time")

    def answer(self, nonce: int, *names, timeout_s: float = 20.0):
        """The answer named in `names` carrying `nonce`, or RouterError for its refusal."""
        def pick(name, fields):
            if name == "ErrorReply" and fields["ref_nonce"] == nonce:
                raise RouterError(fields)
            if name in names and fields.get("nonce") == nonce:
                return fields
            return None
        return self.expect(pick, timeout_s)

    # --- login (section 3) ---

    def _login(self) -> None:
        name, fields, flags, _ = self.recv()
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
        if name == "ErrorReply":
            raise RouterError(fields)
        if name != "LoginOk" or fields["address"] != self.address:
            raise p.ProtocolError(f"login answered by {name} {fields}")
