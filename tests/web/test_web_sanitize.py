"""The HTML sanitizer and the message-part reader behind the message view."""

from __future__ import annotations

import pytest

from mailcore.web.parts import parse
from mailcore.web.sanitize import sanitize_html


@pytest.mark.parametrize("dirty, forbidden", [
    ("<script>alert(1)</script><p>x</p>", ["<script", "alert"]),
    ('<p onmouseover="x()">x</p>', ["onmouseover"]),
    ('<img src="http://tracker.example/p.gif">', ["<img", "tracker"]),
    ('<div style="background:url(http://tracker.example/b)">x</div>', ["style", "tracker"]),
    ('<form action="http://phish.example"><input name=pw><button>go</button></form>', ["<form", "<input", "<button", "phish"]),
    ('<a href="javascript:alert(1)">x</a>', ["javascript"]),
    ('<a href="data:text/html,<script>x</script>">x</a>', ["data:", "<script"]),
    ('<iframe src="https://e.example"></iframe><object data=x></object><embed src=x>', ["<iframe", "<object", "<embed"]),
    ('<svg><script>alert(1)</script></svg><math><mi>x</mi></math>', ["<svg", "<script", "<math"]),
    ('<link rel=stylesheet href="http://e.example/a.css"><style>@import "http://e.example/b.css";</style>', ["<link", "@import", "<style"]),
    ('<meta http-equiv="refresh" content="0;url=http://e.example"><base href="http://e.example/">', ["<meta", "<base", "refresh"]),
    ('<p>a<!-- <script>x</script> -->b</p>', ["<!--", "<script"]),
    ("<table background=\"http://t.example/x.gif\"><tr><td>x</td></tr></table>", ["background", "t.example"]),
])
def test_sanitizer_removes(dirty, forbidden):
    clean = sanitize_html(dirty)
    for text in forbidden:
        assert text not in clean


def test_sanitizer_keeps_reading_matter():
    clean = sanitize_html('<h1>Title</h1><p>Some <b>bold</b> and <a href="https://ok.example/x">a link</a>.</p>'
                          '<table><tr><td colspan="2">cell</td></tr></table><ul><li>item</li></ul>')
    assert "<h1>Title</h1>" in clean and "<b>bold</b>" in clean and "<li>item</li>" in clean and 'colspan="2"' in clean
    assert '<a href="https://ok.example/x" rel="noopener noreferrer nofollow">a link</a>' in clean


def test_parts_of_a_multipart_message():
    raw = (
        b"From: a@b.example\r\nTo: c@d.example\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"X-Long: first\r\n second\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b'--b1\r\nContent-Type: multipart/alternative; boundary="b2"\r\n\r\n'
        b"--b2\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHall=C3=B6\r\n"
        b"--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hall\xc3\xb6</p>\r\n--b2--\r\n"
        b'--b1\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename="a.png"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b1--\r\n"
    )
    parts = parse(raw)
    headers = dict(parts.headers)
    assert headers["Subject"] == "Grüße"
    assert headers["X-Long"] == "first second"
    assert parts.text.strip() == "Hallö"
    assert parts.html.strip() == "<p>Hallö</p>"
    assert [(a.filename, a.content_type, a.size) for a in parts.attachments] == [("a.png", "image/png", 8)]


def test_parts_of_broken_input_never_raise():
    parse(b"")
    parse(b"\xff\xfe garbage without headers")
    parts = parse(b"Subject: x\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\nbody \xe9\r\n")
    assert "body" in parts.text and parts.problems
    parts = parse(b'Content-Type: multipart/mixed; boundary="never"\r\n\r\nno parts at all\r\n')
    assert any("StartBoundaryNotFoundDefect" in p for p in parts.problems)
