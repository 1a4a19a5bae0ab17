"""Where a node's cluster token comes from, and where the head leaves it.

A head makes (or reads) the token and publishes it, 0600, under the user's
runtime directory keyed by its directory's address, so that the README's
cluster commands work unchanged on one machine; it removes it when it stops.
A node that finds no token for its directory stops with a message saying
where to get one.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLUSTER_ENV, NodeProcess

import objstore
from objstore import auth


def _published(node: NodeProcess) -> Path:
    return Path(auth.cache_path(str(node.ready["directory"])))


def test_the_head_publishes_its_token_0600_and_removes_it_at_stop(node_factory: type) -> None:
    head: NodeProcess = node_factory()  # type: ignore[call-arg]
    assert head.ready["auth"] == "token" and head.ready["tls"] is False
    path = _published(head)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = auth.read_token_file(str(path))
    assert len(token) == 64
    assert token.decode() not in head.stderr()  # never logged
    assert head.stop() == 0
    assert not path.exists()


@pytest.mark.slow
async def test_a_head_keeps_its_token_across_restarts_of_its_state_dir(
    node_factory: type, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first: NodeProcess = node_factory("--state-dir", str(state))  # type: ignore[call-arg]
    token = auth.read_token_file(str(_published(first)))
    assert auth.read_token_file(str(state / "token")) == token
    port = str(first.ready["directory"]).rpartition(":")[2]
    assert first.stop() == 0
    again: NodeProcess = node_factory(  # type: ignore[call-arg]
        "--state-dir", str(state), "--directory-port", port
    )
    assert auth.read_token_file(str(_published(again))) == token


@pytest.mark.slow
async def test_a_token_file_is_the_clusters_token(node_factory: type, tmp_path: Path) -> None:
    token_file = tmp_path / "cluster.token"
    token_file.write_bytes(b"f" * 64 + b"\n")
    token_file.chmod(0o600)
    head: NodeProcess = node_factory(  # type: ignore[call-arg]
        "--token-file", str(token_file), env=CLUSTER_ENV
    )
    assert auth.read_token_file(str(_published(head))) == b"f" * 64
    # A node elsewhere would take the same file; here the env variable names it.
    os.unlink(_published(head))  # as if on another machine: nothing published
    member: NodeProcess = node_factory(  # type: ignore[call-arg]
        directory=head.ready["directory"],
        env={**CLUSTER_ENV, "OBJSTORE_TOKEN_FILE": str(token_file)},
    )
    async with objstore.connect(head.socket) as a, objstore.connect(member.socket) as b:
        ref = await a.put(b"x" * 100_000)
        assert bytes(await b.get(ref, timeout=10)) == b"x" * 100_000


def test_a_token_file_others_can_read_stops_the_node(tmp_path: Path) -> None:
    token_file = tmp_path / "cluster.token"
    token_file.write_bytes(b"f" * 64)
    token_file.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "objstore.node", "--head", "--token-file", str(token_file)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "may be read by other users" in err and "chmod 600" in err
    assert "Traceback" not in err


def test_a_node_without_a_token_for_its_directory_says_where_to_get_one(
    node_factory: type,
) -> None:
    # Nothing is published for this address: no head of this user runs there.
    member: NodeProcess = node_factory(  # type: ignore[call-arg]
        directory="127.0.0.1:9", expect_ready=False
    )
    assert member.proc.wait(30) == 2
    err = member.stderr()
    assert "no cluster token for the directory at 127.0.0.1:9" in err
    assert "--token-file" in err and "OBJSTORE_TOKEN_FILE" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_insecure_says_so_at_start(node_factory: type) -> None:
    head: NodeProcess = node_factory("--insecure")  # type: ignore[call-arg]
    assert head.ready["auth"] == "off"
    assert "authentication is off (--insecure)" in head.stderr()
    assert not _published(head).exists()
