"""The spamd client's wire format and deadline, the verdict table, and X-Spam header folding."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mailcore.models import SpamStatus
from mailcore.spam.check import SpamVerdict, fold
from mailcore.spam.policy import SpamAction, Thresholds, decide
from mailcore.spam.spamd import SpamdClient, SpamdError, SpamdReport, SpamdTimeout, parse_symbols_reply, symbols_request

# spamd 4.0.1's answer to SYMBOLS for a GTUBE message, byte for byte.
GTUBE_REPLY = (
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 55\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
    b"GTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO"
)


def test_symbols_request_counts_the_octets_of_the_message():
    message = b"Subject: caf\xc3\xa9\r\n\r\nhi\r\n"
    assert symbols_request(message) == b"SYMBOLS SPAMC/1.5\r\nContent-length: 22\r\n\r\n" + message
    assert symbols_request(b"x", user="nobody") == b"SYMBOLS SPAMC/1.5\r\nContent-length: 1\r\nUser: nobody\r\n\r\nx"


def test_parse_a_real_gtube_reply():
    report = parse_symbols_reply(GTUBE_REPLY)
    assert report == SpamdReport(
        score=1000.0, required=5.0, rules=("GTUBE", "MSGID_SHORT", "NO_RECEIVED", "NO_RELAYS", "TVD_SPACE_RATIO")
    )


def test_parse_a_clean_reply_with_a_negative_score_and_no_rules():
    report = parse_symbols_reply(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.1 / 5.0\r\n\r\n")
    assert report == SpamdReport(score=-0.1, required=5.0, rules=())


@pytest.mark.parametrize(
    "reply, error",
    [
        (b"", "incomplete reply"),
        (b"SPAMD/1.1 76 Bad header line: (EOF)\r\n\r\n", "spamd answered 76 Bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-length: 0\r\n\r\n", "not a spamd reply"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "without a Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 55\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,MSG", "truncated"),
    ],
)
def test_replies_that_give_no_score_are_errors(reply, error):
    with pytest.raises(SpamdError, match=error):
        parse_symbols_reply(reply)


class CannedSpamd:
    """A listener that reads the request and answers with `behaviour`: real sockets, no spamd."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            request = b""
            while chunk := conn.recv(65536):
                request += chunk
            self.requests.append(request)
            self.behaviour(conn, self.stopped)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self.thread.join(timeout=5)


def test_client_sends_the_request_half_closes_and_reads_the_whole_reply():
    def answer(conn, stopped):
        conn.sendall(GTUBE_REPLY[:30])
        time.sleep(0.05)  # not a wait: the reply comes in two pieces, which the client must join
        conn.sendall(GTUBE_REPLY[30:])

    spamd = CannedSpamd(answer)
    try:
        report = SpamdClient("127.0.0.1", spamd.port, timeout=2).symbols(b"Subject: x\r\n\r\nbody\r\n")
    finally:
        spamd.close()
    assert report.score == 1000.0 and report.rules[0] == "GTUBE"
    assert spamd.requests == [symbols_request(b"Subject: x\r\n\r\nbody\r\n")]


def test_a_trickling_spamd_is_cut_off_at_the_deadline_not_per_read():
    def trickle(conn, stopped):
        conn.sendall(b"SPAMD/1.1 0 EX_OK\r\n")
        while not stopped.wait(0.05):  # not a wait: a byte every 50 ms, the trickle under test
            try:
                conn.sendall(b"X")
            except OSError:
                return

    spamd = CannedSpamd(trickle)
    try:
        started = time.monotonic()
        with pytest.raises(SpamdTimeout, match="no answer within 0.4 s"):
            SpamdClient("127.0.0.1", spamd.port, timeout=0.4).symbols(b"Subject: x\r\n\r\nbody\r\n")
        assert time.monotonic() - started < 0.9
    finally:
        spamd.close()


def test_refused_connection_is_an_error_at_once():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        started = time.monotonic()
        with pytest.raises(SpamdError, match="cannot talk to spamd") as error:
            SpamdClient(*closed.getsockname(), timeout=5).symbols(b"x")
    assert not isinstance(error.value, SpamdTimeout)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "score, verified, thresholds, action",
    [
        (2.9, False, Thresholds(), SpamAction.DELIVER),
        (3.0, False, Thresholds(), SpamAction.QUARANTINE),  # at the threshold, as SpamAssassin's required_score
        (7.9, True, Thresholds(), SpamAction.DELIVER),
        (8.0, True, Thresholds(), SpamAction.QUARANTINE),
        (1000.0, False, Thresholds(), SpamAction.QUARANTINE),  # no reject score: never refused
        (1000.0, False, Thresholds(reject=15.0), SpamAction.REJECT),
        (14.9, False, Thresholds(reject=15.0), SpamAction.QUARANTINE),
        (1000.0, True, Thresholds(verified=1500.0, reject=15.0), SpamAction.DELIVER),  # reject never overrides
        (-2.0, False, Thresholds(unverified=-1.0), SpamAction.DELIVER),
    ],
)
def test_decide(score, verified, thresholds, action):
    assert decide(score, verified, thresholds) == action


def test_x_spam_status_folds_long_rule_lists_and_unfolds_to_the_original():
    rules = tuple(f"SOME_LONG_RULE_NAME_{i}" for i in range(30))
    verdict = SpamVerdict(
        SpamStatus.SCORED, score=12.5, rules=rules, actions={"a@a.test": SpamAction.QUARANTINE}, required=3.0
    )
    headers = verdict.headers().decode()
    assert headers.endswith("\r\nX-Spam-Score: 12.5\r\n")
    status = headers.split("\r\nX-Spam-Score:")[0]
    assert all(len(line) <= 78 for line in status.split("\r\n"))
    unfolded = status.replace("\r\n\t", "")  # RFC 5322 §2.2.3: unfolding removes the CRLF
    assert unfolded == f"X-Spam-Status: Yes, score=12.5 required=3.0 tests={','.join(rules)}"


def test_fold_keeps_short_values_on_one_line():
    assert fold("No, score=0.1 required=3.0 tests=NONE") == "No, score=0.1 required=3.0 tests=NONE"


def test_rule_names_cannot_inject_header_lines():
    body = b"GTUBE,EVIL\r\nX-Spam-Status: No,OK_RULE"
    reply = b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n" % len(body) + body
    assert parse_symbols_reply(reply).rules == ("GTUBE", "OK_RULE")
