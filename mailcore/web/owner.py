"""Self-service for mailbox owners: sign in with the mailbox address and password, see and act on their own mail only."""

from __future__ import annotations

import functools
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from mailcore.models import ActorKind, Delivery, DeliveryState, Mailbox
from mailcore.services import audit, quarantine, senders
from mailcore.web import message_pages
from mailcore.web.forms import OwnerLoginForm

SESSION_MAILBOX = "mailcore_owner_mailbox"
SESSION_HASH = "mailcore_owner_auth"
RECENT_DAYS = 30
RECENT_LIMIT = 100


def _auth_hash(mailbox: Mailbox) -> str:
    # Like Django's session auth hash: a password change ends every session signed in with the old one.
    return salted_hmac("mailcore.web.owner", mailbox.password, algorithm="sha256").hexdigest()


def signed_in_mailbox(request) -> Mailbox | None:
    mailbox_id = request.session.get(SESSION_MAILBOX)
    if mailbox_id is None:
        return None
    mailbox = Mailbox.objects.select_related("domain").filter(pk=mailbox_id, active=True, domain__active=True).first()
    if mailbox is None or not constant_time_compare(request.session.get(SESSION_HASH, ""), _auth_hash(mailbox)):
        request.session.pop(SESSION_MAILBOX, None)
        request.session.pop(SESSION_HASH, None)
        return None
    return mailbox


def owner_required(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        mailbox = signed_in_mailbox(request)
        if mailbox is None:
            return HttpResponseRedirect(f"{reverse('mailbox:login')}?next={request.path}")
        request.mailbox = mailbox
        # What the owner changes is logged in their name, with the address they came from.
        with audit.acting(audit.Actor(ActorKind.OWNER, mailbox.address, request.META.get("REMOTE_ADDR", ""))):
            return view(request, *args, **kwargs)

    return never_cache(wrapper)


def _own_delivery(request, delivery_id: int) -> Delivery:
    """The signed-in owner's delivery, or 404: another mailbox's ids look exactly like ids that do not exist."""
    delivery = (
        Delivery.objects.select_related("message", "mailbox")
        .filter(pk=delivery_id, mailbox=request.mailbox)
        .exclude(state=DeliveryState.DELETED)
        .first()
    )
    if delivery is None:
        raise Http404("no such message")
    return delivery


@sensitive_post_parameters("password")
@never_cache
def login(request):
    # The peer's address: runweb (waitress) serves clients directly, not behind a proxy.
    form = OwnerLoginForm(request.POST or None, client_address=request.META.get("REMOTE_ADDR", ""))
    if request.method == "POST" and form.is_valid():
        # A fresh session key on sign-in, so a planted session id is worth nothing (session fixation).
        request.session.cycle_key()
        request.session[SESSION_MAILBOX] = form.mailbox.pk
        request.session[SESSION_HASH] = _auth_hash(form.mailbox)
        target = request.POST.get("next") or request.GET.get("next") or ""
        if not target.startswith("/mailbox/") or target.startswith("//"):
            target = reverse("mailbox:home")
        return HttpResponseRedirect(target)
    return render(request, "mailbox/login.html", {"form": form, "next": request.GET.get("next", "")})


@require_POST
def logout(request):
    request.session.pop(SESSION_MAILBOX, None)
    request.session.pop(SESSION_HASH, None)
    request.session.cycle_key()
    return HttpResponseRedirect(reverse("mailbox:login"))


@owner_required
def home(request):
    since = timezone.now() - timedelta(days=RECENT_DAYS)
    recent = (
        Delivery.objects.filter(mailbox=request.mailbox, state=DeliveryState.INBOX, delivered_at__gte=since)
        .select_related("message")
        .order_by("-delivered_at")[:RECENT_LIMIT]
    )
    return render(request, "mailbox/home.html", {
        "mailbox": request.mailbox,
        "held": quarantine.held(request.mailbox),
        "retention_days": f"{settings.MAIL_QUARANTINE_RETENTION_DAYS:g}",
        "recent": recent,
        "recent_days": RECENT_DAYS,
    })


@owner_required
def message(request, delivery_id: int):
    delivery = _own_delivery(request, delivery_id)
    context = message_pages.context(delivery.message, show_html_as_text=request.GET.get("html") == "text")
    context.update({
        "mailbox": request.mailbox,
        "delivery": delivery,
        "deliveries": [delivery],
        "can_act": True,
        "raw_url": reverse("mailbox:raw", args=[delivery.pk]),
        "html_url": reverse("mailbox:html", args=[delivery.pk]),
        "release_url_name": "mailbox:release",
        "delete_url_name": "mailbox:delete",
    })
    return render(request, "mailbox/message.html", context)


@owner_required
def raw(request, delivery_id: int):
    return message_pages.raw_response(_own_delivery(request, delivery_id).message)


@owner_required
def html_part(request, delivery_id: int):
    return message_pages.html_frame_response(_own_delivery(request, delivery_id).message)


@require_POST
@owner_required
def release(request, delivery_id: int):
    _own_delivery(request, delivery_id)
    try:
        quarantine.release(delivery_id, mailbox=request.mailbox)
    except quarantine.QuarantineError:
        messages.info(request, "That message is no longer held: nothing to release.")
    else:
        messages.success(request, "Released to your inbox.")
    return HttpResponseRedirect(reverse("mailbox:home"))


@require_POST
@owner_required
def delete(request, delivery_id: int):
    _own_delivery(request, delivery_id)
    as_spam = request.POST.get("spam") == "1"
    try:
        quarantine.delete(delivery_id, mailbox=request.mailbox, as_spam=as_spam)
    except quarantine.QuarantineError:
        messages.info(request, "That message is no longer held: nothing to delete.")
    else:
        messages.success(request, "Deleted as spam." if as_spam else "Deleted.")
    return HttpResponseRedirect(reverse("mailbox:home"))


# --- the owner's sender lists ----------------------------------------------------------------


@owner_required
def sender_list(request):
    """The owner's own allow and block entries (their mailbox's scope), and a form to add one."""
    error = ""
    if request.method == "POST":
        action, pattern = request.POST.get("action", ""), request.POST.get("pattern", "")
        if action not in (senders.ALLOW, senders.BLOCK):
            raise Http404("no such action")
        try:
            rule = senders.set_entry(action, pattern, senders.mailbox_scope(request.mailbox))
        except senders.SenderListError as exc:
            error = str(exc)
        else:
            messages.success(request, f"{'Allowed' if rule.action == senders.ALLOW else 'Blocked'}: {rule.pattern}.")
            return HttpResponseRedirect(reverse("mailbox:senders"))
    return render(request, "mailbox/senders.html", {
        "mailbox": request.mailbox,
        "entries": senders.entries(senders.mailbox_scope(request.mailbox)),
        "error": error,
        "pattern": request.POST.get("pattern", ""),
    }, status=400 if error else 200)


@require_POST
@owner_required
def sender_remove(request, rule_id: int):
    try:
        senders.remove_by_id(rule_id, request.mailbox)
    except senders.SenderListError:
        raise Http404("no such entry") from None
    messages.success(request, "Removed.")
    return HttpResponseRedirect(reverse("mailbox:senders"))


@require_POST
@owner_required
def sender_from_message(request, delivery_id: int, action: str):
    """"Always allow" or "block" the sender of one of the owner's messages, for their own mailbox."""
    if action not in (senders.ALLOW, senders.BLOCK):
        raise Http404("no such action")
    delivery = _own_delivery(request, delivery_id)
    try:
        pattern, moved = senders.set_from_message(
            action, delivery, senders.mailbox_scope(request.mailbox), request.POST.get("kind", "address")
        )
    except senders.SenderListError as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(reverse("mailbox:home"))
    done = f"Mail from {pattern} now goes to your inbox." if action == senders.ALLOW else f"Mail from {pattern} is now refused."
    if moved:
        done += f" This message was {moved}."
    messages.success(request, done)
    return HttpResponseRedirect(reverse("mailbox:home"))


@require_POST
@owner_required
def bulk(request):
    ids = request.POST.getlist("ids")
    action = request.POST.get("action")
    if action not in ("release", "delete"):
        raise Http404("no such action")
    # mailbox= restricts the service to this owner's held mail: ids of other mailboxes are "not held".
    result = (quarantine.release_many if action == "release" else quarantine.delete_many)(ids, mailbox=request.mailbox)
    if result.done:
        messages.success(request, f"{'Released' if action == 'release' else 'Deleted'} {len(result.done)} message(s).")
    if result.not_held:
        messages.info(request, f"{len(result.not_held)} message(s) were not held here: left as they are.")
    return HttpResponseRedirect(reverse("mailbox:home"))
