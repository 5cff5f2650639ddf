"""The peers the benchmark compares against: Postfix delivering to Maildir, Dovecot's POP3 server.

Both run from configuration files of their own in the benchmark's work directory, on loopback
ports of their own, and are stopped afterwards; the system's /etc/postfix and /etc/dovecot are
never read or changed. Both deliver to and read from the same Maildir of one virtual user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

# The virtual user's files belong to nobody: both peers refuse root, and neither needs more.
VMAIL_UID = VMAIL_GID = 65534
POSTFIX_MASTER_DIST = Path("/usr/share/postfix/master.cf.dist")


def sha512_crypt(password: str) -> str:
    """A SHA512-CRYPT hash (glibc `$6$`), the scheme Dovecot's passwd-file is given."""
    out = subprocess.run(["openssl", "passwd", "-6", password], capture_output=True, text=True, check=True)
    return out.stdout.strip()


class Postfix:
    """A private Postfix instance: smtpd on HOST:PORT, virtual(8) delivery to a Maildir."""

    def __init__(self, workdir: Path, host: str, port: int, domain: str, user: str, process_limit: int = 200):
        self.root = workdir / "postfix"
        self.config = self.root / "etc"
        self.queue = self.root / "spool"
        self.data = self.root / "data"
        self.vmail = workdir / "vmail"
        self.host, self.port, self.domain, self.user = host, port, domain, user
        self.process_limit = process_limit

    @property
    def maildir(self) -> Path:
        return self.vmail / self.domain / self.user / "Maildir"

    def delivered(self) -> int:
        return sum(len(os.listdir(self.maildir / sub)) for sub in ("new", "cur") if (self.maildir / sub).is_dir())

    def configure(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for path in (self.config, self.queue, self.data):
            path.mkdir(parents=True)
        os.chown(self.data, _uid("postfix"), _gid("postfix"))
        self.vmail.mkdir(parents=True, exist_ok=True)
        os.chown(self.vmail, VMAIL_UID, VMAIL_GID)
        (self.config / "vmailbox").write_text(f"{self.user}@{self.domain} {self.domain}/{self.user}/Maildir/\n")
        main = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.test",
            "mydestination": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.vmail),
            "virtual_mailbox_maps": f"texthash:{self.config}/vmailbox",
            "virtual_uid_maps": f"static:{VMAIL_UID}",
            "virtual_gid_maps": f"static:{VMAIL_GID}",
            "virtual_minimum_uid": "100",
            "default_process_limit": str(self.process_limit),
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            # The log goes to a file through postlogd (master.cf.dist has it), as there is no syslog here.
            "maillog_file": str(self.root / "maillog"),
            "maillog_file_prefixes": str(self.root),
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtputf8_enable": "no",
        }
        (self.config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        master = []
        for line in POSTFIX_MASTER_DIST.read_text().splitlines():
            if line.startswith("smtp      inet"):
                line = line.replace("smtp      inet", f"{self.host}:{self.port} inet", 1)
            master.append(line)
        (self.config / "master.cf").write_text("\n".join(master) + "\n")

    def run(self, *args: str) -> None:
        result = subprocess.run(["postfix", "-c", str(self.config), *args], capture_output=True, text=True)
        if result.returncode:
            log = self.root / "maillog"
            raise RuntimeError(f"postfix {' '.join(args)}: {result.stderr} {log.read_text()[-2000:] if log.exists() else ''}")

    def start(self) -> None:
        self.configure()
        subprocess.run(["postfix", "-c", str(self.config), "set-permissions"], capture_output=True)
        self.run("start")

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.config), "stop"], capture_output=True)
        time.sleep(0.5)

    def master_pid(self) -> int | None:
        pid_file = self.queue / "pid" / "master.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def clear_maildir(self) -> None:
        shutil.rmtree(self.vmail / self.domain, ignore_errors=True)


class Dovecot:
    """A private Dovecot serving POP3 only, from the Maildirs under `vmail`."""

    def __init__(self, workdir: Path, host: str, port: int, vmail: Path, users: dict[str, str], process_limit: int = 200):
        self.root = workdir / "dovecot"
        self.host, self.port, self.vmail, self.users = host, port, vmail, users
        self.process_limit = process_limit

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def configure(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "run").mkdir(parents=True)
        self.root.chmod(0o755)
        lines = [f"{address}:{{SHA512-CRYPT}}{sha512_crypt(password)}" for address, password in self.users.items()]
        passwd = self.root / "passwd"
        passwd.write_text("\n".join(lines) + "\n")
        os.chown(passwd, 0, _gid("dovecot"))
        passwd.chmod(0o640)
        self.conf.write_text(
            f"""
base_dir = {self.root}/run
state_dir = {self.root}/run
protocols = pop3
listen = {self.host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {self.root}/dovecot.log
default_process_limit = {self.process_limit}
default_client_limit = {self.process_limit * 10}
default_vsz_limit = 1G
mail_location = maildir:~/Maildir
first_valid_uid = 100
# The comparison the issue asks for: a real password scheme with the authentication cache on.
auth_cache_size = 10M
auth_cache_ttl = 1 hour
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {passwd}
}}
userdb {{
  driver = static
  args = uid={VMAIL_UID} gid={VMAIL_GID} home={self.vmail}/%d/%n
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {self.host}
    port = {self.port}
  }}
}}
service anvil {{
  client_limit = {self.process_limit * 10 + 100}
}}
"""
        )

    def start(self) -> None:
        self.configure()
        # The daemon keeps the descriptors it was given: a pipe here would never reach EOF.
        with open(self.root / "start.log", "wb") as out:
            subprocess.run(["dovecot", "-c", str(self.conf)], check=True, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        subprocess.run(["doveadm", "-c", str(self.conf), "stop"], capture_output=True)
        time.sleep(0.5)

    def master_pid(self) -> int | None:
        # The daemon writes its pid file a moment after it starts listening.
        deadline = time.monotonic() + 5
        while True:
            try:
                return int((self.root / "run" / "master.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)


def write_maildir(vmail: Path, domain: str, user: str, messages: list[bytes]) -> None:
    """Put messages straight into a user's Maildir/cur, as a delivered-and-seen mailbox."""
    maildir = vmail / domain / user / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for i, message in enumerate(messages):
        (maildir / "cur" / f"{1700000000 + i}.M{i}P1.bench,S={len(message)}:2,S").write_bytes(message)
    for path in [vmail, *sorted(vmail.rglob("*"))]:
        os.chown(path, VMAIL_UID, VMAIL_GID)


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid
