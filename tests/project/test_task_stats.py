"""qcluster's statistics, what `qinfo` and `qmonitor` read from another process: on SQLite they are
kept in files beside the database, not in its cache table, where each save (every half second)
would be a write transaction taking its turn at SQLite's one write lock with the MX's commits."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import child_env, manage
from tests.sockets import wait_until


def cluster_ids(env: dict[str, str]) -> list[str]:
    out = manage("qinfo", "--ids", env=env).stdout
    return [] if "No clusters" in out else out.split()


@pytest.mark.django_db(transaction=True)
def test_qinfo_sees_the_cluster_whose_statistics_stay_out_of_sqlite(server_factory, mail_store):
    cluster = server_factory("qcluster")
    env = child_env(mail_store)
    assert wait_until(lambda: cluster_ids(env), 60), cluster.output()
    assert len(cluster_ids(env)) == 1
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("SELECT cache_key FROM mailcore_cache")
            keys = [key for (key,) in cursor.fetchall()]
        assert not [key for key in keys if "django_q" in key]
        assert list(Path(connection.settings_dict["NAME"] + "-qcluster-stats").glob("*.djcache"))
