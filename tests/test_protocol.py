"""Byte-exact tests of the wire format against hbot-mqtt-protocol.md §9 captures."""

from __future__ import annotations

import decimal
import enum
import json
import math
import random
import time
import typing as t

import pytest

from supervisor.errors import AgentError
from supervisor.mqtt import protocol
from supervisor.mqtt.protocol import ProtocolError
from tests.conftest import require_module

# --- §9.1: commlib-py 0.11.5 + paho-mqtt 1.6.1, verbatim from mosquitto_sub -v
START_REQUEST = (
    b'{"header":{"reply_to":"rpc-849f7f8779aa4eabb9dae3aee44a6016","timestamp":1795548831973,'
    b'"content_type":"json","encoding":"utf8","agent":"commlib"},"data":{"log_level":null,'
    b'"script":null,"conf":null,"is_quickstart":false,"async_backend":false}}'
)
START_REPLY = (
    b'{"header":{"reply_to":"","timestamp":1795548831975,"content_type":"json",'
    b'"encoding":"utf8","agent":"commlib"},"data":{"status":200,"msg":""}}'
)
STOP_REQUEST = (
    b'{"header":{"reply_to":"rpc-a91811a1456c4e2e9c2eecc898169b71","timestamp":1795548832516,'
    b'"content_type":"json","encoding":"utf8","agent":"commlib"},'
    b'"data":{"skip_order_cancellation":false,"async_backend":false}}'
)
STOP_REPLY = (
    b'{"header":{"reply_to":"","timestamp":1795548832518,"content_type":"json",'
    b'"encoding":"utf8","agent":"commlib"},"data":{"status":200,"msg":""}}'
)
HEARTBEAT = b'{"ts":1795548829182177}'
ONLINE = b'{"timestamp":1795548828982,"type":"availability","msg":"online"}'
OFFLINE = b'{"timestamp":1795548835983,"type":"availability","msg":"offline"}'
NOTIFY = b'{"seq":0,"timestamp":"-1","msg":"stand-in: start received"}'

# --- §9.3: edge cases sent with mosquitto_pub to a commlib 0.11.5 service
DOTTED_REQUEST = b'{"header":{"reply_to":"my.reply.topic"},"data":{}}'
DOTTED_REPLY = (
    b'{"header":{"reply_to":"","timestamp":1795548927366,"content_type":"json",'
    b'"encoding":"utf8","agent":"commlib"},"data":{"status":200,"msg":""}}'
)
NO_HEADER = b'{"data":{}}'
NO_DATA = b'{"header":{"reply_to":"r-nodata"}}'
BAD_FIELD = b'{"header":{"reply_to":"r-badfield"},"data":{"skip_order_cancellation":"notabool"}}'
EXTRA = b'{"header":{"reply_to":"r-extra","msg_id":123,"node_id":"x","properties":{}},"data":{"unknown_field":1}}'
EXTRA_REPLY = (
    b'{"header":{"reply_to":"","timestamp":1795548929388,"content_type":"json",'
    b'"encoding":"utf8","agent":"commlib"},"data":{"status":200,"msg":""}}'
)

# --- §9.4: commlib-py 0.13.2 client request (correlation_id, ns timestamp)
START_REQUEST_0132 = (
    b'{"header":{"reply_to":"rpc-0610209bdb0c4330af42db67217eadcb","correlation_id":null,'
    b'"timestamp":1795548820614460926,"content_type":"json","encoding":"utf8",'
    b'"agent":"commlib"},"data":{"log_level":null,"script":null,"conf":null,'
    b'"is_quickstart":false,"async_backend":false}}'
)


# ------------------------------------------------------------------ captured bytes


def test_parse_captured_start_request() -> None:
    request = protocol.parse_request(START_REQUEST)
    assert request.reply_to == "rpc-849f7f8779aa4eabb9dae3aee44a6016"
    assert request.header["timestamp"] == 1795548831973
    assert protocol.validate("start", request.data) == {
        "log_level": None,
        "script": None,
        "conf": None,
        "is_quickstart": False,
        "async_backend": False,
    }


def test_parse_captured_stop_request() -> None:
    request = protocol.parse_request(STOP_REQUEST)
    assert request.reply_to == "rpc-a91811a1456c4e2e9c2eecc898169b71"
    assert protocol.reply_topic(request.reply_to) == request.reply_to
    assert protocol.validate("stop", request.data) == {
        "skip_order_cancellation": False,
        "async_backend": False,
    }


def test_parse_commlib_0132_request() -> None:
    request = protocol.parse_request(START_REQUEST_0132)
    assert request.reply_to == "rpc-0610209bdb0c4330af42db67217eadcb"
    assert request.header["correlation_id"] is None
    assert protocol.validate("start", request.data)["async_backend"] is False


def test_encode_reply_matches_captured_start_and_stop() -> None:
    assert protocol.encode_reply(protocol.response("start"), now_ms=1795548831975) == START_REPLY
    assert protocol.encode_reply(protocol.response("stop"), now_ms=1795548832518) == STOP_REPLY


def test_encode_request_matches_captured_requests() -> None:
    start = {
        "log_level": None,
        "script": None,
        "conf": None,
        "is_quickstart": False,
        "async_backend": False,
    }
    encoded = protocol.encode_request(start, "rpc-849f7f8779aa4eabb9dae3aee44a6016", now_ms=1795548831973)
    assert encoded == START_REQUEST
    stop = {"skip_order_cancellation": False, "async_backend": False}
    encoded = protocol.encode_request(stop, "rpc-a91811a1456c4e2e9c2eecc898169b71", now_ms=1795548832516)
    assert encoded == STOP_REQUEST


def test_stream_payloads_match_captured() -> None:
    assert protocol.heartbeat(1795548829182177) == HEARTBEAT
    assert protocol.status_update("online", 1795548828982) == ONLINE
    assert protocol.status_update("offline", 1795548835983) == OFFLINE
    assert protocol.notify(0, "stand-in: start received") == NOTIFY


def test_stream_payloads_default_to_now() -> None:
    before_ns = time.time_ns()
    beat = json.loads(protocol.heartbeat())
    update = json.loads(protocol.status_update("online"))
    reply = json.loads(protocol.encode_reply({}))
    after_ns = time.time_ns()
    assert before_ns // 1000 <= beat["ts"] <= after_ns // 1000
    for timestamp in (update["timestamp"], reply["header"]["timestamp"]):
        assert before_ns // 1_000_000 <= timestamp <= after_ns // 1_000_000
    with pytest.raises(ValueError, match="online"):
        protocol.status_update("away")  # type: ignore[arg-type]  # the runtime check


# ---------------------------------------------------------------- §9.3 edge cases


def test_dotted_reply_to_is_answered_on_itself_as_hummingbot_2_16_does() -> None:
    request = protocol.parse_request(DOTTED_REQUEST)
    assert request.reply_to == "my.reply.topic"
    assert protocol.reply_topic(request.reply_to) == "my.reply.topic"
    assert protocol.validate("start", request.data)["async_backend"] is True
    assert protocol.encode_reply(protocol.response("start"), now_ms=1795548927366) == DOTTED_REPLY


def test_missing_header_cannot_be_answered() -> None:
    with pytest.raises(ProtocolError, match="header is missing") as caught:
        protocol.parse_request(NO_HEADER)
    assert caught.value.reply_to is None


def test_missing_data_is_answerable() -> None:
    with pytest.raises(ProtocolError, match="data is missing") as caught:
        protocol.parse_request(NO_DATA)
    assert caught.value.reply_to == "r-nodata"


def test_bad_field_type_names_the_field() -> None:
    request = protocol.parse_request(BAD_FIELD)
    assert request.reply_to == "r-badfield"
    with pytest.raises(ProtocolError) as caught:
        protocol.validate("stop", request.data)
    message = str(caught.value)
    assert "'skip_order_cancellation'" in message
    assert "boolean" in message
    assert '"notabool"' in message


def test_extra_header_and_data_members_are_ignored() -> None:
    request = protocol.parse_request(EXTRA)
    assert request.reply_to == "r-extra"
    assert request.header["msg_id"] == 123
    assert protocol.validate("stop", request.data) == {
        "skip_order_cancellation": False,
        "async_backend": True,
    }
    assert protocol.encode_reply(protocol.response("stop"), now_ms=1795548929388) == EXTRA_REPLY


def test_hummingbot_api_request_with_spaces() -> None:
    payload = json.dumps(
        {
            "header": {
                "timestamp": 1795548831973,
                "reply_to": "hummingbot-api/response/1795548831973",
                "msg_id": 1795548831973,
                "node_id": "hummingbot-api",
                "agent": "hummingbot-api",
                "properties": {},
            },
            "data": {
                "log_level": None,
                "script": "v2_with_controllers.py",
                "conf": "conf_v2.yml",
                "is_quickstart": False,
                "async_backend": False,
            },
        }
    ).encode()
    assert b'", "' in payload  # the json.dumps default separators, as hummingbot-api sends
    request = protocol.parse_request(payload)
    assert protocol.reply_topic(request.reply_to) == "hummingbot-api/response/1795548831973"
    assert protocol.validate("start", request.data)["script"] == "v2_with_controllers.py"


def test_escaped_slashes_are_parsed() -> None:
    request = protocol.parse_request(b'{"header":{"reply_to":"a\\/b"},"data":{"strategy":"x\\/y"}}')
    assert request.reply_to == "a/b"
    assert protocol.validate("import", request.data) == {"strategy": "x/y"}


# ------------------------------------------------------------------ parse errors


def test_oversized_payload_is_rejected_before_parsing_and_answered_when_its_header_comes_first() -> None:
    valid = b'{"header":{"timestamp":1,"reply_to":"r\\/x"},"data":{"pad":"' + b"x" * (1024 * 1024) + b'"}}'
    with pytest.raises(ProtocolError, match="bytes; the limit is 65536") as caught:
        protocol.parse_request(valid)
    assert caught.value.reply_to == "r/x"  # only the start of the payload is read for it
    spaced = b'{ "header": { "reply_to": "hummingbot-api/response/1" }, "data": {"pad": "' + b"x" * 70000 + b'"}}'
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_request(spaced)
    assert caught.value.reply_to == "hummingbot-api/response/1"
    # The header after a huge data member, or an unusable reply_to: nobody to answer.
    late = b'{"data":{"pad":"' + b"x" * 70000 + b'"},"header":{"reply_to":"r"}}'
    wildcard = b'{"header":{"reply_to":"a/#"},"data":{"pad":"' + b"x" * 70000 + b'"}}'
    long_pad = b'{"header":{"pad":"' + b"x" * 8000 + b'","reply_to":"r"},"data":{}}' + b" " * 70000
    for payload in (late, wildcard, long_pad):
        with pytest.raises(ProtocolError) as caught:
            protocol.parse_request(payload)
        assert caught.value.reply_to is None
    # not even valid UTF-8: the size check comes first
    with pytest.raises(ProtocolError, match="bytes; the limit"):
        protocol.parse_request(b"\xff" * (1024 * 1024))


def test_max_bytes_boundary() -> None:
    payload = b'{"header":{"reply_to":"r"},"data":{}}'
    assert protocol.parse_request(payload, max_bytes=len(payload)).reply_to == "r"
    with pytest.raises(ProtocolError, match="limit"):
        protocol.parse_request(payload, max_bytes=len(payload) - 1)


class ParseErrorCase(t.NamedTuple):
    test_id: str
    payload: bytes
    match: str
    reply_to: str | None


PARSE_ERRORS = [
    ParseErrorCase("not-utf8", b'{"header":{"reply_to":"r"},"data":{"a":"\xff"}}', "UTF-8", None),
    ParseErrorCase("not-json", b"start please", "not JSON", None),
    ParseErrorCase("truncated", b'{"header":{"reply_to":"r"},"data":{', "not JSON", None),
    ParseErrorCase("empty", b"", "not JSON", None),
    # Refused, yet answerable: the header is readable once NaN and out-of-range numbers are let through.
    ParseErrorCase("nan", b'{"header":{"reply_to":"r"},"data":{"days":NaN}}', "NaN", "r"),
    ParseErrorCase("infinity", b'{"header":{"reply_to":"r"},"data":{"days":-Infinity}}', "Infinity", "r"),
    ParseErrorCase("huge-float", b'{"header":{"reply_to":"r"},"data":{"d":1e999}}', "range", "r"),
    ParseErrorCase("nan-in-header", b'{"header":{"reply_to":"r","ts":NaN},"data":{}}', "NaN", "r"),
    ParseErrorCase("nan-no-reply-to", b'{"header":{"ts":NaN},"data":{}}', "NaN", None),
    ParseErrorCase("nan-wildcard-reply-to", b'{"header":{"reply_to":"a/+"},"data":{"d":NaN}}', "NaN", None),
    ParseErrorCase("deep", b"[" * 60000, "not JSON", None),
    ParseErrorCase("array", b'[{"header":{"reply_to":"r"},"data":{}}]', "array", None),
    ParseErrorCase("string", b'"hello"', "string", None),
    ParseErrorCase("null", b"null", "null", None),
    ParseErrorCase("header-array", b'{"header":["r"],"data":{}}', "header is an array", None),
    ParseErrorCase("header-null", b'{"header":null,"data":{}}', "header is missing", None),
    ParseErrorCase("no-reply-to", b'{"header":{"timestamp":1},"data":{}}', "reply_to", None),
    ParseErrorCase("empty-reply-to", b'{"header":{"reply_to":""},"data":{}}', "reply_to", None),
    ParseErrorCase("int-reply-to", b'{"header":{"reply_to":7},"data":{}}', "reply_to", None),
    ParseErrorCase("wildcard-reply-to", b'{"header":{"reply_to":"a/#"},"data":{}}', "'#'", None),
    ParseErrorCase("data-array", b'{"header":{"reply_to":"r"},"data":[]}', "data is an array", "r"),
    ParseErrorCase("data-null", b'{"header":{"reply_to":"r"},"data":null}', "data is null", "r"),
    ParseErrorCase(
        "data-string",
        b'{"header":{"reply_to":"r"},"data":"x"}',
        "data is a string",
        "r",
    ),
]


@pytest.mark.parametrize("case", PARSE_ERRORS, ids=[case.test_id for case in PARSE_ERRORS])
def test_parse_errors(case: ParseErrorCase) -> None:
    with pytest.raises(ProtocolError, match=case.match) as caught:
        protocol.parse_request(case.payload)
    assert caught.value.reply_to == case.reply_to
    assert caught.value.code == "bad_request"


def test_protocol_error_is_an_agent_error() -> None:
    error = ProtocolError("request is not JSON", reply_to="r")
    assert isinstance(error, AgentError)
    assert error.to_dict() == {"code": "bad_request", "message": "request is not JSON"}


def test_parse_accepts_bytearray_and_memoryview() -> None:
    assert protocol.parse_request(bytearray(DOTTED_REQUEST)).reply_to == "my.reply.topic"
    assert protocol.parse_request(memoryview(DOTTED_REQUEST)).data == {}


# ------------------------------------------------------------------- reply topics


class TopicCase(t.NamedTuple):
    test_id: str
    reply_to: str
    match: str


BAD_TOPICS = [
    TopicCase("empty", "", "non-empty"),
    TopicCase("plus", "rpc/+/x", "'\\+'"),
    TopicCase("hash", "rpc/#", "'#'"),
    TopicCase("nul", "rpc\x00x", "NUL"),
    TopicCase("too-long", "r" * 257, "257 characters"),
    TopicCase("sys", "$SYS/broker", "'\\$'"),
]


@pytest.mark.parametrize("case", BAD_TOPICS, ids=[case.test_id for case in BAD_TOPICS])
def test_reply_topic_rejects(case: TopicCase) -> None:
    with pytest.raises(ProtocolError, match=case.match):
        protocol.reply_topic(case.reply_to)
    with pytest.raises(ProtocolError, match=case.match):
        protocol.encode_request({}, case.reply_to, now_ms=1)


def test_reply_topic_accepts() -> None:
    assert protocol.reply_topic("r" * 256) == "r" * 256
    assert protocol.reply_topic("a.b/c.d") == "a.b/c.d"  # as Hummingbot 2.16, not commlib's a/b/c/d
    assert protocol.reply_topic("hummingbot-api-response-1") == "hummingbot-api-response-1"


# ---------------------------------------------------------------------- validate


def test_validate_fills_bot_defaults() -> None:
    assert protocol.validate("start", {}) == {
        "log_level": None,
        "script": None,
        "conf": None,
        "is_quickstart": False,
        "async_backend": True,
    }
    assert protocol.validate("stop", {}) == {
        "skip_order_cancellation": False,
        "async_backend": True,
    }
    assert protocol.validate("status", {}) == {"async_backend": True}
    assert protocol.validate("config", {}) == {"params": []}
    assert protocol.validate("history", {}) == {
        "days": 0.0,
        "verbose": False,
        "precision": None,
        "async_backend": True,
    }
    assert protocol.validate("command_shortcuts", {}) == {"params": []}


def test_validate_defaults_are_fresh() -> None:
    first = protocol.validate("config", {})
    first["params"].append(["a", 1])
    assert protocol.validate("config", {}) == {"params": []}


class ValidCase(t.NamedTuple):
    test_id: str
    command: str
    data: dict[str, t.Any]
    expected: dict[str, t.Any]


VALID = [
    ValidCase("bool-word", "status", {"async_backend": "false"}, {"async_backend": False}),
    ValidCase("bool-yes", "status", {"async_backend": "YES"}, {"async_backend": True}),
    ValidCase("bool-int", "status", {"async_backend": 0}, {"async_backend": False}),
    ValidCase("bool-null", "status", {"async_backend": None}, {"async_backend": False}),
    ValidCase(
        "config-pairs",
        "config",
        {"params": [["mqtt_bridge.mqtt_logger", True], ["kill_switch_rate", -0.1]]},
        {"params": [["mqtt_bridge.mqtt_logger", True], ["kill_switch_rate", -0.1]]},
    ),
    ValidCase("config-null", "config", {"params": None}, {"params": []}),
    ValidCase("import", "import", {"strategy": "conf_pmm_1"}, {"strategy": "conf_pmm_1"}),
    ValidCase(
        "history-strings",
        "history",
        # commlib <= 0.13.1 clients send negative ints as strings
        {"days": "-1", "precision": "-2", "verbose": 1, "async_backend": False},
        {"days": -1.0, "precision": -2, "verbose": True, "async_backend": False},
    ),
    ValidCase(
        "history-numbers",
        "history",
        {"days": 1.5, "precision": 4.0},
        {"days": 1.5, "verbose": False, "precision": 4, "async_backend": True},
    ),
    ValidCase(
        "balance-limit",
        "balance/limit",
        {"exchange": "binance", "asset": "BTC", "amount": 1},
        {"exchange": "binance", "asset": "BTC", "amount": 1.0},
    ),
    ValidCase(
        "balance-paper",
        "balance/paper",
        {"asset": "USDT", "amount": "100.5"},
        {"asset": "USDT", "amount": 100.5},
    ),
    ValidCase(
        "shortcuts",
        "command_shortcuts",
        {"params": [["spreads", "0.1", 2], []]},
        {"params": [["spreads", "0.1", 2], []]},
    ),
]


@pytest.mark.parametrize("case", VALID, ids=[case.test_id for case in VALID])
def test_validate_accepts(case: ValidCase) -> None:
    assert protocol.validate(case.command, case.data) == case.expected


class InvalidCase(t.NamedTuple):
    test_id: str
    command: str
    data: t.Any
    match: str


INVALID = [
    InvalidCase("notabool", "stop", {"skip_order_cancellation": "notabool"}, "'skip_order"),
    InvalidCase("bool-2", "start", {"is_quickstart": 2}, "'is_quickstart' must be a boolean"),
    InvalidCase("bool-list", "status", {"async_backend": []}, "got an array"),
    InvalidCase("str-int", "start", {"script": 5}, "'script' must be a string, got a number"),
    InvalidCase("config-object", "config", {"params": {"a": 1}}, "got an object"),
    InvalidCase("config-triple", "config", {"params": [["a", 1, 2]]}, "item 0"),
    InvalidCase("config-int-key", "config", {"params": [[1, 2]]}, "item 0"),
    InvalidCase("config-string", "config", {"params": "a=1"}, "list of \\[key, value\\]"),
    InvalidCase("import-missing", "import", {}, "'strategy' is required"),
    InvalidCase("import-null", "import", {"strategy": None}, "'strategy' must be a string"),
    InvalidCase("limit-missing", "balance/limit", {"asset": "BTC", "amount": 1}, "'exchange'"),
    InvalidCase("amount-word", "balance/paper", {"asset": "X", "amount": "lots"}, "'amount'"),
    InvalidCase("amount-nan", "balance/paper", {"asset": "X", "amount": "nan"}, "not finite"),
    InvalidCase("precision-frac", "history", {"precision": 1.5}, "'precision' must be an int"),
    InvalidCase("days-empty", "history", {"days": ""}, "'days' must be a number"),
    InvalidCase("shortcut-flat", "command_shortcuts", {"params": ["a"]}, "item 0"),
    InvalidCase("unknown-command", "restart", {}, "command 'restart' is unknown"),
    InvalidCase("data-list", "stop", [], "data must be an object"),
]


@pytest.mark.parametrize("case", INVALID, ids=[case.test_id for case in INVALID])
def test_validate_rejects(case: InvalidCase) -> None:
    with pytest.raises(ProtocolError, match=case.match) as caught:
        protocol.validate(case.command, t.cast("dict[str, t.Any]", case.data))
    assert caught.value.reply_to is None


REQUIRED: dict[str, dict[str, t.Any]] = {
    "import": {"strategy": "s"},
    "balance/limit": {"exchange": "e", "asset": "a", "amount": 1},
    "balance/paper": {"asset": "a", "amount": 1},
}
"""The least data each command accepts."""


def test_every_command_has_a_schema_and_a_response() -> None:
    for command in protocol.HBOT_COMMANDS:
        assert protocol.response(command)["status"] == protocol.STATUS_OK
        assert set(protocol.validate(command, REQUIRED.get(command, {}))) >= set(REQUIRED.get(command, {}))


def test_console_names_come_from_the_bot_schemas() -> None:
    # A recipe's console keys are the bot's commands, '/' written '_'; shortcuts are lines of their own.
    assert protocol.CONSOLE_COMMANDS == (
        "start",
        "stop",
        "config",
        "import",
        "status",
        "history",
        "balance_limit",
        "balance_paper",
    )
    assert protocol.console_key("balance/paper") == "balance_paper"
    # Every field a console line may fill in is a field of a bot request; the agent's own switches are not.
    fields = {
        name for command in protocol.HBOT_COMMANDS for name in protocol.validate(command, REQUIRED.get(command, {}))
    }
    assert set(protocol.CONSOLE_FIELDS) == fields - {
        "log_level",
        "is_quickstart",
        "async_backend",
        "skip_order_cancellation",
    }
    assert set(protocol.STRATEGY_FIELDS) <= set(protocol.validate("start", {})) & set(protocol.CONSOLE_FIELDS)


class RecordCase(t.NamedTuple):
    test_id: str
    payload: bytes
    expected: dict[str, t.Any] | None


RECORD_CASES = [
    RecordCase("object", b'{"state":"running","ts":1.5}', {"state": "running", "ts": 1.5}),
    RecordCase("cleared", b"", None),
    RecordCase("not-json", b"garbage", None),
    RecordCase("array", b"[1]", None),
    RecordCase("string", b'"online"', None),
    RecordCase("too-deep", b"[" * 100_000 + b"]" * 100_000, None),
]


@pytest.mark.parametrize("case", RECORD_CASES, ids=[c.test_id for c in RECORD_CASES])
def test_load_record(case: RecordCase) -> None:
    assert protocol.load_record(case.payload) == case.expected


class PydanticCase(t.NamedTuple):
    test_id: str
    kind: str
    values: tuple[t.Any, ...]


PYDANTIC_CASES = [
    PydanticCase(
        "bool",
        "bool",
        (
            True,
            False,
            0,
            1,
            2,
            0.0,
            1.0,
            1.5,
            "true",
            "YES",
            "off",
            "t",
            "n",
            "1",
            "0",
            " true",
            "notabool",
            "",
            [],
            {},
        ),
    ),
    PydanticCase(
        "int",
        "int",
        (1, -1, True, 1.0, 1.5, "1", "-1", " 2 ", "1.0", "1.5", "abc", "", [], 10**30),
    ),
    PydanticCase(
        "float",
        "float",
        (1, -1, True, 1.5, "1.5", "-1", " 2 ", "1_000", "abc", "", "0x10", [], {}),
    ),
    PydanticCase("str", "str", ("a", "", 1, 1.5, True, [], {})),
]


@pytest.mark.parametrize("case", PYDANTIC_CASES, ids=[case.test_id for case in PYDANTIC_CASES])
def test_coercion_agrees_with_pydantic_lax_mode(case: PydanticCase) -> None:
    """The bot validates with pydantic 2; accept and convert exactly what it does."""
    pydantic = require_module("pydantic")
    python_type = {"bool": bool, "int": int, "float": float, "str": str}[case.kind]
    model = pydantic.create_model("Probe", value=(python_type, ...))
    command, name = {
        "bool": ("status", "async_backend"),
        "int": ("history", "precision"),
        "float": ("history", "days"),
        "str": ("import", "strategy"),
    }[case.kind]
    for value in case.values:
        expected = _pydantic_outcome(model, pydantic.ValidationError, value)
        assert _our_outcome(command, name, value) == expected, value


def _pydantic_outcome(model: t.Any, error: type[Exception], value: t.Any) -> t.Any:
    try:
        converted = model(value=value).value
    except error:
        return "invalid"
    return (converted, type(converted))


def _our_outcome(command: str, name: str, value: t.Any) -> t.Any:
    try:
        converted = protocol.validate(command, {name: value})[name]
    except ProtocolError:
        return "invalid"
    return (converted, type(converted))


# ---------------------------------------------------------------------- response


def test_response_field_order() -> None:
    assert list(protocol.response("config")) == ["changes", "config", "status", "msg"]
    assert list(protocol.response("status")) == ["status", "msg", "data"]
    assert list(protocol.response("history")) == ["status", "msg", "trades"]
    assert list(protocol.response("balance/limit")) == ["status", "msg", "data"]
    assert list(protocol.response("command_shortcuts")) == ["success", "status", "msg"]
    assert list(protocol.response("import")) == ["status", "msg"]


def test_response_values() -> None:
    failed = protocol.response(
        "start",
        protocol.STATUS_ERROR,
        "Strategy check: Please import or create a strategy.",
    )
    assert protocol.encode_reply(failed, now_ms=1) == (
        b'{"header":{"reply_to":"","timestamp":1,"content_type":"json","encoding":"utf8",'
        b'"agent":"commlib"},"data":{"status":400,'
        b'"msg":"Strategy check: Please import or create a strategy."}}'
    )
    config = protocol.response("config", changes=[("a", 1)], config={"client": {}})
    assert config == {
        "changes": [("a", 1)],
        "config": {"client": {}},
        "status": 200,
        "msg": "",
    }
    assert json.loads(protocol.encode_reply(config, now_ms=1))["data"]["changes"] == [["a", 1]]
    assert protocol.response("status", protocol.STATUS_UNAUTHORIZED)["status"] == 401
    protocol.response("history")["trades"].append(1)
    assert protocol.response("history")["trades"] == []


def test_a_balance_reply_that_succeeded_has_data_null_as_the_bots() -> None:
    # Hummingbot's balance() returns None and the bridge puts it in data; its Response default "" stays on errors.
    for command in ("balance/limit", "balance/paper"):
        assert protocol.response(command) == {"status": 200, "msg": "", "data": None}
        assert protocol.encode_reply(protocol.response(command), now_ms=1).endswith(b'"data":null}}')
        assert protocol.response(command, protocol.STATUS_ERROR, "x") == {"status": 400, "msg": "x", "data": ""}
        assert protocol.response(command, data="set")["data"] == "set"


def test_response_rejects_unknown() -> None:
    with pytest.raises(TypeError, match="trades"):
        protocol.response("start", trades=[])
    with pytest.raises(ValueError, match="unknown"):
        protocol.response("restart")


# ----------------------------------------------------------------- make_primitive


class Side(enum.Enum):
    BUY = 1


PRIMITIVES: list[tuple[t.Any, t.Any]] = [
    (-1, "-1"),
    (0, 0),
    (7, 7),
    (True, True),
    (None, None),
    (1.5, 1.5),
    (-2.5, -2.5),
    (decimal.Decimal("0.25"), 0.25),
    ("-1", "-1"),
    ((1, (2, -3)), [1, [2, "-3"]]),
    ({"a": {"b": -4}}, {"a": {"b": "-4"}}),
    (Side.BUY, "Side.BUY"),
    (b"x", "b'x'"),
]


@pytest.mark.parametrize(("value", "expected"), PRIMITIVES, ids=[repr(v) for v, _ in PRIMITIVES])
def test_make_primitive(value: t.Any, expected: t.Any) -> None:
    result = protocol.make_primitive(value)
    assert result == expected
    assert type(result) is type(expected)


def test_notify_keeps_the_string_timestamp_quirk() -> None:
    assert json.loads(protocol.notify(3, "a/b é")) == {
        "seq": 3,
        "timestamp": "-1",
        "msg": "a/b é",
    }
    assert protocol.notify(0, "a/b é") == b'{"seq":0,"timestamp":"-1","msg":"a\\/b \\u00e9"}'


# -------------------------------------------------------------------------- dumps


def test_dumps_escapes_like_ujson() -> None:
    assert protocol.dumps({"k/": ["a/b", "\\/", "é😀", "\x7f", "\\u007f"]}) == (
        b'{"k\\/":["a\\/b","\\\\\\/","\\u00e9\\ud83d\\ude00","\x7f","\\\\u007f"]}'
    )
    assert protocol.dumps([1e-7, 1e16, 1.5e-5, -0.0, 2**64]) == (b"[1e-7,1e+16,1.5e-5,-0.0,18446744073709551616]")


def test_dumps_rejects_non_json() -> None:
    with pytest.raises(ValueError, match="nan"):
        protocol.dumps({"x": math.nan})
    with pytest.raises(TypeError, match="set"):
        protocol.dumps({"x": {1}})
    with pytest.raises(TypeError, match="keys"):
        protocol.dumps({1: 2})


def test_dumps_matches_ujson_on_random_values() -> None:
    ujson = require_module("ujson")
    rng = random.Random(20260730)
    alphabet = [chr(c) for c in range(0x80)] + [
        "é",
        "€",
        "\u2028",
        "😀",
        "\uffff",
        "/",
        "\\",
    ]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        number = rng.choice(
            [
                rng.uniform(-1e6, 1e6),
                rng.random() * 10 ** rng.randrange(-12, 30),
                float(rng.randrange(-(10**6), 10**6)),
            ]
        )
        value = {text: [text, number, rng.randrange(-(2**40), 2**40), None, True]}
        assert protocol.dumps(value) == ujson.dumps(value).encode(), value


# ---------------------------------------------------------------- commlib interop


def test_commlib_parses_our_reply() -> None:
    rpc = require_module("commlib.rpc")
    serializer = require_module("commlib.serializer")
    commlib_msg = require_module("commlib.msg")

    base: t.Any = commlib_msg.RPCMessage.Response

    class StopResponse(base):  # type: ignore[misc]  # commlib ships no types: base is Any
        status: int = 200
        msg: str = ""

    data = protocol.response("stop", protocol.STATUS_ERROR, "no strategy / stopped")
    payload = serializer.JSONSerializer.deserialize(protocol.encode_reply(data))
    message = rpc.CommRPCMessage(header=rpc.CommRPCHeader(**payload["header"]), data=payload["data"])
    assert message.header.reply_to == ""
    assert message.header.agent == "commlib"
    assert StopResponse(**message.data).msg == "no strategy / stopped"


def test_we_parse_commlib_requests() -> None:
    rpc = require_module("commlib.rpc")
    serializer = require_module("commlib.serializer")
    sent = rpc.CommRPCMessage(
        header=rpc.CommRPCHeader(reply_to="rpc-0123"),
        data={"days": -1, "verbose": False, "precision": None, "async_backend": False},
    )
    payload = serializer.JSONSerializer.serialize(sent.model_dump())
    request = protocol.parse_request(payload.encode())
    assert request.reply_to == "rpc-0123"
    assert protocol.validate("history", request.data)["days"] == -1.0


# ---------------------------------------------------------------------- own verbs


class OwnCase(t.NamedTuple):
    test_id: str
    verb: str
    data: dict[str, t.Any]
    expected: dict[str, t.Any]


OWN_VALID = [
    OwnCase("start", "start", {"extra": 1}, {}),
    OwnCase("restart", "restart", {}, {}),
    OwnCase("status", "status", {}, {}),
    OwnCase("list", "list", {}, {}),
    OwnCase("tail-default", "tail", {}, {"lines": 50}),
    OwnCase("tail-null", "tail", {"lines": None}, {"lines": 50}),
    OwnCase("tail-max", "tail", {"lines": 1000}, {"lines": 1000}),
    OwnCase("logs-default", "logs", {}, {"lines": 50}),
    OwnCase("logs-lines", "logs", {"lines": 200}, {"lines": 200}),
    OwnCase("stop-default", "stop", {}, {"timeout": None}),
    OwnCase("stop-timeout", "stop", {"timeout": 600}, {"timeout": 600.0}),
    OwnCase("stop-small", "stop", {"timeout": 0.5}, {"timeout": 0.5}),
    OwnCase("send", "send", {"text": "status --live 🚀"}, {"text": "status --live 🚀"}),
    OwnCase("send-enter", "send", {"text": ""}, {"text": ""}),
    OwnCase("send-max", "send", {"text": "é" * 4096}, {"text": "é" * 4096}),
]


@pytest.mark.parametrize("case", OWN_VALID, ids=[case.test_id for case in OWN_VALID])
def test_validate_own_accepts(case: OwnCase) -> None:
    assert protocol.validate_own(case.verb, case.data) == case.expected


class OwnErrorCase(t.NamedTuple):
    test_id: str
    verb: str
    data: t.Any
    match: str


OWN_INVALID = [
    OwnErrorCase("unknown", "import", {}, "verb 'import' is unknown"),
    OwnErrorCase("data-list", "status", [], "data must be an object"),
    OwnErrorCase("send-missing", "send", {}, "'text' is required"),
    OwnErrorCase("send-int", "send", {"text": 5}, "must be a string"),
    OwnErrorCase("send-newline", "send", {"text": "a\nb"}, r"field 'text' holds control characters \(U\+000A\)"),
    OwnErrorCase("send-cr", "send", {"text": "a\r"}, r"\(U\+000D\)"),
    OwnErrorCase("send-nul", "send", {"text": "a\x00"}, "control character"),
    OwnErrorCase("send-escape", "send", {"text": "\x1b[A"}, "control character"),
    OwnErrorCase("send-tab", "send", {"text": "a\tb"}, r"\(U\+0009\)"),
    OwnErrorCase("send-c1", "send", {"text": "a\x9bb"}, r"\(U\+009B\)"),
    OwnErrorCase("send-surrogate", "send", {"text": "a\udc9bb"}, r"is not valid UTF-8 \(U\+DC9B"),
    OwnErrorCase("send-long", "send", {"text": "x" * 4097}, "4097 characters"),
    OwnErrorCase("tail-zero", "tail", {"lines": 0}, "from 1 to 1000"),
    OwnErrorCase("tail-big", "tail", {"lines": 1001}, "from 1 to 1000"),
    OwnErrorCase("tail-bool", "tail", {"lines": True}, "from 1 to 1000"),
    OwnErrorCase("tail-string", "tail", {"lines": "5"}, "from 1 to 1000"),
    OwnErrorCase("tail-float", "tail", {"lines": 5.0}, "from 1 to 1000"),
    OwnErrorCase("logs-zero", "logs", {"lines": 0}, "verb 'logs': field 'lines' must be an integer from 1 to 1000"),
    OwnErrorCase("stop-zero", "stop", {"timeout": 0}, "'timeout'"),
    OwnErrorCase("stop-big", "stop", {"timeout": 601}, "at most 600"),
    OwnErrorCase("stop-string", "stop", {"timeout": "5"}, "'timeout'"),
    OwnErrorCase("stop-bool", "stop", {"timeout": True}, "'timeout'"),
    OwnErrorCase("stop-inf", "stop", {"timeout": math.inf}, "'timeout'"),
]


@pytest.mark.parametrize("case", OWN_INVALID, ids=[case.test_id for case in OWN_INVALID])
def test_validate_own_rejects(case: OwnErrorCase) -> None:
    with pytest.raises(ProtocolError, match=case.match):
        protocol.validate_own(case.verb, case.data)


def test_constants() -> None:
    assert protocol.HBOT_COMMANDS == (
        "start",
        "stop",
        "config",
        "import",
        "status",
        "history",
        "balance/limit",
        "balance/paper",
        "command_shortcuts",
    )
    assert (
        protocol.STATUS_OK,
        protocol.STATUS_ERROR,
        protocol.STATUS_UNAUTHORIZED,
    ) == (
        200,
        400,
        401,
    )
    assert protocol.OWN_VERBS == ("start", "stop", "restart", "status", "tail", "send", "logs")
    assert protocol.MAX_REQUEST_BYTES == 64 * 1024


def test_a_record_reads_numbers_no_reader_can_use_as_null() -> None:
    record = protocol.load_record(
        b'{"ts":NaN,"uptime":Infinity,"rss":-Infinity,"cpu_percent":1e999,"pid":' + b"9" * 30 + b',"ok":12.5,"n":-7}'
    )
    assert record == {"ts": None, "uptime": None, "rss": None, "cpu_percent": None, "pid": None, "ok": 12.5, "n": -7}
    assert protocol.load_record(b'{"big":' + b"9" * 20 + b"}") == {"big": int("9" * 20)}
    assert protocol.load_record(b"[1]") is None
