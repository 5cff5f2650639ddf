"""Every check for one inbound message: SPF for the client, DKIM for each signature, DMARC, ARC.

Blocking (DNS lookups within the resolver's budget, public-key operations): call it from a worker
thread, never from a listener's event loop.
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from mailcore.authentication import arc, dkim, dmarc, spf
from mailcore.authentication.resolver import TXTResolver
from mailcore.authentication.results import Authentication

# The header block that is read for From: (a larger one is malformed mail anyway).
_MAX_HEAD = 256 * 1024


def from_domain(content: bytes) -> str:
    """RFC 7489 §6.6.1: the domain of the one address of the one From: field, '' when there is not exactly one."""
    end = content.find(b"\r\n\r\n", 0, _MAX_HEAD)
    head = content[: end + 2 if end >= 0 else _MAX_HEAD]
    fields = BytesHeaderParser(policy=compat32).parsebytes(head).get_all("From") or []
    addresses = [address for _name, address in getaddresses([str(f) for f in fields]) if address]
    if len(fields) != 1 or len(addresses) != 1 or "@" not in addresses[0]:
        return ""
    return addresses[0].rpartition("@")[2].strip().rstrip(">").lower()


def check(resolver: TXTResolver, content: bytes, client_address: str, mail_from: str, helo: str) -> Authentication:
    """The results of every method; DNS trouble gives temperror results, never an exception."""
    auth = Authentication()
    auth.spf = spf.check_host(resolver, client_address, mail_from, helo)
    if mail_from and spf.is_domain(helo.lower()):
        auth.helo = spf.check_helo(resolver, client_address, helo)  # RFC 7208 §2.3: recommended too
    auth.dkim = dkim.verify(resolver, content)
    auth.dmarc = dmarc.evaluate(resolver, from_domain(content), auth.spf, auth.dkim)
    auth.arc = arc.verify(resolver, content)
    return auth
