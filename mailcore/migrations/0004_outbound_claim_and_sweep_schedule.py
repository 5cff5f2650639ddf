# The outbound queue's claim lease. (The sweep schedule is registered after every migrate, in apps.py.)

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
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
    ]
