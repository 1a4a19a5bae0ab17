"""``python -m objstore status`` and ``python -m objstore memory``.

Both talk to a node over its socket (``--socket``, else ``$OBJSTORE_SOCKET``,
else the default path) and print a table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from objstore.client import connect
from objstore.config import format_size
from objstore.errors import ObjectStoreError

__all__ = ["main"]


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


async def _status(socket: str | None) -> dict[str, Any]:
    async with connect(socket, warm=False) as client:
        stats = await client.stats()
        stats["socket"] = client.socket_path
        return stats


async def _memory(socket: str | None, limit: int) -> dict[str, Any]:
    async with connect(socket, warm=False) as client:
        objects, total = await client.list_objects(limit)
        return {"node_id": client.node_id.hex(), "total": total, "objects": objects}


def _print_status(s: dict[str, Any]) -> None:
    print(f"node {s['node_id']}  socket {s['socket']}  up {s.get('uptime_s', 0):.0f}s")
    rows = [
        ["memory used", f"{format_size(s.get('used', 0))} of {format_size(s.get('capacity', 0))}"],
        ["pinned", format_size(s.get("pinned_bytes", 0))],
        ["fallback (disk)", format_size(s.get("fallback_used", 0))],
        ["largest free block", format_size(s.get("largest_free", 0))],
        ["objects", f"{s.get('objects', 0)} ({s.get('sealed', 0)} sealed, {s.get('creating', 0)} being written)"],
        ["evictable", format_size(s.get("evictable_bytes", 0))],
        ["evictions", str(s.get("evictions", 0))],
        ["spilled", "0 B (spilling not built yet)"],
        ["transfers", "0 (transfers not built yet)"],
        ["clients", str(s.get("clients", 0))],
        ["puts / gets", f"{s.get('puts', 0)} / {s.get('gets', 0)}"],
    ]
    print(_table(rows, ["", "value"]))


def _print_memory(m: dict[str, Any]) -> None:
    rows = [
        [
            o["object_id"],
            format_size(o["size"]),
            o["state"].lower(),
            "primary" if o["primary"] else "secondary",
            "yes" if o["pins"] else "no",
            m["node_id"][:12] + ("" if o["segment"] == 0 else " (disk)"),
            o["name"],
        ]
        for o in m["objects"]
    ]
    print(_table(rows, ["object", "size", "state", "copy", "pinned", "where", "name"]))
    shown = len(m["objects"])
    if shown < m["total"]:
        print(f"... {m['total'] - shown} more (use --limit 0 for all)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m objstore``."""
    p = argparse.ArgumentParser(prog="python -m objstore", description="Look at an objstore node.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("status", "memory, objects and clients of a node"), ("memory", "the objects on a node")):
        sp = sub.add_parser(name, help=help_)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--socket", help="the node's socket (default: $OBJSTORE_SOCKET or the default path)")
        where.add_argument("--directory", metavar="HOST:PORT", help="the cluster's directory")
        sp.add_argument("--json", action="store_true", help="print JSON")
        if name == "memory":
            sp.add_argument("--limit", type=int, default=1000, help="most objects to list (0: all)")
    args = p.parse_args(argv)
    if args.directory:
        print(
            "python -m objstore: --directory needs the cluster directory, which this version "
            "does not have yet; use --socket",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        if args.command == "status":
            result = asyncio.run(_status(args.socket))
        else:
            result = asyncio.run(_memory(args.socket, args.limit))
    except ObjectStoreError as exc:
        print(f"python -m objstore: {exc}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.command == "status":
        _print_status(result)
    else:
        _print_memory(result)
