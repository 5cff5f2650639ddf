"""Cheap `dir()` for the objects that aiosmtpd searches for hooks when each session starts.

aiosmtpd's `SMTP.__init__` finds its verbs (`smtp_*`), AUTH mechanisms (`auth_*`) and the
handler's hooks (`handle_*`) with `dir()` and `inspect.getmembers()` on the session and on the
handler, which reads every attribute of both for every new connection: about 0.15 ms each time,
and a client such as Postfix's smtp-source opens one connection per message (issue 8).
"""

from __future__ import annotations

from collections.abc import Callable


def hook_names(*prefixes: str) -> Callable[[object], list[str]]:
    """A `__dir__` listing only the names that start with `prefixes`, computed once per class."""
    found: dict[type, list[str]] = {}

    def __dir__(self) -> list[str]:
        names = found.get(type(self))
        if names is None:
            names = found[type(self)] = [n for n in object.__dir__(self) if n.startswith(prefixes)]
        return names

    return __dir__
