"""The mail server: SMTP in and out, POP3, reverse delivery, and its administration."""
