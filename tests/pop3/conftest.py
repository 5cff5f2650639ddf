import pytest

from tests.pop3_support import make_mailbox


@pytest.fixture
def mailbox():
    """The test mailbox of pop3_support (ADDRESS, PASSWORD)."""
    make_mailbox()
