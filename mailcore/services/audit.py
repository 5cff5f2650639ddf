"""The audit log: each change to held mail, sender lists, policies and passwords, with who made it.

Who acts is set once where a request or command begins (`acting`: the web middleware, the
management commands, a digest link's view), and every service that changes something calls
`record` in its own transaction: no caller can forget to log, and an action that rolls back
leaves no entry.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from mailcore.models import ActorKind, AuditEntry


@dataclass(frozen=True)
class Actor:
    kind: str  # an ActorKind
    name: str
    client_address: str = ""


SYSTEM = Actor(ActorKind.SYSTEM, "server")

_current: contextvars.ContextVar[Actor] = contextvars.ContextVar("mailcore_audit_actor", default=SYSTEM)


def current() -> Actor:
    return _current.get()


@contextlib.contextmanager
def acting(actor: Actor) -> Iterator[Actor]:
    """Every `record` made inside is in `actor`'s name."""
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def record(action: str, target: str, *, mailbox: str = "", detail: str = "", actor: Actor | None = None) -> AuditEntry:
    actor = actor or current()
    return AuditEntry.objects.create(
        actor_kind=actor.kind,
        actor=actor.name[:200],
        client_address=actor.client_address[:64],
        action=action,
        mailbox=mailbox[:320],
        target=target[:400],
        detail=detail,
    )


def describe_delivery(delivery) -> str:
    """How the log names a held message: it must still say what it was once the message is gone."""
    m = delivery.message
    return f"message {m.queue_id} (delivery {delivery.pk}) from <{m.mail_from}> subject {m.subject!r}"[:400]


class AuditMiddleware:
    """Makes the signed-in administrator, and the client's address, the actor of a request.

    The mailbox owners' views and the digest links' views name their own actor (`acting`) once
    they know the mailbox or the link.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        address = request.META.get("REMOTE_ADDR", "")
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            actor = Actor(ActorKind.ADMIN, user.get_username(), address)
        else:
            actor = Actor(ActorKind.SYSTEM, "web", address)
        with acting(actor):
            return self.get_response(request)
