"""The database cache's table (`mailcore_cache`): shared failed-login counts when REDIS_URL is not set."""

from django.core.management.commands.createcachetable import Command as CreateCacheTable
from django.db import migrations

CACHE_TABLE = "mailcore_cache"  # settings.CACHES["default"]["LOCATION"] for the database cache


def create_cache_table(apps, schema_editor):
    # Created whatever CACHES says today, so that dropping REDIS_URL later needs no extra step;
    # createcachetable's own table layout, and nothing if the table exists already.
    command = CreateCacheTable()
    command.verbosity = 0
    command.create_table(schema_editor.connection.alias, CACHE_TABLE, dry_run=False)


def drop_cache_table(apps, schema_editor):
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(CACHE_TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("mailcore", "0004_outbound_claim_and_sweep_schedule")]

    operations = [migrations.RunPython(create_cache_table, drop_cache_table)]
