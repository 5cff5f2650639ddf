"""The data of the mail server, one module per concern."""

from mailcore.models.dkim import DKIMKey, DKIMKeyState
from mailcore.models.domain import Alias, AuthenticatedPolicy, Domain, Mailbox, MailboxLock, UnverifiedPolicy
from mailcore.models.message import Delivery, DeliveryState, Message, SpamStatus, Transport, Verification
from mailcore.models.outbound import QueueItem, QueueState
from mailcore.models.verification import Announcement, AnnouncementState, SourcedMessage

__all__ = [
    "Alias",
    "AuthenticatedPolicy",
    "DKIMKey",
    "DKIMKeyState",
    "Announcement",
    "AnnouncementState",
    "Delivery",
    "DeliveryState",
    "Domain",
    "Mailbox",
    "MailboxLock",
    "Message",
    "QueueItem",
    "QueueState",
    "SourcedMessage",
    "SpamStatus",
    "Transport",
    "UnverifiedPolicy",
    "Verification",
]
