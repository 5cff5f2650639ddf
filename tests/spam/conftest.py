import pytest

from tests.spamd_server import Spamd


@pytest.fixture(scope="session")
def spamd():
    """One spamd for the whole session of a test process (an xdist worker): it takes seconds to load."""
    server = Spamd().start()
    yield server
    server.stop()
