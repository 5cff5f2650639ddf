"""The cache of recently verified credentials: hits skip the hasher, a changed password or a disabled mailbox does not hit."""

from __future__ import annotations

import hashlib
import poplib

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from mailcore.models import Mailbox
from mailcore.services import accounts, credentials
from mailcore.services.credentials import VerifiedCredentials
from tests.conftest import child_env, manage
from tests.factories import ADDRESS, PASSWORD, Clock, make_mailbox
from tests.pop3_support import start_pop3


@pytest.fixture(autouse=True)
def empty_cache(settings):
    settings.MAIL_AUTH_CACHE_TTL = 60.0
    settings.MAIL_AUTH_CACHE_SIZE = 100
    credentials.verified.forget_all()
    yield
    credentials.verified.forget_all()


class Runs:
    count = 0


@pytest.fixture
def hasher_runs(monkeypatch):
    """How often Django's PBKDF2 ran (checking a password or hashing one), counted by wrapping the hasher."""
    runs = Runs()
    original = PBKDF2PasswordHasher.encode

    def counted(self, *args, **kwargs):
        runs.count += 1
        return original(self, *args, **kwargs)

    # verify() calls encode() with the stored salt: one count per check, as per new hash.
    monkeypatch.setattr(PBKDF2PasswordHasher, "encode", counted)
    return runs


@pytest.mark.django_db
def test_a_repeated_login_skips_the_hasher(hasher_runs):
    make_mailbox()
    hasher_runs.count = 0
    assert accounts.authenticate(ADDRESS, PASSWORD).address == ADDRESS
    assert hasher_runs.count == 1
    # The same credentials again, written differently (RFC 5321 §2.4: the domain is case-insensitive).
    for _ in range(3):
        assert accounts.authenticate("alice@A.TEST", PASSWORD).address == ADDRESS
    assert hasher_runs.count == 1


@pytest.mark.django_db
def test_a_wrong_password_is_never_a_hit_and_never_cached(hasher_runs):
    make_mailbox()
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    hasher_runs.count = 0
    for wrong in ("correct horse batter", PASSWORD + " ", PASSWORD.upper(), ""):
        assert accounts.authenticate(ADDRESS, wrong) is None
    assert accounts.authenticate(ADDRESS, "wrong") is None
    assert accounts.authenticate(ADDRESS, "wrong") is None  # a failure is checked again every time
    assert hasher_runs.count == 6
    assert len(credentials.verified) == 1


@pytest.mark.django_db
def test_a_password_change_drops_the_entry(hasher_runs):
    make_mailbox()
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    accounts.set_password(ADDRESS, "a new password")
    hasher_runs.count = 0
    assert accounts.authenticate(ADDRESS, PASSWORD) is None
    assert hasher_runs.count == 1  # the old entry did not answer: the hasher did
    assert accounts.authenticate(ADDRESS, "a new password") is not None
    assert accounts.authenticate(ADDRESS, "a new password") is not None
    assert hasher_runs.count == 2


@pytest.mark.django_db
def test_a_password_set_again_to_the_same_value_still_drops_the_entry(hasher_runs):
    """A new salt makes a new hash: the entry names the hash it was verified against, not the password."""
    make_mailbox()
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    accounts.set_password(ADDRESS, PASSWORD)
    hasher_runs.count = 0
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    assert hasher_runs.count == 1


@pytest.mark.django_db
def test_a_disabled_mailbox_or_domain_is_refused_despite_the_entry(hasher_runs):
    make_mailbox()
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    Mailbox.objects.filter(address=ADDRESS).update(active=False)
    assert accounts.authenticate(ADDRESS, PASSWORD) is None
    Mailbox.objects.filter(address=ADDRESS).update(active=True)
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    accounts.set_domain("a.test", active=False)
    assert accounts.authenticate(ADDRESS, PASSWORD) is None
    accounts.set_domain("a.test", active=True)
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None


@pytest.mark.django_db
def test_a_removed_and_recreated_mailbox_does_not_inherit_the_entry(hasher_runs):
    make_mailbox()
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    accounts.remove_mailbox(ADDRESS)
    assert accounts.authenticate(ADDRESS, PASSWORD) is None
    accounts.add_mailbox(ADDRESS, PASSWORD)
    hasher_runs.count = 0
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    assert hasher_runs.count == 1


@pytest.mark.django_db
def test_ttl_zero_turns_the_cache_off(settings, hasher_runs):
    settings.MAIL_AUTH_CACHE_TTL = 0
    make_mailbox()
    hasher_runs.count = 0
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    assert hasher_runs.count == 2
    assert len(credentials.verified) == 0


def test_an_entry_expires_after_its_lifetime_and_hits_do_not_extend_it():
    clock = Clock()
    cache = VerifiedCredentials(clock=clock)
    cache.remember("a@x.test", "pw", 1, "hash-1", ttl=60, size=10)
    clock.now += 59
    assert cache.recall("a@x.test", "pw", 1, "hash-1", ttl=60)
    clock.now += 1
    assert not cache.recall("a@x.test", "pw", 1, "hash-1", ttl=60)
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first():
    cache = VerifiedCredentials(clock=Clock())
    for n in (1, 2):
        cache.remember(f"u{n}@x.test", "pw", n, "h", ttl=60, size=2)
    assert cache.recall("u1@x.test", "pw", 1, "h", ttl=60)  # u1 is now the more recent
    cache.remember("u3@x.test", "pw", 3, "h", ttl=60, size=2)
    assert len(cache) == 2
    assert cache.recall("u1@x.test", "pw", 1, "h", ttl=60)
    assert cache.recall("u3@x.test", "pw", 3, "h", ttl=60)
    assert not cache.recall("u2@x.test", "pw", 2, "h", ttl=60)


def test_an_entry_answers_only_for_its_mailbox_hash_and_credentials():
    cache = VerifiedCredentials(clock=Clock())
    cache.remember("a@x.test", "pw", 1, "hash-1", ttl=60, size=10)
    assert not cache.recall("a@x.test", "pw2", 1, "hash-1", ttl=60)
    assert not cache.recall("b@x.test", "pw", 1, "hash-1", ttl=60)
    # The length prefix: the same bytes split differently are other credentials.
    assert not cache.recall("a@x.tes", "tpw", 1, "hash-1", ttl=60)
    assert not cache.recall("a@x.test", "pw", 2, "hash-1", ttl=60)  # another mailbox: dropped
    cache.remember("a@x.test", "pw", 1, "hash-1", ttl=60, size=10)
    assert not cache.recall("a@x.test", "pw", 1, "hash-2", ttl=60)  # another hash: dropped
    assert not cache.recall("a@x.test", "pw", 1, "hash-1", ttl=60)  # and gone for good


@pytest.mark.django_db
def test_the_cache_holds_nothing_a_password_can_be_recovered_or_tested_from():
    make_mailbox()
    assert accounts.authenticate(ADDRESS, PASSWORD) is not None
    stored_hash = Mailbox.objects.get(address=ADDRESS).password
    (key, entry), = credentials.verified._entries.items()
    held = key + entry.stored_hash + repr(entry).encode()
    pw = PASSWORD.encode()
    unkeyed = [
        pw,
        stored_hash.encode(),
        stored_hash.rpartition("$")[2].encode(),  # the hash's digest part
        *(hashlib.new(name, data).digest() for name in ("sha256", "sha512", "md5")
          for data in (pw, ADDRESS.encode() + pw, ADDRESS.encode() + b"\0" + pw, stored_hash.encode())),
    ]
    for value in unkeyed:
        assert value not in held
    # The key is the process's own: another process (a fresh cache) computes other entries for the
    # same credentials, so without the process's memory an entry cannot be checked against a guess.
    other = VerifiedCredentials()
    other.remember(ADDRESS, PASSWORD, entry.mailbox_id, stored_hash, ttl=60, size=10)
    (other_key, other_entry), = other._entries.items()
    assert other_key != key and other_entry.stored_hash != entry.stored_hash


@pytest.mark.django_db(transaction=True)
def test_after_passwd_in_another_process_the_old_password_no_longer_logs_in_over_pop3(server_factory, mail_store):
    make_mailbox()
    port = start_pop3(server_factory, MAIL_AUTH_CACHE_TTL="300")

    def login(password: str) -> bytes:
        client = poplib.POP3("127.0.0.1", port, timeout=10)
        try:
            client.user(ADDRESS)
            reply = client.pass_(password)
            client.quit()
            return reply
        except poplib.error_proto as exc:
            client.close()
            return exc.args[0]

    # Twice: the second answer comes from the listener's cache.
    assert login(PASSWORD).startswith(b"+OK")
    assert login(PASSWORD).startswith(b"+OK")
    changed = manage("mailbox", "passwd", ADDRESS, "--password-stdin", stdin="a new password\n", env=child_env(mail_store))
    assert changed.returncode == 0, changed.stderr
    assert login(PASSWORD) == b"-ERR [AUTH] invalid user name or password"
    assert login("a new password").startswith(b"+OK")
