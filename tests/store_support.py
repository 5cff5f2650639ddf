"""What the body store holds, seen from a test: files under its directory, and the bodies a test stored."""

from __future__ import annotations

import os

from mailcore.store.bodies import MessageStore


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, f), path) for r, _d, fs in os.walk(path) for f in fs)


def record_stored(monkeypatch) -> list[str]:
    """The refs of every body stored from now on (in a file of its own or in a segment), in order."""
    refs: list[str] = []
    real = MessageStore.begin_put_many  # put_many goes through it too

    def begin_put_many(self, bodies, sync_here=False):
        pending = real(self, bodies, sync_here)
        refs.extend(body.ref for body in pending.bodies)
        return pending

    monkeypatch.setattr(MessageStore, "begin_put_many", begin_put_many)
    return refs
