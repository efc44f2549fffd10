from __future__ import annotations

import hashlib
import hmac
import json
import threading
import typing as t

import pytest

from supervisor.errors import AgentError, AuthError
from supervisor.mqtt import protocol
from supervisor.mqtt.auth import Verifier, canonical, sign
from tests.conftest import Clock

SECRET = "s3cret"
TOPIC = "supervisor/h1/mm-1/send"
REPLY_TO = "supervisor-fleet/abc/def"
NOW = 1_700_000_000.0
NONCE = "0123456789abcdef0123456789abcdef"


def verifier(clock: Clock | None = None, skew: float = 30.0, secret: str = SECRET) -> Verifier:
    return Verifier(secret, skew=skew, clock=clock or Clock(NOW))


def header_for(auth: dict[str, t.Any]) -> dict[str, t.Any]:
    return {"reply_to": REPLY_TO, "timestamp": 0, "auth": auth}


def test_canonical_covers_topic_reply_to_ts_nonce_and_sorted_data() -> None:
    body = canonical(TOPIC, REPLY_TO, 12.5, "ab" * 8, {"text": "é", "b": [1, 2], "a": None})
    assert body == (
        b"supervisor/h1/mm-1/send\nsupervisor-fleet/abc/def\n12.5\nabababababababab\n"
        b'{"a":null,"b":[1,2],"text":"\\u00e9"}'
    )


def test_sign_returns_hmac_sha256_of_canonical_bytes() -> None:
    auth = sign(SECRET, TOPIC, REPLY_TO, {"text": "hi"}, ts=NOW + 0.12345, nonce=NONCE)
    assert auth["ts"] == round(NOW + 0.12345, 3)
    assert auth["nonce"] == NONCE
    expected = hmac.new(
        SECRET.encode(), canonical(TOPIC, REPLY_TO, auth["ts"], NONCE, {"text": "hi"}), hashlib.sha256
    ).hexdigest()
    assert auth["sig"] == expected


def test_sign_makes_a_fresh_nonce_and_the_current_time_by_default() -> None:
    first = sign(SECRET, TOPIC, REPLY_TO, {})
    second = sign(SECRET, TOPIC, REPLY_TO, {})
    assert first["nonce"] != second["nonce"]
    assert len(first["nonce"]) == 32
    Verifier(SECRET).verify(TOPIC, REPLY_TO, header_for(first), {})
    Verifier(SECRET).verify(TOPIC, REPLY_TO, header_for(second), {})


def test_signed_request_passes() -> None:
    data = {"text": "status"}
    auth = sign(SECRET, TOPIC, REPLY_TO, data, ts=NOW)
    verifier().verify(TOPIC, REPLY_TO, header_for(auth), data)


def test_signature_survives_the_json_wire_format() -> None:
    """What the fleet publishes and the agent parses must still verify (key order, unicode, floats)."""
    data = {"text": "prix: 3 €", "b": 1.5, "a": {"z": 1, "y": [True, None]}}
    auth = sign(SECRET, TOPIC, REPLY_TO, data, ts=NOW + 0.001)
    payload = json.dumps({"header": header_for(auth), "data": data}).encode()
    request = protocol.parse_request(payload)
    reordered = dict(reversed(list(request.data.items())))
    verifier().verify(TOPIC, request.reply_to, request.header, reordered)


def test_unsigned_request_is_refused() -> None:
    with pytest.raises(AuthError, match="not signed") as info:
        verifier().verify(TOPIC, REPLY_TO, {"reply_to": REPLY_TO}, {"text": "x"})
    assert info.value.code == "unauthorized"
    assert isinstance(info.value, AgentError)
    assert "SUPERVISOR_SECRET" in str(info.value)


class Malformed(t.NamedTuple):
    test_id: str
    auth: t.Any
    match: str


GOOD = {"ts": NOW, "nonce": NONCE, "sig": "0" * 64}
MALFORMED = [
    Malformed("auth-not-object", "sig", "not signed"),
    Malformed("auth-null", None, "not signed"),
    Malformed("ts-missing", {"nonce": NONCE, "sig": "0" * 64}, "'ts'"),
    Malformed("ts-string", {**GOOD, "ts": str(NOW)}, "'ts'"),
    Malformed("ts-bool", {**GOOD, "ts": True}, "'ts'"),
    Malformed("ts-inf", {**GOOD, "ts": float("inf")}, "'ts'"),
    Malformed("ts-nan", {**GOOD, "ts": float("nan")}, "'ts'"),
    Malformed("nonce-short", {**GOOD, "nonce": "abc"}, "'nonce'"),
    Malformed("nonce-upper", {**GOOD, "nonce": NONCE.upper()}, "'nonce'"),
    Malformed("nonce-not-hex", {**GOOD, "nonce": "g" * 32}, "'nonce'"),
    Malformed("nonce-number", {**GOOD, "nonce": 1234567890123456}, "'nonce'"),
    Malformed("sig-short", {**GOOD, "sig": "0" * 63}, "'sig'"),
    Malformed("sig-upper", {**GOOD, "sig": "A" * 64}, "'sig'"),
    Malformed("sig-missing", {"ts": NOW, "nonce": NONCE}, "'sig'"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c.test_id for c in MALFORMED])
def test_malformed_auth_is_refused(case: Malformed) -> None:
    with pytest.raises(AuthError, match=case.match):
        verifier().verify(TOPIC, REPLY_TO, {"reply_to": REPLY_TO, "auth": case.auth}, {})


class Tamper(t.NamedTuple):
    test_id: str
    topic: str
    reply_to: str
    data: dict[str, t.Any]
    auth_changes: dict[str, t.Any]


SIGNED_DATA = {"text": "stop"}
TAMPERS = [
    Tamper("data", TOPIC, REPLY_TO, {"text": "exit"}, {}),
    Tamper("extra-data-member", TOPIC, REPLY_TO, {"text": "stop", "x": 1}, {}),
    Tamper("other-instance", "supervisor/h1/mm-2/send", REPLY_TO, SIGNED_DATA, {}),
    Tamper("other-host", "supervisor/h2/mm-1/send", REPLY_TO, SIGNED_DATA, {}),
    Tamper("other-verb", "supervisor/h1/mm-1/stop", REPLY_TO, SIGNED_DATA, {}),
    Tamper("reply-to", TOPIC, "attacker/inbox", SIGNED_DATA, {}),
    Tamper("ts", TOPIC, REPLY_TO, SIGNED_DATA, {"ts": NOW + 1}),
    Tamper("nonce", TOPIC, REPLY_TO, SIGNED_DATA, {"nonce": "f" * 32}),
    Tamper("sig", TOPIC, REPLY_TO, SIGNED_DATA, {"sig": "0" * 64}),
]


@pytest.mark.parametrize("case", TAMPERS, ids=[c.test_id for c in TAMPERS])
def test_tampered_request_is_refused(case: Tamper) -> None:
    auth = {**sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW, nonce=NONCE), **case.auth_changes}
    with pytest.raises(AuthError, match="signature is wrong"):
        verifier().verify(case.topic, case.reply_to, header_for(auth), case.data)


def test_other_secret_is_refused() -> None:
    auth = sign("not-the-secret", TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW)
    with pytest.raises(AuthError, match="signature is wrong"):
        verifier().verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)


class Skew(t.NamedTuple):
    test_id: str
    offset: float
    ok: bool


SKEWS = [
    Skew("now", 0.0, True),
    Skew("29s-old", -29.0, True),
    Skew("at-window-edge", -30.0, True),
    Skew("29s-ahead", 29.0, True),
    Skew("31s-old", -31.0, False),
    Skew("10min-old", -600.0, False),
    Skew("31s-ahead", 31.0, False),
]


@pytest.mark.parametrize("case", SKEWS, ids=[c.test_id for c in SKEWS])
def test_clock_skew_window(case: Skew) -> None:
    auth = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW + case.offset)
    check = verifier(Clock(NOW), skew=30.0)
    if case.ok:
        check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)
    else:
        with pytest.raises(AuthError, match="expired"):
            check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)


def test_reused_nonce_is_refused_as_replay() -> None:
    check = verifier()
    auth = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW, nonce=NONCE)
    check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)
    with pytest.raises(AuthError, match="replayed"):
        check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)
    # Even a validly re-signed request (new reply_to, other data) may not reuse the nonce.
    other = sign(SECRET, TOPIC, "supervisor-fleet/other", {"text": "x"}, ts=NOW, nonce=NONCE)
    with pytest.raises(AuthError, match="replayed"):
        check.verify(TOPIC, "supervisor-fleet/other", header_for(other), {"text": "x"})
    fresh = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW)
    check.verify(TOPIC, REPLY_TO, header_for(fresh), SIGNED_DATA)


def test_refused_requests_do_not_use_up_their_nonce() -> None:
    """An attacker racing a forged copy (same nonce) must not block the genuine request."""
    check = verifier()
    genuine = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW, nonce=NONCE)
    with pytest.raises(AuthError, match="signature is wrong"):
        check.verify(TOPIC, REPLY_TO, header_for(genuine), {"text": "forged"})
    expired = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW - 600, nonce=NONCE)
    with pytest.raises(AuthError, match="expired"):
        check.verify(TOPIC, REPLY_TO, header_for(expired), SIGNED_DATA)
    check.verify(TOPIC, REPLY_TO, header_for(genuine), SIGNED_DATA)


def test_a_replay_after_the_nonce_is_forgotten_still_fails_as_expired() -> None:
    clock = Clock(NOW)
    check = verifier(clock, skew=30.0)
    auth = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW, nonce=NONCE)
    check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)
    clock.now = NOW + 61  # past 2 * skew: the nonce memory has been pruned
    other = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=clock.now)
    check.verify(TOPIC, REPLY_TO, header_for(other), SIGNED_DATA)
    with pytest.raises(AuthError, match="expired"):
        check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)


def test_nonces_are_remembered_for_the_whole_skew_window() -> None:
    clock = Clock(NOW)
    check = verifier(clock, skew=30.0)
    auth = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW + 25, nonce=NONCE)
    check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)
    # Still inside the window at NOW + 55 (ts + 30): the replay must be caught by the nonce.
    clock.now = NOW + 55
    with pytest.raises(AuthError, match="replayed"):
        check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)


def test_concurrent_replays_let_exactly_one_through() -> None:
    check = verifier()
    auth = sign(SECRET, TOPIC, REPLY_TO, SIGNED_DATA, ts=NOW, nonce=NONCE)
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        try:
            check.verify(TOPIC, REPLY_TO, header_for(auth), SIGNED_DATA)
            outcome = "ok"
        except AuthError:
            outcome = "refused"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(results) == ["ok"] + ["refused"] * 15


def test_a_request_signed_before_the_agent_started_is_refused_even_within_the_skew_window() -> None:
    clock = Clock(NOW)
    check = Verifier(SECRET, skew=30.0, clock=clock, not_before=NOW)
    data = {"text": "status"}
    old = sign(SECRET, TOPIC, REPLY_TO, data, ts=NOW - 5)  # 5 s old: inside the 30 s window
    with pytest.raises(AuthError, match="before this agent started"):
        check.verify(TOPIC, REPLY_TO, header_for(old), data)
    check.verify(TOPIC, REPLY_TO, header_for(sign(SECRET, TOPIC, REPLY_TO, data, ts=NOW + 1)), data)


def test_records_are_signed_for_their_topic_and_any_change_breaks_the_signature() -> None:
    from supervisor.mqtt.auth import is_signed_record, sign_record

    topic = "supervisor/h1/agent"
    record = {"host": "h1", "state": "online", "ts": NOW, "cpu_percent": 1.5, "name": "é"}
    signed = json.loads(json.dumps(sign_record(SECRET, topic, record)))  # as a reader gets it off the wire
    assert is_signed_record(SECRET, topic, signed)
    assert not is_signed_record("other", topic, signed)
    assert not is_signed_record(SECRET, "supervisor/h2/agent", signed)  # moved to another host's topic
    assert not is_signed_record(SECRET, topic, {**signed, "state": "offline"})
    assert not is_signed_record(SECRET, topic, record)  # unsigned
    assert not is_signed_record(SECRET, topic, {**record, "auth": {"ts": "x", "nonce": NONCE, "sig": "0" * 64}})
    assert not is_signed_record(SECRET, topic, {**record, "auth": "junk"})
