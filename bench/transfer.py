"""Moving objects between nodes: raw TCP, pulls, many small objects, broadcast, memory.

Starts real node processes (``python -m objstore.node``, 127.0.0.1 only) and
drives them from this process with one client per node; prints one JSON
object on stdout and a summary, with the targets, on stderr.

    python bench/transfer.py                  # everything, about 70 seconds
    python bench/transfer.py --quick          # smaller sizes, a smoke run
    python bench/transfer.py --only raw,pull  # raw | pull | small | broadcast | memory | tls
    python bench/transfer.py --wait-quiet 30  # on a shared machine: start each part
                                              # when other processes are idle
    python bench/transfer.py --only pull --py-spy /tmp/prof   # + profiles of both nodes

Parts:

raw        the reference: two processes on 127.0.0.1, one sends ``--size``
           bytes from a preallocated, touched buffer, the other receives them
           into one with ``recv_into``; blocking sockets (``sendall`` /
           ``recv_into``) and uvloop (``sock_sendall`` / ``sock_recv_into``,
           the calls the data plane uses).
pull       node B gets objects put on node A: one ``--size`` object, one
           ``--medium`` object, ``--count`` x ``--medium`` in one get.  A fresh
           object every repetition, deleted after it (and the bench waits until
           both nodes have freed it).  Round 0 is the first pull between the two
           fresh nodes (reported apart as ``first_*``: it pays for connecting
           and for filling the nodes' own page tables of the arena); then
           ``--repeat`` timed rounds, median.
small      ``--small`` objects of ``--small-size`` put on A (pipelined), then one
           get of all their refs on B: objects/s.
broadcast  one ``--broadcast`` object on the head; nodes B, C, D get it at the
           same moment; total time (start to the last get's return) against one
           transfer of the same size to one node, interleaved in the same run.
tls        the data plane with and without TLS, alternating, in this process: a
           TransferServer over an in-memory store and a PeerClient over loopback
           (one event loop, both ends), ``--size`` fetched in chunks with
           ``max_bytes_in_flight / chunk_size`` fetches at once, both with the
           cluster token; certificates from trustme in a temp dir.  Also the
           longest the loop went without running a 1 ms ticker during each.
           Not in the default run (``--only tls``).
memory     two fresh nodes; /proc/PID/status of both sampled every 10 ms during a
           ``--size`` pull, /proc/PID/smaps_rollup before and after: the
           arena's pages (shared memory, ``RssShmem``) apart from the rest
           (``RssAnon`` + ``RssFile``), and the kernel's TCP buffers
           (/proc/net/sockstat, machine-wide).

Both arenas are prefaulted (``stats()["prefaulted"]``) and the putting client's
page tables warm before anything is timed.  Every timed figure comes with the
CPU use, in cores, of each node, of this process, and of everything else on the
machine ("others": the machine is shared; a figure taken while others were busy
is worse), and pull figures with CPU seconds per GiB of each node's main thread
and of its other threads (the data plane's CRC-32 runs in threads).  GB/s is
1e9 bytes/s.  Chunk size and bytes in flight come from the environment as for
any node (``OBJSTORE_TRANSFER_CHUNK_SIZE``, ``OBJSTORE_TRANSFER_MAX_BYTES_IN_FLIGHT``);
the JSON records them.  Every process and temporary directory is removed at the
end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import math
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import numpy as np
from _proc import CLK_TCK, machine_busy_s

import objstore
from objstore.config import Config, parse_size

MiB = 1 << 20
GiB = 1 << 30
HOST = "127.0.0.1"
_PAGE = os.sysconf("SC_PAGE_SIZE")
GET_TIMEOUT = 120.0
PARTS = ("raw", "pull", "small", "broadcast", "memory", "tls", "tls_nodes", "replicas")
# Run only when asked for by --only.
OPT_IN = ("tls", "tls_nodes")

# For context in the summary: Ray 2.60 on this machine (same sizes).
RAY = {
    "pull_1GiB_gbps": 0.92,
    "pull_100MiB_gbps": 0.74,
    "pull_10x100MiB_gbps": 1.31,
    "small_objects_per_s": 1764,
    "loopback_tcp_gbps": 3.25,
}


def code_fingerprint() -> dict[str, Any]:
    """Which objstore was measured: a hash of its sources, and when the data plane last changed."""
    root = os.path.dirname(objstore.__file__)
    h = hashlib.sha256()
    newest: dict[str, str] = {}
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path, "rb") as fh:
                    h.update(path[len(root) :].encode() + fh.read())
                if os.path.basename(dirpath) == "transfer":
                    newest[f] = time.strftime("%H:%M:%S", time.gmtime(os.path.getmtime(path)))
    return {"objstore_sha256": h.hexdigest()[:16], "transfer_files_mtime_utc": newest}


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the JSON)."""
    print(f"[transfer bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gbps(nbytes: float, seconds: float) -> float:
    return round(nbytes / seconds / 1e9, 3) if seconds > 0 else math.nan


# --------------------------------------------------------------------------- /proc


def _stat_fields(path: str) -> list[str]:
    with open(path) as fh:
        return fh.read().rpartition(")")[2].split()


def proc_cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (or of one of its threads)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        f = _stat_fields(path)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_minflt(pid: int) -> int:
    try:
        return int(_stat_fields(f"/proc/{pid}/stat")[7])
    except OSError:
        return 0


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM of a process, in bytes (cheap: counters)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and their anonymous / shared-memory parts, in bytes (walks the page tables)."""
    keep = (
        "Rss",
        "Pss",
        "Pss_Anon",
        "Pss_File",
        "Pss_Shmem",
        "Shared_Clean",
        "Shared_Dirty",
        "Private_Clean",
        "Private_Dirty",
        "Anonymous",
    )
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in keep:
                out[k] = int(v.split()[0]) * 1024
    return out


def tcp_kernel_bytes() -> int:
    """Memory of all TCP sockets' buffers on the machine (/proc/net/sockstat ``TCP: mem``)."""
    with open("/proc/net/sockstat") as fh:
        for line in fh:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * _PAGE
    return 0


class CpuMeter:
    """CPU use over a span, in cores: each tracked process, this process, everything else.

    For tracked processes it also keeps the main thread apart from the other
    threads (whose CPU, during a pull, is the data plane's CRC-32 threads).
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def _read(self) -> dict[str, tuple[float, float]]:
        return {n: (proc_cpu_s(p), proc_cpu_s(p, p)) for n, p in self.pids.items()}

    def __enter__(self) -> Self:
        self.p0 = self._read()
        self.m0 = machine_busy_s()
        self.b0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = max(time.perf_counter() - self.t0, 1e-9)
        bench = time.process_time() - self.b0
        machine = machine_busy_s() - self.m0
        p1 = self._read()
        self.cpu_s = {n: p1[n][0] - self.p0[n][0] for n in self.pids}
        self.main_s = {n: p1[n][1] - self.p0[n][1] for n in self.pids}
        self.bench_s = bench
        self.others_s = max(0.0, machine - sum(self.cpu_s.values()) - bench)

    def cores(self) -> dict[str, float]:
        out = {n: round(v / self.wall, 2) for n, v in self.cpu_s.items()}
        out["bench"] = round(self.bench_s / self.wall, 2)
        out["others"] = round(self.others_s / self.wall, 2)
        return out


def others_busy(seconds: float = 1.0) -> float:
    """Cores the rest of the machine kept busy over ``seconds`` (this process excluded)."""
    m0, b0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    return max(0.0, (machine_busy_s() - m0) - (time.process_time() - b0)) / wall


def wait_quiet(limit_s: float, threshold: float = 0.3) -> float:
    """Wait (up to ``limit_s``) until other processes use under ``threshold`` cores; returns their use."""
    busy = others_busy()
    deadline = time.perf_counter() + limit_s
    while busy > threshold and time.perf_counter() < deadline:
        busy = others_busy()
    return round(busy, 2)


# --------------------------------------------------------------------------- raw TCP
def _touch(buf: bytearray) -> None:
    """Write every page, so that no page fault is timed."""
    np.frombuffer(buf, np.uint8)[::_PAGE] = 1


def _raw_recv(mode: str, nbytes: int, reps: int) -> None:
    """Child: listen, print the port, receive ``reps`` x ``nbytes``; print JSON figures."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((HOST, 0))
    ls.listen(1)
    print(ls.getsockname()[1], flush=True)
    buf = bytearray(nbytes)
    _touch(buf)
    view = memoryview(buf)
    ls.settimeout(60)
    conn, _ = ls.accept()
    ls.close()
    conn.settimeout(GET_TIMEOUT)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = b""
    while len(hello) < 9:
        part = conn.recv(9 - len(hello))
        if not part:
            raise SystemExit("sender went away")
        hello += part
    sender = struct.unpack("<Q", hello[1:])[0]
    rounds = []

    def one(recv: Callable[[memoryview], int]) -> None:
        c0, s0, m0 = time.process_time(), proc_cpu_s(sender), machine_busy_s()
        t0 = time.perf_counter()
        conn.sendall(b"G")
        got = 0
        while got < nbytes:
            k = recv(view[got:])
            if not k:
                raise SystemExit(f"sender closed after {got} bytes")
            got += k
        dt = time.perf_counter() - t0
        mine, theirs = time.process_time() - c0, proc_cpu_s(sender) - s0
        rounds.append(
            {
                "seconds": dt,
                "receiver_cores": mine / dt,
                "sender_cores": theirs / dt,
                "others_cores": max(0.0, machine_busy_s() - m0 - mine - theirs) / dt,
            }
        )

    if mode == "blocking":
        for _ in range(reps):
            one(conn.recv_into)
    else:
        import uvloop

        async def run() -> None:
            loop = asyncio.get_running_loop()
            conn.setblocking(False)
            calls = 0

            for _ in range(reps):
                c0, s0, m0 = time.process_time(), proc_cpu_s(sender), machine_busy_s()
                t0 = time.perf_counter()
                await loop.sock_sendall(conn, b"G")
                got = 0
                while got < nbytes:
                    k = await loop.sock_recv_into(conn, view[got:])
                    calls += 1
                    if not k:
                        raise SystemExit(f"sender closed after {got} bytes")
                    got += k
                dt = time.perf_counter() - t0
                mine, theirs = time.process_time() - c0, proc_cpu_s(sender) - s0
                rounds.append(
                    {
                        "seconds": dt,
                        "receiver_cores": mine / dt,
                        "sender_cores": theirs / dt,
                        "others_cores": max(0.0, machine_busy_s() - m0 - mine - theirs) / dt,
                        "recv_calls": calls,
                    }
                )
                calls = 0

        uvloop.run(run())
    conn.close()
    print(json.dumps(rounds), flush=True)


def _raw_send(mode: str, port: int, nbytes: int, reps: int) -> None:
    """Child: connect, say ready (with this pid), send ``nbytes`` at each go byte."""
    buf = bytearray(nbytes)
    _touch(buf)
    sock = socket.create_connection((HOST, port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(GET_TIMEOUT)
    sock.sendall(b"R" + struct.pack("<Q", os.getpid()))
    if mode == "blocking":
        for _ in range(reps):
            if not sock.recv(1):
                return
            sock.sendall(buf)
    else:
        import uvloop

        async def run() -> None:
            loop = asyncio.get_running_loop()
            sock.setblocking(False)
            view = memoryview(buf)
            for _ in range(reps):
                if not await loop.sock_recv(sock, 1):
                    return
                await loop.sock_sendall(sock, view)

        uvloop.run(run())
    sock.close()


def raw_case(mode: str, nbytes: int, reps: int) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        recv = subprocess.Popen(
            [sys.executable, __file__, "--_raw-recv", mode, str(nbytes), str(reps)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        procs.append(recv)
        assert recv.stdout is not None
        port = int(_readline(recv, 60))
        send = subprocess.Popen(
            [sys.executable, __file__, "--_raw-send", mode, str(port), str(nbytes), str(reps)],
            stdin=subprocess.DEVNULL,
        )
        procs.append(send)
        rounds = json.loads(_readline(recv, 60 + reps * GET_TIMEOUT))
        send.wait(30)
        recv.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    secs = [r["seconds"] for r in rounds]
    med = statistics.median(secs)
    out: dict[str, Any] = {
        "bytes": nbytes,
        "gbps": [gbps(nbytes, s) for s in secs],
        "gbps_median": gbps(nbytes, med),
        "receiver_cores": [round(r["receiver_cores"], 2) for r in rounds],
        "sender_cores": [round(r["sender_cores"], 2) for r in rounds],
        "others_cores": [round(r["others_cores"], 2) for r in rounds],
    }
    if "recv_calls" in rounds[0]:
        out["bytes_per_recv_call"] = round(
            nbytes * len(rounds) / sum(r["recv_calls"] for r in rounds)
        )
    return out


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        raise RuntimeError(f"child {proc.args!r} said nothing within {timeout}s")
    return line.decode()


def part_raw(args: argparse.Namespace) -> dict[str, Any]:
    return {mode: raw_case(mode, args.size, args.raw_repeat) for mode in ("blocking", "uvloop")}


# --------------------------------------------------------------------------- TLS
async def _tls_round(
    server: Any, client: Any, oid: bytes, size: int, chunk: int, width: int, dst: memoryview
) -> tuple[float, float]:
    """One fetch of the whole object: (seconds, longest loop stall in seconds)."""
    loop = asyncio.get_running_loop()
    stall = 0.0
    ticking = True

    async def ticker() -> None:
        nonlocal stall
        last = loop.time()
        while ticking:
            await asyncio.sleep(0.001)
            now = loop.time()
            stall = max(stall, now - last - 0.001)
            last = now

    tick = asyncio.ensure_future(ticker())
    offsets = list(range(0, size, chunk))
    t0 = time.perf_counter()

    async def worker() -> None:
        while offsets:
            off = offsets.pop(0)
            n = min(chunk, size - off)
            deadline = loop.time() + GET_TIMEOUT
            if off == 0:
                first = await client.fetch_first(server.address, oid, chunk, deadline)
                await first.read_into(dst[:n], deadline)
            else:
                await client.fetch_chunk(server.address, oid, off, dst[off : off + n], deadline)

    await asyncio.gather(*(worker() for _ in range(width)))
    took = time.perf_counter() - t0
    ticking = False
    await tick
    return took, stall


async def part_tls(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from certs import make_certs
    from fakes import FakeStore

    from objstore.auth import Credentials
    from objstore.transfer.peer import PeerClient
    from objstore.transfer.server import TransferServer

    cfg = Config.load()
    tc = cfg.transfer
    width = max(1, tc.max_bytes_in_flight // tc.chunk_size)
    size = args.size
    tmp = tempfile.mkdtemp(prefix="objstore-tls-bench-")
    try:
        certs = make_certs(tmp, nodes=2)
        token = b"b" * 32
        modes = {
            "token": (Credentials(token, None, "bench"), Credentials(token, None, "bench")),
            "tls_token": (certs.creds(token, 0), certs.creds(token, 1)),
        }
        blob = payload(size).tobytes()
        store = FakeStore(capacity=2 * size + 64 * MiB)
        oid = b"\x42" * 20
        store.put(oid, blob)
        dst = memoryview(bytearray(size))
        dst[:] = b"\1" * size  # touched

        async def no_restore(o: bytes, t: float) -> bool:
            return False

        rounds: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        for rep in range(args.repeat + 1):
            for mode, (screds, ccreds) in modes.items():
                server = TransferServer(store, cfg, no_restore, credentials=screds)
                await server.start(HOST, 0)
                client = PeerClient(b"\x01" * 20, credentials=ccreds)
                try:
                    took, stall = await _tls_round(
                        server, client, oid, size, tc.chunk_size, width, dst
                    )
                finally:
                    client.close()
                    await server.close()
                assert dst[:4096] == blob[:4096] and dst[-4096:] == blob[-4096:]
                log(f"tls {mode} round {rep}: {gbps(size, took)} GB/s, stall {stall * 1e3:.1f} ms")
                if rep:  # round 0 warms up
                    rounds[mode].append((took, stall))
        out: dict[str, Any] = {"size": size, "fetches_at_once": width, "chunk": tc.chunk_size}
        for mode, rs in rounds.items():
            out[mode] = {
                "gbps": gbps(size, statistics.median(t for t, _ in rs)),
                "gbps_rounds": [gbps(size, t) for t, _ in rs],
                "max_loop_stall_ms": round(max(st for _, st in rs) * 1e3, 1),
            }
        out["tls_over_token"] = round(out["tls_token"]["gbps"] / out["token"]["gbps"], 3)
        # What authenticating costs a new connection: connect, (handshakes,) one tiny
        # FETCH_MANY, close; the median of many, each mode in turn.
        small = b"\x43" * 20
        store.put(small, b"x" * 100)
        conn_modes = {"insecure": (Credentials.insecure(), Credentials.insecure()), **modes}
        times: dict[str, list[float]] = {m: [] for m in conn_modes}
        servers = {}
        for mode, (screds, _) in conn_modes.items():
            servers[mode] = TransferServer(store, cfg, no_restore, credentials=screds)
            await servers[mode].start(HOST, 0)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(100):
                for mode, (_, ccreds) in conn_modes.items():
                    client = PeerClient(b"\x01" * 20, credentials=ccreds)
                    t0 = time.perf_counter()
                    await client.fetch_many(servers[mode].address, [small], loop.time() + 10)
                    times[mode].append(time.perf_counter() - t0)
                    client.close()
        finally:
            for srv in servers.values():
                await srv.close()
        out["new_connection_ms"] = {
            m: round(statistics.median(ts) * 1e3, 3) for m, ts in times.items()
        }
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- nodes
class NodeProc:
    """One ``python -m objstore.node`` process, stopped with SIGTERM."""

    def __init__(
        self,
        workdir: str,
        name: str,
        memory: str,
        directory: str | None,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.socket = os.path.join(workdir, f"{name}.sock")
        args = [
            sys.executable,
            "-m",
            "objstore.node",
            "--memory",
            memory,
            "--socket",
            self.socket,
            "--fallback-dir",
            workdir,
            "--host",
            HOST,
            "--log-level",
            "warning",
        ]
        args += ["--head"] if directory is None else ["--directory", directory]
        args += list(extra)
        self.log_path = os.path.join(workdir, f"{name}.log")
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
        try:
            self.ready = json.loads(_readline(self.proc, 60))
        except BaseException:
            self.kill()
            raise
        self.pid = int(self.ready["pid"])
        self.directory = str(self.ready["directory"])

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as fh:
            return fh.read()[-n:]
        return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


class Cluster:
    """A head node and ``n - 1`` nodes joined to it, with one client each."""

    def __init__(self, n: int, memory: str, extra: Sequence[Sequence[str]] = ()) -> None:
        self.n = n
        self.memory = memory
        # Flags of each node (e.g. its TLS files), by position.
        self.extra = list(extra) + [()] * (n - len(extra))
        self.dir = tempfile.mkdtemp(prefix="osb-xfer-", dir="/tmp")
        self.nodes: list[NodeProc] = []
        self.clients: list[objstore.Client] = []

    async def __aenter__(self) -> Self:
        try:
            head = NodeProc(self.dir, "A", self.memory, None, self.extra[0])
            self.nodes.append(head)
            for i in range(1, self.n):
                self.nodes.append(
                    NodeProc(self.dir, "ABCDEFGH"[i], self.memory, head.directory, self.extra[i])
                )
            # The putting client (node A's) warms its page tables: its puts copy
            # at full speed.  The others only map what they get.
            for i, node in enumerate(self.nodes):
                self.clients.append(await objstore.connect(node.socket, warm=i == 0))
            await self.settle()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def settle(self, limit: float = 60.0) -> None:
        """Until every arena is prefaulted and the putting client's page tables are warm."""
        want = min(Config.load().plasma.prefault_bytes, parse_size(self.memory))
        deadline = time.perf_counter() + limit
        for c in self.clients:
            while (await c.stats())["prefaulted"] < want:
                if time.perf_counter() > deadline:
                    raise RuntimeError("the arenas were not prefaulted within a minute")
                await asyncio.sleep(0.05)
        mark = self.clients[0]._warm_mark
        while mark.upto < want and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)

    async def wait_freed(self, limit: float = 30.0) -> None:
        """Until no node holds an object (deletes reach other nodes through the directory)."""
        deadline = time.perf_counter() + limit
        for c in self.clients:
            while True:
                st = await c.stats()
                if st["objects"] == 0 and st["used"] == 0:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"node {st['node_id']} still holds {st['objects']} objects")
                await asyncio.sleep(0.01)

    @property
    def pids(self) -> dict[str, int]:
        return {n.name: n.pid for n in self.nodes}

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.close()
        for n in reversed(self.nodes):
            n.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def size_name(n: int) -> str:
    """``1GiB``, ``100MiB``, ``1KiB`` or bytes."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def payload(nbytes: int) -> np.ndarray:
    """``nbytes`` of incompressible-looking data (a random MiB, repeated)."""
    block = np.random.default_rng(7).integers(0, 256, MiB, dtype=np.uint8)
    return np.resize(block, nbytes)


# --------------------------------------------------------------------------- pulls
async def pull_case(
    cl: Cluster, arrays: Sequence[np.ndarray], reps: int, quiet: float, profile: str | None = None
) -> dict[str, Any]:
    """Node B gets ``arrays`` put on node A, in one get; round 0 first, then ``reps`` timed."""
    ca, cb = cl.clients[0], cl.clients[1]
    a, b = cl.nodes[0], cl.nodes[1]
    total = sum(x.nbytes for x in arrays)
    rounds: list[dict[str, Any]] = []
    for i in range(reps + 1):
        refs = [await ca.put(x) for x in arrays]
        if quiet and i:
            wait_quiet(quiet)
        st0 = await cb.stats()
        f0 = (proc_minflt(a.pid), proc_minflt(b.pid))
        with CpuMeter({"A": a.pid, "B": b.pid}) as cpu:
            t0 = time.perf_counter()
            values = await cb.get(refs, timeout=GET_TIMEOUT)
            dt = time.perf_counter() - t0
        st1 = await cb.stats()
        pulled = st1["bytes_pulled"] - st0["bytes_pulled"]
        if pulled < total:
            raise RuntimeError(f"node B pulled {pulled} bytes for a get of {total}")
        gib = total / GiB
        rounds.append(
            {
                "seconds": dt,
                "gbps": gbps(total, dt),
                "cores": cpu.cores(),
                "cpu_s_per_gib": {
                    n: {
                        "main": round(cpu.main_s[n] / gib, 3),
                        "threads": round((cpu.cpu_s[n] - cpu.main_s[n]) / gib, 3),
                    }
                    for n in ("A", "B")
                },
                "minor_faults_per_gib": {
                    "A": round((proc_minflt(a.pid) - f0[0]) / gib),
                    "B": round((proc_minflt(b.pid) - f0[1]) / gib),
                },
            }
        )
        del values
        await ca.delete(refs)
        await cl.wait_freed()
    first, timed = rounds[0], rounds[1:]
    med = statistics.median(r["seconds"] for r in timed)

    def med_of(f: Callable[[dict[str, Any]], float]) -> float:
        return round(statistics.median(f(r) for r in timed), 3)

    out: dict[str, Any] = {
        "objects": len(arrays),
        "object_bytes": arrays[0].nbytes,
        "gbps": [r["gbps"] for r in timed],
        "gbps_median": gbps(total, med),
        "seconds_median": round(med, 4),
        "first_pull_gbps": first["gbps"],
        "cores_median": {k: med_of(lambda r, k=k: r["cores"][k]) for k in timed[0]["cores"]},
        "others_cores": [r["cores"]["others"] for r in timed],
        "cpu_s_per_gib_median": {
            n: {
                k: med_of(lambda r, n=n, k=k: r["cpu_s_per_gib"][n][k]) for k in ("main", "threads")
            }
            for n in ("A", "B")
        },
        "first_pull_cpu_s_per_gib": first["cpu_s_per_gib"],
        "minor_faults_per_gib_median": {
            n: med_of(lambda r, n=n: r["minor_faults_per_gib"][n]) for n in ("A", "B")
        },
        "first_pull_minor_faults_per_gib": first["minor_faults_per_gib"],
    }
    if profile:
        out["profile"] = await profile_pulls(cl, arrays, profile)
    return out


async def profile_pulls(cl: Cluster, arrays: Sequence[np.ndarray], outdir: str) -> dict[str, Any]:
    """Three more pulls (not in the figures) with py-spy recording both nodes."""
    ca, cb = cl.clients[0], cl.clients[1]

    async def work() -> None:
        for _ in range(3):
            refs = [await ca.put(x) for x in arrays]
            values = await cb.get(refs, timeout=GET_TIMEOUT)
            del values
            await ca.delete(refs)
            await cl.wait_freed()

    return await profile_nodes(cl, outdir, "pull", work)


async def profile_nodes(
    cl: Cluster, outdir: str, tag: str, work: Callable[[], Any]
) -> dict[str, Any]:
    """Run ``work()`` with py-spy recording nodes A and B (native stacks, 250 Hz).

    py-spy stops the process for each sample in this mode, so whatever ``work``
    measures is slower: profiles are taken apart from the figures.
    """
    os.makedirs(outdir, exist_ok=True)
    spies: list[asyncio.subprocess.Process] = []
    files = {}
    for node in cl.nodes[:2]:
        files[node.name] = path = os.path.join(outdir, f"{tag}-node-{node.name}.txt")
        spies.append(
            await asyncio.create_subprocess_exec(
                "py-spy",
                "record",
                "--pid",
                str(node.pid),
                "--rate",
                "250",
                "--threads",
                "--native",
                "--format",
                "raw",
                "--output",
                path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        await asyncio.sleep(1.0)
        await work()
    finally:
        for s in spies:
            if s.returncode is None:
                s.send_signal(2)
        for s in spies:
            try:
                await asyncio.wait_for(s.wait(), 30)
            except TimeoutError:
                s.kill()
                await s.wait()
    return {name: {"file": path, "top": summarize_profile(path)} for name, path in files.items()}


_IDLE_FRAMES = (
    "_queue_SimpleQueue_get",
    "PyThread_acquire_lock_timed",
    "epoll_wait",
    "epoll_pwait",
    "Event.wait",
    "Condition.wait",
    "time_sleep",
)


def summarize_profile(path: str, top: int = 15) -> dict[str, Any]:
    """Busy samples (not waiting in epoll or on a lock) by thread kind, hottest leaves and frames."""
    leaf: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    total = busy = 0
    try:
        with open(path) as fh:
            lines = fh.readlines()
    except OSError:
        return {"error": "no profile written (is py-spy installed and allowed to attach?)"}
    for line in lines:
        stack, _, n_text = line.rstrip("\n").rpartition(" ")
        if not n_text.isdigit():
            continue
        n = int(n_text)
        frames = stack.split(";")
        total += n
        if any(idle in f for f in frames for idle in _IDLE_FRAMES):
            continue
        busy += n
        kind = "main" if "MainThread" in frames[0] else "threads"
        kinds[kind] += n
        leaf[f"{kind}: {frames[-1]}"] += n
        for f in set(frames[1:]):
            incl[f"{kind}: {f}"] += n

    def share(v: int) -> float:
        return round(v / max(busy, 1), 3)

    return {
        "samples": total,
        "busy_samples": busy,
        "busy_by_thread": {k: share(v) for k, v in kinds.items()},
        "leaf": {k: share(v) for k, v in leaf.most_common(top)},
        # Frames below which most busy time goes (the loop's own frames excluded).
        "inclusive": {
            k: share(v) for k, v in incl.most_common(top * 4) if v < 0.9 * kinds[k.split(":")[0]]
        },
    }


async def part_pull(args: argparse.Namespace) -> dict[str, Any]:
    big = payload(max(args.size, args.medium))
    async with Cluster(2, args.memory) as cl:
        out: dict[str, Any] = {}
        cases = [
            (f"one_{size_name(args.size)}", [big[: args.size]], args.profile),
            (f"one_{size_name(args.medium)}", [big[: args.medium]], None),
            (
                f"{args.count}x{size_name(args.medium)}_one_get",
                [big[: args.medium]] * args.count,
                None,
            ),
        ]
        for name, arrays, profile in cases:
            log(f"pull {name} ...")
            reps = args.repeat if arrays[0].nbytes >= 512 * MiB else max(args.repeat, 5)
            out[name] = await pull_case(cl, arrays, reps, min(args.wait_quiet, 10.0), profile)
        return out


async def part_tls_nodes(args: argparse.Namespace) -> dict[str, Any]:
    """A 1 GiB pull between two real nodes, with the token only and with mutual TLS.

    Two clusters, started once each; their pulls alternate, so both see the same noise.
    """
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from certs import make_certs

    tmp = tempfile.mkdtemp(prefix="osb-tlsn-", dir="/tmp")
    try:
        certs = make_certs(tmp, nodes=2)
        flags = [certs.node_flags(0), certs.node_flags(1)]
        big = payload(args.size)
        runs: dict[str, list[dict[str, Any]]] = {"token": [], "tls": []}
        async with Cluster(2, args.memory) as plain, Cluster(2, args.memory, flags) as tls:
            for _ in range(max(1, args.repeat)):
                for mode, cl in (("token", plain), ("tls", tls)):
                    log(f"tls_nodes: pull one {size_name(args.size)} ({mode}) ...")
                    runs[mode].append(await pull_case(cl, [big], 1, min(args.wait_quiet, 5.0)))
        out: dict[str, Any] = {"size": args.size}
        for mode, cases in runs.items():
            speeds = [r["gbps_median"] for r in cases]
            out[mode] = {"gbps_runs": speeds, "gbps_median": statistics.median(speeds)}
        out["tls_over_token"] = round(out["tls"]["gbps_median"] / out["token"]["gbps_median"], 3)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- small objects
async def part_small(args: argparse.Namespace) -> dict[str, Any]:
    n, size = args.small, args.small_size
    async with Cluster(2, args.memory) as cl:
        ca, cb = cl.clients[0], cl.clients[1]
        rounds = []
        for _ in range(args.repeat):
            blobs = [os.urandom(size) for _ in range(n)]
            t0 = time.perf_counter()
            refs: list[objstore.ObjectRef] = []
            for i in range(0, n, 1000):
                refs += await asyncio.gather(*(ca.put(x) for x in blobs[i : i + 1000]))
            put_s = time.perf_counter() - t0
            if args.wait_quiet:
                wait_quiet(min(args.wait_quiet, 10.0))
            st0 = await cb.stats()
            with CpuMeter(cl.pids) as cpu:
                t0 = time.perf_counter()
                values = await cb.get(refs, timeout=GET_TIMEOUT)
                dt = time.perf_counter() - t0
            st1 = await cb.stats()
            if st1["pulled"] - st0["pulled"] != n or values[-1] != blobs[-1]:
                raise RuntimeError("the small objects did not all arrive")
            rounds.append(
                {
                    "objects_per_s": round(n / dt),
                    "seconds": round(dt, 3),
                    "puts_per_s_on_A": round(n / put_s),
                    "cores": cpu.cores(),
                    "cpu_us_per_object": {k: round(cpu.cpu_s[k] / n * 1e6, 1) for k in cl.pids},
                }
            )
            del values
            await ca.delete(refs)
            await cl.wait_freed()
        out: dict[str, Any] = {}
        if args.profile:
            blobs = [os.urandom(size) for _ in range(n)]

            async def work() -> None:
                refs = []
                for i in range(0, n, 1000):
                    refs += await asyncio.gather(*(ca.put(x) for x in blobs[i : i + 1000]))
                values = await cb.get(refs, timeout=GET_TIMEOUT)
                del values
                await ca.delete(refs)
                await cl.wait_freed()

            out["profile"] = await profile_nodes(cl, args.profile, "small", work)
        return {
            **out,
            "objects": n,
            "object_bytes": size,
            "objects_per_s": [r["objects_per_s"] for r in rounds],
            "objects_per_s_median": round(statistics.median(r["objects_per_s"] for r in rounds)),
            "rounds": rounds,
        }


# --------------------------------------------------------------------------- replicas
async def part_replicas(args: argparse.Namespace) -> dict[str, Any]:
    """put(value, replicas=N) on three nodes: the put's latency (until N copies
    are kept) against a plain put of the same value, alternated in one run."""
    sizes = {"1KiB": (1024, 40), "1MiB": (MiB, 20), "16MiB": (16 * MiB, 6)}
    out: dict[str, Any] = {}
    async with Cluster(3, args.memory) as cl:
        c = cl.clients[0]
        for label, (size, n) in sizes.items():
            value = os.urandom(size)
            times: dict[int, list[float]] = {1: [], 2: [], 3: []}
            for _ in range(n):
                for replicas in (1, 2, 3):
                    t0 = time.perf_counter()
                    ref = await c.put(value, replicas=replicas)
                    times[replicas].append(time.perf_counter() - t0)
                    await c.delete(ref)
                    del ref
            await cl.wait_freed()
            p50 = {k: statistics.median(v) for k, v in times.items()}
            out[label] = {
                "iterations": n,
                **{f"replicas_{k}_p50_ms": round(v * 1e3, 3) for k, v in p50.items()},
                "replicas_2_over_1": round(p50[2] / p50[1], 1),
                "replicas_3_over_1": round(p50[3] / p50[1], 1),
            }
    return out


# --------------------------------------------------------------------------- broadcast
async def part_broadcast(args: argparse.Namespace) -> dict[str, Any]:
    size = args.broadcast
    arr = payload(size)
    async with Cluster(4, args.memory) as cl:
        ca, dests = cl.clients[0], cl.clients[1:]

        async def one_get(c: objstore.Client, ref: objstore.ObjectRef, t0: float) -> float:
            v = await c.get(ref, timeout=GET_TIMEOUT)
            del v
            return time.perf_counter() - t0

        quiet = min(args.wait_quiet, 10.0)

        async def broadcast() -> tuple[float, list[float], dict[str, float], float]:
            ref = await ca.put(arr)
            if quiet:
                wait_quiet(quiet)
            with CpuMeter(cl.pids) as cpu:
                t0 = time.perf_counter()
                ends = await asyncio.gather(*(one_get(c, ref, t0) for c in dests))
                total = time.perf_counter() - t0
            await ca.delete(ref)
            await cl.wait_freed()
            return total, sorted(ends), cpu.cores(), sum(cpu.cpu_s.values())

        async def single(c: objstore.Client) -> tuple[float, dict[str, float], float]:
            ref = await ca.put(arr)
            if quiet:
                wait_quiet(quiet)
            with CpuMeter(cl.pids) as cpu:
                t0 = time.perf_counter()
                dt = await one_get(c, ref, t0)
            await ca.delete(ref)
            await cl.wait_freed()
            return dt, cpu.cores(), sum(cpu.cpu_s.values())

        # Round 0 (not timed): every destination's first pull from the head.
        await broadcast()
        singles, casts = [], []
        for i in range(args.repeat):
            singles.append(await single(dests[i % len(dests)]))
            casts.append(await broadcast())
        one = statistics.median(s[0] for s in singles)
        allt = statistics.median(c[0] for c in casts)
        return {
            "object_bytes": size,
            "destinations": len(dests),
            "single_seconds": [round(s[0], 4) for s in singles],
            "single_gbps_median": gbps(size, one),
            "broadcast_seconds": [round(c[0], 4) for c in casts],
            "broadcast_each_done_s": [[round(e, 4) for e in c[1]] for c in casts],
            "broadcast_aggregate_gbps_median": gbps(size * len(dests), allt),
            "broadcast_vs_single": round(allt / one, 2),
            "single_cores": [s[1] for s in singles],
            "broadcast_cores": [c[2] for c in casts],
            # CPU seconds of all four nodes: a broadcast moves the bytes three times,
            # and on a 2-core machine the CPU, not the links, bounds its time.
            "single_node_cpu_s_median": round(statistics.median(s[2] for s in singles), 3),
            "broadcast_node_cpu_s_median": round(statistics.median(c[3] for c in casts), 3),
            "broadcast_lower_bound_s_on_this_machine": round(
                statistics.median(c[3] for c in casts) / (os.cpu_count() or 1), 3
            ),
        }


# --------------------------------------------------------------------------- memory
class Sampler:
    """Reads /proc/PID/status of some processes and the kernel's TCP memory every ``period``."""

    def __init__(self, pids: dict[str, int], period: float = 0.01) -> None:
        self.pids = pids
        self.period = period
        self.samples: list[tuple[float, dict[str, dict[str, int]], int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            snap = {n: proc_status(p) for n, p in self.pids.items()}
            self.samples.append((time.perf_counter() - t0, snap, tcp_kernel_bytes()))
            self._stop.wait(self.period)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def peak(self, name: str, f: Callable[[dict[str, int]], int]) -> int:
        return max(f(s[1][name]) for s in self.samples)


def _non_arena(st: dict[str, int]) -> int:
    return st["RssAnon"] + st["RssFile"]


async def part_memory(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size
    cap = Config.load().transfer.max_bytes_in_flight
    arr = payload(size)
    async with Cluster(2, args.memory) as cl:
        ca, cb = cl.clients[0], cl.clients[1]
        a, b = cl.nodes[0], cl.nodes[1]
        pids = {"A": a.pid, "B": b.pid}
        ref = await ca.put(arr)
        await asyncio.sleep(0.5)
        before = {n: (proc_status(p), smaps_rollup(p)) for n, p in pids.items()}
        tcp_before = tcp_kernel_bytes()
        with Sampler(pids) as sampler:
            t0 = time.perf_counter()
            value = await cb.get(ref, timeout=GET_TIMEOUT)
            dt = time.perf_counter() - t0
        after = {n: (proc_status(p), smaps_rollup(p)) for n, p in pids.items()}
        del value
        await ca.delete(ref)
        await cl.wait_freed()
        await asyncio.sleep(0.5)
        freed = {n: (proc_status(p), smaps_rollup(p)) for n, p in pids.items()}
        out: dict[str, Any] = {
            "object_bytes": size,
            "pull_seconds": round(dt, 3),
            "samples": len(sampler.samples),
            "bytes_in_flight_cap": cap,
            "kernel_tcp_buffers_mib": {
                "before": round(tcp_before / MiB, 1),
                "peak": round(max(s[2] for s in sampler.samples) / MiB, 1),
            },
        }
        for n in pids:
            b0, r0 = before[n]
            b1, r1 = after[n]
            b2, r2 = freed[n]
            out[n] = {
                "role": "source" if n == "A" else "destination",
                "vmrss_mib": {
                    "before": round(b0["VmRSS"] / MiB, 1),
                    "peak": round(sampler.peak(n, lambda s: s["VmRSS"]) / MiB, 1),
                    "after": round(b1["VmRSS"] / MiB, 1),
                    "after_delete": round(b2["VmRSS"] / MiB, 1),
                },
                "arena_rss_shmem_mib": {
                    "before": round(b0["RssShmem"] / MiB, 1),
                    "peak": round(sampler.peak(n, lambda s: s["RssShmem"]) / MiB, 1),
                    "after": round(b1["RssShmem"] / MiB, 1),
                    "after_delete": round(b2["RssShmem"] / MiB, 1),
                },
                "non_arena_anon_plus_file_mib": {
                    "before": round(_non_arena(b0) / MiB, 1),
                    "peak": round(sampler.peak(n, _non_arena) / MiB, 1),
                    "after": round(_non_arena(b1) / MiB, 1),
                    "after_delete": round(_non_arena(b2) / MiB, 1),
                },
                "non_arena_peak_growth_mib": round(
                    (sampler.peak(n, _non_arena) - _non_arena(b0)) / MiB, 1
                ),
                "smaps_rollup_mib": {
                    when: {k: round(v / MiB, 1) for k, v in r.items()}
                    for when, r in (("before", r0), ("after", r1), ("after_delete", r2))
                },
            }
        return out


# --------------------------------------------------------------------------- report
def targets(out: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    t: dict[str, dict[str, Any]] = {}
    full = args.size >= GiB
    raw = out.get("raw", {}).get("blocking", {}).get("gbps_median")
    pull = out.get("pull")
    if pull:
        big = next(iter(pull.values()))
        g = big["gbps_median"]
        t["pull_large_gbps"] = {
            "value": g,
            "target": ">= 2 GB/s (Ray 0.92)",
            "met": (g >= 2.0) if full else None,
        }
        if raw:
            ratio = round(g / raw, 2)
            t["pull_large_vs_raw_tcp"] = {
                "value": ratio,
                "target": f">= 0.60 of raw TCP ({raw} GB/s)",
                "met": (ratio >= 0.6) if full else None,
            }
        for name, ray in zip(
            list(pull)[1:], ("pull_100MiB_gbps", "pull_10x100MiB_gbps"), strict=False
        ):
            t[f"pull_{name}_gbps"] = {
                "value": pull[name]["gbps_median"],
                "target": f"(Ray {RAY[ray]} GB/s)",
                "met": None,
            }
    small = out.get("small")
    if small:
        v = small["objects_per_s_median"]
        t["small_objects_per_s"] = {
            "value": v,
            "target": ">= 10,000/s (Ray 1,764)",
            "met": (v >= 10_000) if small["objects"] >= 10_000 else None,
        }
    bc = out.get("broadcast")
    if bc:
        t["broadcast_vs_single"] = {
            "value": bc["broadcast_vs_single"],
            "target": "<= 1.5x one transfer",
            "met": bc["broadcast_vs_single"] <= 1.5,
        }
    mem = out.get("memory")
    if mem:
        growth = max(mem["A"]["non_arena_peak_growth_mib"], mem["B"]["non_arena_peak_growth_mib"])
        cap = mem["bytes_in_flight_cap"] / MiB
        t["memory_non_arena_growth_mib"] = {
            "value": growth,
            "target": f"<= bytes-in-flight cap ({cap:.0f} MiB)",
            "met": growth <= cap,
        }
    return t


def summary(out: dict[str, Any]) -> str:
    lines = ["", "== transfer bench =="]
    for name, t in out.get("targets", {}).items():
        met = "" if t["met"] is None else "met" if t["met"] else "NOT MET"
        lines.append(f"  {name:34s} {t['value']!s:>10}  target {t['target']:38s} {met}")
    raw = out.get("raw")
    if raw:
        lines.append("")
        for mode, r in raw.items():
            lines.append(
                f"  raw TCP {mode:8s}: {r['gbps']} GB/s, others {r['others_cores']} cores"
                f" (Ray's loopback figure: {RAY['loopback_tcp_gbps']})"
            )
    for name, r in out.get("pull", {}).items():
        lines.append(
            f"  pull {name:22s}: {r['gbps']} GB/s (first {r['first_pull_gbps']}), cores "
            f"{r['cores_median']}, cpu-s/GiB {r['cpu_s_per_gib_median']}"
        )
    small = out.get("small")
    if small:
        lines.append(f"  small: {small['objects_per_s']} objects/s")
    tls = out.get("tls")
    if tls:
        lines.append(
            f"  tls (in-process): token {tls['token']['gbps']} GB/s, tls+token "
            f"{tls['tls_token']['gbps']} GB/s (x{tls['tls_over_token']}), loop stall max "
            f"{tls['tls_token']['max_loop_stall_ms']} ms; new connection + tiny fetch (ms) "
            f"{tls['new_connection_ms']}"
        )
    bc = out.get("broadcast")
    if bc:
        lines.append(
            f"  broadcast: single {bc['single_seconds']} s, to {bc['destinations']} "
            f"{bc['broadcast_seconds']} s"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tc = Config.load().transfer
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "code": code_fingerprint(),
        "node_memory": args.memory,
        "transfer_config": {
            "chunk_size": tc.chunk_size,
            "max_bytes_in_flight": tc.max_bytes_in_flight,
        },
    }
    parts: dict[str, Callable[[argparse.Namespace], Any]] = {
        "raw": part_raw,
        "pull": part_pull,
        "small": part_small,
        "broadcast": part_broadcast,
        "memory": part_memory,
        "tls": part_tls,
        "tls_nodes": part_tls_nodes,
        "replicas": part_replicas,
    }
    t_all = time.perf_counter()
    for name, fn in parts.items():
        if (args.only and name not in args.only) or (not args.only and name in OPT_IN):
            continue
        if args.wait_quiet:
            out.setdefault("others_cpu_at_start", {})[name] = wait_quiet(args.wait_quiet)
        log(f"{name} ...")
        t0 = time.perf_counter()
        res = fn(args)
        out[name] = await res if asyncio.iscoroutine(res) else res
        out.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out["targets"] = targets(out, args)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only", type=lambda s: s.split(","), help="comma-separated: " + ",".join(PARTS)
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each part (and timed pull), wait up to SECONDS for other "
        "processes to use < 0.3 core",
    )
    p.add_argument("--memory", default="2GiB", help="arena size of every node")
    p.add_argument("--size", type=parse_size, default=GiB, help="the large object (and raw TCP)")
    p.add_argument("--medium", type=parse_size, default=100 * MiB, help="the medium object")
    p.add_argument("--count", type=int, default=10, help="medium objects in one get")
    p.add_argument("--small", type=int, default=10_000, help="small objects in one get")
    p.add_argument("--small-size", type=parse_size, default=1024)
    p.add_argument("--broadcast", type=parse_size, default=256 * MiB, help="the broadcast object")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per figure")
    p.add_argument("--raw-repeat", type=int, default=3)
    p.add_argument(
        "--py-spy",
        dest="profile",
        metavar="DIR",
        help="pull: profile both nodes (py-spy, native) over three extra large pulls",
    )
    p.add_argument("--_raw-recv", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_raw-send", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._raw_recv:
        mode, n, reps = args._raw_recv
        _raw_recv(mode, int(n), int(reps))
        return
    if args._raw_send:
        mode, port, n, reps = args._raw_send
        _raw_send(mode, int(port), int(n), int(reps))
        return
    if args.only and not set(args.only) <= set(PARTS):
        p.error(f"--only: choose from {', '.join(PARTS)}")
    if args.quick:
        args.size = min(args.size, 256 * MiB)
        args.medium = min(args.medium, 32 * MiB)
        args.small = min(args.small, 2000)
        args.broadcast = min(args.broadcast, 64 * MiB)
        args.repeat = min(args.repeat, 2)
        args.raw_repeat = min(args.raw_repeat, 2)
    import uvloop

    out = uvloop.run(run(args))
    print(json.dumps(out, indent=2))
    print(summary(out), file=sys.stderr)


if __name__ == "__main__":
    main()
