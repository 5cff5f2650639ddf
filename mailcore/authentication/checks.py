"""Every check for one inbound message: SPF for the client, DKIM for each signature, DMARC, ARC.

Blocking (DNS lookups within the resolver's budget, public-key operations): call it from a worker
thread, never from a listener's event loop. The lookups that do not wait on one another run at
once, in threads of a pool here: SPF (MAIL FROM, then HELO), each DKIM signature, the DMARC
record and ARC; DMARC's verdict then needs only the SPF and DKIM results.

What the envelope alone decides can be checked before the message arrives (`check_sender`, as
Postfix's SPF policy services check at RCPT): SPF, and the DMARC record of the reverse-path's
domain, which is the From: domain of most mail. A message whose checks then need no more
lookups (no DKIM-Signature, no ARC-Seal, the From: domain's record known) finishes its checks
without waiting on DNS or another thread (`check_at_once`). With a resolver that reads only
the DNS cache (`TXTResolver(cache_only=True)`), `check_sender` runs in the calling thread and
raises NotCached when an answer is not there.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from django.conf import settings

from mailcore.authentication import arc, dkim, dmarc, spf
from mailcore.authentication.resolver import DNSTemporaryError, NotCached, TXTResolver
from mailcore.authentication.results import Authentication

# The header block that is read for From: (a larger one is malformed mail anyway).
_MAX_HEAD = 256 * 1024
# The largest header block that check_at_once parses on the caller's thread (an event loop):
# usual mail has a few KiB; a hostile one of hundreds would hold every other session there.
AT_ONCE_HEAD = 32 * 1024

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


@dataclass(frozen=True)
class SenderChecks:
    """The checks of one transaction that need only its envelope, made while the message arrives."""

    spf: spf.SPFResult
    helo: spf.SPFResult | None
    dmarc_domain: str  # the reverse-path's domain, whose DMARC record was looked up ("" when none)
    dmarc_record: dmarc.DMARCRecord | None = None
    dmarc_error: DNSTemporaryError | None = None

    def record_for(self, author: str):
        """dmarc.evaluate's `found` for the From domain `author` when it is the one looked up, else None."""
        if not author or author != self.dmarc_domain:
            return None
        if self.dmarc_error is not None:
            error = self.dmarc_error

            def failed():
                raise error

            return failed
        return lambda: self.dmarc_record


def _here(fn, *args) -> Future:
    """A pool's `submit`, run in the calling thread."""
    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except Exception as exc:
        done.set_exception(exc)
    return done


def check_sender(resolver: TXTResolver, client_address: str, mail_from: str, helo: str) -> SenderChecks:
    """SPF for the transaction, and the DMARC record of the reverse-path's domain, at once.

    With a cache-only resolver, in this thread; raises NotCached when an answer is not cached.
    """
    domain = mail_from.rpartition("@")[2].lower().rstrip(".") if "@" in mail_from else ""
    domain = domain if dmarc.has_from_domain(domain) else ""
    start = _here if resolver.cache_only else _lookups().submit
    spf_results = start(_spf, resolver, client_address, mail_from, helo)
    record, error = None, None
    if domain:
        try:
            record = dmarc.find_record(resolver, domain)
        except DNSTemporaryError as exc:
            error = exc
    result, helo_result = spf_results.result()
    if resolver.missed:  # pyspf swallows some errors (exp=, ptr): its result may lack an answer
        raise NotCached(mail_from)
    return SenderChecks(result, helo_result, domain, record, error)


def check_at_once(content: bytes, sender: SenderChecks) -> Authentication | None:
    """`check` with the envelope's results, in the calling thread, when nothing is left to look up
    or verify (no DKIM-Signature, no ARC-Seal, the From domain's DMARC record known); else None."""
    if content.find(b"\r\n\r\n", 0, AT_ONCE_HEAD) < 0:
        return None  # a header block this large is parsed in a worker thread, never on a loop
    if dkim.has_field(content, b"dkim-signature:") or dkim.has_field(content, b"arc-seal:"):
        return None
    author = from_domain(content)
    found = sender.record_for(author)
    if found is None and dmarc.has_from_domain(author):
        return None
    auth = Authentication()
    auth.spf, auth.helo = sender.spf, sender.helo
    # With the record given (or no From domain), DMARC looks nothing up: no resolver.
    auth.dmarc = dmarc.evaluate(None, author, auth.spf, auth.dkim, found=found)
    auth.arc = arc.ARCResult("none", reason="no ARC set")
    return auth


def check(
    resolver: TXTResolver, content: bytes, client_address: str, mail_from: str, helo: str, sender: SenderChecks | None = None
) -> Authentication:
    """The results of every method; DNS trouble gives temperror results, never an exception.

    `sender`: the envelope's checks made beforehand by `check_sender` for this transaction.
    """
    author = from_domain(content)
    sealed = dkim.has_field(content, b"arc-seal:")
    start = _lookups().submit
    spf_results: Future | None = None
    if sender is None:
        spf_results = start(_spf, resolver, client_address, mail_from, helo)
    found = sender.record_for(author) if sender is not None else None
    record = None
    if found is None and dmarc.has_from_domain(author):
        record = start(dmarc.find_record, resolver, author)
        found = record.result
    arc_result = start(arc.verify, resolver, content) if sealed else None
    auth = Authentication()
    auth.dkim = dkim.verify(resolver, content, start)
    auth.spf, auth.helo = spf_results.result() if spf_results is not None else (sender.spf, sender.helo)
    auth.dmarc = dmarc.evaluate(resolver, author, auth.spf, auth.dkim, found=found)
    auth.arc = arc_result.result() if arc_result else arc.ARCResult("none", reason="no ARC set")
    return auth
