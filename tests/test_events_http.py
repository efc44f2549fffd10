"""The webhook receiver's HTTP side against senders that misbehave: raw sockets on loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import typing as t
from pathlib import Path

import pytest

from supervisor.events.journal import Journal
from supervisor.events.receiver import MAX_CONNECTIONS, Receiver
from supervisor.paths import Paths
from tests.conftest import Broker, wait_until
from tests.test_events import TOKEN, Receivers, hook, post, receivers, routes_toml

__all__ = ["receivers"]  # a fixture shared with test_events


def port_of(receiver: Receiver) -> int:
    return int(receiver.server.server_address[1])


def raw_request(receiver: Receiver, head: bytes, body: bytes = b"", *, hang_up: bool = False) -> bytes:
    """Send ``head`` + ``body`` on a fresh connection; return all that comes back until it closes."""
    with socket.create_connection(("127.0.0.1", port_of(receiver)), timeout=10) as raw:
        raw.sendall(head + body)
        if hang_up:
            raw.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := raw.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks)


def stored(home: Path) -> list[bytes]:
    journal = Journal(Paths.from_env(home).events_journal, read_only=True)
    try:
        return [entry.body for entry in journal.recent()]
    finally:
        journal.close()


def test_a_truncated_body_is_never_stored(mosquitto: Broker, receivers: Receivers, isolated_env: Path) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml())
    head = f"POST /hooks/btc?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n".encode()
    answer = raw_request(receiver, head, b"SELL 100", hang_up=True)
    assert answer.startswith(b"HTTP/1.1 400 ") or answer == b""
    assert stored(isolated_env) == []


class LengthCase(t.NamedTuple):
    test_id: str
    headers: str
    status: int


LENGTH_CASES = [
    LengthCase("underscore", "Content-Length: 5_0\r\n", 400),
    LengthCase("plus", "Content-Length: +2\r\n", 400),
    LengthCase("spaces", "Content-Length:  2 \r\n", 400),
    LengthCase("two-headers", "Content-Length: 2\r\nContent-Length: 3\r\n", 400),
    LengthCase("missing", "", 411),
]


@pytest.mark.parametrize("case", LENGTH_CASES, ids=[c.test_id for c in LENGTH_CASES])
def test_content_length_is_strict(
    case: LengthCase, mosquitto: Broker, receivers: Receivers, isolated_env: Path
) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml())
    head = f"POST /hooks/btc?token={TOKEN} HTTP/1.1\r\nHost: x\r\n{case.headers}\r\n".encode()
    answer = raw_request(receiver, head, b"{}")
    assert answer.startswith(f"HTTP/1.1 {case.status} ".encode()), answer
    assert stored(isolated_env) == []


@pytest.mark.parametrize("body", [b'{"x":NaN}', b'{"x":Infinity}', b'{"x":-Infinity}', b'{"x":1e999}'])
def test_non_standard_json_is_refused(body: bytes, mosquitto: Broker, receivers: Receivers, isolated_env: Path) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml())
    answer = post(hook(receiver), body, token=TOKEN)
    assert (answer.status, answer.body["error"]) == (
        400,
        "the body starts like JSON but is not standard JSON; send valid JSON",
    )
    assert stored(isolated_env) == []


@pytest.mark.parametrize(
    "body",
    [
        ("[" * 5000 + "]" * 5000).encode(),
        b'{"token":"%s","n":%s}' % (TOKEN.encode(), b"7" * 4301),
        b'{"token":"%s","n":[%s]}' % (TOKEN.encode(), b"[" * 3000 + b"]" * 3000),
    ],
    ids=["deep", "long-int", "token-and-deep"],
)
def test_a_token_is_never_stored_even_in_a_body_that_fails_to_parse(
    body: bytes, mosquitto: Broker, receivers: Receivers, isolated_env: Path
) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml())
    assert post(hook(receiver), body, token=TOKEN).status == 400
    # A body that parses, with the token again inside a message: stored without it.
    text = f"buy now token={TOKEN}".encode()
    assert post(hook(receiver), text, token=TOKEN, content_type="text/plain").status == 202
    nested = json.dumps({"note": f"url?token={TOKEN}"}).encode()
    assert post(hook(receiver), nested, token=TOKEN).status == 202
    assert stored(isolated_env) == [b'{"note":"url?token=[token]"}', b"buy now token=[token]"]
    home = Paths.from_env(isolated_env)
    assert TOKEN.encode() not in home.events_journal.read_bytes()
    assert TOKEN not in home.audit_log.read_text()


def test_only_the_hop_the_trusted_proxy_added_is_believed(mosquitto: Broker, receivers: Receivers) -> None:
    toml = routes_toml(allow=["203.0.113.0/24"]).replace(
        'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\ntrusted_proxies = ["127.0.0.1"]'
    )
    receiver = receivers.start(mosquitto.url, toml)

    def via_proxy(*lines: str) -> bytes:
        forwarded = "".join(f"X-Forwarded-For: {line}\r\n" for line in lines)
        head = (
            f"POST /hooks/btc?token={TOKEN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{forwarded}"
            "Content-Length: 2\r\n\r\n"
        )
        return raw_request(receiver, head.encode(), b"{}")

    # HAProxy's forwardfor adds its own line after the client's: only the last line's last entry counts.
    assert via_proxy("203.0.113.9", "198.51.100.1").startswith(b"HTTP/1.1 403 ")
    assert via_proxy("198.51.100.1", "203.0.113.9").startswith(b"HTTP/1.1 202 ")


def test_a_sender_that_hangs_up_early_logs_no_traceback(
    mosquitto: Broker, receivers: Receivers, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = receivers.start(mosquitto.url, routes_toml())
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port_of(receiver))) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST on close
            raw.sendall(f"POST /hooks/btc?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    assert post(hook(receiver), b'{"after":1}', token=TOKEN).status == 202
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "Traceback" not in capfd.readouterr().err  # socketserver prints its tracebacks to stderr


def test_slow_senders_are_cut_while_real_senders_are_served(mosquitto: Broker, receivers: Receivers) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml(), request_deadline=30)
    slow: list[socket.socket] = []
    try:
        for n in range(MAX_CONNECTIONS + 6):
            sock = socket.create_connection(("127.0.0.1", port_of(receiver)))
            if n % 2:  # slow headers
                sock.sendall(b"POST /hooks/btc HTTP/1.1\r\nHost: x\r\n")
            else:  # slow body
                sock.sendall(b"POST /hooks/btc HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
            slow.append(sock)
        answers = [post(hook(receiver), f'{{"real":{n}}}'.encode(), token=TOKEN).status for n in range(20)]
        assert answers == [202] * 20
    finally:
        for sock in slow:
            sock.close()


def test_a_request_that_takes_longer_than_its_deadline_is_cut(
    mosquitto: Broker, receivers: Receivers, isolated_env: Path
) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml(), request_deadline=1)
    with socket.create_connection(("127.0.0.1", port_of(receiver))) as sock:
        sock.sendall(f"POST /hooks/btc?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{{".encode())
        sock.settimeout(0.2)

        def closed() -> bool:
            try:
                sock.sendall(b" ")  # a byte now and then: each read is quick, the whole is too slow
                return sock.recv(100) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        wait_until(closed, timeout=15, interval=0.3, message="the trickling sender is cut")
    assert stored(isolated_env) == []
