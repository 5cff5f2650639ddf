"""The GET client (spec §4, §5) against scripted origin MX peers over real sockets."""

from __future__ import annotations

import asyncio
import ssl
import time

from mailcore.reverse_delivery.ids import is_valid_id, new_source_id
from mailcore.reverse_delivery.origins import OriginHost
from mailcore.reverse_delivery.pull import LINE_LIMIT, pull_from_host
from tests.conftest import self_signed_cert
from tests.origin_peer import ScriptedOrigin, body_reply

ID1, ID2, ID3 = "a" * 32, "b" * 32, "c" * 32
MESSAGE = b"From: alice@a.test\r\nSubject: hi\r\n\r\nline one\r\n.starts with a dot\r\n..two dots\r\n.\r\nlast\r\n"


def pull(origin: ScriptedOrigin, ids: list[str], timeout: float = 2.0, max_size: int = 1_000_000):
    pulled = []

    async def on_pulled(p):
        pulled.append(p)

    host = OriginHost("mx.origin.test", origin.host)
    report = asyncio.run(
        pull_from_host(host, ids, on_pulled, port=origin.port, helo_name="mx.b.test", timeout=timeout, max_size=max_size)
    )
    return report, {p.source_id: p for p in pulled}


def test_ids_are_32_letters_and_digits_from_128_random_bits():
    ids = {new_source_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and i == i.lower() and int(i, 16) >= 0 for i in ids)
    assert all(is_valid_id(i) for i in ids)
    assert is_valid_id("ABCDEFabcdef0123456789abcdefABCD")
    assert not is_valid_id("a" * 31)
    assert not is_valid_id("a" * 33)
    assert not is_valid_id("a" * 31 + "-")
    assert not is_valid_id("a" * 31 + "é")


def test_pipelined_gets_body_refusal_and_temporary_on_one_connection():
    answers = {ID1: body_reply(ID1, MESSAGE), ID2: b"550 5.1.0 " + ID2.encode() + b" unknown\r\n", ID3: b"451 4.3.0 try later\r\n"}
    with ScriptedOrigin(answers, pipelined=2) as origin:
        report, pulled = pull(origin, [ID1, ID2, ID3])
    assert origin.connections == 1
    assert origin.commands == ["EHLO mx.b.test", f"GET {ID1}", f"GET {ID2}", f"GET {ID3}", "QUIT"]
    # Pipelined: the other GETs were on the wire before the first answer.
    assert origin.buffered_before_first_answer == f"GET {ID2}\r\nGET {ID3}\r\n".encode()
    # The body comes back un-stuffed, byte for byte what the origin stored.
    assert pulled[ID1].body == MESSAGE
    assert pulled[ID2].body is None and "550 5.1.0" in pulled[ID2].refusal
    assert report.unsettled == [ID3] and "451 4.3.0" in report.error
    assert report.usable


def test_origin_that_does_not_list_source_gets_no_get():
    with ScriptedOrigin({ID1: body_reply(ID1, MESSAGE)}, keywords=("PIPELINING",)) as origin:
        report, pulled = pull(origin, [ID1])
    assert pulled == {}
    assert report.unsettled == [ID1] and not report.usable
    assert "does not list SOURCE" in report.error
    assert not any(c.startswith("GET") for c in origin.commands)


def test_body_without_final_dot_then_silence_times_out():
    partial = f"250 2.0.0 {ID1} message follows\r\n".encode() + b"From: alice@a.test\r\n\r\nhalf a body\r\n"
    with ScriptedOrigin({ID1: partial}, hang_after=[ID1]) as origin:
        started = time.monotonic()
        report, pulled = pull(origin, [ID1], timeout=0.5)
        elapsed = time.monotonic() - started
        assert origin.closed_by_client.wait(2)
    assert pulled == {}
    assert report.unsettled == [ID1]
    assert "timed out" in report.error
    assert elapsed < 2


def test_oversize_body_stops_reading_closes_and_fails_the_id():
    big = b"From: alice@a.test\r\n\r\n" + b"x" * 998 + b"\r\n"
    answers = {ID1: body_reply(ID1, big * 200), ID2: body_reply(ID2, MESSAGE)}
    with ScriptedOrigin(answers) as origin:
        report, pulled = pull(origin, [ID1, ID2], max_size=50_000)
        assert origin.closed_by_client.wait(2)
    assert pulled[ID1].body is None and "size limit of 50000" in pulled[ID1].refusal
    # The other id is not lost: it waits for another host or the next sweep.
    assert report.unsettled == [ID2]
    assert "QUIT" not in origin.commands


def test_overlong_line_is_refused_like_data():
    answers = {ID1: f"250 2.0.0 {ID1} message follows\r\n".encode() + b"x" * (LINE_LIMIT + 10) + b"\r\n.\r\n"}
    with ScriptedOrigin(answers) as origin:
        report, pulled = pull(origin, [ID1])
    assert "line longer than" in pulled[ID1].refusal


def test_421_leaves_the_rest_for_later():
    answers = {ID1: b"421 4.7.0 too many unknown ids\r\n"}
    with ScriptedOrigin(answers) as origin:
        report, pulled = pull(origin, [ID1, ID2])
    assert pulled == {}
    assert report.unsettled == [ID1, ID2] and "421" in report.error


def test_reply_naming_another_id_is_not_filed_under_ours():
    with ScriptedOrigin({ID1: body_reply(ID2, MESSAGE)}) as origin:
        report, pulled = pull(origin, [ID1])
    assert pulled == {} and report.unsettled == [ID1]


def test_nothing_listening_is_temporary():
    with ScriptedOrigin() as origin:
        port = origin.port
    report = asyncio.run(
        pull_from_host(OriginHost("x", "127.0.0.1"), [ID1], _ignore, port=port, helo_name="b", timeout=1, max_size=10)
    )
    assert report.unsettled == [ID1] and "cannot connect" in report.error


async def _ignore(pulled):
    raise AssertionError("nothing should be settled")


def test_starttls_is_used_when_offered_whatever_the_certificate(tmp_path):
    # A self-signed certificate for another name: opportunistic TLS still encrypts (RFC 7435).
    cert, key = self_signed_cert(tmp_path, "elsewhere.example")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    with ScriptedOrigin({ID1: body_reply(ID1, MESSAGE)}, tls=server_tls) as origin:
        report, pulled = pull(origin, [ID1])
    assert pulled[ID1].body == MESSAGE
    assert origin.commands[:2] == ["EHLO mx.b.test", "STARTTLS"]
    # The id travels only inside TLS (spec §6, "Confidentiality"), after a fresh EHLO (RFC 3207 §4.2).
    assert origin.commands_under_tls[:2] == ["EHLO mx.b.test", f"GET {ID1}"]
