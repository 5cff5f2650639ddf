"""Release and "delete as spam" teach spamd's Bayes filter (spamd's TELL, allowed by `spamd --allow-tell`)."""

from __future__ import annotations

import logging

from mailcore.spam.check import configured_client
from mailcore.spam.spamd import SpamdError, TellRefused
from mailcore.store import message_store

log = logging.getLogger("mailcore.spam")


def report(delivery, message_class: str) -> str:
    """Tell spamd that the message of `delivery` is "ham" or "spam"; returns what happened, in a word.

    Never raises: the release or delete it follows has happened whatever spamd says.
    """
    client = configured_client()
    queue_id = delivery.message.queue_id
    if client is None:
        log.info("%s not reported as %s: learning is off (no MAIL_SPAMD)", queue_id, message_class)
        return "off"
    try:
        content = message_store().read(delivery.message.body_ref)
        learned = client.tell(content, message_class)
    except TellRefused as exc:
        log.info("%s reported as %s: learning is off (spamd runs without --allow-tell: %s)", queue_id, message_class, exc)
        return "off"
    except (SpamdError, OSError) as exc:
        log.warning("%s not reported as %s to spamd: %s", queue_id, message_class, exc)
        return "failed"
    log.info("%s reported to spamd as %s (%s)", queue_id, message_class, "learned" if learned else "already known")
    return "learned" if learned else "known"


def after_release(delivery) -> str | None:
    """A release of mail held as spam says it is ham."""
    if delivery.reason != "spam":
        return None
    return report(delivery, "ham")
