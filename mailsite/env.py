"""Reads the operator's settings from the environment and an optional `.env` file (operations.md)."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


def load_dotenv(path: Path) -> None:
    """Put KEY=VALUE lines of `path` into os.environ; the real environment wins."""
    if not path.is_file():
        return
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key, value)


def get(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def get_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def get_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def get_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def parse_binds(value: str) -> list[tuple[str, int]]:
    """`HOST:PORT[,HOST:PORT...]`; an IPv6 host is written in brackets: `[::1]:25`."""
    binds = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad bind address {item!r}: expected HOST:PORT")
        binds.append((host.strip("[]"), int(port)))
    return binds


def parse_networks(value: str) -> list:
    """`IP[/PREFIX][,...]` (e.g. `127.0.0.1, 10.0.0.0/8, ::1`) as ipaddress networks."""
    import ipaddress

    return [ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()]


def parse_dns_servers(value: str) -> list[tuple[str, int]]:
    """`IP[:PORT][,...]`, port 53 by default."""
    servers = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = int(port_text)
        else:
            host, port = item, 53
        servers.append((host, port))
    return servers


def database_from_url(url: str, base_dir: Path) -> dict:
    """A Django DATABASES entry from `sqlite:///relative/or//absolute` or `postgres://...`."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///var/db.sqlite3 is relative to the project; sqlite:////abs/path is absolute.
        path = url[len("sqlite:///"):]
        name = Path(path) if path.startswith("/") else base_dir / path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(name),
            # WAL lets readers run beside the one writer; a busy timeout instead of "database is locked".
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
            },
            "TEST": {"NAME": str(name.with_name(name.stem + "_test.sqlite3"))},
        }
    if parsed.scheme in ("postgres", "postgresql", "pgsql"):
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")),
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "OPTIONS": options,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ValueError(f"DATABASE_URL: unsupported scheme {parsed.scheme!r} (use sqlite:/// or postgres://)")


def secret_key(var_dir: Path) -> str:
    """DJANGO_SECRET_KEY, or a key generated once and kept in var/secret_key."""
    key = os.environ.get("DJANGO_SECRET_KEY")
    if key:
        return key
    path = var_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        var_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of the tree won the race
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key


def fqdn() -> str:
    return socket.getfqdn() or "localhost"
