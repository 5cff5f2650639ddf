"""The service layer: every change to mailcore's tables, each in its own transaction.

Protocol code (SMTP, POP3, the GET client), the workers and the thin edges (commands, admin saves
and actions) call these functions and never write through the ORM themselves. The web pages and
the admin's lists read the models directly for display, as Django's own views do: a read for a
page needs no transaction and holds no policy. The job entry points (mailcore/tasks.py) keep
django-q2's Schedule rows.
"""
