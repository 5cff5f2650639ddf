"""An HTTP client against a running `runweb`: a browser's cookie jar and the CSRF token of its forms."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

from tests.factories import start_listener


class WebClient:
    """A browser's part in the owner's sign-in: a cookie jar, the CSRF token from the form."""

    def __init__(self, base: str, headers: dict[str, str] | None = None):
        self.base = base
        self.headers = headers or {}
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> str:
        return self.request(path)[1]

    def request(self, path: str, data: dict | None = None) -> tuple[int, str]:
        """(status, page) of a GET, or of a POST of `data` (with the CSRF token from the cookie)."""
        body = None
        if data is not None:
            token = next((c.value for c in self.jar if c.name == "csrftoken"), "")
            body = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **data}).encode()
        request = urllib.request.Request(self.base + path, data=body, headers={**self.headers, "Referer": self.base + path})
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def post_form(self, path: str, fields: dict) -> str:
        """GET the form at `path` (for its CSRF token), then POST `fields` to it."""
        page = self.get(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **fields}).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers)
        with self.opener.open(request, timeout=60) as response:
            return response.read().decode()

    def sign_in(self, address: str, password: str) -> str:
        return self.post_form("/mailbox/login/", {"address": address, "password": password})

    def admin_sign_in(self, username: str, password: str) -> str:
        return self.post_form("/admin/login/?next=/admin/", {"username": username, "password": password})


def start_web(server_factory, **env: str) -> str:
    port = start_listener(server_factory, "runweb", **env).port
    return f"http://127.0.0.1:{port}"
