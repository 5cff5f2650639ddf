"""A local S3-compatible endpoint for the tests: moto's server mode, on loopback, in a process of its own.

    pytest_plugins = ["tests.s3_server"]

    def test_something(s3_endpoint):
        bucket = s3_endpoint.new_bucket()
        env = s3_endpoint.env(bucket)        # MAIL_S3_* for a server process
        s3_endpoint.pause(); s3_endpoint.resume()   # SIGSTOP / SIGCONT: an endpoint that hangs

`s3_endpoint` is one server per xdist worker (each test makes buckets of its own); `own_s3_endpoint`
is one for a single test, which may pause it without holding up the others. Skipped with a named
reason where moto cannot be started; under CI (CI=true) a missing moto fails instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.programs import end_process, unavailable
from tests.sockets import free_port, wait_for_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Endpoint:
    proc: subprocess.Popen
    host: str
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}),
        )

    def new_bucket(self) -> str:
        name = f"mail-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def env(self, bucket: str, timeout: float = 2.0, attempts: int = 2) -> dict[str, str]:
        """The settings of a server process that keeps its bodies in `bucket`."""
        return {
            "MAIL_S3_BUCKET": bucket,
            "MAIL_S3_ENDPOINT_URL": self.url,
            "MAIL_S3_REGION": REGION,
            "MAIL_S3_ACCESS_KEY": ACCESS_KEY,
            "MAIL_S3_SECRET_KEY": SECRET_KEY,
            "MAIL_S3_TIMEOUT": str(timeout),
            "MAIL_S3_MAX_ATTEMPTS": str(attempts),
        }

    def storage_options(self, bucket: str, timeout: float = 2.0, attempts: int = 2) -> dict:
        """The `mailbodies` storage entry for this test process itself (settings.STORAGES)."""
        return {
            "BACKEND": "mailcore.store.s3.ObjectStoreBodies",
            "OPTIONS": {
                "bucket_name": bucket, "endpoint_url": self.url, "region_name": REGION, "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY, "timeout": timeout, "max_attempts": attempts,
            },
        }

    def pause(self) -> None:
        """The endpoint hangs: connections are accepted by the kernel and never answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused endpoint would not act on SIGTERM
        end_process(self.proc)


def start_s3_endpoint(log_path: Path, host: str = "127.0.0.1") -> S3Endpoint:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("the S3 test server cannot be started: moto[server] is not installed (pip install -r requirements.txt)")
    port = free_port(host)
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )
    log.close()
    try:
        wait_for_port(host, port, proc=proc, timeout=60)
    except (RuntimeError, TimeoutError) as exc:
        end_process(proc, signal.SIGKILL)
        message = f"the S3 test server (moto) did not start: {exc}\n{log_path.read_text(errors='replace')}"
        unavailable(message)
    return S3Endpoint(proc, host, port, log_path)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    endpoint = start_s3_endpoint(tmp_path_factory.mktemp("s3") / "moto.log")
    yield endpoint
    endpoint.stop()


@pytest.fixture
def own_s3_endpoint(tmp_path):
    endpoint = start_s3_endpoint(tmp_path / "moto.log")
    yield endpoint
    endpoint.stop()
