import pytest


@pytest.fixture(autouse=True)
def _fast_password_hashing(fast_password_hashing):
    """Many users and mailboxes per test: the production hasher's cost is not what is tested here."""
