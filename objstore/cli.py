"""``python -m objstore status`` and ``python -m objstore memory``.

Both ask the cluster's directory (``--directory HOST:PORT``) or a node over
its socket (``--socket``, else ``$OBJSTORE_SOCKET``, else the default path) and
print a table, or JSON with ``--json``.  A node in a cluster also answers for
the cluster: ``status --socket`` adds every node of it, ``memory --socket``
adds where else each of the node's objects is.

The directory wants a proof of the cluster token on every call: on the
head's machine the tool finds the token the head published there; elsewhere
it takes ``--token-file`` (and ``--tls-*`` when the cluster speaks TLS).  A
refusal is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from objstore.auth import Credentials, add_credential_flags, member_credentials, security_flags
from objstore.client import connect
from objstore.config import SecurityConfig, format_size
from objstore.directory.client import DirectoryAdmin, parse_address
from objstore.errors import ObjectStoreError
from objstore.ids import object_id_from_hex
from objstore.locations import ObjectRow

__all__ = ["main"]


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


_STATE_NAMES = {0: "unknown", 1: "pending", 2: "present", 3: "lost", 4: "deleted"}


def _row_json(r: ObjectRow) -> dict[str, Any]:
    return {
        "object_id": r.object_id.hex(),
        "size": r.size,
        "state": _STATE_NAMES.get(r.state, str(r.state)),
        "primary_node": r.primary.hex() if r.primary else None,
        "locations": sorted(n.hex() for n in r.nodes),
        # Primary copies are never evicted: pinned while they are in memory.
        "pinned": r.primary is not None and r.primary in r.nodes,
        "name": r.name,
        "spilled_url": r.spilled_url or None,
        "borrowers": sorted(n.hex() for n in r.borrowers),
    }


# The credentials to show the directory at an address (built once it is known:
# with --socket, the node says where its directory is).
CredentialsFor = Callable[[str], Credentials]


def _credentials_for(args: argparse.Namespace) -> CredentialsFor:
    security = SecurityConfig(**security_flags(args))

    def credentials(address: str) -> Credentials:
        parse_address(address, "--directory")  # a malformed address: say that, not "no token"
        return member_credentials(security, address)

    return credentials


async def _cluster_status(address: str, creds: CredentialsFor) -> dict[str, Any]:
    async with DirectoryAdmin(address, credentials=creds(address)) as d:
        st = await d.cluster_status()
    nodes = []
    for n in st.nodes:
        u = n.usage
        nodes.append(
            {
                "node_id": n.node_id.hex(),
                "address": n.address,
                "socket": n.socket,
                "hostname": n.hostname,
                "pid": n.pid,
                "alive": n.alive,
                "head": n.head,
                "memory_used": u.memory_used if u else 0,
                "memory_total": u.memory_total if u else 0,
                "pinned_bytes": u.pinned_bytes if u else 0,
                "objects": u.objects if u else 0,
                "spilled_bytes": u.spilled_bytes if u else 0,
                "fallback_used": u.fallback_used if u else 0,
                "clients": u.clients if u else 0,
                "locations": n.locations,
                "silent_s": round(n.silent_s, 3),
            }
        )
    alive = [n for n in nodes if n["alive"]]
    return {
        "directory": address,
        "store": st.store,
        "uptime_s": round(st.uptime_s, 3),
        "nodes": nodes,
        "totals": {
            "nodes": len(nodes),
            "alive": len(alive),
            "memory_used": sum(n["memory_used"] for n in alive),
            "memory_total": sum(n["memory_total"] for n in alive),
            "objects": st.objects,
            "locations": st.locations,
            "spilled_objects": st.spilled_objects,
            "spilled_bytes": st.spilled_bytes,
            "lost_objects": st.lost_objects,
            "subscriptions": st.subscriptions,
        },
    }


async def _cluster_memory(address: str, limit: int, creds: CredentialsFor) -> dict[str, Any]:
    async with DirectoryAdmin(address, credentials=creds(address)) as d:
        rows, total = await d.list_objects(limit if limit > 0 else 2**32 - 1)
    return {"directory": address, "total": total, "objects": [_row_json(r) for r in rows]}


async def _status(socket: str | None, creds: CredentialsFor) -> dict[str, Any]:
    async with connect(socket, warm=False) as client:
        stats = await client.stats()
        stats["socket"] = client.socket_path
    if stats.get("directory"):
        stats["cluster"] = await _cluster_status(stats["directory"], creds)
    return stats


async def _memory(socket: str | None, limit: int, creds: CredentialsFor) -> dict[str, Any]:
    async with connect(socket, warm=False) as client:
        objects, total = await client.list_objects(limit)
        stats = await client.stats()
    out = {"node_id": client.node_id.hex(), "total": total, "objects": objects}
    if stats.get("directory") and objects:
        out["directory"] = stats["directory"]
        address = stats["directory"]
        async with DirectoryAdmin(address, credentials=creds(address)) as d:
            rows = await d.lookup([object_id_from_hex(o["object_id"]) for o in objects])
        for o, r in zip(objects, rows):
            o["locations"] = sorted(n.hex() for n in r.nodes)
            o["primary_node"] = r.primary.hex() if r.primary else None
            o["borrowers"] = sorted(n.hex() for n in r.borrowers)
    return out


def _print_cluster(c: dict[str, Any]) -> None:
    t = c["totals"]
    print(
        f"cluster  directory {c['directory']}  store {c['store']}  up {c['uptime_s']:.0f}s  "
        f"nodes {t['alive']} alive of {t['nodes']}"
    )
    rows = [
        [
            n["node_id"][:12] + (" (head)" if n["head"] else ""),
            n["hostname"] + (f" pid {n['pid']}" if n["pid"] else ""),
            n["address"] or "-",
            "alive" if n["alive"] else "dead",
            f"{format_size(n['memory_used'])} / {format_size(n['memory_total'])}",
            str(n["locations"]),
            format_size(n["spilled_bytes"]),
            f"{n['silent_s']:.1f}s",
        ]
        for n in c["nodes"]
    ]
    print(
        _table(
            rows,
            ["node", "host", "address", "state", "memory used", "objects", "spilled", "last heard"],
        )
    )
    print(
        f"total: {format_size(t['memory_used'])} of {format_size(t['memory_total'])} in use on "
        f"live nodes; {t['objects']} objects in the directory ({t['locations']} copies, "
        f"{t['lost_objects']} lost); spilled {t['spilled_objects']} objects, "
        f"{format_size(t['spilled_bytes'])}; {t['subscriptions']} subscriptions"
    )


def _print_status(s: dict[str, Any]) -> None:
    print(f"node {s['node_id']}  socket {s['socket']}  up {s.get('uptime_s', 0):.0f}s")
    rows = [
        ["memory used", f"{format_size(s.get('used', 0))} of {format_size(s.get('capacity', 0))}"],
        ["pinned", format_size(s.get("pinned_bytes", 0))],
        ["fallback (disk)", format_size(s.get("fallback_used", 0))],
        ["largest free block", format_size(s.get("largest_free", 0))],
        [
            "objects",
            f"{s.get('objects', 0)} ({s.get('sealed', 0)} sealed, {s.get('creating', 0)} being written)",
        ],
        ["evictable", format_size(s.get("evictable_bytes", 0))],
        ["evictions", str(s.get("evictions", 0))],
        [
            "spilled",
            (
                f"{s.get('spilled_objects', 0)} objects, {format_size(s.get('spilled_bytes', 0))} "
                f"in {s.get('spill_files', 0)} files; {format_size(s.get('bytes_spilled', 0))} "
                f"written, {s.get('restored', 0)} restored ({format_size(s.get('bytes_restored', 0))})"
                f" -> {s['spill']}"
                + (
                    f"; {s.get('spill_write_errors', 0)} failed writes, "
                    f"{s.get('restore_errors', 0)} failed restores"
                    if s.get("spill_write_errors") or s.get("restore_errors")
                    else ""
                )
            )
            if s.get("spill")
            else "off (no --spill)",
        ],
        [
            "transfers",
            (
                f"{s.get('pulled', 0)} objects pulled ({format_size(s.get('bytes_pulled', 0))}), "
                f"{s.get('chunks_served', 0)} chunks served ({format_size(s.get('bytes_served', 0))})"
            ),
        ],
        ["clients", str(s.get("clients", 0))],
        ["puts / gets", f"{s.get('puts', 0)} / {s.get('gets', 0)}"],
        ["directory", s.get("directory") or "none (a node on its own)"],
    ]
    print(_table(rows, ["", "value"]))
    if "cluster" in s:
        print()
        _print_cluster(s["cluster"])


def _holders(o: dict[str, Any]) -> str:
    """Who keeps an object: local processes, borrowing nodes, values, a grace."""
    parts = [f"pid {p}" for p in o.get("holder_pids", ())]
    parts += [f"node {n[:12]}" for n in o.get("borrowers", ())]
    if o.get("borrowed") and not o.get("borrowers"):
        parts.append("other nodes")
    parts += [f"in {c[:12]}" for c in o.get("contained_in", ())]
    if o.get("grace"):
        parts.append("pickled (grace)")
    return ", ".join(parts) or "-"


def group_by_owner(m: dict[str, Any]) -> list[dict[str, Any]]:
    """``--group-by owner``: objects, bytes and holders summed per putting process."""
    groups: dict[str, dict[str, Any]] = {}
    for o in m["objects"]:
        pid = o.get("owner_pid") or 0
        key = f"pid {pid}" if pid else "gone, or another node"
        g = groups.setdefault(
            key, {"owner": key, "objects": 0, "bytes": 0, "local_refs": 0, "borrowed": 0}
        )
        g["objects"] += 1
        g["bytes"] += o["size"]
        g["local_refs"] += len(o.get("holder_pids", ()))
        g["borrowed"] += 1 if (o.get("borrowers") or o.get("borrowed")) else 0
    return sorted(groups.values(), key=lambda g: -g["bytes"])


def _print_memory(m: dict[str, Any]) -> None:
    if "groups" in m:
        rows = [
            [
                g["owner"],
                str(g["objects"]),
                format_size(g["bytes"]),
                str(g["local_refs"]),
                str(g["borrowed"]),
            ]
            for g in m["groups"]
        ]
        print(_table(rows, ["owner", "objects", "size", "local refs", "borrowed"]))
        return
    if "node_id" in m:
        rows = [
            [
                o["object_id"],
                format_size(o["size"]),
                o["state"].lower(),
                "primary" if o["primary"] else "secondary",
                "yes" if o["pins"] else "no",
                m["node_id"][:12] + ("" if o["segment"] == 0 else " (disk)"),
                " ".join(n[:12] for n in o.get("locations", ())),
                o["name"],
                o.get("spill_url", ""),
                f"pid {o['owner_pid']}" if o.get("owner_pid") else "-",
                str(len(o.get("holder_pids", ()))),
                _holders(o),
                " ".join(o.get("call_sites", ())),
            ]
            for o in m["objects"]
        ]
        headers = [
            "object",
            "size",
            "state",
            "copy",
            "pinned",
            "where",
            "copies on",
            "name",
            "spilled",
            "owner",
            "local refs",
            "held by",
            "made at",
        ]
    else:
        rows = [
            [
                o["object_id"],
                format_size(o["size"]),
                o["state"],
                (o["primary_node"] or "-")[:12],
                " ".join(n[:12] for n in o["locations"]) or "-",
                "yes" if o["pinned"] else "no",
                o["name"],
                o["spilled_url"] or "",
                " ".join(n[:12] for n in o.get("borrowers", ())) or "-",
            ]
            for o in m["objects"]
        ]
        headers = [
            "object",
            "size",
            "state",
            "primary",
            "copies on",
            "pinned",
            "name",
            "spilled",
            "borrowed by",
        ]
    print(_table(rows, headers))
    shown = len(m["objects"])
    if shown < m["total"]:
        print(f"... {m['total'] - shown} more (use --limit 0 for all)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m objstore``."""
    p = argparse.ArgumentParser(
        prog="python -m objstore", description="Look at an objstore node or cluster."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("status", "nodes, memory and objects of a node or the cluster"),
        ("memory", "objects: sizes, where they are, pinned or not, names"),
    ):
        sp = sub.add_parser(name, help=help_)
        where = sp.add_mutually_exclusive_group()
        where.add_argument(
            "--socket", help="a node's socket (default: $OBJSTORE_SOCKET or the default path)"
        )
        where.add_argument("--directory", metavar="HOST:PORT", help="the cluster's directory")
        sp.add_argument("--json", action="store_true", help="print JSON")
        if name == "memory":
            sp.add_argument("--limit", type=int, default=1000, help="most objects to list (0: all)")
            sp.add_argument(
                "--group-by",
                choices=["owner"],
                help="sum objects, bytes and refs per owner (the process that put them)",
            )
        add_credential_flags(
            sp,
            "tool",
            "default: $OBJSTORE_TOKEN_FILE, else the token the head published on this machine",
        )
    args = p.parse_args(argv)
    creds = _credentials_for(args)
    try:
        if args.directory:
            if args.command == "status":
                result = asyncio.run(_cluster_status(args.directory, creds))
            else:
                result = asyncio.run(_cluster_memory(args.directory, args.limit, creds))
        elif args.command == "status":
            result = asyncio.run(_status(args.socket, creds))
        else:
            result = asyncio.run(_memory(args.socket, args.limit, creds))
    except ObjectStoreError as exc:
        print(f"python -m objstore: {exc}", file=sys.stderr)
        sys.exit(1)
    if getattr(args, "group_by", None) == "owner":
        result = {**result, "groups": group_by_owner(result)}
    try:
        if args.json:
            print(json.dumps(result, indent=2))
        elif args.command == "status":
            if args.directory:
                _print_cluster(result)
            else:
                _print_status(result)
        else:
            _print_memory(result)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
