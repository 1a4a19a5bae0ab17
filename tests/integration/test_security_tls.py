"""Mutual TLS across real nodes: the directory and the data plane both encrypted.

Every node and the CLI are given a certificate signed by the cluster's CA
(``--tls-cert/--tls-key/--tls-ca``); a node whose certificate another CA
signed is refused by the directory and stops at start, naming the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from certs import make_certs
from conftest import CLUSTER_ENV, NodeProcess, run_cli

import objstore


@pytest.mark.slow
async def test_a_tls_cluster_pulls_between_nodes_and_the_cli_reads_it(
    node_factory: Any, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    head: NodeProcess = node_factory(*certs.node_flags(0), env=CLUSTER_ENV)
    assert head.ready["tls"] is True and head.ready["auth"] == "token"
    member: NodeProcess = node_factory(
        *certs.node_flags(1), directory=head.ready["directory"], env=CLUSTER_ENV
    )
    value = np.arange(3_000_000, dtype=np.int64)  # 24 MB: many chunks
    async with objstore.connect(head.socket) as a, objstore.connect(member.socket) as b:
        ref = await a.put(value, name="weights")
        got = await b.get("weights", timeout=30)
        assert np.array_equal(got, value)
        small = [await a.put(i.to_bytes(4, "little") * 100) for i in range(50)]
        assert [bytes(v) for v in await b.get(small, timeout=30)] == [
            i.to_bytes(4, "little") * 100 for i in range(50)
        ]
        del got
        await b.delete(ref)
    code, out, err = await run_cli(
        "status", "--directory", str(head.ready["directory"]), *certs.node_flags(2)
    )
    assert code == 0, err
    assert out.count("alive") >= 2
    # Without a certificate the CLI cannot talk to a TLS directory.
    code, _, err = await run_cli("status", "--directory", str(head.ready["directory"]))
    assert code != 0 and "Traceback" not in err


async def test_a_node_with_a_certificate_of_another_ca_is_refused(
    node_factory: Any, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    head: NodeProcess = node_factory(*certs.node_flags(0), env=CLUSTER_ENV)
    cert, key = certs.untrusted
    stranger: NodeProcess = node_factory(
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-ca",
        certs.ca,  # it trusts the cluster, the cluster does not trust it
        directory=head.ready["directory"],
        env=CLUSTER_ENV,
        expect_ready=False,
    )
    assert stranger.proc.wait(30) == 1
    err = stranger.stderr()
    assert "cannot start" in err and "TLS" in err, err[-2000:]
    assert "Traceback" not in err
