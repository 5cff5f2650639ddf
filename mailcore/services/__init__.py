"""The service layer: the only code that opens database transactions.

Protocol code (SMTP, POP3, the GET client) and the thin edges (commands, admin actions) call these
functions; they never touch the ORM themselves.
"""
