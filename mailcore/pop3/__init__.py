"""The POP3 listener (RFC 1939)."""
