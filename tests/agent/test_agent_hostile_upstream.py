"""A target that breaks the PostgreSQL protocol, seen through the agent API: the agent gets a
502 that says the target is at fault (not "masking refused", not a 500), nothing of the bad
answer, and the broker goes on serving everyone else."""
from __future__ import annotations

import struct
import time

import pytest

from broker.pg import codec
from tests.agent.conftest import assert_problem
from tests.broker.test_hostile_upstream import HOSTILE_TARGET, ScriptedUpstream, _read_message

TEXT_OID = 25
SECRET = b"never-shown-4242"


def _answer_with(reply: bytes):
    """Log in without a password, then answer the first query (simple or extended) with ``reply``."""
    def script(conn):
        conn.sendall(codec.AUTHENTICATION_OK + codec.build_backend_key(7, b"\x00\x00\x00\x01") + codec.build_ready())
        while True:
            kind, _ = _read_message(conn)
            if kind in (b"Q", b"S"):
                break
        conn.sendall(reply)
    return script


def _row_description() -> bytes:
    return codec.build_row_description([codec.FieldDescription("note", 0, 0, TEXT_OID, -1, -1, 0)])


DONE = codec.message("C", b"SELECT 1\x00")
# What follows ParseComplete and BindComplete, up to ReadyForQuery.
REPLIES = {
    # a column that claims more bytes than the row holds
    "DataRow longer than its frame": _row_description() + codec.message("D", struct.pack("!hi", 1, 999) + SECRET) + DONE,
    "DataRow with trailing bytes": _row_description() + codec.message("D", struct.pack("!hi", 1, 4) + b"abcd" + SECRET) + DONE,
    "negative column count": _row_description() + codec.message("D", struct.pack("!h", -3) + SECRET) + DONE,
    "row count no server sends": _row_description() + codec.message("C", b"SELECT \xc2\xb2\x00"),
    # One Execute has one result: anything around it is the target (or a box in between) lying.
    "a second CommandComplete": _row_description() + DONE + DONE,
    "rows after the end": _row_description() + DONE + codec.message("D", struct.pack("!hi", 1, len(SECRET)) + SECRET),
    "a second result": _row_description() + DONE + _row_description()
                       + codec.message("D", struct.pack("!hi", 1, len(SECRET)) + SECRET) + DONE,
    "rows before their description": codec.message("D", struct.pack("!hi", 1, len(SECRET)) + SECRET)
                                     + _row_description() + DONE,
    "ready before the result ends": _row_description() + codec.message("D", struct.pack("!hi", 1, len(SECRET)) + SECRET),
}


@pytest.mark.parametrize("case", list(REPLIES))
def test_a_target_that_breaks_the_protocol_is_named_as_the_fault(case, stack, api):
    upstream = ScriptedUpstream(_answer_with(
        codec.message("1") + codec.message("2") + REPLIES[case] + codec.build_ready()))
    good = stack.policy_path.read_text()
    try:
        stack.policy_path.write_text(good + HOSTILE_TARGET.format(port=upstream.port))
        time.sleep(0.05)
        client = api()
        deadline = time.monotonic() + 20
        while True:  # the broker and authorize see the new file on their next look
            response = client.post("/v1/targets/hostile/query", json={"sql": "SELECT note FROM t"})
            if response.status_code in (403, 404) and "hostile" in response.text and "protocol" not in response.text:
                assert time.monotonic() < deadline, response.text
                time.sleep(0.2)
                continue
            break
        body = assert_problem(response, 502, "upstream_protocol_error")
        assert "hostile" in body["detail"]
        assert SECRET.decode() not in response.text
        assert "not-the-password" not in response.text
    finally:
        stack.policy_path.write_text(good)
        upstream.close()
    assert not upstream.errors, upstream.errors
    ok = api().post("/v1/targets/demo/query", json={"sql": "SELECT 40 + 2 AS answer"})
    assert ok.status_code == 200 and ok.json()["rows"] == [[42]], ok.text


# The order checker alone (no I/O): (messages after Parse/Bind/Describe/Execute/Sync, accepted?).
ORDER_CORPUS = [
    ("12TDDCZ", True), ("12nCZ", True), ("12TsZ", True), ("12nIZ", True), ("EZ", True), ("12EZ", True),
    ("12TDCEZ", True),  # the implicit commit at Sync failed after the statement ended
    ("12TDNSACZ", True),  # notices, parameter reports and notifications come at any time
    ("12nHddcCZ", True), ("12nHcCZ", True), ("12nGEZ", True),  # COPY TO STDOUT; COPY FROM STDIN fails at Sync
    ("12nHdCZ", False), ("12nGdZ", False), ("12THcCZ", False),
    ("12TDCCZ", False), ("12TDCTDCZ", False), ("12DCZ", False), ("12TCDZ", False), ("12TDZ", False),
    ("12nDCZ", False), ("12TIZ", False), ("21TCZ", False), ("Z", False), ("12EDZ", False), ("12TDCZD", False),
    ("12TDCKZ", False),  # a message kind an Execute is never answered with
]


@pytest.mark.parametrize("sequence,accepted", ORDER_CORPUS)
def test_one_execute_is_answered_in_protocol_order(sequence, accepted):
    from broker.agent.pgquery import ExecuteAnswerOrder
    order = ExecuteAnswerOrder()
    if accepted:
        for kind in sequence:
            order.see(kind)
        assert order.stage == "ready"
    else:
        with pytest.raises(codec.ProtocolError, match="out of order"):
            for kind in sequence:
                order.see(kind)


@pytest.mark.parametrize("sql,status", [
    ("COPY (SELECT 1) TO STDOUT", 200),  # a real server's COPY answer is in order (its data is not returned)
    ("COPY (SELECT 1) TO STDOUT WITH (FORMAT binary)", 200),
])
def test_a_real_servers_copy_answer_is_in_order(sql, status, api):
    response = api().post("/v1/targets/demo/query", json={"sql": sql})
    assert response.status_code == status, response.text
    assert response.json()["rows"] == [] and response.json()["row_count"] == 1, response.text
