"""A real S3-compatible server (moto in server mode) for the spill tests.

``start_s3_server(directory)`` runs ``python -m moto.server`` on a free port
of 127.0.0.1 and waits until it answers HTTP.  The session-scoped
``s3_server`` fixture yields the :class:`S3Server`; a test module (or a
conftest) imports it to use it::

    from s3_server import s3_server  # noqa: F401

pytest puts ``tests/`` on ``sys.path`` (rootdir-relative ``conftest.py``, no
``__init__.py``), which is what makes that import work.  Nothing global is
set: a test gives the server's settings to the code under test itself, e.g.
``for k, v in s3_server.env().items(): monkeypatch.setenv(k, v)``.  Tests
share the one server (and its state), so each uses its own bucket
(:meth:`S3Server.create_bucket`).

moto comes with the ``test`` extra (``moto[server]``); when it is missing the
fixture fails (it never skips).
"""

from __future__ import annotations

import http.client
import importlib.util
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from server_process import ServerProcess, start_server

__all__ = ["S3Server", "start_s3_server", "s3_server", "create_bucket", "MISSING_MESSAGE"]

START_TIMEOUT = 20.0
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

MISSING_MESSAGE = (
    "moto (with its server extra) is not installed, and the spill tests need a real "
    "S3-compatible server: pip install 'moto[server]>=5,<6' (it is in the test extra)."
)


@dataclass
class S3Server(ServerProcess):
    """A running moto server started by :func:`start_s3_server`."""

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS environment that points botocore at this server (dummy credentials)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """A synchronous botocore S3 client for this server (for setting up and checking)."""
        return _client(self.endpoint_url)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name unless given); return its name."""
        return create_bucket(self.endpoint_url, name)


def _client(endpoint_url: str) -> Any:
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 1}),
    )


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a bucket on the server at ``endpoint_url``; return its name."""
    name = name or f"spill-{uuid.uuid4().hex[:12]}"
    _client(endpoint_url).create_bucket(Bucket=name)
    return name


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def start_s3_server(directory: str | Path) -> S3Server:
    """Start a moto server on a free port; raise with its output if it does not answer."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise RuntimeError(MISSING_MESSAGE)
    server = start_server(
        "moto-server",
        Path(directory),
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        _answers,
        START_TIMEOUT,
    )
    return S3Server(server.proc, server.port, server.log_path)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server shared by the session (stopped with SIGTERM at its end)."""
    if importlib.util.find_spec("moto") is None:
        pytest.fail(MISSING_MESSAGE, pytrace=False)
    server = start_s3_server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()
