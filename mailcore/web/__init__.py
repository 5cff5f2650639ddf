"""The web UI: the administrator's console on the Django admin and the mailbox owners' self-service."""
