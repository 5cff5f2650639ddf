"""The TLS contexts of every listener and every client connection, so that all agree on the versions."""

from __future__ import annotations

import ssl

from django.conf import settings

# RFC 8996 deprecates TLS 1.0 and 1.1.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context() -> ssl.SSLContext | None:
    """The listeners' context from MAIL_TLS_CERT and MAIL_TLS_KEY, or None when they are not set."""
    if not (settings.MAIL_TLS_CERT and settings.MAIL_TLS_KEY):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(settings.MAIL_TLS_CERT, settings.MAIL_TLS_KEY)
    return context


def opportunistic_client_context() -> ssl.SSLContext:
    """Opportunistic STARTTLS (RFC 7435, RFC 3207), as MTAs do it: encrypt whenever the peer offers
    it, and accept whatever certificate it shows, since an MX host has no name to check it against
    beyond what (unauthenticated) DNS said. It protects against passive eavesdroppers only."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = MINIMUM_VERSION
    return context
