"""Command line of ``python -m objstore.node``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from objstore.auth import add_credential_flags, security_flags
from objstore.config import Config, parse_size
from objstore.errors import ConfigError, ObjectStoreError
from objstore.log import configure_logging
from objstore.node.node import Node

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The node's flags (the public contract in DESIGN.md)."""
    p = argparse.ArgumentParser(
        prog="python -m objstore.node",
        description="Run an objstore node: a shared-memory object store for local clients.",
    )
    role = p.add_mutually_exclusive_group()
    role.add_argument("--head", action="store_true", help="run the head node and the directory")
    role.add_argument("--directory", metavar="HOST:PORT", help="the head's directory to join")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="object manager port (default: any free port)")
    p.add_argument("--directory-port", type=int, help="directory port on the head")
    p.add_argument("--state-dir", help="where the head keeps the directory's durable state")
    p.add_argument("--directory-store", help="sqlite (default) or redis://host:port/db")
    p.add_argument("--memory", metavar="SIZE", help="arena size, e.g. 2GiB (default: 30%% of RAM)")
    p.add_argument(
        "--socket", metavar="PATH", help="client socket (default: $OBJSTORE_SOCKET or a temp path)"
    )
    p.add_argument("--spill", metavar="DIR|s3://bucket/prefix", help="spill target")
    p.add_argument(
        "--fallback-dir", metavar="DIR", help="directory for file-backed fallback allocations"
    )
    p.add_argument(
        "--prefault", metavar="SIZE", help="arena bytes faulted in at start (default 1GiB)"
    )
    p.add_argument(
        "--config", metavar="FILE", help="a TOML file with [plasma], [transfer], ... sections"
    )
    add_credential_flags(
        p,
        "node",
        "default: $OBJSTORE_TOKEN_FILE; on the head, the --state-dir token or a new one; "
        "elsewhere the token the head published on this machine",
    )
    p.add_argument("--log-format", choices=["console", "json"], help="stderr log format")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, TOML, environment, then these flags."""
    over: dict[str, dict[str, object]] = {
        "plasma": {},
        "node": {},
        "directory": {},
        "spill": {},
        "security": {},
    }
    if args.memory is not None:
        mem = parse_size(args.memory, "--memory")
        if mem == 0:
            raise ConfigError("--memory: must be more than 0")
        over["plasma"]["memory"] = mem
    if args.prefault is not None:
        over["plasma"]["prefault_bytes"] = parse_size(args.prefault, "--prefault")
    if args.socket is not None:
        over["plasma"]["socket"] = args.socket
    if args.fallback_dir is not None:
        over["plasma"]["fallback_dir"] = args.fallback_dir
    for flag, section, key in (
        ("host", "node", "host"),
        ("port", "node", "port"),
        ("directory_port", "node", "directory_port"),
        ("directory", "node", "directory"),
        ("log_format", "node", "log_format"),
        ("log_level", "node", "log_level"),
        ("state_dir", "directory", "state_dir"),
        ("directory_store", "directory", "store"),
        ("spill", "spill", "url"),
    ):
        value = getattr(args, flag)
        if value is not None:
            over[section][key] = value
    if args.head:
        over["node"]["head"] = True
    over["security"] = security_flags(args)
    return Config.load(args.config, overrides={k: v for k, v in over.items() if v})


async def _run(config: Config) -> int:
    log = structlog.get_logger("objstore.node")
    node = Node(config)
    ready = await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # What start-up made (modules, config, servers) lives as long as the process:
    # moved out of the collector's reach, a full collection with many objects
    # in flight scans only the objects made since.
    gc.freeze()
    Node.announce(ready)
    await stop.wait()
    log.info("shutting down")
    await node.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: parse flags, run until SIGTERM/SIGINT, exit 0."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"objstore.node: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(config.node.log_format, config.node.log_level)
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        code = runner(_run(config))
    except ConfigError as exc:
        print(f"objstore.node: {exc}", file=sys.stderr)
        sys.exit(2)
    except ObjectStoreError as exc:
        print(f"objstore.node: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
