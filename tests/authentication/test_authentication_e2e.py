"""SPF, DKIM, DMARC and ARC between two instances, over real sockets, with `domain dns` in the test DNS server."""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mailcore.authentication import keys
from mailcore.authentication.signing import SigningKey, dkim_signatures
from tests.conftest import ROOT, require_program, wait_until

pytest_plugins = ["tests.instances"]

ZONE_LINE = re.compile(r'^(?P<name>\S+)\.\s+(?P<ttl>\d+)\s+IN\s+(?P<type>MX|TXT)\s+(?P<value>.+)$')


def publish_zone(dns, output: str) -> list[str]:
    """Load `domain dns` output into the test DNS server, as a zone would; returns the lines."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        m = ZONE_LINE.match(line)
        assert m, f"not a zone-file line: {line!r}"
        entry = dns.records.setdefault(m["name"].lower(), {})
        if m["type"] == "TXT":
            strings = re.findall(r'"((?:[^"\\]|\\.)*)"', m["value"])
            assert all(len(s) <= 255 for s in strings)
            entry.setdefault("TXT", []).append("".join(strings))
        else:
            preference, host = m["value"].split()
            entry["MX"] = [(int(preference), host.rstrip("."))]
    return lines


def submit(instance, sender: str, password: str, rcpt: str, subject: str, body: str = "Hello.\r\n") -> bytes:
    message = (
        f"From: Alice <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@a.test>\r\n\r\n{body}"
    ).encode()
    instance.submit(sender, [rcpt], message, password, timeout=60)
    return message


def auth_results(raw: bytes) -> str:
    """Our (the receiver's) Authentication-Results: the first one, unfolded."""
    m = re.search(rb"^Authentication-Results: (.*?)\r\n(?![\t ])", raw, re.M | re.S)
    assert m, raw[:2000]
    return re.sub(r"\r\n[\t ]", " ", m[1].decode())


def dkimverify(raw: bytes, dns_address: str) -> subprocess.CompletedProcess:
    """dkimpy's own command line verifier on the raw message, its DNS pointed at the test server.

    The tool is run unmodified; a sitecustomize module only sets dnspython's default resolver
    (the tool has no option for one) to the test DNS server.
    """
    tool = shutil.which("dkimverify") or os.path.join(os.path.dirname(sys.executable), "dkimverify")
    assert os.path.exists(tool), "dkimpy's dkimverify is installed with requirements.txt"
    site = ROOT / "tests" / "dkimverify_dns"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TEST_DNS_SERVER": dns_address}
    return subprocess.run([tool], input=raw, capture_output=True, env=env, timeout=60)


def test_signed_mail_arrives_with_spf_dkim_dmarc_pass_and_an_independent_verifier_agrees(instances):
    a, b = instances.a, instances.b
    done = a.manage("domain", "dns", "a.test")
    assert done.returncode == 0, done.stderr
    lines = publish_zone(instances.dns, done.stdout)
    # The operator's records: MX, SPF, an RSA and an Ed25519 key, DMARC with a report address.
    assert lines[0] == "a.test. 3600 IN MX 10 mx.a.test."
    assert 'a.test. 3600 IN TXT "v=spf1 mx ip4:127.0.0.2 -all"' in lines
    dkim_lines = [line for line in lines if "._domainkey.a.test. 3600 IN TXT " in line]
    assert len(dkim_lines) == 2 and any("k=rsa" in line for line in dkim_lines) and any("k=ed25519" in line for line in dkim_lines)
    assert any(line.startswith('_dmarc.a.test. 3600 IN TXT "v=DMARC1; p=') and "rua=mailto:postmaster@a.test" in line for line in lines)

    sent = submit(a, "alice@a.test", "alice-password", "bob@b.test", "signed hello")
    [raw] = b.wait_for_messages("bob@b.test", timeout=60)
    assert raw.endswith(sent)
    results = auth_results(raw)
    assert results.startswith("mx.b.test; x-source=pass smtp.mailfrom=alice@a.test")
    assert "spf=pass smtp.mailfrom=alice@a.test" in results
    assert re.search(r"dkim=pass header.d=a.test header.s=r\d{8}\S* header.a=rsa-sha256", results), results
    assert re.search(r"dkim=pass header.d=a.test header.s=e\d{8}\S* header.a=ed25519-sha256", results), results
    assert "dmarc=pass header.from=a.test" in results and "arc=none" in results
    [(verification, methods)] = b.query(
        "SELECT verification, auth_methods FROM mailcore_message WHERE CAST(rcpt_tos AS TEXT) LIKE %s", ("%bob@b.test%",)
    )
    methods = json.loads(methods) if isinstance(methods, str) else methods  # SQLite gives text, PostgreSQL JSON
    assert verification == "verified" and methods["dmarc"]["result"] == "pass"

    # An independent verifier on the raw message as B stored it.
    verified = dkimverify(raw, instances.dns.address)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert b"signature ok" in verified.stdout + verified.stderr
    altered = raw.replace(b"Hello.", b"Hello!")
    assert dkimverify(altered, instances.dns.address).returncode != 0


def test_dmarc_failures_spf_fail_quarantine_reject_and_timeouts(start_instances):
    """Mail sent straight to B's MX by DATA from 127.0.0.1, claiming c.test."""
    instances = start_instances(env={"MAIL_AUTH_DNS_TIMEOUT": "2"})
    b = instances.b
    dns = instances.dns
    rsa = keys.generate(keys.RSA)
    dns.records["sel._domainkey.c.test"] = {"TXT": [keys.key_record("rsa", rsa.public)]}
    dns.records["c.test"] = {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]}
    dns.records["_dmarc.c.test"] = {"TXT": ["v=DMARC1; p=quarantine"]}
    message = b"From: <carol@c.test>\r\nTo: <bob@b.test>\r\nSubject: %s\r\nMessage-ID: <%s@c.test>\r\n\r\nBody text.\r\n"
    key = SigningKey("sel", "rsa", rsa.private)

    def send(subject: bytes, alter: bool = False):
        content = message % (subject, subject)
        signed = dkim_signatures(content, "c.test", [key]) + content
        if alter:
            signed = signed.replace(b"Body text.", b"Body text!")
        with smtplib.SMTP(b.address, instances.smtp_port, timeout=60) as client:
            client.ehlo("client.c.test")
            client.mail("carol@c.test")
            client.rcpt("bob@b.test")
            return client.data(signed)

    # An altered body fails DKIM, 127.0.0.1 is outside c.test's SPF: DMARC fails, p=quarantine holds it.
    code, _ = send(b"altered", alter=True)
    assert code == 250
    [held] = b.wait_for_messages("bob@b.test", state="quarantined", timeout=60)
    results = auth_results(held)
    assert "spf=fail smtp.mailfrom=carol@c.test" in results
    assert "dkim=fail header.d=c.test header.s=sel" in results
    assert "dmarc=fail header.from=c.test (p=QUARANTINE dis=QUARANTINE)" in results
    [(reason,)] = b.query("SELECT d.reason FROM mailcore_delivery d JOIN mailcore_message m ON m.id = d.message_id"
                          " WHERE m.subject = 'altered'")
    assert reason == "DMARC policy quarantine"

    # The intact signature passes DKIM: DMARC passes though SPF fails, and it is delivered.
    code, _ = send(b"intact")
    assert code == 250
    [inbox] = b.wait_for_messages("bob@b.test", timeout=60)
    assert "dkim=pass header.d=c.test" in auth_results(inbox) and "dmarc=pass" in auth_results(inbox)
    [(verification,)] = b.query("SELECT verification FROM mailcore_message WHERE subject = 'intact'")
    assert verification == "authenticated"

    # p=reject: refused at DATA, nothing stored.
    dns.records["_dmarc.c.test"] = {"TXT": ["v=DMARC1; p=reject"]}
    code, text = send(b"rejected", alter=True)
    assert code == 550 and text.startswith(b"5.7.1 ") and b"DMARC policy of reject" in text
    assert b.query("SELECT count(*) FROM mailcore_message WHERE subject = 'rejected'") == [(0,)]

    # p=reject with pct=0: no failing message is in the sample, each gets the next weaker
    # policy, quarantine (RFC 7489 §6.6.4).
    dns.records["_dmarc.c.test"] = {"TXT": ["v=DMARC1; p=reject; pct=0"]}
    code, _ = send(b"sampled out", alter=True)
    assert code == 250
    held = b.wait_for_messages("bob@b.test", count=2, state="quarantined", timeout=60)
    assert any("dmarc=fail header.from=c.test (p=REJECT dis=QUARANTINE)" in auth_results(raw) for raw in held)
    [(reason,)] = b.query("SELECT d.reason FROM mailcore_delivery d JOIN mailcore_message m ON m.id = d.message_id"
                          " WHERE m.subject = 'sampled out'")
    assert reason == "DMARC policy quarantine"

    # DNS that never answers: temperror, and the message is still taken (not held, not refused).
    dns.silent.update({"c.test", "sel._domainkey.c.test", "_dmarc.c.test"})
    started = time.monotonic()
    code, _ = send(b"slow dns", alter=True)
    assert code == 250 and time.monotonic() - started < 20  # the DNS budget (2 s), not a resolver's minutes
    inbox = b.wait_for_messages("bob@b.test", count=2, timeout=60)
    results = auth_results(inbox[-1])
    assert "spf=temperror" in results and "dkim=temperror" in results and "dmarc=temperror" in results


def test_forwarded_mail_carries_a_valid_arc_set(instances):
    """bob's alias on B forwards to alice@a.test: A sees B's ARC seal verify."""
    a, b = instances.a, instances.b
    publish_zone(instances.dns, a.manage("domain", "dns", "a.test").stdout)
    publish_zone(instances.dns, b.manage("domain", "dns", "b.test").stdout)
    assert b.manage("alias", "add", "fwd@b.test", "alice@a.test").returncode == 0
    submit(a, "alice@a.test", "alice-password", "fwd@b.test", "round trip")
    [raw] = a.wait_for_messages("alice@a.test", timeout=90)
    results = auth_results(raw)
    assert "arc=pass" in results and "as.d=b.test" in results, results
    assert b"ARC-Seal: i=1; " in raw and b"ARC-Message-Signature: i=1; " in raw
    assert "dkim=pass header.d=a.test" in results


def test_mail_to_postfix_carries_a_signature_that_dkimverify_accepts(instances):
    """Interop: A delivers to a private Postfix (the benchmark's peer) on 127.0.0.4; the Maildir copy verifies."""
    require_program("postfix")
    from bench.peers import Postfix

    class LoopbackPostfix(Postfix):
        """Postfix on 127.0.0.4, which is no interface's own address: it accepts that only with
        inet_interfaces = all (master.cf still binds the one address and port)."""

        def configure(self) -> None:
            super().configure()
            main = self.config / "main.cf"
            main.write_text(re.sub(r"(?m)^inet_interfaces = .*$", "inet_interfaces = all", main.read_text()))

    a = instances.a
    publish_zone(instances.dns, a.manage("domain", "dns", "a.test").stdout)
    instances.route_to_peer("c.test")
    # Postfix's virtual(8) delivers as nobody: its directories must be reachable by it.
    workdir = Path(tempfile.mkdtemp(prefix="postfix-interop-"))
    workdir.chmod(0o755)
    postfix = LoopbackPostfix(workdir, instances.peer_address, instances.smtp_port, "c.test", "carol")
    try:
        postfix.start()
        sent = submit(a, "alice@a.test", "alice-password", "carol@c.test", "to postfix")
        wait_until(lambda: postfix.delivered() >= 1, 40, interval=0.2)
        assert postfix.delivered() == 1, f"{a.queue()}\n{a.logs()[-3000:]}"
        [path] = [p for sub in ("new", "cur") for p in (postfix.maildir / sub).iterdir()]
        raw = path.read_bytes()
    finally:
        postfix.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert b"DKIM-Signature: v=1; a=rsa-sha256;" in raw and b"DKIM-Signature: v=1; a=ed25519-sha256;" in raw
    assert raw.replace(b"\n", b"\r\n").endswith(sent)  # Postfix stores LF line ends
    verified = dkimverify(raw, instances.dns.address)
    assert verified.returncode == 0 and b"signature ok" in verified.stdout + verified.stderr, verified
