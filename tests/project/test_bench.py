"""`make bench` starts: the runner and its modules import without Django's settings (the tests'
helpers it uses must not need them), and each section it names exists."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_benchmark_runner_starts_without_django_settings():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    for script in ("bench/run.py", "bench/two_nodes.py"):
        result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith("usage:")
