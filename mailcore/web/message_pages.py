"""The parts of the message view that the console and the owners' self-service share: page data, raw, sanitized HTML."""

from __future__ import annotations

import html as html_module

import nh3
from django.http import HttpResponse
from django.template.loader import render_to_string

from mailcore.authentication.results import summary as auth_summary
from mailcore.models import Announcement, Message
from mailcore.web import parts as message_parts
from mailcore.web.sanitize import sanitize_html

# For the sanitized HTML part, which is shown inside <iframe sandbox>. Even if the sanitizer
# missed something, nothing runs (no script-src, CSP `sandbox` without allow-scripts), nothing is
# fetched (default-src 'none': no remote images, fonts or CSS), and no form can be sent.
HTML_PART_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox"
)


def context(message: Message, *, show_html_as_text: bool = False) -> dict:
    """What the message view template needs; `parts` is None when the body cannot be read."""
    problems = []
    try:
        parts = message_parts.parse(message_parts.read_raw(message))
    except OSError as exc:
        parts = None
        problems.append(f"the stored body cannot be read: {exc}")
    html_text = None
    if parts is not None:
        problems.extend(parts.problems)
        if parts.html is not None and show_html_as_text:
            html_text = html_module.unescape(nh3.clean(parts.html, tags=set(), clean_content_tags={"script", "style", "title"}))
    return {
        "message": message,
        # The whole envelope, for the console; the owner's view narrows it to the owner.
        "recipients": message.rcpt_tos,
        "parts": parts,
        "problems": problems,
        "header_auth_results": message_parts.authentication_results(parts) if parts else [],
        "auth_summary": auth_summary(message.auth_methods or {}),
        "announcements": Announcement.objects.filter(message=message).order_by("received_at"),
        "html_text": html_text,
        "show_html_as_text": show_html_as_text,
    }


def raw_response(message: Message) -> HttpResponse:
    """The stored octets as they are, as a download (never rendered by the browser)."""
    response = HttpResponse(message_parts.read_raw(message), content_type="message/rfc822")
    response["Content-Disposition"] = f'attachment; filename="{message.queue_id}.eml"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


def html_frame_response(message: Message) -> HttpResponse:
    """The HTML part, sanitized, as a document for the message view's sandboxed frame."""
    parts = message_parts.parse(message_parts.read_raw(message))
    body = sanitize_html(parts.html or "")
    document = render_to_string("mailcore/html_part.html", {"body": body})
    response = HttpResponse(document, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = HTML_PART_CSP
    response["X-Content-Type-Options"] = "nosniff"
    response["Referrer-Policy"] = "no-referrer"
    # Framed by our own message view only; XFrameOptionsMiddleware keeps a header that is already set.
    response["X-Frame-Options"] = "SAMEORIGIN"
    return response
