"""The sans-IO PostgreSQL codec, driven with bytes alone."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from broker.pg import codec


def test_startup_round_trip():
    raw = codec.build_startup({"user": "alice@example.com", "database": "demo", "application_name": "psql"})
    msg, used = codec.parse_startup(raw)
    assert used == len(raw)
    assert msg.user == "alice@example.com" and msg.database == "demo" and msg.params["application_name"] == "psql"


def test_startup_needs_more_bytes():
    raw = codec.build_startup({"user": "u"})
    assert codec.parse_startup(raw[:7]) is None
    assert codec.parse_startup(raw[:-1]) is None


def test_ssl_gss_cancel_requests():
    assert isinstance(codec.parse_startup(codec.build_ssl_request())[0], codec.SSLRequest)
    assert isinstance(codec.parse_startup(struct.pack("!ii", 8, codec.GSSENC_REQUEST_CODE))[0], codec.GSSENCRequest)
    cancel, _ = codec.parse_startup(codec.build_cancel_request(1234, b"\x01\x02\x03\x04"))
    assert cancel == codec.CancelRequest(1234, b"\x01\x02\x03\x04")


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "invalid startup packet length"),
        (struct.pack("!ii", 12, 2 << 16) + b"u\x00\x00\x00", "unsupported frontend protocol 2.0"),
        (struct.pack("!ii", 11, codec.PROTOCOL_3_0) + b"usr", "not NUL-terminated"),
        (struct.pack("!ii", 14, codec.PROTOCOL_3_0) + b"user\x00\x00", "parameter name without a value"),
    ],
)
def test_bad_startup_packets(raw, problem):
    with pytest.raises(codec.ProtocolError, match=problem):
        codec.parse_startup(raw)


def test_reader_splits_pipelined_messages_and_keeps_partial_tail():
    stream = codec.build_query("SELECT 1") + codec.build_parse("s1", "SELECT $1", (23,)) + codec.SYNC
    reader = codec.MessageReader()
    reader.feed(stream + codec.build_query("SELECT 2")[:6])
    messages = reader.messages()
    assert [k for k, _ in messages] == ["Q", "P", "S"]
    assert codec.parse_query(messages[0][1]).sql == "SELECT 1"
    assert codec.parse_parse(messages[1][1]) == codec.Parse("s1", "SELECT $1", (23,))
    assert reader.buffered == 6
    reader.feed(codec.build_query("SELECT 2")[6:])
    assert codec.parse_query(reader.messages()[0][1]).sql == "SELECT 2"


def test_size_limit_is_enforced_from_the_header_alone():
    reader = codec.MessageReader(max_message=1000)
    reader.feed(b"Q" + struct.pack("!i", 5000))
    with pytest.raises(codec.ProtocolError, match="exceeds the limit of 1000 bytes"):
        reader.messages()


def test_bind_parsing_with_nulls_and_formats():
    payload = (
        b"portal\x00stmt\x00" + struct.pack("!hh", 1, 1) + struct.pack("!h", 2)
        + struct.pack("!i", 3) + b"abc" + struct.pack("!i", -1) + struct.pack("!hh", 1, 0)
    )
    bind = codec.parse_bind(payload)
    assert bind.portal == "portal" and bind.statement == "stmt"
    assert bind.params == (b"abc", None) and bind.param_format(1) == 1 and bind.result_formats == (0,)


def test_data_row_round_trip_and_row_description():
    values = [b"1", None, b"", "é✓".encode()]
    msg = codec.build_data_row(values)
    assert codec.parse_data_row(msg[5:]) == values
    fields = [codec.FieldDescription("email", 16384, 3, 25, -1, -1, 0)]
    assert codec.parse_row_description(codec.build_row_description(fields)[5:]) == fields


def test_error_fields_round_trip():
    msg = codec.build_error("nope", "28000", "FATAL", hint="do this")
    fields = codec.parse_fields(msg[5:])
    assert fields["C"] == "28000" and fields["M"] == "nope" and fields["H"] == "do this" and fields["S"] == "FATAL"


def test_rows_from_tag():
    assert codec.rows_from_tag("SELECT 5") == 5
    assert codec.rows_from_tag("INSERT 0 3") == 3
    assert codec.rows_from_tag("CREATE TABLE") is None


# Fuzz: arbitrary bytes never crash the codec with anything but ProtocolError.


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_startup(data):
    try:
        codec.parse_startup(data)
    except codec.ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(list("QPBEDCTRSKZ")))
def test_fuzz_messages(data, kind):
    reader = codec.MessageReader(max_message=10_000)
    reader.feed(kind.encode() + struct.pack("!i", len(data) + 4) + data)
    parsers = {
        "Q": codec.parse_query, "P": codec.parse_parse, "B": codec.parse_bind, "E": codec.parse_execute,
        "D": codec.parse_data_row, "C": codec.parse_command_complete, "T": codec.parse_row_description,
        "R": codec.parse_authentication, "S": codec.parse_parameter_status, "K": codec.parse_backend_key,
        "Z": lambda p: p,
    }
    for k, payload in reader.messages():
        try:
            parsers[k](payload)
        except codec.ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=50)), max_size=30))
def test_data_row_property(values):
    assert codec.parse_data_row(codec.build_data_row(values)[5:]) == values


# --- framing: the compiled loop (broker/pg/_framing.c) against the Python reference ---------


def test_compiled_framing_is_built_and_used():
    """tests/rowcore_build.py builds it (as pip does); the relay must not silently run the Python loop."""
    assert codec._framing is not None, "broker/pg/_framing.c is not built (python setup.py build_ext --inplace)"
    assert codec.FRAMING == "compiled"


@pytest.fixture(params=["python", "compiled"])
def framing(request, monkeypatch):
    monkeypatch.setattr(codec, "FRAMING", request.param)
    return request.param


def test_reader_framing_both_implementations(framing):
    rows = b"".join(codec.build_data_row([str(i).encode(), b"x" * i]) for i in range(300))
    stream = rows + codec.message("C", b"SELECT 300\x00") + codec.message("Z", b"I")
    reader = codec.MessageReader(max_message=10_000)
    reader.feed(stream[:-3])
    data, spans = reader.spans(0x44)
    assert [chr(k) for k, _, _ in spans] == ["C"] and data == stream[: len(stream) - 6]
    assert codec.count_messages(data, 0, spans[0][1]) == 300
    reader.feed(stream[-3:])
    data, spans = reader.spans()
    assert [chr(k) for k, _, _ in spans] == ["Z"] and reader.buffered == 0
    for bad, problem in ((b"D" + struct.pack("!i", 3), "invalid message length 3 for message type 'D'"),
                         (b"D" + struct.pack("!i", -7), "invalid message length -7"),
                         (b"D" + struct.pack("!i", 20_000), "exceeds the limit of 10000 bytes")):
        reader = codec.MessageReader(max_message=10_000)
        reader.feed(codec.message("Z", b"I") + bad)
        with pytest.raises(codec.ProtocolError, match=problem):
            reader.spans()
        assert reader.buffered == 6 + len(bad)  # nothing taken when the read holds a bad header


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(b"DCZTEN\x00\xff"), st.integers(-5, 70), st.binary(max_size=60)), max_size=20),
       st.sampled_from([-1, 0x44, 0x00, 0xFF]), st.integers(0, 80))
def test_fuzz_compiled_framing_matches_the_reference(messages, skip, limit):
    """Any bytes, any skip and limit: the compiled loop and the Python one agree exactly."""
    raw = b"".join(bytes([kind]) + struct.pack("!i", length) + body for kind, length, body in messages)
    for cut in (len(raw), len(raw) // 2):
        buf = bytearray(raw[:cut])
        assert codec._framing.scan(buf, skip, limit) == codec._scan(buf, skip, limit)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(b"DCZT"), st.binary(max_size=40)), min_size=1, max_size=12),
       st.lists(st.integers(0, 60), max_size=12), st.sampled_from([-1, 0x44]), st.booleans())
def test_reader_chunking_gives_the_same_messages_however_the_stream_is_cut(messages, cuts, skip, peek):
    """A chunk fed while nothing is buffered is kept as it is (no copy when it holds whole messages
    only): whatever the cuts, the reader returns exactly the complete messages, in order, with the
    incomplete tail kept; head/buffered/take in between see the same bytes."""
    stream = b"".join(codec.message(chr(kind), body) for kind, body in messages)
    want = [(kind, codec.message(chr(kind), body)) for kind, body in messages]
    reader = codec.MessageReader(max_message=10_000)
    got, returned, pos = [], b"", 0
    for cut in cuts + [len(stream)]:
        chunk = stream[pos : pos + cut] if cut < len(stream) else stream[pos:]
        pos += len(chunk)
        reader.feed(chunk)
        if peek:
            assert reader.buffered == pos - len(returned)
            head = reader.head()
            rest = stream[len(returned):pos]
            assert head == (None if len(rest) < 5 else (rest[0], struct.unpack("!i", rest[1:5])[0] + 1))
        data, spans = reader.spans(skip)
        returned += data
        assert returned == stream[: len(returned)] and reader.buffered == pos - len(returned)
        assert all(data[start] == kind for kind, start, _ in spans)
        got += [(kind, data[start:end]) for kind, start, end in spans]
        if pos == len(stream):
            break
    assert returned == stream and reader.buffered == 0
    assert got == [m for m in want if m[0] != skip]
    reader.feed(stream[:3])
    assert reader.take() == stream[:3] and reader.buffered == 0


def _bind_payload(portal, statement, formats, params, results):
    out = portal + b"\x00" + statement + b"\x00" + struct.pack("!h", len(formats))
    out += b"".join(struct.pack("!h", f) for f in formats) + struct.pack("!h", len(params))
    for p in params:
        out += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return out + struct.pack("!h", len(results)) + b"".join(struct.pack("!h", r) for r in results)


def _outcome(parse, payload):
    try:
        return parse(payload)
    except codec.ProtocolError as exc:
        return ("refused", str(exc))


_names = st.sampled_from([b"", b"p1", b"caf\xc3\xa9", b"\xff\xfe"])
_formats = st.lists(st.integers(-2, 2), max_size=3)


@settings(max_examples=500, deadline=None)
@given(_names, _names, _formats, st.lists(st.one_of(st.none(), st.binary(max_size=6)), max_size=3), _formats,
       st.integers(0, 40), st.binary(max_size=4), st.sampled_from(["keep", "cut", "append", "corrupt"]))
def test_bind_fast_read_agrees_with_the_checked_reference(portal, statement, formats, params, results, at, extra, how):
    """parse_bind reads a well-formed Bind straight through; on any payload, well-formed, cut,
    padded or corrupted, it gives what the checked reference gives: the same Bind or the same
    ProtocolError."""
    payload = _bind_payload(portal, statement, formats, params, results)
    if how == "cut":
        payload = payload[: at % (len(payload) + 1)]
    elif how == "append":
        payload += extra
    elif how == "corrupt" and payload:
        i = at % len(payload)
        payload = payload[:i] + (extra or b"\xff")[:1] + payload[i + 1 :]
    assert _outcome(codec.parse_bind, payload) == _outcome(codec._parse_bind_checked, payload)


@given(st.binary(max_size=12))
def test_first_string_read_agrees_with_the_cursor(payload):
    def reference(p):
        return codec.Query(codec._Cursor(p, "Query").cstr())

    assert _outcome(codec.parse_query, payload) == _outcome(reference, payload)


def _parse_payload(name, sql, types):
    return name + b"\x00" + sql + b"\x00" + struct.pack("!h", len(types)) + b"".join(struct.pack("!I", t) for t in types)


def _row_description_payload(fields):
    out = struct.pack("!h", len(fields))
    for name, values in fields:
        out += name + b"\x00" + struct.pack("!IhIhih", *values)
    return out


_field_values = st.tuples(st.integers(0, 2**32 - 1), st.integers(-2**15, 2**15 - 1), st.integers(0, 2**32 - 1),
                          st.integers(-2**15, 2**15 - 1), st.integers(-2**31, 2**31 - 1), st.integers(-2**15, 2**15 - 1))
# Each extended-protocol message the relay reads straight through, with how to build a well-formed payload.
_FAST_READS = {
    "Parse": (codec.parse_parse, codec._parse_parse_checked,
              st.builds(_parse_payload, _names, _names, st.lists(st.integers(0, 2**32 - 1), max_size=3))),
    "Execute": (codec.parse_execute, codec._parse_execute_checked,
                st.builds(lambda n, rows: n + b"\x00" + struct.pack("!i", rows), _names, st.integers(-2**31, 2**31 - 1))),
    "Describe": (codec.parse_describe, codec._parse_describe_checked,
                 st.builds(lambda k, n: k + n + b"\x00", st.sampled_from([b"S", b"P", b"X", b"\x00"]), _names)),
    "RowDescription": (codec.parse_row_description, codec._parse_row_description_checked,
                       st.builds(_row_description_payload, st.lists(st.tuples(_names, _field_values), max_size=3))),
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_FAST_READS)), st.data(), st.integers(0, 60), st.binary(max_size=4),
       st.sampled_from(["keep", "cut", "append", "corrupt"]))
def test_fast_reads_agree_with_the_checked_reference(kind, data, at, extra, how):
    """Parse, Execute, Describe and RowDescription are read straight through; on any payload,
    well-formed, cut, padded or corrupted, each gives what its checked reference gives: the same
    message or the same ProtocolError."""
    fast, checked, payloads = _FAST_READS[kind]
    payload = data.draw(payloads)
    if how == "cut":
        payload = payload[: at % (len(payload) + 1)]
    elif how == "append":
        payload += extra
    elif how == "corrupt" and payload:
        i = at % len(payload)
        payload = payload[:i] + (extra or b"\xff")[:1] + payload[i + 1 :]
    assert _outcome(fast, payload) == _outcome(checked, payload)


def test_fast_reads_of_well_formed_messages():
    assert codec.parse_parse(_parse_payload(b"s1", b"SELECT $1", [23])) == codec.Parse("s1", "SELECT $1", (23,))
    assert codec.parse_execute(b"p\x00\x00\x00\x00\x05") == codec.Execute("p", 5)
    assert codec.parse_describe(b"Sst\x00") == codec.Describe("S", "st")
    with pytest.raises(codec.ProtocolError, match="unknown kind"):
        codec.parse_describe(b"Xst\x00")
    fields = [codec.FieldDescription("id", 16400, 1, 23, 4, -1, 0), codec.FieldDescription("é", 0, 0, 25, -1, -1, 1)]
    assert codec.parse_row_description(codec.build_row_description(fields)[5:]) == fields
    with pytest.raises(codec.ProtocolError, match="negative field count"):
        codec.parse_row_description(b"\xff\xff")
