"""`fast_hashing_in_this_folder`: a folder's conftest imports it to give each of its tests the fast
hasher (tests/conftest.py `fast_password_hashing`)."""

import pytest


@pytest.fixture(autouse=True)
def fast_hashing_in_this_folder(fast_password_hashing):
    """Many users and mailboxes per test: the production hasher's cost is not what is tested here."""
