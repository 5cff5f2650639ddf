"""The workers: what runs the clients of delivery and reverse delivery against the services, as
django-q2 tasks (mailcore.tasks) and management commands call them. Above the services, below the
protocols and the web."""
