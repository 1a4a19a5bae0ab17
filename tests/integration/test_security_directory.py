"""The directory's port against someone without the cluster token, with real nodes.

The attacker reaches the head's directory port with a raw grpclib channel and
the generated stub, exactly as any gRPC tool would, and tries to read, delete
and pose as a node.  Nodes and the CLI are the real processes a user runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from conftest import CLUSTER_ENV, run_cli
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

import objstore
from objstore import cli
from objstore.auth import generate_token, write_token_file
from objstore.directory.codec import pb

_REFUSED_LOG = "directory refused a call without valid credentials"


def _token_file(path: Path) -> str:
    write_token_file(str(path), generate_token())
    return str(path)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_the_cli_without_a_usable_token_says_why_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No head ever published a token for this address on this machine.
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--directory", "127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("python -m objstore: no cluster token for the directory at 127.0.0.1:9")
    # A token file others may read is refused before anything is sent.
    loose = tmp_path / "token"
    loose.write_text(generate_token().decode())
    loose.chmod(0o644)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["memory", "--directory", "127.0.0.1:9", "--token-file", str(loose)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1 and out == "" and err.count("\n") == 1
    assert "may be read by other users (mode 0644); chmod 600 it" in err


@pytest.mark.slow
async def test_an_attacker_without_the_token_reads_deletes_and_registers_nothing(
    cluster_factory,
) -> None:
    c = cluster_factory(0)
    async with objstore.connect(c.head.socket) as victim:
        secret = await victim.put(b"the secret value", name="secret")
        plain = await victim.put(b"another object")
        channel = Channel(*_host_port(c.directory))
        try:
            stub = pb.DirectoryStub(channel)
            replies: list[str] = []
            with pytest.raises(GRPCError) as info:
                await stub.list_objects(pb.ListObjectsRequest(limit=1000), timeout=5)
            assert info.value.status is Status.UNAUTHENTICATED
            replies.append(repr(info.value))
            with pytest.raises(GRPCError) as info:
                await stub.delete(pb.DeleteRequest(names=["secret"]), timeout=5)
            assert info.value.status is Status.UNAUTHENTICATED
            replies.append(repr(info.value))
            made_up = os.urandom(16)
            with pytest.raises(GRPCError) as info:
                await stub.register(
                    pb.RegisterRequest(
                        node_id=made_up,
                        session=os.urandom(16),
                        address="127.0.0.1:1",
                        hostname="evil",
                        pid=1,
                    ),
                    timeout=5,
                )
            assert info.value.status is Status.UNAUTHENTICATED
            replies.append(repr(info.value))
        finally:
            channel.close()
        # Nothing of the cluster in any reply: no ids, no names.
        for reply in replies:
            for leak in (secret.hex(), plain.hex(), "secret", c.head.ready["node_id"]):
                assert leak not in reply, reply
        # The named object is still there, read through its owner's client.
        assert bytes(await victim.get("secret")) == b"the secret value"
    # The made-up node is not in the cluster.
    code, out, err = await run_cli("status", "--directory", c.directory, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert [n["node_id"] for n in status["nodes"]] == [c.head.ready["node_id"]]
    assert made_up.hex() not in out and "evil" not in out
    # Three refusals from one peer: one warning, naming the first.
    lines = [x for x in c.head.stderr().splitlines() if _REFUSED_LOG in x]
    assert len(lines) == 1 and "method=ListObjects" in lines[0], c.head.stderr()[-3000:]
    assert "reason='no credentials'" in lines[0] and "peer=127.0.0.1" in lines[0]


@pytest.mark.slow
async def test_a_node_with_the_wrong_token_file_exits_and_names_the_problem(
    cluster_factory, node_factory, tmp_path: Path
) -> None:
    c = cluster_factory(0)
    wrong = _token_file(tmp_path / "wrong")
    t0 = time.monotonic()
    n = node_factory(
        "--token-file", wrong, directory=c.directory, env=CLUSTER_ENV, expect_ready=False
    )
    code = await asyncio.to_thread(n.proc.wait, 30)
    assert code == 1
    assert time.monotonic() - t0 < 10  # refused at once, not after the request timeout
    assert n.proc.stdout is not None and n.proc.stdout.read() == b""
    last = n.stderr().strip().splitlines()[-1]
    assert last == (
        f"objstore.node: cannot start: the directory at {c.directory} refused this node's "
        "cluster token (wrong credentials); give this node the head's token with --token-file"
    )
    assert "Traceback" not in n.stderr()
    code, out, err = await run_cli("status", "--directory", c.directory, "--json")
    assert code == 0 and len(json.loads(out)["nodes"]) == 1, err


@pytest.mark.slow
async def test_a_node_given_the_heads_token_file_joins(cluster_factory, tmp_path: Path) -> None:
    token = _token_file(tmp_path / "token")
    c = cluster_factory(0, "--token-file", token)
    # This node cannot find the published token: only --token-file lets it in.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    n = c.add_node("--token-file", token, env={"XDG_RUNTIME_DIR": str(elsewhere)})
    async with objstore.connect(c.head.socket) as a, objstore.connect(n.socket) as b:
        ref = await a.put(b"from the head")
        assert bytes(await b.get(ref, timeout=10)) == b"from the head"
    code, out, err = await run_cli("status", "--directory", c.directory, "--json")
    assert code == 0, err
    assert {x["node_id"] for x in json.loads(out)["nodes"]} == {
        c.head.ready["node_id"],
        n.ready["node_id"],
    }


@pytest.mark.slow
async def test_the_cli_uses_the_published_token_and_refuses_a_wrong_one(
    cluster_factory, tmp_path: Path
) -> None:
    c = cluster_factory(0)
    async with objstore.connect(c.head.socket) as client:
        await client.put(b"x", name="listed")
    for command in ("status", "memory"):
        code, out, err = await run_cli(command, "--directory", c.directory)
        assert code == 0, err
    assert "listed" in out
    # Through the node's socket too (the directory's address comes from the node).
    code, out, err = await run_cli("status", "--socket", c.head.socket)
    assert code == 0 and "cluster" in out, err
    # The same, run as a user would: one line, no traceback.
    code, out, err = await run_cli("status", "--directory", "127.0.0.1:9")
    assert code == 1 and out == "" and err.count("\n") == 1 and "no cluster token" in err
    wrong = _token_file(tmp_path / "wrong")
    for command in ("status", "memory"):
        code, out, err = await run_cli(command, "--directory", c.directory, "--token-file", wrong)
        assert code == 1 and out == "" and "Traceback" not in err
        assert err.count("\n") == 1
        assert f"the directory at {c.directory} refused this tool's cluster token" in err
        assert "(wrong credentials)" in err and "--token-file" in err
