"""Mailbox quotas: the bytes each mailbox holds, counted as mail is delivered and deleted.

Usage is a column of the mailbox, changed by `UPDATE ... SET used_bytes = used_bytes + n` in the
transaction that delivers or deletes: atomic whatever the number of concurrent deliveries, and
never found by walking the store. A quota of 0 (or none) means no quota.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from mailcore.models import Mailbox
from mailcore.models.rows import add_to_counters


def charge(deliveries: Iterable[tuple[int, int]]) -> None:
    """Add (mailbox id, bytes) of new deliveries to their mailboxes' usage. In the delivering transaction."""
    _change(deliveries, 1)


def refund(deliveries: Iterable[tuple[int, int]]) -> None:
    """Take (mailbox id, bytes) of deleted deliveries off their mailboxes' usage. In the deleting transaction."""
    _change(deliveries, -1)


def _change(deliveries: Iterable[tuple[int, int]], sign: int) -> None:
    totals: dict[int, int] = defaultdict(int)
    for mailbox_id, size in deliveries:
        totals[mailbox_id] += size
    # One order for every transaction: no deadlocks. Never below 0: a count made before usage
    # was counted must not go negative.
    add_to_counters(Mailbox, "used_bytes", [(mailbox_id, sign * size) for mailbox_id, size in sorted(totals.items()) if size])


def over_quota(mailbox_ids: Iterable[int], size: int) -> set[int]:
    """The mailboxes among these that a message of `size` bytes would take over their quota (read now)."""
    ids = set(mailbox_ids)
    if not ids:
        return set()
    rows = Mailbox.objects.filter(pk__in=ids, quota_bytes__gt=0).values_list("pk", "quota_bytes", "used_bytes")
    return {pk for pk, quota, used in rows if used + size > quota}
