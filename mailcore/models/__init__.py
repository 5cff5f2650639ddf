"""The data of the mail server, one module per concern."""

from mailcore.envelope import Transport, Verification
from mailcore.models.audit import ActorKind, AuditAction, AuditEntry
from mailcore.models.digest import QuarantineDigest
from mailcore.models.dkim import DKIMKey, DKIMKeyState
from mailcore.models.domain import Alias, AuthenticatedPolicy, Domain, Mailbox, MailboxLock, UnverifiedPolicy
from mailcore.models.limits import FailureCount
from mailcore.models.message import Delivery, DeliveryState, Message, SpamStatus
from mailcore.models.outbound import ACTIVE_STATES, PENDING_STATES, QueueItem, QueueState
from mailcore.models.senders import SenderAction, SenderRule, SenderScope
from mailcore.models.verification import Announcement, AnnouncementState, SourcedMessage, SourcePin

__all__ = [
    "ActorKind",
    "AuditAction",
    "AuditEntry",
    "SenderAction",
    "SenderRule",
    "SenderScope",
    "Alias",
    "AuthenticatedPolicy",
    "DKIMKey",
    "DKIMKeyState",
    "Announcement",
    "AnnouncementState",
    "Delivery",
    "DeliveryState",
    "Domain",
    "FailureCount",
    "Mailbox",
    "MailboxLock",
    "Message",
    "QuarantineDigest",
    "QueueItem",
    "QueueState",
    "ACTIVE_STATES",
    "PENDING_STATES",
    "SourcedMessage",
    "SourcePin",
    "SpamStatus",
    "Transport",
    "UnverifiedPolicy",
    "Verification",
]
