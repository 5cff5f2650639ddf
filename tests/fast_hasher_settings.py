"""The project's settings with MD5 first among the hashers, for server processes of tests whose
users were made with `fast_password_hashing`: the child must verify the hashes the test wrote."""

from django.conf import global_settings

from mailsite.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *global_settings.PASSWORD_HASHERS]
