"""Every check for one inbound message: SPF for the client, DKIM for each signature, DMARC, ARC.

Blocking (DNS lookups within the resolver's budget, public-key operations): call it from a worker
thread, never from a listener's event loop. The lookups that do not wait on one another run at
once, in threads of a pool here: SPF (MAIL FROM, then HELO), each DKIM signature, the DMARC
record and ARC; DMARC's verdict then needs only the SPF and DKIM results.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from django.conf import settings

from mailcore.authentication import arc, dkim, dmarc, spf
from mailcore.authentication.resolver import TXTResolver
from mailcore.authentication.results import Authentication

# The header block that is read for From: (a larger one is malformed mail anyway).
_MAX_HEAD = 256 * 1024

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _lookups() -> ThreadPoolExecutor:
    """The pool of lookup threads: four per authentication thread (SPF, DMARC, ARC, DKIM).

    A message with more DKIM signatures waits its turn for the others; a task that starts after
    the message's DNS budget is spent gets only cached answers, so the wait stays bounded.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4 * settings.MAIL_AUTH_WORKER_THREADS, thread_name_prefix="auth-dns")
        return _pool


def from_domain(content: bytes) -> str:
    """RFC 7489 §6.6.1: the domain of the one address of the one From: field, '' when there is not exactly one."""
    end = content.find(b"\r\n\r\n", 0, _MAX_HEAD)
    head = content[: end + 2 if end >= 0 else _MAX_HEAD]
    fields = BytesHeaderParser(policy=compat32).parsebytes(head).get_all("From") or []
    addresses = [address for _name, address in getaddresses([str(f) for f in fields]) if address]
    if len(fields) != 1 or len(addresses) != 1 or "@" not in addresses[0]:
        return ""
    return addresses[0].rpartition("@")[2].strip().rstrip(">").lower()


def _spf(resolver: TXTResolver, client_address: str, mail_from: str, helo: str) -> tuple[spf.SPFResult, spf.SPFResult | None]:
    """SPF for MAIL FROM (or HELO when the reverse-path is null), and for HELO on its own (RFC 7208 §2.3: recommended)."""
    result = spf.check_host(resolver, client_address, mail_from, helo)
    helo_result = spf.check_helo(resolver, client_address, helo) if mail_from and spf.is_domain(helo.lower()) else None
    return result, helo_result


def check(resolver: TXTResolver, content: bytes, client_address: str, mail_from: str, helo: str) -> Authentication:
    """The results of every method; DNS trouble gives temperror results, never an exception."""
    author = from_domain(content)
    sealed = dkim.has_field(content, b"arc-seal:")
    start = _lookups().submit
    spf_results = start(_spf, resolver, client_address, mail_from, helo)
    record = start(dmarc.find_record, resolver, author) if dmarc.has_from_domain(author) else None
    arc_result = start(arc.verify, resolver, content) if sealed else None
    auth = Authentication()
    auth.dkim = dkim.verify(resolver, content, start)
    auth.spf, auth.helo = spf_results.result()
    auth.dmarc = dmarc.evaluate(resolver, author, auth.spf, auth.dkim, found=record.result if record else None)
    auth.arc = arc_result.result() if arc_result else arc.ARCResult("none", reason="no ARC set")
    return auth
