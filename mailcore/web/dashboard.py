"""The numbers on the admin index: mail by verification state, announcements, the queue, and an hourly chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.html import escape

from mailcore.models import (
    ACTIVE_STATES,
    Announcement,
    AnnouncementState,
    Delivery,
    DeliveryState,
    Message,
    QueueItem,
    QueueState,
    Verification,
)

WINDOWS = [("24 hours", timedelta(hours=24)), ("7 days", timedelta(days=7))]
CHART_HOURS = 24
# (series, label, colour); colours keep their meaning in the counts, the chart and the message lists.
SERIES = [
    ("verified", "verified", "#2e7d32"),
    ("authenticated", "authenticated (DMARC)", "#1565c0"),
    ("unverified", "unverified", "#e0a000"),
    ("failed", "failed (forged)", "#c62828"),
]


@dataclass
class WindowCounts:
    label: str
    verified: int
    authenticated: int
    unverified: int
    quarantined: int
    failed: int


@dataclass
class QueueCounts:
    queued: int
    deferred: int
    held: int
    bounced: int  # in the last 7 days


def window_counts(now: datetime | None = None) -> list[WindowCounts]:
    now = now or timezone.now()
    result = []
    for label, span in WINDOWS:
        since = now - span
        rows = Message.objects.filter(received_at__gte=since).values("verification").annotate(n=Count("id"))
        by_state = {row["verification"]: row["n"] for row in rows}
        # A delivery has a reason only if it was quarantined: released ones still count for the window.
        quarantined = (
            Delivery.objects.filter(delivered_at__gte=since).exclude(reason="").values("message").distinct().count()
        )
        failed = Announcement.objects.filter(received_at__gte=since, state=AnnouncementState.FAILED).count()
        result.append(WindowCounts(
            label=label,
            verified=by_state.get(Verification.VERIFIED, 0),
            authenticated=by_state.get(Verification.AUTHENTICATED, 0),
            unverified=by_state.get(Verification.UNVERIFIED, 0),
            quarantined=quarantined,
            failed=failed + by_state.get(Verification.FAILED, 0),
        ))
    return result


def held_now() -> int:
    return Delivery.objects.filter(state=DeliveryState.QUARANTINED).count()


def pending_announcements() -> int:
    return Announcement.objects.filter(state=AnnouncementState.PENDING).count()


def queue_counts(now: datetime | None = None) -> QueueCounts:
    now = now or timezone.now()
    rows = (
        QueueItem.objects.filter(state__in=ACTIVE_STATES)
        .values("state").annotate(n=Count("id"))
    )
    by_state = {row["state"]: row["n"] for row in rows}
    bounced = QueueItem.objects.filter(state=QueueState.BOUNCED, updated_at__gte=now - timedelta(days=7)).count()
    return QueueCounts(
        queued=by_state.get(QueueState.QUEUED, 0),
        deferred=by_state.get(QueueState.DEFERRED, 0),
        held=by_state.get(QueueState.HELD, 0),
        bounced=bounced,
    )


def hourly(now: datetime | None = None) -> list[tuple[datetime, dict[str, int]]]:
    """Mail per hour for the last CHART_HOURS hours, by verification state, oldest hour first."""
    now = now or timezone.now()
    current = now.replace(minute=0, second=0, microsecond=0)
    hours = [current - timedelta(hours=h) for h in range(CHART_HOURS - 1, -1, -1)]
    buckets: dict[datetime, dict[str, int]] = {h: {name: 0 for name, _, _ in SERIES} for h in hours}
    start = hours[0]
    rows = (
        Message.objects.filter(received_at__gte=start)
        .annotate(hour=TruncHour("received_at"))
        .values_list("hour", "verification")
        .annotate(n=Count("id"))
    )
    for hour, verification, n in rows:
        series = verification if verification in ("verified", "authenticated", "unverified", "failed") else "unverified"
        if hour in buckets:
            buckets[hour][series] += n
    failed = (
        Announcement.objects.filter(received_at__gte=start, state=AnnouncementState.FAILED)
        .annotate(hour=TruncHour("received_at"))
        .values_list("hour")
        .annotate(n=Count("id"))
    )
    for hour, n in failed:
        if hour in buckets:
            buckets[hour]["failed"] += n
    return [(h, buckets[h]) for h in hours]


def chart_svg(data: list[tuple[datetime, dict[str, int]]]) -> str:
    """A stacked bar chart as inline SVG, drawn here so the page needs no script and no network."""
    width, height = 760, 220
    left, right, top, bottom = 40, 10, 28, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((sum(counts.values()) for _, counts in data), default=0)
    scale_max = _nice_ceiling(peak)
    slot = plot_w / max(len(data), 1)
    bar_w = slot * 0.75
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="mail-chart" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Mail per hour in the last {CHART_HOURS} hours, by verification state">'
    ]
    for i in range(5):
        value = scale_max * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{value:g}</text>')
    for index, (hour, counts) in enumerate(data):
        x = left + index * slot + (slot - bar_w) / 2
        y = top + plot_h
        tip = escape(f"{hour:%Y-%m-%d %H}:00 UTC: " + ", ".join(f"{counts[name]} {label}" for name, label, _ in SERIES))
        out.append(f"<g><title>{tip}</title>")
        for name, _label, colour in SERIES:
            n = counts[name]
            if not n or not scale_max:
                continue
            h = plot_h * n / scale_max
            y -= h
            out.append(f'<rect class="bar-{name}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}"/>')
        out.append("</g>")
        if index % 3 == 0:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" fill="#555">'
                f"{hour:%H}:00</text>"
            )
    legend_x = left
    for _name, label, colour in SERIES:
        out.append(f'<rect x="{legend_x}" y="6" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{legend_x + 16}" y="16" font-size="12" fill="#333">{escape(label)}</text>')
        legend_x += 30 + 7 * len(label)
    out.append("</svg>")
    return "".join(out)


def _nice_ceiling(value: int) -> int:
    """The smallest of 4, 8, 20, 40, 80, 200... at least `value`: four gridlines at round numbers."""
    if value <= 4:
        return 4
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            candidate = 4 * step * magnitude
            if candidate >= value:
                return candidate
        magnitude *= 10


def context(now: datetime | None = None) -> dict:
    now = now or timezone.now()
    return {
        "windows": window_counts(now),
        "held_now": held_now(),
        "pending_announcements": pending_announcements(),
        "queue": queue_counts(now),
        "chart_svg": chart_svg(hourly(now)),
    }
