"""The web UI behind a TLS proxy, against a running runweb: X-Forwarded-For and X-Forwarded-Proto
count only from MAIL_WEB_TRUSTED_PROXIES; secure cookies and HSTS when MAIL_WEB_URL is https."""

from __future__ import annotations

import http.client
import re
import urllib.parse

import pytest

from mailcore.web.proxy import client_address
from mailsite.env import parse_networks
from tests.factories import ADDRESS, PASSWORD, make_mailbox
from tests.web_client import WebClient, start_web

LOCKED_OUT = "Too many failed sign-ins from your address."
LIMITS = {"MAIL_AUTH_MAX_FAILURES": "2"}


def test_the_client_is_the_nearest_untrusted_hop():
    proxies = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert client_address("127.0.0.1", "203.0.113.9, 198.51.100.7", proxies) == "198.51.100.7"
    assert client_address("127.0.0.1", "198.51.100.7, 10.1.2.3", proxies) == "198.51.100.7"  # two proxies
    assert client_address("192.0.2.1", "198.51.100.7", proxies) == "192.0.2.1"  # not a proxy of ours
    assert client_address("127.0.0.1", "", proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", "nonsense, 10.0.0.2", proxies) == "10.0.0.2"
    assert client_address("127.0.0.1", "[2001:db8::1]:4711", proxies) == "2001:db8::1"


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address, "X-Forwarded-Proto": "http"}


@pytest.mark.django_db(transaction=True)
def test_behind_a_trusted_proxy_failures_count_per_forwarded_address(server_factory):
    make_mailbox()
    base = start_web(server_factory, MAIL_WEB_TRUSTED_PROXIES="127.0.0.1", **LIMITS)
    attacker = WebClient(base, forwarded("198.51.100.7"))
    for _ in range(2):
        attacker.sign_in(ADDRESS, "wrong")
    assert LOCKED_OUT in attacker.sign_in(ADDRESS, PASSWORD)
    # Another user behind the same proxy is not locked out by the attacker's failures.
    page = WebClient(base, forwarded("198.51.100.8")).sign_in(ADDRESS, PASSWORD)
    assert "Sign out" in page, page


@pytest.mark.django_db(transaction=True)
def test_an_untrusted_peer_cannot_choose_its_address(server_factory):
    make_mailbox()
    base = start_web(server_factory, MAIL_WEB_TRUSTED_PROXIES="10.0.0.1", **LIMITS)
    # Each attempt claims another address; all are counted against the peer's own (127.0.0.1).
    for n in range(2):
        WebClient(base, forwarded(f"198.51.100.{n}")).sign_in(ADDRESS, "wrong")
    assert LOCKED_OUT in WebClient(base, forwarded("198.51.100.99")).sign_in(ADDRESS, PASSWORD)


def raw(port: int, method: str, path: str, headers: dict[str, str], body: str = "") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body or None, headers=headers)
    response = conn.getresponse()
    response.text = response.read().decode()
    conn.close()
    return response


def cookies(response) -> dict[str, str]:
    """name -> the whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_all("Set-Cookie") or []}


@pytest.mark.django_db(transaction=True)
def test_https_through_the_proxy_secure_cookies_and_hsts(server_factory):
    make_mailbox()
    base = start_web(server_factory, MAIL_WEB_URL="https://mail.a.test", MAIL_WEB_TRUSTED_PROXIES="127.0.0.1")
    port = int(base.rsplit(":", 1)[1])
    proxy = {"Host": "mail.a.test", "X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    page = raw(port, "GET", "/mailbox/login/", proxy)
    assert page.status == 200
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    csrf = cookies(page)["csrftoken"]
    assert "; Secure" in csrf
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "address": ADDRESS, "password": PASSWORD})
    signed_in = raw(port, "POST", "/mailbox/login/", {
        **proxy,
        "Cookie": csrf.split(";", 1)[0],
        "Origin": "https://mail.a.test",
        "Referer": "https://mail.a.test/mailbox/login/",
        "Content-Type": "application/x-www-form-urlencoded",
    }, form)
    assert signed_in.status == 302 and signed_in.headers["Location"] == "/mailbox/"
    session = cookies(signed_in)["sessionid"]
    assert "; Secure" in session and "; HttpOnly" in session
    # The same request from a client that claims https itself, without a proxy we trust: no HSTS.
    plain = raw(port, "GET", "/mailbox/login/", {"Host": "mail.a.test", "X-Forwarded-Proto": "https"})
    assert plain.status == 200 and "Strict-Transport-Security" in plain.headers  # 127.0.0.1 is trusted here
    untrusted = start_web(server_factory, MAIL_WEB_URL="https://mail.a.test", MAIL_WEB_TRUSTED_PROXIES="10.0.0.1")
    claimed = raw(int(untrusted.rsplit(":", 1)[1]), "GET", "/mailbox/login/", {"Host": "mail.a.test", "X-Forwarded-Proto": "https"})
    assert claimed.status == 200 and "Strict-Transport-Security" not in claimed.headers
