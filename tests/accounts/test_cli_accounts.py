"""The provisioning commands of operations.md: domain, mailbox, alias, good and bad input."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError

from mailcore.models import Alias, Domain, Mailbox
from tests.conftest import child_env, manage
from tests.factories import call_manage

pytestmark = pytest.mark.django_db


def test_domain_add_list_set_remove():
    assert "added a.test (unverified mail: accept)" in call_manage("domain", "add", "A.Test")
    call_manage("domain", "add", "b.test", "--unverified", "reject")
    assert call_manage("domain", "list").splitlines() == [
        "a.test\tunverified=accept\tactive",
        "b.test\tunverified=reject\tactive",
    ]
    call_manage("domain", "set", "a.test", "--unverified", "quarantine")
    assert Domain.objects.get(name="a.test").unverified_policy == "quarantine"
    call_manage("domain", "remove", "b.test")
    assert list(Domain.objects.values_list("name", flat=True)) == ["a.test"]


@pytest.mark.parametrize(
    "args, error",
    [
        (("domain", "add", "not a domain"), "invalid domain name"),
        (("domain", "add", "nodot"), "invalid domain name"),
        (("domain", "set", "missing.test", "--unverified", "reject"), "unknown domain missing.test"),
        (("domain", "remove", "missing.test"), "unknown domain missing.test"),
    ],
)
def test_domain_errors(args, error):
    with pytest.raises(CommandError, match=error):
        call_manage(*args)


def test_domain_duplicate():
    call_manage("domain", "add", "a.test")
    with pytest.raises(CommandError, match="domain a.test already exists"):
        call_manage("domain", "add", "a.test")
    assert Domain.objects.count() == 1


def test_mailbox_add_hashes_password_and_passwd_changes_it():
    call_manage("domain", "add", "a.test")
    assert "added alice@a.test" in call_manage("mailbox", "add", "Alice@A.test", "--password-stdin", stdin="s3cret pass\n")
    mailbox = Mailbox.objects.get()
    assert mailbox.address == "alice@a.test"
    assert "s3cret" not in mailbox.password and mailbox.password.startswith(("pbkdf2_", "argon2", "bcrypt", "scrypt"))
    assert mailbox.check_password("s3cret pass")
    call_manage("mailbox", "passwd", "alice@a.test", "--password-stdin", stdin="other\n")
    mailbox.refresh_from_db()
    assert mailbox.check_password("other") and not mailbox.check_password("s3cret pass")
    assert call_manage("mailbox", "list").splitlines() == ["alice@a.test\tquota=none\tactive"]
    assert call_manage("mailbox", "list", "a.test").splitlines() == ["alice@a.test\tquota=none\tactive"]


@pytest.mark.parametrize(
    "args, stdin, error",
    [
        (("mailbox", "add", "bob@nowhere.test", "--password-stdin"), "x\n", "unknown domain nowhere.test"),
        (("mailbox", "add", "not-an-address", "--password-stdin"), "x\n", "invalid"),
        (("mailbox", "add", "bob@a.test", "--password-stdin"), "", "no password"),
        (("mailbox", "add", "bob@a.test"), "x\n", "--password-stdin"),
        (("mailbox", "passwd", "nobody@a.test", "--password-stdin"), "x\n", "unknown mailbox nobody@a.test"),
        (("mailbox", "remove", "nobody@a.test"), "", "unknown mailbox"),
        (("mailbox", "list", "nowhere.test"), "", "unknown domain"),
    ],
)
def test_mailbox_errors_write_nothing(args, stdin, error):
    call_manage("domain", "add", "a.test")
    with pytest.raises(CommandError, match=error):
        call_manage(*args, stdin=stdin)
    assert not Mailbox.objects.exists()


def test_mailbox_duplicate():
    call_manage("domain", "add", "a.test")
    call_manage("mailbox", "add", "bob@a.test", "--password-stdin", stdin="x\n")
    with pytest.raises(CommandError, match="mailbox bob@a.test already exists"):
        call_manage("mailbox", "add", "BOB@a.test", "--password-stdin", stdin="y\n")
    assert Mailbox.objects.get().check_password("x")


def test_alias_add_list_remove_and_catch_all():
    call_manage("domain", "add", "a.test")
    call_manage("alias", "add", "postmaster@a.test", "alice@a.test", "bob@remote.test")
    call_manage("alias", "add", "@a.test", "alice@a.test")
    assert call_manage("alias", "list").splitlines() == [
        "@a.test\talice@a.test",
        "postmaster@a.test\talice@a.test",
        "postmaster@a.test\tbob@remote.test",
    ]
    call_manage("alias", "remove", "postmaster@a.test", "bob@remote.test")
    assert Alias.objects.count() == 2


@pytest.mark.parametrize(
    "args, error",
    [
        (("alias", "add", "x@nowhere.test", "alice@a.test"), "unknown domain nowhere.test"),
        (("alias", "add", "x@a.test", "bad address"), "invalid mail address"),
        (("alias", "add", "x@a.test", "x@a.test"), "point at itself"),
        (("alias", "remove", "x@a.test"), "unknown alias"),
    ],
)
def test_alias_errors(args, error):
    call_manage("domain", "add", "a.test")
    with pytest.raises(CommandError, match=error):
        call_manage(*args)
    assert not Alias.objects.exists()


def test_alias_add_is_all_or_nothing():
    call_manage("domain", "add", "a.test")
    with pytest.raises(CommandError):
        call_manage("alias", "add", "x@a.test", "alice@a.test", "not an address")
    assert not Alias.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_cli_exit_status_and_one_line_error(tmp_path):
    env = child_env(tmp_path)
    ok = manage("domain", "add", "a.test", env=env)
    assert ok.returncode == 0, ok.stderr
    dup = manage("domain", "add", "a.test", env=env)
    assert dup.returncode == 1
    assert dup.stderr.strip() == "CommandError: domain a.test already exists"
    bad = manage("mailbox", "add", "bob@a.test", "--password-stdin", stdin="", env=env)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    good = manage("mailbox", "add", "bob@a.test", "--password-stdin", stdin="pw\n", env=env)
    assert good.returncode == 0 and Mailbox.objects.filter(address="bob@a.test").exists()
