"""Borrower sets through a real DirectoryServer and real DirectoryClients (fake nodes).

A node borrowing an object put on another node, and the end of it, reach the
primary node's listener; so do a borrower's death, the deletion of an object
whose primary node died once its last borrower is gone, and the borrow sets
rebuilt from the full reports after a directory restart.
"""

from __future__ import annotations

import pytest
from _directory import directory_config, member, oid, serving, until
from fakes import FakeNode

from objstore.locations import LocationState


@pytest.mark.parametrize("local", [False, True], ids=["grpc", "head-in-process"])
async def test_a_borrow_and_its_end_reach_the_primary(local: bool) -> None:
    x, y = oid(1), oid(2)
    async with serving() as server, member(server, local=local) as a, member(server) as b:
        a.node.add(x, primary=True)
        a.node.add(y, primary=True)
        await a.client.flush_reports()
        b.node.borrow(x)
        await a.node.wait_for(lambda: x in a.node.lent, what="a told x is borrowed")
        assert a.node.borrow_notes == [("borrowed", x)]
        [row] = await a.client.lookup([x])
        assert row.borrowers == (b.node_id,)
        b.node.unborrow(x)
        b.node.borrow(y)
        await a.node.wait_for(lambda: x not in a.node.lent and y in a.node.lent)
        assert a.node.borrow_notes[1:] in (
            [("borrowed", y), ("unborrowed", x)],  # one notification: borrowed first
            [("unborrowed", x), ("borrowed", y)],  # two (b's changes in two reports)
        )
        assert b.node.borrow_notes == []  # only the primary hears


async def test_a_borrowers_death_ends_its_borrows() -> None:
    x = oid(1)
    async with serving() as server, member(server) as a:
        a.node.add(x, primary=True)
        await a.client.flush_reports()
        async with member(server) as b:
            b.node.borrow(x)
            await a.node.wait_for(lambda: x in a.node.lent, what="borrowed")
            b_id = b.node_id
        # b stopped (no more heartbeats); the death timer would find it silent.
        await server._declare_dead(b_id)
        await a.node.wait_for(lambda: x not in a.node.lent, what="unborrowed with b's death")
        assert a.node.borrow_notes == [("borrowed", x), ("unborrowed", x)]
        assert server.state.row(x).state == LocationState.PRESENT


@pytest.mark.slow
async def test_a_borrower_that_stops_heartbeating_is_found_dead_and_its_borrows_end() -> None:
    x = oid(1)
    async with serving(directory_config(node_timeout_s=0.5)) as server, member(server) as a:
        a.node.add(x, primary=True)
        await a.client.flush_reports()
        async with member(server) as b:
            b.node.borrow(x)
            await a.node.wait_for(lambda: x in a.node.lent, what="borrowed")
        # b stopped: the death timer finds it silent; a keeps heartbeating.
        await a.node.wait_for(lambda: x not in a.node.lent, what="unborrowed with b's death")
        assert not server.state.nodes[b.node_id].alive


async def test_an_object_whose_primary_died_goes_with_its_last_borrower() -> None:
    x = oid(1)
    async with serving() as server, member(server) as b:
        async with member(server) as a:
            a.node.add(x, primary=True)
            await a.client.flush_reports()
            b.node.add(x, primary=False)  # b pulled a copy
            b.node.borrow(x)
            await a.node.wait_for(lambda: x in a.node.lent, what="borrowed")
            a_id = a.node_id
        await server._declare_dead(a_id)
        assert server.state.row(x).state == LocationState.PRESENT  # b still holds refs
        b.node.unborrow(x)
        await b.node.wait_for(lambda: x in b.node.frees, what="b told to free x")
        assert (await b.client.lookup([x]))[0].state == LocationState.DELETED
        assert x not in b.node.objects


async def test_a_restarted_directory_rebuilds_the_borrow_sets() -> None:
    x = oid(1)
    cfg = directory_config()
    async with serving(cfg) as first:
        port = first.port
        async with member(first) as a, member(first) as b:
            a.node.add(x, primary=True)
            await a.client.flush_reports()
            b.node.borrow(x)
            await a.node.wait_for(lambda: x in a.node.lent, what="borrowed")
            await first.stop()
            async with serving(cfg, port=port) as second:
                await until(
                    lambda: a.client.registrations == 2 and b.client.registrations == 2,
                    what="both registered again",
                )
                # b's full report carried its borrow; a is told again (its
                # state did not change: it still thinks x borrowed).
                await until(
                    lambda: second.state.borrowers.borrowers(x) == {b.node_id},
                    what="b's borrow rebuilt",
                )
                await a.node.wait_for(
                    lambda: a.node.borrow_notes.count(("borrowed", x)) >= 2,
                    what="a told again after the restart",
                )
                b.node.unborrow(x)
                await a.node.wait_for(lambda: x not in a.node.lent, what="unborrowed")


async def test_the_full_report_carries_every_borrow_in_batches() -> None:
    ids = [oid(i) for i in range(2500)]
    async with serving(directory_config(max_report=1000)) as server, member(server) as a:
        a.node.add(ids[0], primary=True)
        a.node.add(ids[1], primary=True)
        await a.client.flush_reports()
        b_node = FakeNode()
        b_node.borrows = set(ids)
        async with member(server, node=b_node) as b:
            assert server.state.borrowers.borrowed_by(b.node_id) == set(ids)
            await a.node.wait_for(lambda: a.node.lent == {ids[0], ids[1]}, what="a told")
