"""The data of the mail server, one module per concern."""

from mailcore.models.domain import Alias, Domain, Mailbox, MailboxLock, UnverifiedPolicy
from mailcore.models.message import Delivery, DeliveryState, Message, SpamStatus, Transport, Verification
from mailcore.models.outbound import QueueItem, QueueState
from mailcore.models.verification import Announcement, AnnouncementState, SourcedMessage, SourcePin

__all__ = [
    "Alias",
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
    "SourcePin",
    "SpamStatus",
    "Transport",
    "UnverifiedPolicy",
    "Verification",
]
