"""The project's settings with the counting hasher (tests/counting_hasher.py), for server processes under test."""

from mailsite.settings import *  # noqa: F403

PASSWORD_HASHERS = ["tests.counting_hasher.CountingPBKDF2PasswordHasher"]
