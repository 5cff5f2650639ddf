"""App configuration."""

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def register_schedules(sender, **kwargs) -> None:
    """After `migrate`: the periodic django-q2 jobs exist, once each (registered by name)."""
    # Imported here, not at the top: Django imports apps.py before the app registry is ready,
    # and tasks imports the models.
    from mailcore import tasks

    tasks.register_schedules()


class MailcoreConfig(AppConfig):
    name = "mailcore"
    verbose_name = "Mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        post_migrate.connect(register_schedules, sender=self, dispatch_uid="mailcore.register_schedules")
