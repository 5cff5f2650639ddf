"""Body store garbage collection: crash-like orphans go after the grace period; live and fresh bodies stay."""

from __future__ import annotations

import os
import time

import pytest
from django.core.management import call_command
from django_q.models import Schedule

from mailcore import tasks
from mailcore.models import Message
from mailcore.services.bodies import collect_orphans
from mailcore.store import message_store

GRACE = 3600


def age(mail_store, ref: str, seconds: float) -> None:
    """Make a stored file look `seconds` old, as a body left by a crash long ago would be."""
    past = time.time() - seconds
    os.utime(mail_store / ref, (past, past))


def referenced_body(data: bytes) -> str:
    body = message_store().put(data)
    Message.objects.create(body_ref=body.ref, size=body.size, sha256=body.sha256, transport="data", verification="unverified")
    return body.ref


def crash_like_orphan(data: bytes) -> str:
    """A body fsynced whose row never committed: what a crash between the two leaves."""
    return message_store().put(data).ref


def temporary_file(mail_store, ref_dir: str, name: str = ".tmp-0123456789abcdef") -> str:
    path = mail_store / ref_dir / name
    path.write_bytes(b"half a bo")
    return f"{ref_dir}/{name}"


@pytest.fixture
def store_with_leftovers(mail_store, settings):
    settings.MAIL_STORE_GC_GRACE = GRACE
    old_orphan = crash_like_orphan(b"Subject: orphan\r\n\r\nold\r\n")
    age(mail_store, old_orphan, GRACE + 60)
    fresh_orphan = crash_like_orphan(b"Subject: orphan\r\n\r\nbeing written now\r\n")
    old_referenced = referenced_body(b"Subject: kept\r\n\r\nin a mailbox\r\n")
    age(mail_store, old_referenced, GRACE * 24)
    old_temporary = temporary_file(mail_store, os.path.dirname(old_orphan))
    age(mail_store, old_temporary, GRACE + 60)
    fresh_temporary = temporary_file(mail_store, os.path.dirname(old_orphan), ".tmp-fedcba9876543210")
    return {
        "old_orphan": old_orphan,
        "fresh_orphan": fresh_orphan,
        "old_referenced": old_referenced,
        "old_temporary": old_temporary,
        "fresh_temporary": fresh_temporary,
    }


@pytest.mark.django_db
def test_old_orphan_and_old_temporary_removed_fresh_and_referenced_kept(mail_store, store_with_leftovers):
    files = store_with_leftovers
    result = collect_orphans(batch_size=1)  # one query per name: the batching path is exercised
    assert result.orphans == [files["old_orphan"]]
    assert result.temporaries == [files["old_temporary"]]
    assert (result.referenced, result.fresh) == (1, 2)
    assert not (mail_store / files["old_orphan"]).exists()
    assert not (mail_store / files["old_temporary"]).exists()
    for kept in ("fresh_orphan", "old_referenced", "fresh_temporary"):
        assert (mail_store / files[kept]).exists(), kept
    assert message_store().read(files["old_referenced"]) == b"Subject: kept\r\n\r\nin a mailbox\r\n"


@pytest.mark.django_db
def test_storegc_command_prints_what_it_removed(mail_store, store_with_leftovers, capsys):
    files = store_with_leftovers
    call_command("storegc")
    out = capsys.readouterr().out.splitlines()
    assert f"removed orphaned body {files['old_orphan']}" in out
    assert f"removed temporary file {files['old_temporary']}" in out
    assert out[-1] == "storegc: removed 1 orphaned bodies and 1 temporary files; kept 1 referenced and 2 within the grace period"
    assert not (mail_store / files["old_orphan"]).exists()


@pytest.mark.django_db
def test_storegc_dry_run_removes_nothing(mail_store, store_with_leftovers, capsys):
    files = store_with_leftovers
    call_command("storegc", "--dry-run")
    out = capsys.readouterr().out.splitlines()
    assert f"would remove orphaned body {files['old_orphan']}" in out
    assert f"would remove temporary file {files['old_temporary']}" in out
    for name in files.values():
        assert (mail_store / name).exists(), name


@pytest.mark.django_db
def test_grace_setting_decides_what_is_old(mail_store, settings):
    orphan = crash_like_orphan(b"Subject: orphan\r\n\r\n")
    age(mail_store, orphan, 120)
    settings.MAIL_STORE_GC_GRACE = 300
    assert collect_orphans().removed == []
    settings.MAIL_STORE_GC_GRACE = 60
    assert collect_orphans().removed == [orphan]


@pytest.mark.django_db
def test_empty_or_missing_store_is_nothing_to_do(mail_store):
    assert not mail_store.exists()
    result = collect_orphans()
    assert (result.removed, result.referenced, result.fresh) == ([], 0, 0)


@pytest.mark.django_db
def test_released_body_row_does_not_protect_a_file(mail_store, settings):
    """A message whose body was released has body_ref '': an old file under no name is still an orphan."""
    settings.MAIL_STORE_GC_GRACE = 10
    Message.objects.create(body_ref="", size=1, sha256="0" * 64, transport="data", verification="unverified")
    orphan = crash_like_orphan(b"x")
    age(mail_store, orphan, 60)
    assert collect_orphans().orphans == [orphan]


@pytest.mark.django_db
def test_schedule_registered_once_by_name(settings):
    settings.MAIL_STORE_GC_MINUTES = 30
    tasks.register_schedules()
    tasks.register_schedules()
    [schedule] = Schedule.objects.filter(name=tasks.STORE_GC_SCHEDULE)
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == (
        "mailcore.tasks.collect_orphaned_bodies",
        Schedule.MINUTES,
        30,
    )


@pytest.mark.django_db(transaction=True)  # the task closes stale connections, as a worker must
def test_task_entry_point_collects(mail_store, settings):
    settings.MAIL_STORE_GC_GRACE = 10
    orphan = crash_like_orphan(b"x")
    age(mail_store, orphan, 60)
    assert tasks.collect_orphaned_bodies().startswith("removed 1 orphaned bodies")
    assert not (mail_store / orphan).exists()
