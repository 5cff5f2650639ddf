"""The page a digest link opens: the message's summary and one button; the action happens on POST only.

Mail scanners and link previews fetch every link in a mail (GET, sometimes HEAD): a GET must
change nothing. The POST needs no sign-in and no CSRF token: the signed token in the URL is the
only authority, and no cookie carries any that a forged cross-site request could borrow.
"""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from mailcore.models import ActorKind, Delivery, DeliveryState
from mailcore.quarantine import links
from mailcore.quarantine.digest import why_held
from mailcore.services import audit, quarantine, senders

VERBS = {
    "release": ("Release this message", "Release to my inbox"),
    "delete": ("Delete this message", "Delete it"),
    "allow": ("Always allow this sender", "Always allow this sender and release this message"),
}


def _page(request, context: dict, status: int = 200):
    response = render(request, "quarantine/link.html", context, status=status)
    response["X-Robots-Tag"] = "noindex"
    response["Referrer-Policy"] = "no-referrer"  # the token must not leave in a Referer header
    return response


@csrf_exempt
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def link(request, action: str, token: str):
    if action not in links.ACTIONS:
        raise Http404("no such action")
    title, button = VERBS[action]
    try:
        found = links.read(token, action)
    except links.LinkError as exc:
        return _page(request, {"title": "This link does not work", "error": str(exc)}, status=exc.status)
    delivery = (
        Delivery.objects.select_related("message", "mailbox", "mailbox__domain")
        .filter(pk=found.delivery_id, mailbox_id=found.mailbox_id)
        .first()
    )
    if delivery is None:
        return _page(request, {"title": "This link does not work", "error": "This message no longer exists."}, status=410)
    mailbox = delivery.mailbox
    context = {
        "title": title,
        "button": button,
        "delivery": delivery,
        "message": delivery.message,
        "why": why_held(delivery),
        "goes_at": links.expires_at(delivery),
        "held": delivery.state == DeliveryState.QUARANTINED,
        "action": action,
    }
    if action == "allow":
        try:
            context["pattern"] = senders.sender_pattern(delivery.message)
        except senders.SenderListError as exc:
            return _page(request, {**context, "error": str(exc)}, status=409)
    if request.method != "POST":
        return _page(request, context)

    actor = audit.Actor(ActorKind.LINK, f"digest link {links.link_id(token)} of {mailbox.address}", request.META.get("REMOTE_ADDR", ""))
    with audit.acting(actor):
        context["done"] = _act(action, delivery)
    delivery.refresh_from_db(fields=["state"])
    context["held"] = delivery.state == DeliveryState.QUARANTINED
    return _page(request, context)


def _act(action: str, delivery: Delivery) -> str:
    """Do the link's action once; doing it again says so and changes nothing."""
    mailbox = delivery.mailbox
    if action == "allow":
        pattern, moved = senders.set_from_message(senders.ALLOW, delivery, senders.mailbox_scope(mailbox))
        return f"Mail from {pattern} now goes to your inbox." + (" This message was released to your inbox." if moved else "")
    try:
        if action == "release":
            quarantine.release(delivery.pk, mailbox=mailbox)
            return "Released to your inbox."
        quarantine.delete(delivery.pk, mailbox=mailbox)
        return "Deleted."
    except quarantine.QuarantineError:
        return "This message is no longer held: nothing was changed."
