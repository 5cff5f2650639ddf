# The outbound queue's claim lease, and the django-q2 schedule that sweeps deferred items.

from django.db import migrations, models


def register_queue_sweep(apps, schema_editor):
    from mailcore.tasks import register_schedules

    register_schedules(apps.get_model("django_q", "Schedule"))


class Migration(migrations.Migration):

    dependencies = [
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
        ("mailcore", "0003_spam_thresholds_and_scores"),
    ]

    operations = [
        migrations.AddField(
            model_name="queueitem",
            name="claimed_until",
            field=models.DateTimeField(
                blank=True,
                help_text="A delivery worker holds the item until then; a crashed worker's claim lapses.",
                null=True,
            ),
        ),
        migrations.RunPython(register_queue_sweep, migrations.RunPython.noop),
    ]
