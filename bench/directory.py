"""The directory's figures: lookups, subscriptions, change latency, memory, restart, scale.

Starts a real head node (``python -m objstore.node --head``, which serves the
directory) for each part and drives it from this process with simulated nodes:
each one is a grpclib channel of its own that registers, heartbeats, reports
and keeps a subscription stream, exactly as a node's ``DirectoryClient`` does,
but without a store behind it.  Prints one JSON object on stdout and a summary
on stderr.

    python bench/directory.py                    # everything, about 75 s
    python bench/directory.py --quick            # smaller sizes, under a minute
    python bench/directory.py --only latency     # lookups | subscriptions | latency |
                                                 # memory | restart | scale | auth | borrow
    python bench/directory.py --only scale --nodes 10,100,200 --objects-per-node 1000,5000

    python bench/directory.py --wait-quiet 60    # on a shared machine: start each part
                                                 # (and lookup round) when others are idle

This process runs on uvloop (the node does too).  The simulated nodes share
this process and its one core with the clients that measure, so on a 2-core
machine a figure is bounded by whichever of the two processes saturates
first; figures come with the CPU use (fraction of one core) of the directory,
of this process and of everything else on the machine ("others"), to tell
which.  Before each latency run this process freezes its own long-lived
objects out of its garbage collector (``gc.freeze()``), so that its pauses do
not show as the directory's latency; the directory is left as it is.  All
traffic is to 127.0.0.1; every process and temporary directory is removed at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import re
import select
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

import grpclib.const
from _proc import CLK_TCK, machine_busy_s
from grpclib.client import Channel

from objstore.auth import Credentials, generate_token, write_token_file
from objstore.directory.codec import join_ids, pb, table_to_rows
from objstore.directory.guard import open_channel
from objstore.locations import ObjectRow

MiB = 1 << 20
GiB = 1 << 30
HOST = "127.0.0.1"
# Every head of a run gets this token (--token-file); every channel proves it,
# as a node's does, so the figures include the cost of authentication.
CREDS = Credentials(generate_token(), None, "bench")


def _channel(port: int) -> Channel:
    """A channel to the directory on ``port`` that proves the token on each request."""
    return open_channel(HOST, port, CREDS)


_PREFIX = "/objstore.directory.v1.Directory/"
RPC_TIMEOUT = 30.0


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the JSON)."""
    print(f"[directory bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    if not s:
        return math.nan
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def ms_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/max of latencies, in milliseconds."""
    if not seconds:
        return {"count": 0}
    return {
        "count": len(seconds),
        "p50_ms": round(pct(seconds, 50) * 1e3, 3),
        "p90_ms": round(pct(seconds, 90) * 1e3, 3),
        "p99_ms": round(pct(seconds, 99) * 1e3, 3),
        "max_ms": round(max(seconds) * 1e3, 3),
    }


def new_ids(n: int, size: int = 20) -> list[bytes]:
    """``n`` distinct random ids."""
    blob = os.urandom(n * size)
    return [blob[i : i + size] for i in range(0, n * size, size)]


# --------------------------------------------------------------------------- the head
class Head:
    """A head node process (it serves the directory), stopped with SIGTERM."""

    def __init__(
        self,
        *,
        port: int = 0,
        state_dir: str | None = None,
        store: str | None = None,
        node_timeout_s: float = 600.0,
        workdir: str | None = None,
    ) -> None:
        self.own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="osb-dir-", dir="/tmp")
        self.port = port
        self.state_dir = state_dir
        self.store = store
        self.env = dict(os.environ)
        # Simulated nodes may stall while this process is busy measuring: a
        # generous timeout keeps them alive (the parts that need liveness
        # heartbeat anyway).
        self.env["OBJSTORE_DIRECTORY_NODE_TIMEOUT_S"] = str(node_timeout_s)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.start_s = 0.0
        self.starts = 0
        self.address = ""

    def start(self, timeout: float = 60.0) -> float:
        """Start the process and wait for its ready line; returns the seconds it took."""
        self.starts += 1
        args = [
            sys.executable,
            "-m",
            "objstore.node",
            "--head",
            "--directory-port",
            str(self.port),
            "--memory",
            "64MiB",
            "--prefault",
            "0",
            "--socket",
            os.path.join(self.dir, "head.sock"),
            "--fallback-dir",
            self.dir,
            "--log-format",
            "json",
            "--log-level",
            "info",
        ]
        token = os.path.join(self.dir, "token")
        if not os.path.exists(token):
            assert CREDS.token is not None
            write_token_file(token, CREDS.token)
        args += ["--token-file", token]
        if self.state_dir:
            args += ["--state-dir", self.state_dir]
        if self.store:
            args += ["--directory-store", self.store]
        self.log_path = os.path.join(self.dir, f"head-{self.starts}.log")
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=self.env
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        self.start_s = time.perf_counter() - t0
        if not line:
            self.kill()
            raise RuntimeError(f"the head did not start; its log:\n{self.log_text()[-3000:]}")
        self.ready = json.loads(line)
        self.address = str(self.ready["directory"])
        self.port = int(self.address.rpartition(":")[2])
        return self.start_s

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The head's JSON log lines whose event is ``event``."""
        out = []
        for line in self.log_text().splitlines():
            if event in line:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon", "RssFile", "VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds of the head so far."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM and wait; returns the seconds to exit (SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Stop the process, remove its files."""
        try:
            self.stop()
        finally:
            if self.own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)


class CpuMeter:
    """CPU use over a span, as fractions of one core: the head, this process, everything else.

    "others" is the rest of the machine (it is shared: other processes'
    load shows there and explains a noisy figure).
    """

    def __init__(self, head: Head) -> None:
        self.head = head

    def __enter__(self) -> Self:
        self.t0 = time.perf_counter()
        self.h0 = self.head.cpu_s()
        self.b0 = time.process_time()
        self.m0 = machine_busy_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        head = self.head.cpu_s() - self.h0
        bench = time.process_time() - self.b0
        machine = machine_busy_s() - self.m0
        self.head_cpu = round(head / wall, 2)
        self.bench_cpu = round(bench / wall, 2)
        self.others_cpu = round(max(0.0, machine - head - bench) / wall, 2)

    def fields(self) -> dict[str, float]:
        return {
            "directory_cpu": self.head_cpu,
            "bench_cpu": self.bench_cpu,
            "others_cpu": self.others_cpu,
        }


# --------------------------------------------------------------------------- simulated nodes
class Subscription:
    """One node's Subscribe stream; ``on_rows(t_received, rows)`` sees every update."""

    def __init__(self, node: SimNode, on_rows: Callable[[float, list[ObjectRow]], None]) -> None:
        self.node = node
        self.on_rows = on_rows
        self.notifications = 0
        self.rows = 0
        self.ended: BaseException | None = None
        self._stack = contextlib.AsyncExitStack()
        self._reader: asyncio.Task[None] | None = None
        self.stream: Any = None

    async def open(self) -> None:
        self.stream = await self._stack.enter_async_context(
            self.node.channel.request(
                _PREFIX + "Subscribe",
                grpclib.const.Cardinality.STREAM_STREAM,
                pb.SubscribeRequest,
                pb.Notification,
            )
        )
        await self.stream.send_message(
            pb.SubscribeRequest(node_id=self.node.node_id, session=self.node.session)
        )
        self._reader = asyncio.ensure_future(self._read())

    async def subscribe(self, ids: Sequence[bytes], chunk: int = 100_000) -> None:
        for i in range(0, len(ids), chunk):
            await self.stream.send_message(
                pb.SubscribeRequest(subscribe_ids=join_ids(ids[i : i + chunk]))
            )

    async def _read(self) -> None:
        try:
            while True:
                note = await self.stream.recv_message()
                t = time.perf_counter()
                if note is None:
                    return
                self.notifications += 1
                if note.updates is not None and note.updates.object_ids:
                    rows = table_to_rows(note.updates)
                    self.rows += len(rows)
                    self.on_rows(t, rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, checked by the caller
            self.ended = exc

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        with contextlib.suppress(Exception):
            await self._stack.aclose()


class SimNode:
    """A node without a store: its own channel, registration, heartbeats, reports, stream."""

    def __init__(
        self, port: int, *, node_id: bytes | None = None, session: bytes | None = None
    ) -> None:
        self.node_id = node_id or os.urandom(16)
        self.session = session or os.urandom(16)
        self.port = port
        self.channel = _channel(port)
        self.stub = pb.DirectoryStub(self.channel)
        self.objects: list[bytes] = []
        self.heartbeats = 0
        self.heartbeat_failures = 0
        self.subscription: Subscription | None = None
        self._hb: asyncio.Task[None] | None = None

    async def register(self) -> None:
        await self.stub.register(
            pb.RegisterRequest(
                node_id=self.node_id,
                session=self.session,
                hostname="bench",
                pid=os.getpid(),
                usage=pb.NodeUsage(memory_total=64 * MiB),
            ),
            timeout=RPC_TIMEOUT,
        )

    def start_heartbeats(self, period: float = 1.0, limit: int = 100_000) -> None:
        async def beat() -> None:
            # Nodes started together would beat in lockstep: spread them as real ones are.
            await asyncio.sleep(random.random() * period)
            for _ in range(limit):
                await asyncio.sleep(period)
                try:
                    await self.stub.heartbeat(
                        pb.HeartbeatRequest(node_id=self.node_id, session=self.session),
                        timeout=5.0,
                    )
                    self.heartbeats += 1
                except Exception:  # noqa: BLE001 - counted (the head may be restarting)
                    self.heartbeat_failures += 1

        self._hb = asyncio.ensure_future(beat())

    async def heartbeat_once(self) -> None:
        await self.stub.heartbeat(
            pb.HeartbeatRequest(node_id=self.node_id, session=self.session), timeout=RPC_TIMEOUT
        )

    def report_msg(
        self,
        added: Sequence[bytes] = (),
        removed: Sequence[bytes] = (),
        *,
        size: int = 100,
        primary: bool = True,
        sync_begin: bool = False,
        sync_end: bool = False,
    ) -> pb.LocationReport:
        return pb.LocationReport(
            node_id=self.node_id,
            session=self.session,
            added_ids=join_ids(added),
            added_sizes=[size] * len(added),
            added_primary=[primary] * len(added) if primary else [],
            removed_ids=join_ids(removed),
            sync_begin=sync_begin,
            sync_end=sync_end,
        )

    async def report(
        self, added: Sequence[bytes] = (), removed: Sequence[bytes] = (), **kw: Any
    ) -> None:
        await self.stub.report(self.report_msg(added, removed, **kw), timeout=RPC_TIMEOUT)

    async def fill(self, ids: Sequence[bytes], batch: int = 2000, primary: bool = True) -> None:
        """Report ``ids`` as held here, ``batch`` per report, one report in flight."""
        for i in range(0, len(ids), batch):
            await self.report(ids[i : i + batch], primary=primary)
        self.objects.extend(ids)

    async def open_subscription(
        self, on_rows: Callable[[float, list[ObjectRow]], None]
    ) -> Subscription:
        self.subscription = Subscription(self, on_rows)
        await self.subscription.open()
        return self.subscription

    async def close(self) -> None:
        if self._hb is not None:
            self._hb.cancel()
            with contextlib.suppress(BaseException):
                await self._hb
        if self.subscription is not None:
            await self.subscription.close()
        self.channel.close()


class SnapshotWaiter:
    """Counts the distinct ids seen in notifications until every expected one came."""

    def __init__(self, expected: Iterable[bytes]) -> None:
        self.missing = set(expected)
        self.total = len(self.missing)
        self.done = asyncio.Event()
        self.states: dict[int, int] = {}
        if not self.missing:
            self.done.set()

    def __call__(self, t: float, rows: list[ObjectRow]) -> None:
        for r in rows:
            if r.object_id in self.missing:
                self.missing.discard(r.object_id)
                self.states[r.state] = self.states.get(r.state, 0) + 1
        if not self.missing:
            self.done.set()


class Mux:
    """Routes a stream's rows to the current handler (snapshot first, then latency)."""

    def __init__(self) -> None:
        self.handlers: list[Callable[[float, list[ObjectRow]], None]] = []

    def __call__(self, t: float, rows: list[ObjectRow]) -> None:
        for h in self.handlers:
            h(t, rows)


async def start_nodes(port: int, n: int, heartbeat: bool = True) -> list[SimNode]:
    nodes = [SimNode(port) for _ in range(n)]
    for i in range(0, n, 50):
        await asyncio.gather(*(x.register() for x in nodes[i : i + 50]))
    if heartbeat:
        for x in nodes:
            x.start_heartbeats()
    return nodes


async def close_nodes(nodes: Iterable[SimNode]) -> None:
    await asyncio.gather(*(x.close() for x in nodes), return_exceptions=True)


async def fill_nodes(nodes: Sequence[SimNode], per_node: int, primary: bool = True) -> float:
    """Every node reports ``per_node`` new objects at once; returns objects/s."""
    ids = [new_ids(per_node) for _ in nodes]
    t0 = time.perf_counter()
    await asyncio.gather(*(x.fill(i, primary=primary) for x, i in zip(nodes, ids)))
    return len(nodes) * per_node / (time.perf_counter() - t0)


async def cluster_status(port: int) -> pb.ClusterStatusReply:
    ch = _channel(port)
    try:
        return await pb.DirectoryStub(ch).cluster_status(
            pb.ClusterStatusRequest(), timeout=RPC_TIMEOUT
        )
    finally:
        ch.close()


async def settle_rss(head: Head, max_s: float = 15.0, quiet_s: float = 1.0) -> dict[str, int]:
    """Wait until the head's RSS stops growing (write-behind done), then read it."""
    last = head.rss()["VmRSS"]
    still = 0.0
    step = 0.25
    for _ in range(int(max_s / step)):
        await asyncio.sleep(step)
        now = head.rss()["VmRSS"]
        still = still + step if abs(now - last) < 256 * 1024 else 0.0
        last = now
        if still >= quiet_s:
            break
    return head.rss()


# --------------------------------------------------------------------------- lookups
async def lookup_rate(
    stub: pb.DirectoryStub,
    blobs: Sequence[bytes],
    seconds: float,
    concurrency: int = 1,
    rows: bool = True,
) -> dict[str, Any]:
    """Lookup RPCs over ``blobs`` (ids back to back) for ``seconds``; ids/s and RPC latency."""
    ids_done = 0
    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    per_rpc = len(blobs[0]) // 20

    async def worker(w: int) -> None:
        nonlocal ids_done
        k = w
        for _ in range(10_000_000):
            if time.perf_counter() >= deadline:
                return
            t = time.perf_counter()
            table = await stub.lookup(
                pb.LookupRequest(object_ids=blobs[k % len(blobs)]), timeout=RPC_TIMEOUT
            )
            if rows:
                table_to_rows(table)
            lat.append(time.perf_counter() - t)
            ids_done += per_rpc
            k += concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "ids_per_s": round(ids_done / wall),
        "rpcs_per_s": round(len(lat) / wall),
        "rpc_p50_ms": round(pct(lat, 50) * 1e3, 3),
        "rpc_p99_ms": round(pct(lat, 99) * 1e3, 3),
    }


async def _lookup_figures(
    head: Head, pool: Sequence[bytes], seconds: float, rounds: int, owner: bytes, quiet: float
) -> dict[str, Any]:
    rng = random.Random(1)
    ch = _channel(head.port)
    stub = pb.DirectoryStub(ch)
    try:
        batch_blobs = [join_ids(rng.sample(pool, 1000)) for _ in range(64)]
        single_blobs = [rng.choice(pool) for _ in range(4096)]
        # Correctness: every looked-up object is PRESENT on its node.
        rows = table_to_rows(await stub.lookup(pb.LookupRequest(object_ids=batch_blobs[0])))
        assert len(rows) == 1000 and all(r.state == 2 and owner in r.nodes for r in rows), rows[:2]
        await lookup_rate(stub, batch_blobs, 0.3)  # warm-up
        cases = {
            "batch_1000_sequential": (batch_blobs, 1, True),
            "batch_1000_sequential_no_row_decode": (batch_blobs, 1, False),
            "single_sequential": (single_blobs, 1, True),
            "single_16_in_flight": (single_blobs, 16, True),
        }
        out: dict[str, Any] = {}
        for name, (blobs, conc, decode) in cases.items():
            results = []
            for _ in range(rounds):
                if quiet:
                    await wait_quiet(quiet)
                with CpuMeter(head) as cpu:
                    r = await lookup_rate(stub, blobs, seconds, conc, decode)
                r.update(cpu.fields())
                results.append(r)
            best = sorted(results, key=lambda r: r["ids_per_s"])
            med = best[len(best) // 2]
            out[name] = {
                "ids_per_s_median": med["ids_per_s"],
                "ids_per_s_range": [best[0]["ids_per_s"], best[-1]["ids_per_s"]],
                "rpc_p50_ms": med["rpc_p50_ms"],
                "rpc_p99_ms": med["rpc_p99_ms"],
                "directory_cpu": med["directory_cpu"],
                "bench_cpu": med["bench_cpu"],
                "others_cpu": med["others_cpu"],
            }
        return out
    finally:
        ch.close()


async def part_lookups(args: argparse.Namespace) -> dict[str, Any]:
    n = args.lookup_objects
    head = Head()
    nodes: list[SimNode] = []
    try:
        await asyncio.to_thread(head.start)
        nodes = await start_nodes(head.port, 1)
        pool = new_ids(n)
        t0 = time.perf_counter()
        await nodes[0].fill(pool)
        fill_rate = n / (time.perf_counter() - t0)
        log(f"lookups: {n} objects reported at {fill_rate:,.0f}/s")
        figures = await _lookup_figures(
            head, pool, args.seconds, args.rounds, nodes[0].node_id, min(args.wait_quiet, 15.0)
        )
        return {
            "objects_in_directory": n,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "report_objects_per_s_one_node": round(fill_rate),
            **figures,
        }
    finally:
        await close_nodes(nodes)
        head.close()


# --------------------------------------------------------------------------- subscriptions
async def _subscribe_streams(
    port: int, objects: Sequence[bytes], streams: int
) -> tuple[list[SimNode], dict[str, Any]]:
    """``streams`` new nodes each subscribe to a share of ``objects``; time until every snapshot."""
    nodes = await start_nodes(port, streams)
    share = -(-len(objects) // streams)
    waiters = []
    for i, x in enumerate(nodes):
        w = SnapshotWaiter(objects[i * share : (i + 1) * share])
        waiters.append(w)
        await x.open_subscription(w)
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            x.subscription.subscribe(objects[i * share : (i + 1) * share])
            for i, x in enumerate(nodes)
        )  # type: ignore[union-attr]
    )
    sent = time.perf_counter() - t0
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(w.done.wait() for w in waiters))
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    missing = sum(len(w.missing) for w in waiters)
    states: dict[str, int] = {}
    for w in waiters:
        for s, c in w.states.items():
            key = {0: "UNKNOWN", 1: "PENDING", 2: "PRESENT", 3: "LOST", 4: "DELETED"}[s]
            states[key] = states.get(key, 0) + c
    return nodes, {
        "streams": streams,
        "subscriptions": len(objects),
        "send_s": round(sent, 3),
        "all_snapshots_s": round(elapsed, 3),
        "snapshots_missing": missing,
        "snapshot_states": states,
    }


async def part_subscriptions(args: argparse.Namespace) -> dict[str, Any]:
    n = args.subscriptions
    head = Head()
    nodes: list[SimNode] = []
    try:
        await asyncio.to_thread(head.start)
        owner = (await start_nodes(head.port, 1))[0]
        nodes.append(owner)
        objects = new_ids(n)
        await owner.fill(objects)
        base = await settle_rss(head, max_s=5, quiet_s=0.5)
        out: dict[str, Any] = {"objects": n, "rss_before_mib": round(base["VmRSS"] / MiB, 1)}
        runs = []
        for streams in (1, 10):
            subs, fig = await _subscribe_streams(head.port, objects, streams)
            nodes += subs
            rss = await settle_rss(head, max_s=5, quiet_s=0.5)
            fig["rss_after_mib"] = round(rss["VmRSS"] / MiB, 1)
            runs.append(fig)
            log(
                f"subscriptions: {streams} stream(s), {n} ids: all snapshots in {fig['all_snapshots_s']} s"
            )
        status = await cluster_status(head.port)
        # Are they live?  Drop the owner's copy of 100 objects; every stream must hear it.
        changed = objects[:: max(1, n // 100)][:100]
        seen: dict[bytes, int] = {}

        def count(t: float, rows: list[ObjectRow]) -> None:
            for r in rows:
                if r.object_id in changed_set and owner.node_id not in r.nodes:
                    seen[r.object_id] = seen.get(r.object_id, 0) + 1

        changed_set = set(changed)
        for x in nodes[1:]:
            assert x.subscription is not None
            x.subscription.on_rows = count
        t0 = time.perf_counter()
        await owner.report(removed=changed)
        for _ in range(500):
            if sum(seen.values()) >= 2 * len(changed):
                break
            await asyncio.sleep(0.01)
        live_s = time.perf_counter() - t0
        end = head.rss()
        out.update(
            {
                "one_stream": runs[0],
                "ten_streams": runs[1],
                "live_subscriptions_in_status": status.subscriptions,
                "rss_after_mib": round(end["VmRSS"] / MiB, 1),
                "rss_bytes_per_subscription": round((end["VmRSS"] - base["VmRSS"]) / (2 * n)),
                "change_after_subscribing": {
                    "objects_changed": len(changed),
                    "notifications_expected": 2 * len(changed),
                    "notifications_received": sum(seen.values()),
                    "all_received_s": round(live_s, 4),
                },
                "stream_errors": [
                    repr(x.subscription.ended)
                    for x in nodes[1:]
                    if x.subscription and x.subscription.ended
                ],
            }
        )
        return out
    finally:
        await close_nodes(nodes)
        head.close()


# --------------------------------------------------------------------------- change latency
class LatencyProbe:
    """Matches sent changes with the notifications that show them.

    A change is ("add" | "remove", object id, reporting node, t_change); it is
    seen when a row for that object arrives whose locations include (add) or
    exclude (remove) the node.  Latencies are from the change (when it was due
    on the reporting node) and from the moment its report was sent.
    """

    def __init__(self) -> None:
        # object id -> (adding?, node id, t_change, t_sent or 0)
        self.pending: dict[bytes, list[Any]] = {}
        self.from_change: list[float] = []
        self.from_send: list[float] = []
        self.recording = True
        self.stale_rows = 0

    def expect(self, oid: bytes, adding: bool, node: bytes, t_change: float) -> None:
        self.pending[oid] = [adding, node, t_change, 0.0]

    def sent(self, oids: Iterable[bytes], t: float) -> None:
        for oid in oids:
            p = self.pending.get(oid)
            if p is not None and not p[3]:
                p[3] = t

    def __call__(self, t: float, rows: list[ObjectRow]) -> None:
        for r in rows:
            p = self.pending.get(r.object_id)
            if p is None:
                continue
            adding, node, t_change, t_sent = p
            if (node in r.nodes) != adding or not t_sent:
                self.stale_rows += 1
                continue
            del self.pending[r.object_id]
            if self.recording:
                self.from_change.append(t - t_change)
                self.from_send.append(t - t_sent)


class BatchReporter:
    """One report in flight per node, carrying every change that came meanwhile (as a node does)."""

    def __init__(self, node: SimNode, probe: LatencyProbe, max_report: int = 2000) -> None:
        self.node = node
        self.probe = probe
        self.max_report = max_report
        self.queue: dict[bytes, bool] = {}
        self.evt = asyncio.Event()
        self.reports = 0
        self.errors = 0
        self.task = asyncio.ensure_future(self._run())

    def change(self, oid: bytes, adding: bool, t_change: float) -> None:
        self.probe.expect(oid, adding, self.node.node_id, t_change)
        self.queue.pop(oid, None)
        self.queue[oid] = adding
        self.evt.set()

    async def _run(self) -> None:
        for _ in range(100_000_000):
            await self.evt.wait()
            self.evt.clear()
            while self.queue:
                items = list(self.queue.items())[: self.max_report]
                for oid, _ in items:
                    del self.queue[oid]
                added = [o for o, a in items if a]
                removed = [o for o, a in items if not a]
                t = time.perf_counter()
                self.probe.sent((o for o, _ in items), t)
                try:
                    await self.node.report(added, removed, primary=False)
                except Exception:  # noqa: BLE001 - counted
                    self.errors += 1
                self.reports += 1

    async def drain(self, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.005)):
            if not self.queue:
                return
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


class Toggler:
    """Changes round-robin over nodes: each drops its copy of an object, later adds it back.

    Keeps each object's current state across runs, so every change it hands
    out really changes the directory's record (and so notifies).
    """

    def __init__(self, objects_by_node: Sequence[Sequence[bytes]]) -> None:
        self.objects = objects_by_node
        self.pos = [0] * len(objects_by_node)
        self.present: dict[bytes, bool] = {o: True for objs in objects_by_node for o in objs}
        self.k = 0

    def take(self, n: int) -> list[tuple[int, bytes, bool]]:
        out = []
        for _ in range(n):
            i = self.k % len(self.objects)
            self.k += 1
            objs = self.objects[i]
            oid = objs[self.pos[i] % len(objs)]
            self.pos[i] += 1
            adding = not self.present[oid]
            self.present[oid] = adding
            out.append((i, oid, adding))
        return out


async def paced_changes(
    schedule: Sequence[tuple[int, bytes, bool]],
    rate: float,
    send: Callable[[int, bytes, bool, float], None],
) -> tuple[float, float]:
    """Call ``send(node, oid, adding, t_due)`` for each change at ``rate``/s.

    Returns (seconds from the first due time to the last send, worst lag of
    a send behind its due time).
    """
    n = len(schedule)
    t0 = time.perf_counter() + 0.005
    k = 0
    lag = 0.0
    give_up = t0 + n / rate + 30.0
    for _ in range(100 * n + 100_000):
        now = time.perf_counter()
        if k >= n or now > give_up:
            break
        due_until = min(n, int((now - t0) * rate) + 1)
        for _j in range(k, due_until):
            t_due = t0 + k / rate
            lag = max(lag, now - t_due)
            i, oid, adding = schedule[k]
            send(i, oid, adding, t_due)
            k += 1
        if k < n:
            # uvloop's timers have 1 ms resolution: never sleep less.
            await asyncio.sleep(max(0.001, t0 + k / rate - time.perf_counter()))
    if k < n:
        raise RuntimeError(f"pacing gave up after {k} of {n} changes")
    return time.perf_counter() - t0, lag


async def _wait_seen(probe: LatencyProbe, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if not probe.pending:
            return
        await asyncio.sleep(0.01)


async def latency_run(
    head: Head,
    reporters: Sequence[SimNode],
    toggler: Toggler,
    probe: LatencyProbe,
    rate: float,
    seconds: float,
    mode: str,
) -> dict[str, Any]:
    """Paced changes at ``rate``/s for ``seconds``; ``mode`` is "batched" or "individual"."""
    n = int(rate * seconds)
    warm = min(200, n // 10)
    schedule = toggler.take(warm + n)
    inflight: set[asyncio.Task[None]] = set()
    errors = 0
    batchers: list[BatchReporter] = []
    if mode == "batched":
        batchers = [BatchReporter(x, probe) for x in reporters]

        def send(i: int, oid: bytes, adding: bool, t_due: float) -> None:
            batchers[i].change(oid, adding, t_due)
    else:
        limit = asyncio.Semaphore(64)

        async def one(i: int, oid: bytes, adding: bool) -> None:
            nonlocal errors
            async with limit:
                x = reporters[i]
                probe.sent([oid], time.perf_counter())
                try:
                    if adding:
                        await x.report([oid], primary=False)
                    else:
                        await x.report(removed=[oid])
                except Exception:  # noqa: BLE001 - counted
                    errors += 1

        def send(i: int, oid: bytes, adding: bool, t_due: float) -> None:
            probe.expect(oid, adding, reporters[i].node_id, t_due)
            t = asyncio.ensure_future(one(i, oid, adding))
            inflight.add(t)
            t.add_done_callback(inflight.discard)

    try:
        # This process's own long-lived objects (ids, nodes) out of its GC's
        # way: a full collection here would show as directory latency.
        gc.freeze()
        probe.recording = False
        await paced_changes(schedule[:warm], rate, send)
        await _wait_seen(probe)
        probe.recording = True
        probe.from_change.clear()
        probe.from_send.clear()
        reports0 = sum(b.reports for b in batchers)
        with CpuMeter(head) as cpu:
            took, lag = await paced_changes(schedule[warm:], rate, send)
            for b in batchers:
                await b.drain()
            if inflight:
                await asyncio.wait(set(inflight), timeout=10)
            await _wait_seen(probe)
        reports = sum(b.reports for b in batchers) - reports0 if batchers else n
        errors += sum(b.errors for b in batchers)
        return {
            "mode": mode,
            "changes": n,
            "achieved_changes_per_s": round(n / took),
            "reports_sent": reports,
            "changes_per_report": round(n / max(reports, 1), 2),
            "report_interval_ms_mean": round(took / max(reports, 1) * 1e3, 2),
            "max_pacing_lag_ms": round(lag * 1e3, 2),
            "change_to_notification": ms_summary(probe.from_change),
            "report_send_to_notification": ms_summary(probe.from_send),
            "not_delivered": len(probe.pending),
            "report_errors": errors,
            **cpu.fields(),
        }
    finally:
        for b in batchers:
            await b.close()
        probe.pending.clear()


def _start_node(head: Head, sock: str, workdir: str) -> subprocess.Popen[bytes]:
    """A (non-head) node joined to ``head``, once it printed its ready line."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "objstore.node",
            "--directory",
            head.address,
            "--token-file",
            os.path.join(head.dir, "token"),
            "--memory",
            "64MiB",
            "--prefault",
            "0",
            "--socket",
            sock,
            "--fallback-dir",
            workdir,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=head.env,
    )
    assert proc.stdout is not None
    ok, _, _ = select.select([proc.stdout], [], [], 60)
    if not ok or not proc.stdout.readline():
        proc.kill()
        proc.wait()
        raise RuntimeError("node B did not start")
    return proc


async def _end_to_end(head: Head, iterations: int) -> dict[str, Any]:
    """Real node processes: a get waits on node B for an object on node A; A deletes it.

    Measured from the delete call on A's client to the get failing on B's
    client: A's report, the directory, B's stream, B failing its waiters.
    (There is no transfer between nodes yet, so a put cannot complete a
    remote get; a delete is the change a waiting get observes.)
    """
    import objstore
    from objstore.errors import ObjectNotFoundError

    bdir = tempfile.mkdtemp(prefix="osb-dir-b-", dir="/tmp")
    bsock = os.path.join(bdir, "b.sock")
    proc = await asyncio.to_thread(_start_node, head, bsock, bdir)
    try:
        lat: list[float] = []
        failures: dict[str, int] = {}
        ch = _channel(head.port)
        stub = pb.DirectoryStub(ch)
        try:
            async with (
                objstore.connect(str(head.ready["socket"]), warm=False) as a,
                objstore.connect(bsock, warm=False) as b,
            ):
                for _ in range(iterations):
                    ref = await a.put(b"v" * 100)
                    before = (await stub.cluster_status(pb.ClusterStatusRequest())).subscriptions
                    getter = asyncio.ensure_future(
                        b.get(objstore.ObjectRef.from_hex(ref.hex()), timeout=10)
                    )
                    for _ in range(2000):  # until B's stream subscribed to it
                        if (
                            await stub.cluster_status(pb.ClusterStatusRequest())
                        ).subscriptions > before:
                            break
                    await asyncio.sleep(0.002)  # let the snapshot reach B
                    t0 = time.perf_counter()
                    await a.delete(ref)
                    try:
                        await getter
                        failures["get returned a value"] = (
                            failures.get("get returned a value", 0) + 1
                        )
                    except ObjectNotFoundError:
                        lat.append(time.perf_counter() - t0)
                    except Exception as exc:  # noqa: BLE001 - counted by kind
                        kind = type(exc).__name__
                        failures[kind] = failures.get(kind, 0) + 1
        finally:
            ch.close()
        return {
            "iterations": iterations,
            "failures": failures,
            "delete_on_A_to_get_failed_on_B": ms_summary(lat),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(bdir, ignore_errors=True)


async def part_latency(args: argparse.Namespace) -> dict[str, Any]:
    head = Head()
    nodes: list[SimNode] = []
    try:
        await asyncio.to_thread(head.start)
        nodes = await start_nodes(head.port, 2)
        reporter, subscriber = nodes
        objects = new_ids(args.latency_objects)
        await reporter.fill(objects, primary=False)
        mux = Mux()
        snap = SnapshotWaiter(objects)
        mux.handlers.append(snap)
        sub = await subscriber.open_subscription(mux)
        await sub.subscribe(objects)
        async with asyncio.timeout(30):
            await snap.done.wait()
        probe = LatencyProbe()
        mux.handlers[:] = [probe]
        toggler = Toggler([objects])
        out: dict[str, Any] = {
            "rate_target": args.rate,
            "seconds": args.latency_seconds,
            "subscribed_objects": len(objects),
            "change": "remove or add back a secondary copy of a subscribed object",
        }
        for mode in ("individual", "batched"):
            r = await latency_run(
                head, [reporter], toggler, probe, args.rate, args.latency_seconds, mode
            )
            out[mode] = r
            c = r["change_to_notification"]
            log(
                f"latency {mode}: {r['achieved_changes_per_s']}/s, p50 {c.get('p50_ms')} p99 {c.get('p99_ms')} ms"
            )
        out["stale_rows"] = probe.stale_rows
        if not args.quick:
            out["end_to_end_real_nodes"] = await _end_to_end(head, args.e2e)
            e = out["end_to_end_real_nodes"]["delete_on_A_to_get_failed_on_B"]
            log(f"latency end to end: p50 {e.get('p50_ms')} p99 {e.get('p99_ms')} ms")
        return out
    finally:
        await close_nodes(nodes)
        head.close()


# --------------------------------------------------------------------------- memory
async def part_memory(args: argparse.Namespace) -> dict[str, Any]:
    n = args.memory_objects
    n_nodes = args.memory_nodes
    workdir = tempfile.mkdtemp(prefix="osb-dir-", dir="/tmp")
    head = Head(
        workdir=workdir, state_dir=os.path.join(workdir, "state") if args.memory_sqlite else None
    )
    nodes: list[SimNode] = []
    try:
        await asyncio.to_thread(head.start)
        nodes = await start_nodes(head.port, n_nodes)
        # A reporter and a subscriber of 2,000 of its objects: change latency
        # while the directory takes the bulk reports (a full report after a
        # restart looks like this).
        probe_nodes = await start_nodes(head.port, 2)
        nodes += probe_nodes
        reporter, subscriber = probe_nodes
        watched = new_ids(2000)
        await reporter.fill(watched, primary=False)
        snap = SnapshotWaiter(watched)
        mux = Mux()
        mux.handlers.append(snap)
        await (await subscriber.open_subscription(mux)).subscribe(watched)
        async with asyncio.timeout(30):
            await snap.done.wait()
        probe = LatencyProbe()
        mux.handlers[:] = [probe]
        before = await settle_rss(head, max_s=3, quiet_s=0.5)
        per = n // n_nodes
        fillers = nodes[:n_nodes]
        with CpuMeter(head) as cpu:
            lat_task = asyncio.ensure_future(
                latency_run(
                    head,
                    [reporter],
                    Toggler([watched]),
                    probe,
                    args.rate,
                    args.fill_latency_seconds,
                    "batched",
                )
            )
            rate = await fill_nodes(fillers, per)
        lat = await lat_task
        log(
            f"memory: {per * n_nodes:,} objects reported at {rate:,.0f}/s; change latency meanwhile "
            f"p50 {lat['change_to_notification'].get('p50_ms')} p99 {lat['change_to_notification'].get('p99_ms')} ms"
        )
        after = await settle_rss(head, max_s=30, quiet_s=1.5)
        status = await cluster_status(head.port)
        total = per * n_nodes
        grown = after["VmRSS"] - before["VmRSS"]
        return {
            "change_latency_during_bulk_reports": {
                "changes_per_s": lat["achieved_changes_per_s"],
                "seconds": args.fill_latency_seconds,
                "changes_per_report": lat["changes_per_report"],
                "report_interval_ms_mean": lat["report_interval_ms_mean"],
                **lat["change_to_notification"],
                "not_delivered": lat["not_delivered"],
            },
            "objects": total,
            "reporting_nodes": n_nodes,
            "report_size": 2000,
            "state_store": "sqlite" if args.memory_sqlite else "memory (no --state-dir)",
            "objects_in_status": status.objects,
            "report_objects_per_s": round(rate),
            "report_cpu": cpu.fields(),
            "rss_before_mib": round(before["VmRSS"] / MiB, 1),
            "rss_after_mib": round(after["VmRSS"] / MiB, 1),
            "rss_anon_growth_mib": round((after["RssAnon"] - before["RssAnon"]) / MiB, 1),
            "rss_peak_mib": round(after["VmHWM"] / MiB, 1),
            "rss_growth_mib": round(grown / MiB, 1),
            "bytes_per_object": round(grown / total, 1),
        }
    finally:
        await close_nodes(nodes)
        head.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- restart
def _sqlite_objects(path: str) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(conn.execute("SELECT count(*) FROM objects").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def _redis_objects(port: int) -> int:
    import redis

    r = redis.Redis(host=HOST, port=port, socket_timeout=2)
    try:
        return int(r.hlen("objstore:objects"))
    except redis.RedisError:
        return -1
    finally:
        r.close()


class RedisServer:
    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        import redis

        for _ in range(200):
            try:
                redis.Redis(host=HOST, port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS"):
                    return round(int(line.split()[1]) / 1024, 1)
        return math.nan

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _restart_case(args: argparse.Namespace, kind: str, workdir: str) -> dict[str, Any]:
    n = args.restart_objects
    redis_srv: RedisServer | None = None
    state_dir = os.path.join(workdir, "state")
    if kind == "redis":
        redis_srv = await asyncio.to_thread(RedisServer, workdir)
        head = Head(port=free_port(), store=f"redis://{HOST}:{redis_srv.port}/0", workdir=workdir)

        def written() -> int:
            assert redis_srv is not None
            return _redis_objects(redis_srv.port)
    else:
        head = Head(port=free_port(), state_dir=state_dir, workdir=workdir)

        def written() -> int:
            return _sqlite_objects(os.path.join(state_dir, "directory.sqlite3"))

    node: SimNode | None = None
    try:
        await asyncio.to_thread(head.start)
        node = SimNode(head.port)
        await node.register()
        node.start_heartbeats()
        base = await settle_rss(head, max_s=3, quiet_s=0.5)
        objects = new_ids(n)
        t0 = time.perf_counter()
        await node.fill(objects)
        report_s = time.perf_counter() - t0
        for _ in range(600):
            if await asyncio.to_thread(written) >= n:
                break
            await asyncio.sleep(0.05)
        persisted_s = time.perf_counter() - t0
        count_written = await asyncio.to_thread(written)
        rss = await settle_rss(head, max_s=5, quiet_s=0.5)
        stop_s = await asyncio.to_thread(head.stop)
        restart_s = await asyncio.to_thread(head.start)
        t_ready = time.perf_counter()
        status = await cluster_status(head.port)
        # Every object must be there, PRESENT on the node (its record came back alive).
        ch = _channel(head.port)
        present = 0
        try:
            stub = pb.DirectoryStub(ch)
            for i in range(0, n, 10_000):
                rows = table_to_rows(
                    await stub.lookup(
                        pb.LookupRequest(object_ids=join_ids(objects[i : i + 10_000])),
                        timeout=RPC_TIMEOUT,
                    )
                )
                present += sum(1 for r in rows if r.state == 2 and node.node_id in r.nodes)
        finally:
            ch.close()
        looked_up_s = time.perf_counter() - t_ready
        # The node comes back with the same session: it keeps its locations.
        await node.register()
        await node.heartbeat_once()
        status2 = await cluster_status(head.port)
        recovered = head.log_events("directory state recovered")
        return {
            "store": kind,
            "objects": n,
            "report_s": round(report_s, 3),
            "report_to_persisted_s": round(persisted_s, 3),
            "persisted_before_stop": count_written,
            "rss_growth_bytes_per_object": round((rss["VmRSS"] - base["VmRSS"]) / n, 1),
            "stop_s": round(stop_s, 3),
            "restart_to_ready_s": round(restart_s, 3),
            "state_load_s_from_log": recovered[-1].get("seconds") if recovered else None,
            "objects_in_status_after_restart": status.objects,
            "present_on_node_after_restart": present,
            "ready_to_all_looked_up_s": round(looked_up_s, 3),
            "objects_after_node_registered_again": status2.objects,
            "redis_rss_mib": redis_srv.rss_mib() if redis_srv else None,
        }
    finally:
        if node is not None:
            await node.close()
        head.close()
        if redis_srv is not None:
            redis_srv.stop()


async def part_restart(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = ["sqlite"] + (["redis"] if args.redis and shutil.which("redis-server") else [])
    for kind in kinds:
        workdir = tempfile.mkdtemp(prefix="osb-dir-", dir="/tmp")
        try:
            r = await _restart_case(args, kind, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        out[kind] = r
        log(
            f"restart {kind}: {r['objects']} objects, ready in {r['restart_to_ready_s']} s, "
            f"{r['present_on_node_after_restart']} present"
        )
    return out


# --------------------------------------------------------------------------- scale
async def _scale_case(args: argparse.Namespace, n_nodes: int, per_node: int) -> dict[str, Any]:
    head = Head()
    nodes: list[SimNode] = []
    try:
        await asyncio.to_thread(head.start)
        base = await settle_rss(head, max_s=3, quiet_s=0.5)
        t0 = time.perf_counter()
        nodes = await start_nodes(head.port, n_nodes)
        register_s = time.perf_counter() - t0
        with CpuMeter(head) as fill_cpu:
            fill_rate, fill_rtt = await with_lookup_probe(head, fill_nodes(nodes, per_node))
        filled = await settle_rss(head, max_s=15, quiet_s=1.0)
        # Each node subscribes to up to `watch` objects of the next node.
        watch = min(per_node, args.scale_watch)
        mux = [Mux() for _ in nodes]
        snaps = []
        for i, x in enumerate(nodes):
            target = nodes[(i + 1) % n_nodes].objects[:watch]
            w = SnapshotWaiter(target)
            snaps.append(w)
            mux[i].handlers.append(w)
            await x.open_subscription(mux[i])
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                x.subscription.subscribe(nodes[(i + 1) % n_nodes].objects[:watch])
                for i, x in enumerate(nodes)
            )  # type: ignore[union-attr]
        )
        async with asyncio.timeout(120):
            await asyncio.gather(*(w.done.wait() for w in snaps))
        subscribe_s = time.perf_counter() - t0
        subscribed = await settle_rss(head, max_s=5, quiet_s=0.5)
        # Lookups over every object of every node.
        pool = [o for x in nodes for o in x.objects]
        lookups = await _lookup_scale(head, pool, args.scale_seconds)
        # Change delivery at the paced rate, round-robin over the nodes.
        probe = LatencyProbe()
        for m in mux:
            m.handlers[:] = [probe]
        lat = await latency_run(
            head,
            nodes,
            Toggler([x.objects[:watch] for x in nodes]),
            probe,
            args.rate,
            args.scale_seconds * 2,
            "batched",
        )
        status = await cluster_status(head.port)
        alive = sum(1 for s in status.nodes if s.alive)
        end = head.rss()
        objects = n_nodes * per_node
        return {
            "nodes": n_nodes,
            "objects_per_node": per_node,
            "objects": objects,
            "subscriptions": n_nodes * watch,
            "register_all_s": round(register_s, 3),
            "report_objects_per_s": round(fill_rate),
            "report_cpu": fill_cpu.fields(),
            "lookup_rtt_during_reports": fill_rtt,
            "subscribe_all_s": round(subscribe_s, 3),
            "lookups": lookups,
            "latency_batched": {
                "changes_per_s": lat["achieved_changes_per_s"],
                "changes_per_report": lat["changes_per_report"],
                **lat["change_to_notification"],
                "send_p99_ms": lat["report_send_to_notification"].get("p99_ms"),
                "not_delivered": lat["not_delivered"],
                "directory_cpu": lat["directory_cpu"],
                "bench_cpu": lat["bench_cpu"],
                "others_cpu": lat["others_cpu"],
            },
            "alive_nodes_in_status": alive - 1,  # minus the head itself
            "heartbeat_failures": sum(x.heartbeat_failures for x in nodes),
            "rss_idle_mib": round(base["VmRSS"] / MiB, 1),
            "rss_after_reports_mib": round(filled["VmRSS"] / MiB, 1),
            "rss_after_subscriptions_mib": round(subscribed["VmRSS"] / MiB, 1),
            "rss_end_mib": round(end["VmRSS"] / MiB, 1),
            "rss_bytes_per_object": round((filled["VmRSS"] - base["VmRSS"]) / objects, 1),
        }
    finally:
        await close_nodes(nodes)
        head.close()


async def with_lookup_probe(head: Head, work: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``work``; meanwhile one single-id Lookup every 10 ms: how long the directory takes to answer."""
    ch = _channel(head.port)
    stub = pb.DirectoryStub(ch)
    rtts: list[float] = []
    done = False
    probe_id = os.urandom(20)

    async def probe() -> None:
        for _ in range(1_000_000):
            if done:
                return
            t = time.perf_counter()
            await stub.lookup(pb.LookupRequest(object_ids=probe_id), timeout=RPC_TIMEOUT)
            rtts.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(probe())
    try:
        result = await work
    finally:
        done = True
        with contextlib.suppress(Exception):
            await task
        ch.close()
    return result, ms_summary(rtts)


async def _lookup_scale(head: Head, pool: Sequence[bytes], seconds: float) -> dict[str, Any]:
    rng = random.Random(2)
    ch = _channel(head.port)
    stub = pb.DirectoryStub(ch)
    try:
        batch = [join_ids(rng.sample(pool, 1000)) for _ in range(32)]
        single = [rng.choice(pool) for _ in range(2048)]
        await lookup_rate(stub, batch, 0.2)
        with CpuMeter(head) as c1:
            b = await lookup_rate(stub, batch, seconds)
        with CpuMeter(head) as c2:
            s = await lookup_rate(stub, single, seconds)
        with CpuMeter(head) as c3:
            s16 = await lookup_rate(stub, single, seconds, 16)
        return {
            "batch_1000_ids_per_s": b["ids_per_s"],
            "batch_cpu": c1.fields(),
            "single_sequential_per_s": s["ids_per_s"],
            "single_cpu": c2.fields(),
            "single_16_in_flight_per_s": s16["ids_per_s"],
            "single_16_cpu": c3.fields(),
        }
    finally:
        ch.close()


async def part_scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for k in args.objects_per_node:
        for n in args.nodes:
            busy = await wait_quiet(args.wait_quiet) if args.wait_quiet else None
            r = await _scale_case(args, n, k)
            r["others_cpu_at_start"] = busy
            out.append(r)
            lat = r["latency_batched"]
            log(
                f"scale: {n} nodes x {k} objects: batch lookups {r['lookups']['batch_1000_ids_per_s']:,}/s, "
                f"reports {r['report_objects_per_s']:,}/s, p99 {lat.get('p99_ms')} ms, "
                f"RSS {r['rss_end_mib']} MiB"
            )
    return out


# --------------------------------------------------------------------------- summary
def targets(out: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against the figures of this run."""
    t: dict[str, Any] = {}
    lk = out.get("lookups")
    if lk:
        v = lk["batch_1000_sequential"]["ids_per_s_median"]
        t["batched_lookups_per_s"] = {"value": v, "target": ">= 30000", "met": v >= 30_000}
        v = lk["single_sequential"]["ids_per_s_median"]
        t["single_lookups_per_s_sequential"] = {"value": v, "target": ">= 3000", "met": v >= 3000}
        v = lk["single_16_in_flight"]["ids_per_s_median"]
        t["single_lookups_per_s_16_in_flight"] = {"value": v, "target": ">= 3000", "met": v >= 3000}
    sb = out.get("subscriptions")
    if sb:
        ok = all(sb[k]["snapshots_missing"] == 0 for k in ("one_stream", "ten_streams"))
        t["live_subscriptions"] = {
            "value": sb["live_subscriptions_in_status"],
            "target": ">= 10000 on one directory, every snapshot delivered",
            "met": ok and sb["live_subscriptions_in_status"] >= 10_000,
        }
    la = out.get("latency")
    if la:
        for mode in ("individual", "batched"):
            c = la[mode]["change_to_notification"]
            v = c.get("p99_ms", math.inf)
            t[f"change_p99_ms_{mode}"] = {
                "value": v,
                "target": "<= 10 at 1000 changes/s",
                "met": v <= 10
                and la[mode]["not_delivered"] == 0
                and la[mode]["achieved_changes_per_s"] >= 0.95 * la["rate_target"],
            }
    me = out.get("memory")
    if me:
        v = me["rss_growth_mib"]
        t["memory_for_objects_mib"] = {
            "value": v,
            "objects": me["objects"],
            "target": "1,000,000 objects in <= 1024 MiB",
            "met": (v <= 1024 and me["objects_in_status"] >= me["objects"])
            if me["objects"] >= 1_000_000
            else None,
        }
    rs = out.get("restart")
    if rs:
        for kind, r in rs.items():
            ok = r["present_on_node_after_restart"] == r["objects"]
            t[f"restart_s_{kind}"] = {
                "value": r["restart_to_ready_s"],
                "objects": r["objects"],
                "target": "100,000 objects recovered within 10 s",
                "met": (ok and r["restart_to_ready_s"] + r["ready_to_all_looked_up_s"] <= 10)
                if r["objects"] >= 100_000
                else None,
            }
    return t


def summary(out: dict[str, Any]) -> str:
    lines = ["", "== directory bench =="]
    for name, t in out.get("targets", {}).items():
        met = "n/a (smaller run)" if t["met"] is None else "met" if t["met"] else "NOT MET"
        lines.append(f"  {name:40s} {t['value']!s:>12}  target {t['target']:45s} {met}")
    sc = out.get("scale")
    if sc:
        lines.append("")
        lines.append(
            "  nodes  obj/node  objects  report obj/s  batch lookup/s  single/s  16-in-flight/s"
            "  p50 ms  p99 ms  RSS MiB  B/object  lookup during reports p50/max ms"
        )
        for r in sc:
            lk = r["lookups"]
            lat = r["latency_batched"]
            lines.append(
                f"  {r['nodes']:5d}  {r['objects_per_node']:8d}  {r['objects']:7d}  {r['report_objects_per_s']:12,d}"
                f"  {lk['batch_1000_ids_per_s']:14,d}  {lk['single_sequential_per_s']:8,d}"
                f"  {lk['single_16_in_flight_per_s']:14,d}  {lat.get('p50_ms', math.nan):6.2f}"
                f"  {lat.get('p99_ms', math.nan):6.2f}  {r['rss_end_mib']:7.1f}  {r['rss_bytes_per_object']:8.1f}"
                f"  {r['lookup_rtt_during_reports'].get('p50_ms')}/{r['lookup_rtt_during_reports'].get('max_ms')}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _ints(text: str) -> list[int]:
    return [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]


async def others_busy(seconds: float = 1.0) -> float:
    """Cores the rest of the machine kept busy over ``seconds`` (this process excluded)."""
    m0, b0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - t0
    return max(0.0, (machine_busy_s() - m0) - (time.process_time() - b0)) / wall


async def wait_quiet(limit_s: float, threshold: float = 0.3) -> float:
    """Wait (up to ``limit_s``) until other processes use under ``threshold`` cores; returns their use."""
    busy = await others_busy()
    deadline = time.perf_counter() + limit_s
    while busy > threshold and time.perf_counter() < deadline:
        busy = await others_busy()
    return round(busy, 2)


async def _sequential_lookups(creds: Credentials, n: int) -> float:
    """Microseconds per Lookup RPC, one at a time, against an in-process directory."""
    from objstore.config import Config
    from objstore.directory.server import DirectoryServer

    server = DirectoryServer(Config.for_test(), credentials=creds)
    await server.start(HOST, 0)
    channel = open_channel(HOST, server.port, creds)
    try:
        stub = pb.DirectoryStub(channel)
        req = pb.LookupRequest(object_ids=join_ids([os.urandom(20)]))
        for _ in range(200):  # warm: the connection, HPACK's table
            await stub.lookup(req, timeout=5)
        t0 = time.perf_counter()
        for _ in range(n):
            await stub.lookup(req, timeout=5)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        channel.close()
        await server.stop()


async def part_auth(args: argparse.Namespace) -> dict[str, Any]:
    """What the token's proof costs a directory RPC: with the token and --insecure, alternating."""
    from objstore.auth import ChannelProver, ProofVerifier
    from objstore.log import configure_logging

    configure_logging("console", "warning")  # the in-process servers log to stderr, quietly

    runs: dict[str, list[float]] = {"token": [], "insecure": []}
    token = Credentials(generate_token(), None, "bench")
    for _ in range(args.rounds):
        runs["token"].append(await _sequential_lookups(token, args.auth_calls))
        runs["insecure"].append(await _sequential_lookups(Credentials.insecure(), args.auth_calls))
    # The proof and its check alone, without I/O.
    assert token.token is not None
    prover, verifier = ChannelProver(token.token), ProofVerifier(token.token)
    method = "/objstore.directory.v1.Directory/Lookup"
    n = 20_000
    t0 = time.perf_counter()
    proofs = [prover.proof(method) for _ in range(n)]
    t1 = time.perf_counter()
    assert all(verifier.check(p, method) is None for p in proofs)
    t2 = time.perf_counter()
    out: dict[str, Any] = {
        mode: {
            "us_per_rpc_runs": [round(x, 1) for x in xs],
            "us_per_rpc_median": round(statistics.median(xs), 1),
        }
        for mode, xs in runs.items()
    }
    out["token_over_insecure"] = round(
        out["token"]["us_per_rpc_median"] / out["insecure"]["us_per_rpc_median"], 3
    )
    out["proof_us"] = round((t1 - t0) / n * 1e6, 2)
    out["check_us"] = round((t2 - t1) / n * 1e6, 2)
    return out


class _BorrowListener:
    """A primary node's listener that resolves a future when an id's note comes."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, bytes], asyncio.Future[float]] = {}

    def expect(self, kind: str, oid: bytes) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[(kind, oid)] = fut
        return fut

    def _seen(self, kind: str, ids: list[bytes]) -> None:
        t = time.perf_counter()
        for oid in ids:
            fut = self.waiting.pop((kind, oid), None)
            if fut is not None and not fut.done():
                fut.set_result(t)

    def on_borrowed(self, ids: list[bytes]) -> None:
        self._seen("borrowed", ids)

    def on_unborrowed(self, ids: list[bytes]) -> None:
        self._seen("unborrowed", ids)

    def on_update(self, rows: list[ObjectRow]) -> None: ...

    def on_free(self, ids: list[bytes]) -> None: ...

    def on_dead(self, node_ids: list[bytes]) -> None: ...

    # NodeView: nothing held, nothing borrowed at registration.
    def snapshot(self) -> list[tuple[bytes, int, bool, str]]:
        return []

    def spilled_snapshot(self) -> list[tuple[bytes, str]]:
        return []

    def borrowed_snapshot(self) -> list[bytes]:
        return []

    def replicas_snapshot(self) -> list[tuple[bytes, int]]:
        return []

    def recreatable_snapshot(self) -> list[bytes]:
        return []

    def on_replicate(self, ids: list[bytes]) -> None: ...

    def usage(self) -> Any:
        from objstore.locations import Usage

        return Usage()


async def _borrow_round(creds: Credentials, n: int, report_interval_s: float) -> dict[str, Any]:
    """Borrow and unborrow ``n`` objects one at a time: B's hook to A's listener."""
    from objstore.config import Config
    from objstore.directory.client import DirectoryClient
    from objstore.directory.server import DirectoryServer

    cfg = Config.for_test(directory={"report_interval_s": report_interval_s})
    server = DirectoryServer(cfg, credentials=creds)
    await server.start(HOST, 0)
    cfg = cfg.replace(node={"directory": server.address})
    la, lb = _BorrowListener(), _BorrowListener()
    a = DirectoryClient(cfg, os.urandom(16), la, la, credentials=creds)
    b = DirectoryClient(cfg, os.urandom(16), lb, lb, credentials=creds)
    try:
        await a.start()
        await b.start()
        ids = new_ids(n + 200)
        for oid in ids:
            a.added(oid, 100, True)
        await a.flush_reports()
        times: dict[str, list[float]] = {"borrowed": [], "unborrowed": []}
        for i, oid in enumerate(ids):
            for kind, hook in (("borrowed", b.borrowed), ("unborrowed", b.unborrowed)):
                fut = la.expect(kind, oid)
                t0 = time.perf_counter()
                hook(oid)
                t1 = await asyncio.wait_for(fut, RPC_TIMEOUT)
                if i >= 200:  # the first 200: warm-up (connections, HPACK tables)
                    times[kind].append(t1 - t0)
        return {kind: ms_summary(ts) for kind, ts in times.items()}
    finally:
        await b.stop()
        await a.stop()
        await server.stop()


async def part_borrow(args: argparse.Namespace) -> dict[str, Any]:
    """A borrower registration through the directory: B's ``borrowed(oid)`` hook to
    the primary A's ``on_borrowed``, and the same for its end, one at a time.

    An in-process directory over a real grpclib server (127.0.0.1), two real
    DirectoryClients over gRPC, all in this process on one loop.  With the
    default ``report_interval_s`` (5 ms) and with none (1 us): back-to-back
    changes wait for the report rate limit, a first change after a quiet
    spell does not.
    """
    from objstore.log import configure_logging

    configure_logging("console", "warning")
    creds = Credentials(generate_token(), None, "bench")
    out: dict[str, Any] = {"iterations": args.borrow_calls}
    out["report_interval_5ms"] = await _borrow_round(creds, args.borrow_calls, 0.005)
    out["report_interval_none"] = await _borrow_round(creds, args.borrow_calls, 1e-6)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "bench_loop": "uvloop",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    parts: list[tuple[str, Callable[[argparse.Namespace], Any]]] = [
        ("lookups", part_lookups),
        ("subscriptions", part_subscriptions),
        ("latency", part_latency),
        ("memory", part_memory),
        ("restart", part_restart),
        ("scale", part_scale),
        ("auth", part_auth),
        ("borrow", part_borrow),
    ]
    t_all = time.perf_counter()
    for name, fn in parts:
        if args.only and name not in args.only:
            continue
        if args.wait_quiet:
            busy = await wait_quiet(args.wait_quiet)
            out.setdefault("others_cpu_at_start", {})[name] = busy
        t0 = time.perf_counter()
        log(f"{name} ...")
        out[name] = await fn(args)
        out.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out["targets"] = targets(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only",
        type=lambda s: s.split(","),
        help="comma-separated parts: lookups,subscriptions,latency,memory,restart,scale,auth,borrow",
    )
    p.add_argument("--auth-calls", type=int, default=2000, help="auth: RPCs per round")
    p.add_argument(
        "--borrow-calls", type=int, default=2000, help="borrow: borrows (and ends) measured"
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each part, wait up to SECONDS for other processes to use < 0.3 core",
    )
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per lookup round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per lookup figure")
    p.add_argument("--lookup-objects", type=int, default=100_000)
    p.add_argument("--subscriptions", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=1000.0, help="changes per second")
    p.add_argument("--latency-seconds", type=float, default=5.0)
    p.add_argument("--latency-objects", type=int, default=2000)
    p.add_argument("--e2e", type=int, default=200, help="end-to-end iterations with real nodes")
    p.add_argument("--memory-objects", type=int, default=1_000_000)
    p.add_argument("--memory-nodes", type=int, default=10)
    p.add_argument(
        "--memory-sqlite", action="store_true", help="memory part with --state-dir (sqlite)"
    )
    p.add_argument(
        "--fill-latency-seconds",
        type=float,
        default=5.0,
        help="memory: seconds of change latency measured during the bulk reports",
    )
    p.add_argument("--restart-objects", type=int, default=100_000)
    p.add_argument("--no-redis", dest="redis", action="store_false", help="skip the Redis restart")
    p.add_argument(
        "--nodes", type=_ints, default=[100], help="scale: simulated nodes, e.g. 10,100,200"
    )
    p.add_argument("--objects-per-node", type=_ints, default=[1000], help="scale: objects per node")
    p.add_argument(
        "--scale-watch", type=int, default=200, help="scale: objects each node subscribes to"
    )
    p.add_argument("--scale-seconds", type=float, default=1.5)
    args = p.parse_args()
    known = {"lookups", "subscriptions", "latency", "memory", "restart", "scale", "auth", "borrow"}
    if args.only and not set(args.only) <= known:
        p.error(f"--only: choose from {', '.join(sorted(known))}")
    if args.quick:
        args.seconds = min(args.seconds, 0.5)
        args.rounds = 1
        args.lookup_objects = min(args.lookup_objects, 20_000)
        args.latency_seconds = min(args.latency_seconds, 2.0)
        args.memory_objects = min(args.memory_objects, 100_000)
        args.fill_latency_seconds = min(args.fill_latency_seconds, 0.5)
        args.restart_objects = min(args.restart_objects, 20_000)
        args.nodes = [min(n, 20) for n in args.nodes]
        args.scale_seconds = min(args.scale_seconds, 0.5)
        args.borrow_calls = min(args.borrow_calls, 500)
    import uvloop

    out = uvloop.run(run(args))
    print(json.dumps(out, indent=2))
    print(summary(out), file=sys.stderr)


if __name__ == "__main__":
    main()
