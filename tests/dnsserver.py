"""A small authoritative DNS server for tests: MX/A/AAAA from a dict, on UDP and TCP.

    with TestDNSServer({"a.test": {"MX": [(10, "mx.a.test")]}, "mx.a.test": {"A": ["127.0.0.2"]}}) as dns:
        env["MAIL_DNS_SERVERS"] = dns.address   # "127.0.0.1:PORT"

A name in the dict without the asked type gets NODATA (NOERROR, no answer); a name not in the dict
gets NXDOMAIN. dnslib's stock ZoneResolver would answer NXDOMAIN in both cases, which would make a
domain without MX look like a domain that does not exist. An MX of `(0, ".")` is a null MX (RFC 7505).
Records may be changed while the server runs: `dns.records["c.test"] = {...}`. TXT values are
strings (split into 255-octet character-strings as a zone would) and PTR values names;
`dns.silent` is a set of names that the server never answers, to test resolver timeouts.

Every answer, and the SOA of every negative answer (RFC 2308 §3), carries `dns.ttl` seconds
(TTL unless given): the servers under test cache answers that long, so a test that changes
records after they were asked for starts its server with `ttl=0`. `dns.queries` counts the
questions received, by (name, type). `dns.delay[name]` holds that name's answers back so many
seconds, and `dns.most_at_once` is the most questions the server has had in hand at one time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSError, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer

TTL = 5


class DictResolver(BaseResolver):
    def __init__(self, server: TestDNSServer):
        self.server = server

    def resolve(self, request, handler):
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        server = self.server
        with server.lock:
            server.queries[(qname, qtype)] += 1
            server.in_hand += 1
            server.most_at_once = max(server.most_at_once, server.in_hand)
        try:
            if qname in server.silent:
                raise DNSError(f"{qname} is silent")  # dnslib sends nothing: the client times out
            time.sleep(server.delay.get(qname, 0))  # not a wait: a slow server, as the test asks
            return self.answer(request, qname, qtype)
        finally:
            with server.lock:
                server.in_hand -= 1

    def answer(self, request, qname: str, qtype: str):
        reply = request.reply()
        ttl = self.server.ttl
        entry = self.server.records.get(qname)
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(_soa(request.q.qname, ttl))
            return reply
        for value in entry.get(qtype, []):
            if qtype == "MX":
                preference, exchange = value
                rdata = MX(DNSLabel(exchange if exchange != "." else ""), preference)
            elif qtype == "A":
                rdata = A(value)
            elif qtype == "AAAA":
                rdata = AAAA(value)
            elif qtype == "TXT":
                data = value.encode() if isinstance(value, str) else value
                rdata = TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])
            elif qtype == "PTR":
                rdata = PTR(DNSLabel(value))
            else:
                continue
            reply.add_answer(RR(request.q.qname, QTYPE.reverse[qtype], rdata=rdata, ttl=ttl))
        if not reply.rr:
            # NODATA: the name exists without this type; an SOA in the authority section says so (RFC 2308 §2.2).
            reply.add_auth(_soa(request.q.qname, ttl))
        return reply


def _soa(qname, ttl: int) -> RR:
    """The SOA of a negative answer: its TTL and MINIMUM say how long to cache it (RFC 2308 §3)."""
    return RR(qname, QTYPE.SOA, rdata=SOA("ns.test", "hostmaster.test", (1, 60, 60, 60, ttl)), ttl=ttl)


def _free_udp_and_tcp_port(host: str) -> int:
    """A port free for both UDP and TCP on `host` (dnslib needs both on the same port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


class TestDNSServer:
    """The server: a UDP and a TCP listener on one free port, each in a daemon thread."""

    __test__ = False  # not a pytest test class

    def __init__(self, records: dict[str, dict[str, list]] | None = None, host: str = "127.0.0.1", ttl: int = TTL):
        self.records: dict[str, dict[str, list]] = {k.lower(): v for k, v in (records or {}).items()}
        self.host = host
        self.ttl = ttl
        self.silent: set[str] = set()
        self.queries: Counter[tuple[str, str]] = Counter()
        self.delay: dict[str, float] = {}
        self.lock = threading.Lock()
        self.in_hand = 0
        self.most_at_once = 0
        self.port = 0
        self._servers: list[DNSServer] = []

    @property
    def address(self) -> str:
        """The value for MAIL_DNS_SERVERS."""
        return f"{self.host}:{self.port}"

    def start(self) -> TestDNSServer:
        resolver = DictResolver(self)
        logger = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-data,-error", prefix=False)
        for _attempt in range(5):
            self.port = _free_udp_and_tcp_port(self.host)
            try:
                udp = DNSServer(resolver, address=self.host, port=self.port, logger=logger)
                tcp = DNSServer(resolver, address=self.host, port=self.port, tcp=True, logger=logger)
            except OSError:  # another process took the port in between
                continue
            self._servers = [udp, tcp]
            for server in self._servers:
                server.start_thread()
            return self
        raise RuntimeError("could not start the test DNS server")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> TestDNSServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
