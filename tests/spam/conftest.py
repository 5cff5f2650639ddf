import pytest

from tests.spamd_server import shared_spamd


@pytest.fixture(scope="session")
def spamd():
    """One spamd for the whole session (it takes seconds to start)."""
    return shared_spamd()
