"""Between :class:`~objstore.locations.ObjectRow` lists and ``LocationTable`` columns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from objstore._proto.grpc.objstore.directory import v1 as pb
from objstore.directory.state import split_ids
from objstore.errors import InvalidRequestError
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE
from objstore.locations import ObjectRow, Usage

__all__ = [
    "pb",
    "rows_to_table",
    "table_to_rows",
    "table_addresses",
    "join_ids",
    "usage_to_pb",
    "usage_from_pb",
]

_STATES = {int(s): s for s in pb.ObjectState}


def join_ids(ids: Iterable[bytes]) -> bytes:
    """Ids back to back, as the ``*_ids`` fields carry them."""
    return b"".join(ids)


_NO_REPLICAS: tuple[int, tuple[bytes, ...], int] = (0, (), 0)


def rows_to_table(
    rows: Sequence[ObjectRow],
    total: int = 0,
    address_of: Callable[[bytes], str] | None = None,
) -> pb.LocationTable:
    """Columns of many rows; node ids (and their data plane addresses) are written once each."""
    node_index: dict[bytes, int] = {}
    nodes: list[bytes] = []

    def index(nid: bytes) -> int:
        i = node_index.get(nid)
        if i is None:
            i = node_index[nid] = len(nodes)
            nodes.append(nid)
        return i

    states = []
    sizes = []
    primary = []
    counts = []
    locs: list[int] = []
    spilled_rows = []
    spilled_urls = []
    spilled_nodes = []
    named_rows = []
    names = []
    # Borrower columns only when some row is borrowed (most tables have none).
    bcounts: list[int] = []
    bnodes: list[int] = []
    rep_rows: list[int] = []
    rep_wanted: list[int] = []
    rep_counts: list[int] = []
    rep_nodes: list[int] = []
    rep_asked: list[int] = []
    recreatable_rows: list[int] = []
    for i, r in enumerate(rows):
        if r.recreatable:
            recreatable_rows.append(i)
        if r.replicas:
            rep_rows.append(i)
            rep_wanted.append(r.replicas)
            rep_counts.append(len(r.replica_nodes))
            rep_nodes.extend(index(nid) for nid in r.replica_nodes)
            rep_asked.append(r.replicas_asked)
        states.append(_STATES[r.state])
        sizes.append(r.size)
        primary.append(index(r.primary) + 1 if r.primary else 0)
        counts.append(len(r.nodes))
        for nid in r.nodes:
            locs.append(index(nid))
        if r.spilled_url:
            spilled_rows.append(i)
            spilled_urls.append(r.spilled_url)
            spilled_nodes.append(index(r.spilled_node) + 1 if r.spilled_node else 0)
        if r.name:
            named_rows.append(i)
            names.append(r.name)
        if r.borrowers:
            if not bcounts:
                bcounts = [0] * i
            bcounts.append(len(r.borrowers))
            for nid in r.borrowers:
                bnodes.append(index(nid))
        elif bcounts:
            bcounts.append(0)
    return pb.LocationTable(
        object_ids=join_ids(r.object_id for r in rows),
        states=states,
        sizes=sizes,
        nodes=b"".join(nodes),
        primary=primary,
        location_counts=counts,
        location_nodes=locs,
        spilled_rows=spilled_rows,
        spilled_urls=spilled_urls,
        spilled_nodes=spilled_nodes,
        named_rows=named_rows,
        names=names,
        total=total,
        node_addresses=[address_of(n) for n in nodes] if address_of is not None else [],
        borrower_counts=bcounts,
        borrower_nodes=bnodes,
        replicated_rows=rep_rows,
        replicas_wanted=rep_wanted,
        replica_counts=rep_counts,
        replica_nodes=rep_nodes,
        replicas_asked=rep_asked,
        recreatable_rows=recreatable_rows,
    )


def table_addresses(t: pb.LocationTable) -> dict[bytes, str]:
    """Node id -> data plane address, for the nodes a table names."""
    if not t.node_addresses:
        return {}
    nodes = split_ids(t.nodes, NODE_ID_SIZE, "node ids")
    return {n: a for n, a in zip(nodes, t.node_addresses) if a}


def table_to_rows(t: pb.LocationTable) -> list[ObjectRow]:
    """The rows of a table; a table whose columns disagree raises InvalidRequestError."""
    oids = split_ids(t.object_ids, OBJECT_ID_SIZE)
    nodes = split_ids(t.nodes, NODE_ID_SIZE, "node ids")
    n = len(oids)
    if not (len(t.states) == len(t.sizes) == len(t.primary) == len(t.location_counts) == n):
        raise InvalidRequestError("location table: columns of different lengths")
    if sum(t.location_counts) != len(t.location_nodes):
        raise InvalidRequestError("location table: location counts do not add up")
    # Borrowers: no column at all (no row borrowed), or a count per row.
    if t.borrower_counts and len(t.borrower_counts) != n:
        raise InvalidRequestError("location table: columns of different lengths")
    if sum(t.borrower_counts) != len(t.borrower_nodes):
        raise InvalidRequestError("location table: borrower counts do not add up")
    # Sparse columns of different lengths, a sparse row past the end and a bad
    # node index are errors, not silently truncated or ignored.
    if not (len(t.spilled_rows) == len(t.spilled_urls) == len(t.spilled_nodes)) or len(
        t.named_rows
    ) != len(t.names):
        raise InvalidRequestError("location table: sparse columns of different lengths")
    if any(r >= n for r in t.spilled_rows) or any(r >= n for r in t.named_rows):
        raise InvalidRequestError("location table: a sparse row index is out of range")
    k = len(t.replicated_rows)
    if not (len(t.replicas_wanted) == len(t.replica_counts) == len(t.replicas_asked) == k):
        raise InvalidRequestError("location table: replica columns of different lengths")
    if sum(t.replica_counts) != len(t.replica_nodes) or any(r >= n for r in t.replicated_rows):
        raise InvalidRequestError("location table: replica columns do not add up")
    if any(r >= n for r in t.recreatable_rows):
        raise InvalidRequestError("location table: a sparse row index is out of range")
    recreatable = set(t.recreatable_rows)
    out = []
    pos = 0
    try:
        spilled = {
            row: (url, nodes[ni - 1] if ni else None)
            for row, url, ni in zip(t.spilled_rows, t.spilled_urls, t.spilled_nodes)
        }
        named = dict(zip(t.named_rows, t.names))
        replicated: dict[int, tuple[int, tuple[bytes, ...], int]] = {}
        rpos = 0
        for row, wanted, c, asked in zip(
            t.replicated_rows, t.replicas_wanted, t.replica_counts, t.replicas_asked
        ):
            held = tuple(nodes[j] for j in t.replica_nodes[rpos : rpos + c])
            rpos += c
            replicated[row] = (wanted, held, asked)
        bcounts = t.borrower_counts
        bpos = 0
        for i in range(n):
            c = t.location_counts[i]
            locs = tuple(nodes[j] for j in t.location_nodes[pos : pos + c])
            pos += c
            borrowers: tuple[bytes, ...] = ()
            if bcounts and bcounts[i]:
                c = bcounts[i]
                borrowers = tuple(nodes[j] for j in t.borrower_nodes[bpos : bpos + c])
                bpos += c
            p = t.primary[i]
            url, snode = spilled.get(i, ("", None))
            wanted, held, asked = replicated.get(i, _NO_REPLICAS)
            out.append(
                ObjectRow(
                    oids[i],
                    int(t.states[i]),
                    t.sizes[i],
                    nodes[p - 1] if p else None,
                    locs,
                    named.get(i, ""),
                    url,
                    snode,
                    borrowers,
                    wanted,
                    held,
                    asked,
                    i in recreatable,
                )
            )
    except IndexError as exc:
        raise InvalidRequestError("location table: a node index is out of range") from exc
    return out


def usage_to_pb(u: Usage) -> pb.NodeUsage:
    return pb.NodeUsage(
        memory_used=u.memory_used,
        memory_total=u.memory_total,
        pinned_bytes=u.pinned_bytes,
        objects=u.objects,
        spilled_bytes=u.spilled_bytes,
        fallback_used=u.fallback_used,
        clients=u.clients,
    )


def usage_from_pb(u: pb.NodeUsage | None) -> Usage:
    if u is None:
        return Usage()
    return Usage(
        u.memory_used,
        u.memory_total,
        u.pinned_bytes,
        u.objects,
        u.spilled_bytes,
        u.fallback_used,
        u.clients,
    )
