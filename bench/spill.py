"""Spilling to disk: throughput against dd, fused small objects, loop responsiveness, compression.

Starts real node processes (``python -m objstore.node --head --spill DIR``, the
fallback off so that every byte beyond memory goes through the spill files)
and drives them from this process; prints one JSON object on stdout and
progress on stderr.  Every figure that has a reference is given as a ratio to
a reference measured in the same run (``dd`` on the same disk, the same puts
into a node that does not spill, the same prober against the idle node),
because the machine is shared and noisy.

    python bench/spill.py                          # everything, about 2 minutes here (95-126 s)
    python bench/spill.py --only throughput,loop   # throughput | small | loop | compression
    python bench/spill.py --dir /mnt/disk          # spill (and dd) under this directory
    python bench/spill.py --objects 20 --size 50MiB --memory 512MiB

Parts:

throughput   ``dd`` (``--dd-bytes``) before and after the spill round, ratios
             against the mean of the two (the disk's speed drifts): written
             with ``conv=fdatasync``, read cold (page cache dropped), and
             written into the page cache only (no fdatasync; spill files are
             not fsynced either), then ``sync``.  Between them,
             ``--objects`` distinct ``--size`` arrays (one random buffer, the
             first 8 bytes = the object's index) put into a ``--memory`` node;
             only the puts are timed, while a second task samples ``stats()``
             every 5 ms.  Spill throughput is ``bytes_spilled`` over the time
             from the end of the put that took the node's primaries over the
             spill threshold (its seal starts the first spill) to the first
             sample that shows the final ``bytes_spilled`` (the last write
             done).  Then ``sync`` (timed: the spill files' dirty pages reaching
             the disk) and the page cache dropped, and every object read back:
             objects still in memory first (read, checked, deleted), then the
             spilled ones in put order, each checked and deleted after reading
             so that a restore never has to push another object out.  Restore
             throughput is ``bytes_restored`` over the summed time of the gets
             of spilled objects.
small        100,000 x 1 KiB put one after another into a 32 MiB node (default
             fused-file settings): spill files (stats and on disk) and puts/s,
             against the same puts into a 256 MiB node without spilling.  Then
             1,000 of them read back (restored from the fused files), all
             deleted, and the files checked gone.
loop         a prober process gets a small object (put by another of its
             connections, so that every get is a request to the node) every
             10 ms: 2 s against the idle node, then while this process puts
             ``--loop-bytes`` into a ``--memory`` node that spills all along;
             then every object deleted and the node stopped at once (spill
             files left after SIGTERM are counted).
             Latency percentiles of both phases; the node logs "event loop
             blocked" for stalls over 10 ms (``OBJSTORE_NODE_LOOP_LAG_WARN_MS``,
             250 by default), counted from its stderr.  The node's loop thread
             and the prober's main thread: CPU, time waiting on the run queue
             (/proc/PID/task/TID/schedstat) and involuntary switches, per
             second of each phase: a loop thread late because the CPUs are
             busy, not because something blocks it.
compression  ``--compression-objects`` arrays of int32 in [0, 1000) (compressible)
             put into a ``--memory`` node with ``OBJSTORE_SPILL_COMPRESSION=0`` and
             with ``=3``: spill throughput, bytes in the files, restore
             throughput (cold); and zstd level 3 alone on one object in this
             process (one thread), the bound for the node's compressing thread.

Every node's stderr (JSON logs) is summarised: warnings and errors by event,
"event loop blocked" lines, spill files left in its directory after SIGTERM.
GB/s is 1e9 bytes/s (Ray's figures: 0.92 GB/s spilling, 1.01 GB/s restoring,
Ray 2.60 on this kind of machine, page cache dropped before restoring).  The
spill directory, the dd file and every node's directory are removed at the
end.  Runs as root to drop the page cache (``/proc/sys/vm/drop_caches``); when
that is refused the JSON says so and the restore figures are warm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Self

import numpy as np
from _proc import CLK_TCK, machine_busy_s

import objstore
from objstore.config import Config, parse_size

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PARTS = ("throughput", "small", "loop", "compression")
RAY = {"spill_gbps": 0.92, "restore_gbps": 1.01}
TARGETS = {
    "spill_vs_dd_write_fdatasync": 0.85,
    "spill_vs_ray": 1.5,
    "restore_vs_ray": 1.5,
    "small_spill_files_max": 50,
    "loop_p99_ms_max": 5.0,
}
LOOP_LAG_WARN_MS = 10.0
START_TIMEOUT = 60.0
GET_TIMEOUT = 120.0


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the JSON)."""
    print(f"[spill bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gbps(nbytes: float, seconds: float) -> float | None:
    return round(nbytes / seconds / 1e9, 3) if seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "over_5ms": sum(1 for m in ms if m > 5),
        "over_50ms": sum(1 for m in ms if m > 50),
    }


# --------------------------------------------------------------------------- machine and disk
def _mount_of(path: str) -> dict[str, str]:
    """The /proc/mounts entry (device, mount point, fs type) holding ``path``."""
    path = os.path.realpath(path)
    best = {"device": "?", "mount": "/", "fstype": "?"}
    with open("/proc/mounts") as fh:
        for line in fh:
            dev, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best["mount"]):
                best = {"device": dev, "mount": mnt, "fstype": fstype}
    return best


def disk_info(path: str) -> dict[str, Any]:
    m = _mount_of(path)
    du = shutil.disk_usage(path)
    out: dict[str, Any] = {
        "path": path,
        **m,
        "size_gib": round(du.total / GiB, 1),
        "avail_gib": round(du.free / GiB, 1),
    }
    dev = os.path.basename(m["device"])
    rot = f"/sys/block/{dev}/queue/rotational"
    if os.path.exists(rot):
        with open(rot) as fh:
            out["rotational"] = fh.read().strip() == "1"
    return out


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * KiB
    return out


def machine_info(spill_root: str) -> dict[str, Any]:
    mem = _meminfo()
    try:
        with open("/proc/loadavg") as fh:
            load = [float(x) for x in fh.read().split()[:3]]
    except OSError:
        load = []
    return {
        "nproc": os.cpu_count(),
        "mem_total_gib": round(mem["MemTotal"] / GiB, 1),
        "mem_available_gib": round(mem["MemAvailable"] / GiB, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "loadavg_at_start": load,
        "others_cores_at_start": others_busy(1.0),
        "disk": disk_info(spill_root),
        "dirty_ratio": _sysctl("vm/dirty_ratio"),
        "dirty_background_ratio": _sysctl("vm/dirty_background_ratio"),
    }


def _sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/{name}") as fh:
            return fh.read().strip()
    except OSError:
        return None


def others_busy(seconds: float = 1.0) -> float:
    """Cores the rest of the machine kept busy over ``seconds`` (this process excluded)."""
    m0, b0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    return round(max(0.0, (machine_busy_s() - m0) - (time.process_time() - b0)) / wall, 2)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def thread_sched(pid: int, tid: int | None = None) -> tuple[float, float, int]:
    """A thread's (seconds on a CPU, seconds runnable but waiting for one, involuntary switches)."""
    tid = pid if tid is None else tid
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
            run_ns, wait_ns, _ = (int(x) for x in fh.read().split())
        with open(f"/proc/{pid}/task/{tid}/status") as fh:
            inv = next(
                int(line.split()[1]) for line in fh if line.startswith("nonvoluntary_ctxt_switches")
            )
    except (OSError, ValueError, StopIteration):
        return 0.0, 0.0, 0
    return run_ns / 1e9, wait_ns / 1e9, inv


class SchedMeter:
    """Main threads' CPU, run-queue wait and involuntary switches over a span, per second.

    A loop thread that waits long on the run queue is late because the CPUs are
    busy (the machine is shared), not because something blocks it.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.out: dict[str, dict[str, float]] = {}

    def __enter__(self) -> Self:
        self.s0 = {n: thread_sched(p) for n, p in self.pids.items()}
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        for n, p in self.pids.items():
            r1, w1, i1 = thread_sched(p)
            r0, w0, i0 = self.s0[n]
            self.out[n] = {
                "cpu_cores": round((r1 - r0) / wall, 3),
                "runqueue_wait_ms_per_s": round((w1 - w0) * 1000 / wall, 1),
                "involuntary_switches_per_s": round((i1 - i0) / wall, 1),
            }


class CpuMeter:
    """CPU use over a span, in cores: the node(s), this process, everything else."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.out: dict[str, float] = {}

    def __enter__(self) -> Self:
        self.p0 = {n: proc_cpu_s(p) for n, p in self.pids.items()}
        self.m0, self.b0, self.t0 = machine_busy_s(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        mine = time.process_time() - self.b0
        theirs = {n: proc_cpu_s(p) - self.p0[n] for n, p in self.pids.items()}
        machine = machine_busy_s() - self.m0
        self.out = {n: round(v / wall, 2) for n, v in theirs.items()}
        self.out["bench"] = round(mine / wall, 2)
        self.out["others"] = round(max(0.0, machine - mine - sum(theirs.values())) / wall, 2)


def drop_caches() -> dict[str, Any]:
    """``sync``, then drop the page cache; how long the sync took and whether the drop worked."""
    t = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t
    out: dict[str, Any] = {"sync_s": round(sync_s, 3)}
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        out["dropped"] = True
    except OSError as exc:
        out["dropped"] = False
        out["error"] = f"cannot drop the page cache: {exc}"
    mem = _meminfo()
    # Shared memory (a node's arena is a memfd) counts as Cached and is never dropped.
    out["cached_mib_after"] = round(mem.get("Cached", 0) / MiB)
    out["cached_minus_shmem_mib_after"] = round((mem.get("Cached", 0) - mem.get("Shmem", 0)) / MiB)
    return out


_DD_RE = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.MULTILINE)


def dd(*args: str) -> dict[str, Any]:
    """Run dd; its bytes, seconds and bytes/s as dd reports them (parsed from its last line)."""
    env = {**os.environ, "LC_ALL": "C"}
    t = time.perf_counter()
    with CpuMeter({}) as cpu:
        r = subprocess.run(["dd", *args], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    m = _DD_RE.search(r.stderr)
    if r.returncode != 0 or m is None:
        raise RuntimeError(f"dd {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    nbytes, secs = int(m.group(1)), float(m.group(2))
    return {
        "bytes": nbytes,
        "seconds": secs,
        "gbps": gbps(nbytes, secs),
        "wall_s": round(wall, 3),
        "machine_busy_cores": round(cpu.out["others"], 2),  # dd is not tracked: all of it
        "dd_says": r.stderr.strip().splitlines()[-1],
    }


def dd_reference(root: str, nbytes: int) -> dict[str, Any]:
    """dd on the spill disk: write with fdatasync, cold read, write into the page cache."""
    path = os.path.join(root, "dd.bin")
    count = max(1, nbytes // (16 * MiB))
    out: dict[str, Any] = {"file": path, "bs": "16M", "count": count}
    try:
        drop_caches()
        log(f"dd: write {count} x 16 MiB with conv=fdatasync")
        out["write_fdatasync"] = dd(
            "if=/dev/zero", f"of={path}", "bs=16M", f"count={count}", "conv=fdatasync"
        )
        out["drop_caches"] = drop_caches()
        log("dd: cold read")
        out["read_cold"] = dd(f"if={path}", "of=/dev/null", "bs=16M")
        os.unlink(path)
        drop_caches()
        log("dd: write into the page cache (no fdatasync), then sync")
        out["write_page_cache"] = dd("if=/dev/zero", f"of={path}", "bs=16M", f"count={count}")
        t = time.perf_counter()
        os.sync()
        out["write_page_cache"]["sync_after_s"] = round(time.perf_counter() - t, 3)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return out


# --------------------------------------------------------------------------- nodes
def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without inherited OBJSTORE_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBJSTORE_")}
    env.update(extra)
    return env


class Node:
    """A node process (``--head``) with its socket, logs and spill directory."""

    def __init__(self, memory: str, spill: str | None, env: dict[str, str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="osb-spill-node-", dir="/tmp")
        self.socket = os.path.join(self.dir, "node.sock")
        self.spill = spill
        self.env = {"OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "0", **env}
        self.config = Config.load(env=self.env)
        self.stderr_path = os.path.join(self.dir, "node.stderr")
        args = [
            sys.executable,
            "-m",
            "objstore.node",
            "--head",
            "--memory",
            memory,
            "--socket",
            self.socket,
            "--fallback-dir",
            self.dir,
            "--state-dir",
            self.dir,
            "--log-format",
            "json",
            "--log-level",
            "info",
        ]
        if spill is not None:
            args += ["--spill", spill]
        self.args = args
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env=clean_env(self.env),
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.proc.kill()
            raise RuntimeError(f"node did not start: {self.read_stderr()[-2000:]}")
        self.ready = json.loads(line)
        self.pid = self.proc.pid
        self.stopped: dict[str, Any] | None = None

    def read_stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as fh:
            return fh.read()

    def spill_files(self) -> list[str]:
        if self.spill is None:
            return []
        return sorted(glob.glob(os.path.join(self.spill, "*", "*.spill")))

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait; the exit code, the stop time, files left behind, its logs summarised."""
        if self.stopped is not None:
            return self.stopped
        t = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        rc: int | str
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            rc = f"killed after 60 s without exiting on SIGTERM ({rc})"
        stop_s = time.perf_counter() - t
        self._err.close()
        left = self.spill_files()
        self.stopped = {
            "exit_code": rc,
            "stop_s": round(stop_s, 3),
            "spill_files_left_after_stop": len(left),
            "spill_bytes_left_after_stop": sum(_size(f) for f in left),
            "stderr": summarize_log(self.read_stderr()),
        }
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.stopped

    def kill(self) -> None:
        """For cleanup after an error: no summary."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def summarize_log(text: str) -> dict[str, Any]:
    """Count a node's JSON log lines by level; warnings and errors by event; loop stalls."""
    levels: Counter[str] = Counter()
    notable: dict[str, dict[str, Any]] = {}
    blocked: list[float] = []
    other: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if not isinstance(rec, dict):
            other.append(line)
            continue
        level = str(rec.get("level", "?"))
        levels[level] += 1
        event = str(rec.get("event", ""))
        if event == "event loop blocked":
            blocked.append(float(rec.get("ms", 0.0)))
            continue
        if level in ("warning", "error", "critical", "exception"):
            key = f"{level}: {event}"
            if key not in notable:
                notable[key] = {"count": 0, "first": rec}
            notable[key]["count"] += 1
    out: dict[str, Any] = {
        "lines": sum(levels.values()) + len(other),
        "by_level": dict(levels),
        "warnings_and_errors": notable,
        "event_loop_blocked": {
            "count": len(blocked),
            "over_250ms": sum(1 for b in blocked if b > 250),
            "max_ms": max(blocked) if blocked else None,
            "ms": sorted(blocked, reverse=True)[:10],
        },
    }
    if other:
        out["non_json_lines"] = len(other)
        out["non_json_first"] = other[:20]
    return out


@contextlib.contextmanager
def node(
    memory: str, spill: str | None, env: dict[str, str], into: dict[str, Any]
) -> Iterator[Node]:
    """A node for one part; its stop summary goes to ``into["node"]``."""
    n = Node(memory, spill, env)
    ok = False
    try:
        yield n
        ok = True
    finally:
        if ok:
            into["node"] = n.stop()
        else:
            n.kill()


def node_settings(n: Node, memory: str) -> dict[str, Any]:
    sp, pl = n.config.spill, n.config.plasma
    return {
        "memory": memory,
        "capacity": n.ready.get("memory"),
        "spill": n.spill,
        "env": n.env,
        "threshold": sp.threshold,
        "min_spilling_size": sp.min_spilling_size,
        "max_fused_object_count": sp.max_fused_object_count,
        "compression": sp.compression,
        "fallback_max_bytes": pl.fallback_max_bytes,
        "loop_lag_warn_ms": n.config.node.loop_lag_warn_ms,
    }


async def settle(c: objstore.Client, timeout: float = 30.0) -> None:
    """Wait until the node's background prefault and this client's warm-up are done."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        s = await c.stats()
        if s["prefaulted"] >= min(GiB, s["capacity"]) and c._warm_mark.upto >= s["prefaulted"]:
            return
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- stats sampling
_KEYS = (
    "bytes_spilled",
    "spilled_objects",
    "spilled_bytes",
    "spill_files",
    "used",
    "restored",
    "bytes_restored",
)


class Sampler:
    """``stats()`` every ``interval`` seconds on the client's connection, with the time."""

    def __init__(self, c: objstore.Client, interval: float = 0.005) -> None:
        self.c = c
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.dirty_peak = 0
        self.writeback_peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            s = await self.c.stats()
            self.samples.append((time.perf_counter(), {k: int(s[k]) for k in _KEYS}))
            mem = _meminfo()
            self.dirty_peak = max(self.dirty_peak, mem.get("Dirty", 0))
            self.writeback_peak = max(self.writeback_peak, mem.get("Writeback", 0))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def quiet(self, key: str = "bytes_spilled", hold: float = 0.5, limit: float = 60) -> None:
        """Wait until ``key`` has not changed for ``hold`` seconds (at most ``limit``)."""
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            if not self.samples:
                continue
            last = self.samples[-1][1][key]
            t_change = self.first_at(key, last)
            if t_change is not None and time.perf_counter() - t_change >= hold:
                return

    def first_at(self, key: str, value: int) -> float | None:
        """The time of the first sample of the last run of samples with ``key == value``."""
        t = None
        for ts, s in reversed(self.samples):
            if s[key] != value:
                break
            t = ts
        return t

    def first_nonzero(self, key: str) -> tuple[float, int] | None:
        for ts, s in self.samples:
            if s[key]:
                return ts, s[key]
        return None


# --------------------------------------------------------------------------- big objects
def _tag(arr: np.ndarray, i: int) -> None:
    arr[:8] = np.frombuffer(np.uint64(i).tobytes(), np.uint8)


def _check(got: Any, base: np.ndarray, i: int, full: bool) -> None:
    """The first 8 bytes are the index, a few slices (or all) match the base buffer."""
    if not isinstance(got, np.ndarray) or got.nbytes != base.nbytes:
        what = f"{type(got).__name__} of {getattr(got, 'nbytes', '?')} bytes"
        raise AssertionError(f"object {i}: got {what}")
    g = got.view(np.uint8).reshape(-1)
    b = base.view(np.uint8).reshape(-1)
    if int(g[:8].view(np.uint64)[0]) != i:
        raise AssertionError(f"object {i}: first 8 bytes say {int(g[:8].view(np.uint64)[0])}")
    n = len(b)
    spans = [(8, 4096), (n // 2, n // 2 + 4096), (n - 4096, n)]
    if full:
        spans = [(8, n)]
    for a, z in spans:
        if not np.array_equal(g[a:z], b[a:z]):
            raise AssertionError(f"object {i}: bytes {a}..{z} differ")


async def spill_round(
    c: objstore.Client,
    n: Node,
    base: np.ndarray,
    count: int,
    threshold: float,
) -> dict[str, Any]:
    """Put ``count`` tagged copies of ``base``; spill figures; sync, drop caches; restore all."""
    size = base.nbytes
    capacity = int((await c.stats())["capacity"])
    sampler = Sampler(c)
    sampler.start()
    refs = []
    starts, ends = [], []
    with CpuMeter({"node": n.pid}) as put_cpu:
        for i in range(count):
            _tag(base.view(np.uint8), i)
            t = time.perf_counter()
            refs.append(await c.put(base))
            starts.append(t)
            ends.append(time.perf_counter())
    await sampler.quiet("bytes_spilled")
    await sampler.stop()
    s = await c.stats()
    spilled = int(s["bytes_spilled"])
    total = size * count
    put_s = ends[-1] - starts[0]
    # The put whose seal took primaries over threshold x capacity starts the first spill.
    k = next((i for i in range(count) if (i + 1) * size > threshold * capacity), None)
    t_last = sampler.first_at("bytes_spilled", spilled)
    first = sampler.first_nonzero("bytes_spilled")
    out: dict[str, Any] = {
        "objects": count,
        "object_bytes": size,
        "bytes_put": total,
        "put_s": round(put_s, 3),
        "put_gbps": gbps(total, put_s),
        "put_gbps_each": [gbps(size, e - b) for b, e in zip(starts, ends, strict=True)],
        "cpu_cores_during_puts": put_cpu.out,
        "stats_after_puts": {k2: int(s[k2]) for k2 in _KEYS},
        "page_cache_dirty_mib_peak": round(sampler.dirty_peak / MiB),
        "page_cache_writeback_mib_peak": round(sampler.writeback_peak / MiB),
        "files_on_disk_after_puts": len(n.spill_files()),
        "file_bytes_on_disk_after_puts": sum(_size(f) for f in n.spill_files()),
    }
    if spilled and k is not None and t_last is not None:
        window = t_last - ends[k]
        out["spill_window_s"] = round(window, 3)
        out["spill_gbps"] = gbps(spilled, window)
        # Puts after the first spill began, which had to wait for room.
        if k + 1 < count:
            later = ends[-1] - ends[k]
            out["put_gbps_while_spilling"] = gbps(size * (count - k - 1), later)
        if first is not None and t_last > first[0]:
            # From the first write's end to the last's: the writes in between.
            out["spill_gbps_between_writes"] = gbps(spilled - first[1], t_last - first[0])
        out["spill_window_note"] = (
            f"bytes_spilled / (time of the first stats sample showing the final bytes_spilled - "
            f"end of put #{k}, the first to take primaries over threshold {threshold} x capacity)"
        )
    # Make the spill files durable (timed), then drop the page cache: restores read the disk.
    cache = drop_caches()
    out["sync_and_drop"] = cache
    if spilled and "spill_window_s" in out:
        out["spill_plus_sync_gbps"] = gbps(spilled, out["spill_window_s"] + cache["sync_s"])
    listed, _ = await c.list_objects()
    state = {o["object_id"]: o["state"] for o in listed}
    spilled_idx = [i for i, r in enumerate(refs) if state.get(r.hex()) == "SPILLED"]
    resident_idx = [i for i, r in enumerate(refs) if state.get(r.hex()) != "SPILLED"]
    out["spilled_objects_listed"] = len(spilled_idx)
    before = await c.stats()
    get_times: list[float] = []
    t_loop = time.perf_counter()
    with CpuMeter({"node": n.pid}) as restore_cpu:
        # In-memory objects first, so that no restore has to push one of them out.
        for i in resident_idx:
            got = await c.get(refs[i], timeout=GET_TIMEOUT)
            _check(got, base, i, full=False)
            del got
            await c.delete(refs[i])
        for j, i in enumerate(spilled_idx):
            t = time.perf_counter()
            got = await c.get(refs[i], timeout=GET_TIMEOUT)
            get_times.append(time.perf_counter() - t)
            _check(got, base, i, full=(j == 0))
            del got
            await c.delete(refs[i])
    loop_s = time.perf_counter() - t_loop
    after = await c.stats()
    restored = int(after["bytes_restored"]) - int(before["bytes_restored"])
    out["restore"] = {
        "objects_restored": int(after["restored"]) - int(before["restored"]),
        "bytes_restored": restored,
        "get_s": round(sum(get_times), 3),
        "restore_gbps": gbps(restored, sum(get_times)),
        "restore_gbps_each": [gbps(size, t) for t in get_times],
        "loop_s_with_checks_and_deletes": round(loop_s, 3),
        "bytes_spilled_during_restores": int(after["bytes_spilled"]) - int(before["bytes_spilled"]),
        "cpu_cores": restore_cpu.out,
        "order": "objects still in memory first (read, checked, deleted), then the spilled ones "
        "in put order; each deleted after it was read; first restored one checked "
        "in full, the rest at 3 x 4 KiB",
    }
    # Every object deleted: every spill file should go.
    t = time.perf_counter()
    deadline = t + 10
    while n.spill_files() and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    end = await c.stats()
    out["after_all_deleted"] = {
        "files_gone_s_after_last_delete": round(time.perf_counter() - t, 3),
        "files_on_disk": len(n.spill_files()),
        "spill_files_stat": int(end["spill_files"]),
        "spilled_objects_stat": int(end["spilled_objects"]),
        "spilled_bytes_stat": int(end["spilled_bytes"]),
        "used": int(end["used"]),
    }
    return out


def part_throughput(root: str, args: argparse.Namespace) -> dict[str, Any]:
    size = parse_size(args.size)
    out: dict[str, Any] = {}
    out["dd_before"] = dd_reference(root, parse_size(args.dd_bytes))
    log(f"throughput: {args.objects} x {args.size} into a {args.memory} node")
    base = np.frombuffer(bytearray(np.random.default_rng(0).bytes(size)), np.uint8)
    out["crc32_one_thread"] = crc_reference(base)
    spill_dir = os.path.join(root, "throughput")
    with node(args.memory, spill_dir, {}, out) as n:
        out["settings"] = node_settings(n, args.memory)

        async def run() -> dict[str, Any]:
            async with objstore.connect(n.socket) as c:
                await settle(c)
                return await spill_round(c, n, base, args.objects, n.config.spill.threshold)

        out["spill"] = run_loop(run())
    out["dd_after"] = dd_reference(root, parse_size(args.dd_bytes))
    # The disk's speed drifts (the machine is shared): dd before and after, their mean.
    d = {
        key: {"gbps": round((out["dd_before"][key]["gbps"] + out["dd_after"][key]["gbps"]) / 2, 3)}
        for key in ("write_fdatasync", "read_cold", "write_page_cache")
    }
    out["dd_mean_gbps"] = {k: v["gbps"] for k, v in d.items()}
    sp = out["spill"]
    spill_g, restore_g = sp.get("spill_gbps"), sp["restore"]["restore_gbps"]
    out["ratios"] = {
        "spill_vs_dd_write_fdatasync": ratio(spill_g, d["write_fdatasync"]["gbps"]),
        "spill_vs_dd_write_page_cache": ratio(spill_g, d["write_page_cache"]["gbps"]),
        "spill_plus_sync_vs_dd_write_fdatasync": ratio(
            sp.get("spill_plus_sync_gbps"), d["write_fdatasync"]["gbps"]
        ),
        "restore_vs_dd_read_cold": ratio(restore_g, d["read_cold"]["gbps"]),
        "spill_vs_ray": ratio(spill_g, RAY["spill_gbps"]),
        "restore_vs_ray": ratio(restore_g, RAY["restore_gbps"]),
        "note": "dd figures: the mean of the runs before and after the spill round",
    }
    r = out["ratios"]
    out["targets_met"] = {
        "spill >= 0.85 x dd write (fdatasync)": _ge(r["spill_vs_dd_write_fdatasync"], 0.85),
        "spill >= 1.5 x Ray": _ge(r["spill_vs_ray"], 1.5),
        "restore >= 1.5 x Ray": _ge(r["restore_vs_ray"], 1.5),
    }
    return out


def crc_reference(buf: np.ndarray, repeat: int = 5) -> dict[str, Any]:
    """The CRC-32 the spill records use (ISA-L's if installed), on one object, in this process.

    Spilling computes it over each object before writing, restoring after
    reading, one after the other: at this speed it adds to each object's time.
    """
    try:
        from isal.isal_zlib import crc32

        impl = "isal"
    except ImportError:
        from zlib import crc32

        impl = "zlib"
    view = buf.data  # a memoryview
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        crc32(view)
        times.append(time.perf_counter() - t)
    return {"impl": impl, "gbps_median": gbps(buf.nbytes, sorted(times)[len(times) // 2])}


def _ge(v: float | None, limit: float) -> bool | None:
    return None if v is None else v >= limit


def run_loop(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


# --------------------------------------------------------------------------- small objects
async def _put_small(socket: str, count: int, sampler_on: bool) -> dict[str, Any]:
    async with objstore.connect(socket) as c:
        await settle(c)
        payloads = [i.to_bytes(4, "little") * 256 for i in range(count)]  # 1 KiB, distinct
        sampler = Sampler(c, 0.05) if sampler_on else None
        if sampler:
            sampler.start()
        refs = []
        t = time.perf_counter()
        for p in payloads:
            refs.append(await c.put(p))
        put_s = time.perf_counter() - t
        out: dict[str, Any] = {
            "objects": count,
            "object_bytes": 1024,
            "put_s": round(put_s, 3),
            "puts_per_s": round(count / put_s),
        }
        if sampler:
            await sampler.quiet("bytes_spilled", hold=0.5)
            await sampler.stop()
            s = await c.stats()
            out["stats_after_puts"] = {k: int(s[k]) for k in _KEYS}
            # Read back every 100th (most of them restored from fused files), timed.
            idx = list(range(0, count, max(1, count // 1000)))
            before = await c.stats()
            t = time.perf_counter()
            for i in idx:
                got = await c.get(refs[i], timeout=GET_TIMEOUT)
                if bytes(got) != payloads[i]:
                    raise AssertionError(f"small object {i} came back different")
            get_s = time.perf_counter() - t
            after = await c.stats()
            out["read_back"] = {
                "objects": len(idx),
                "restored": int(after["restored"]) - int(before["restored"]),
                "gets_per_s": round(len(idx) / get_s),
                "bytes_spilled_during_reads": int(after["bytes_spilled"])
                - int(before["bytes_spilled"]),
            }
            for i in range(0, count, 10_000):
                await c.delete(refs[i : i + 10_000])
            out["_refs_deleted"] = True
        return out


def part_small(root: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ref_out: dict[str, Any] = {}
    log(f"small: reference, {args.small} x 1 KiB into a 256MiB node without spilling")
    with node("256MiB", None, {}, ref_out) as n:
        ref = run_loop(_put_small(n.socket, args.small, False))
    out["reference_no_spill"] = {
        **ref,
        "memory": "256MiB",
        "node_warnings": ref_out["node"]["stderr"]["warnings_and_errors"],
    }
    log(f"small: {args.small} x 1 KiB into a {args.small_memory} node with spilling")
    spill_dir = os.path.join(root, "small")
    with node(args.small_memory, spill_dir, {}, out) as n:
        out["settings"] = node_settings(n, args.small_memory)
        res = run_loop(_put_small_spill(n, args.small))
    out["spilling"] = res
    out["puts_per_s_vs_no_spill"] = ratio(res["puts_per_s"], ref["puts_per_s"])
    files = res["stats_after_puts"]["spill_files"]
    out["targets_met"] = {"spill files <= 50": files <= TARGETS["small_spill_files_max"]}
    return out


async def _put_small_spill(n: Node, count: int) -> dict[str, Any]:
    res = await _put_small(n.socket, count, True)
    res.pop("_refs_deleted", None)
    # Files on disk right after the puts are gone by now (all deleted): count them from stats;
    # wait for the deletes to reach the disk.
    deadline = time.perf_counter() + 10
    while n.spill_files() and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    async with objstore.connect(n.socket, warm=False) as c:
        s = await c.stats()
    res["after_all_deleted"] = {
        "files_on_disk": len(n.spill_files()),
        "spill_files_stat": int(s["spill_files"]),
        "spilled_objects_stat": int(s["spilled_objects"]),
        "objects": int(s["objects"]),
    }
    return res


# --------------------------------------------------------------------------- loop responsiveness
def _prober(socket: str) -> None:
    """Child: get a small object every 10 ms until stdin says stop; print (start, latency) pairs."""

    async def run() -> None:
        async with (
            objstore.connect(socket, warm=False) as owner,
            objstore.connect(socket, warm=False) as c,
        ):
            payload = b"p" * 100
            ref = await owner.put(payload)
            loop = asyncio.get_running_loop()
            stop = loop.run_in_executor(None, sys.stdin.readline)
            print(json.dumps({"ready": True}), flush=True)
            samples: list[tuple[float, float]] = []
            bad = 0
            while not stop.done():
                t = time.perf_counter()
                got = await c.get(ref, timeout=GET_TIMEOUT)
                samples.append((t, time.perf_counter() - t))
                if bytes(got) != payload:
                    bad += 1
                await asyncio.sleep(0.01)
            s = await c.stats()
            print(
                json.dumps({"samples": samples, "bad": bad, "restored": s["restored"]}), flush=True
            )

    run_loop(run())


async def _loop_puts(n: Node, size: int, count: int) -> dict[str, Any]:
    base = np.frombuffer(bytearray(np.random.default_rng(2).bytes(size)), np.uint8)
    prober = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--_prober",
        n.socket,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 26,
    )
    try:
        assert prober.stdout is not None and prober.stdin is not None
        line = await asyncio.wait_for(prober.stdout.readline(), 60)
        if not line:
            raise RuntimeError("prober did not start")
        async with objstore.connect(n.socket) as c:
            await settle(c)
            t_idle = time.perf_counter()
            loops = {"node_loop_thread": n.pid, "prober_main_thread": prober.pid}
            with (
                CpuMeter({"node": n.pid, "prober": prober.pid}) as idle_cpu,
                SchedMeter(loops) as idle_sched,
            ):
                await asyncio.sleep(2.0)
            t0 = time.perf_counter()
            sampler = Sampler(c, 0.05)
            sampler.start()
            refs = []
            with (
                CpuMeter({"node": n.pid, "prober": prober.pid}) as put_cpu,
                SchedMeter(loops) as put_sched,
            ):
                for i in range(count):
                    _tag(base, i)
                    refs.append(await c.put(base))
                t1 = time.perf_counter()
                await sampler.quiet("bytes_spilled", hold=0.3)
            t2 = time.perf_counter()
            await sampler.stop()
            s = await c.stats()
            prober.stdin.write(b"stop\n")
            await prober.stdin.drain()
            result = json.loads(await asyncio.wait_for(prober.stdout.readline(), 60))
            for r in refs:
                await c.delete(r)
    finally:
        if prober.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                prober.kill()
        await prober.wait()
    samples = result["samples"]
    idle = [dt for t, dt in samples if t_idle <= t < t0]
    busy = [dt for t, dt in samples if t0 <= t < t2]
    worst = sorted(((dt, t) for t, dt in samples if t0 <= t < t2), reverse=True)[:5]
    return {
        "bytes_put": size * count,
        "objects": count,
        "object_bytes": size,
        "put_s": round(t1 - t0, 3),
        "put_gbps": gbps(size * count, t1 - t0),
        "spilling_until_s_after_first_put": round(t2 - t0, 3),
        "stats_after_puts": {k: int(s[k]) for k in _KEYS},
        "small_get_idle": latency_summary(idle),
        "small_get_while_spilling": latency_summary(busy),
        "worst_while_spilling": [
            {"ms": round(dt * 1000, 2), "at_s_after_first_put": round(t - t0, 3)} for dt, t in worst
        ],
        "prober_bad_values": result["bad"],
        # Nothing else is read in this part: every restore is of the prober's small object.
        "restores_of_the_small_object": result["restored"],
        "cpu_cores_idle": idle_cpu.out,
        "cpu_cores_while_putting": put_cpu.out,
        "main_threads_idle": idle_sched.out,
        "main_threads_while_putting": put_sched.out,
    }


def part_loop(root: str, args: argparse.Namespace) -> dict[str, Any]:
    size = parse_size(args.size)
    count = math.ceil(parse_size(args.loop_bytes) / size)
    out: dict[str, Any] = {}
    log(f"loop: {count} x {args.size} into a {args.memory} node, a small get every 10 ms")
    env = {"OBJSTORE_NODE_LOOP_LAG_WARN_MS": str(LOOP_LAG_WARN_MS)}
    with node(args.memory, os.path.join(root, "loop"), env, out) as n:
        out["settings"] = node_settings(n, args.memory)
        out.update(run_loop(_loop_puts(n, size, count)))
    p99 = out["small_get_while_spilling"].get("p99_ms")
    out["targets_met"] = {
        "p99 of small gets while spilling <= 5 ms": None
        if p99 is None
        else p99 <= TARGETS["loop_p99_ms_max"]
    }
    return out


# --------------------------------------------------------------------------- compression
def part_compression(root: str, args: argparse.Namespace) -> dict[str, Any]:
    size = parse_size(args.size)
    count = args.compression_objects
    ints = np.random.default_rng(3).integers(0, 1000, size // 4, dtype=np.int32)
    base = ints.view(np.uint8)
    out: dict[str, Any] = {"data": f"{count} x {args.size} of int32 in [0, 1000)"}
    # The compressor alone, in this process, on one object (one thread, level 3).
    import zstandard

    raw = base.tobytes()
    t = time.perf_counter()
    packed = zstandard.ZstdCompressor(level=3).compress(raw)
    zt = time.perf_counter() - t
    t = time.perf_counter()
    zstandard.ZstdDecompressor().decompress(packed, max_output_size=size)
    out["zstd3_alone_one_thread"] = {
        "compress_gbps": gbps(size, zt),
        "decompress_gbps": gbps(size, time.perf_counter() - t),
        "ratio": ratio(size, len(packed)),
    }
    del packed, raw
    for level in (0, 3):
        log(f"compression: level {level}, {count} x {args.size} into a {args.memory} node")
        one: dict[str, Any] = {}
        env = {"OBJSTORE_SPILL_COMPRESSION": str(level)}
        with node(args.memory, os.path.join(root, f"zstd{level}"), env, one) as n:
            one["settings"] = node_settings(n, args.memory)

            async def run(n: Node = n) -> dict[str, Any]:
                async with objstore.connect(n.socket) as c:
                    await settle(c)
                    return await spill_round(c, n, base, count, n.config.spill.threshold)

            r = run_loop(run())
        spilled = r["stats_after_puts"]["bytes_spilled"]
        objs = r["stats_after_puts"]["spilled_objects"]
        one.update(
            {
                "put_gbps": r["put_gbps"],
                "spill_gbps_stored_bytes": r.get("spill_gbps"),
                "spill_gbps_object_bytes": gbps(objs * size, r.get("spill_window_s") or 0),
                "bytes_spilled_stat": spilled,
                "file_bytes_on_disk": r["file_bytes_on_disk_after_puts"],
                "objects_spilled": objs,
                "compression_ratio": ratio(objs * size, spilled),
                "restore_gbps_object_bytes": r["restore"]["restore_gbps"],
                "cpu_cores_during_puts": r["cpu_cores_during_puts"],
                "restore_cpu_cores": r["restore"]["cpu_cores"],
                "after_all_deleted": r["after_all_deleted"],
            }
        )
        out[f"zstd_{level}"] = one
    out["spill_gbps_object_bytes_zstd3_vs_off"] = ratio(
        out["zstd_3"]["spill_gbps_object_bytes"], out["zstd_0"]["spill_gbps_object_bytes"]
    )
    out["file_bytes_zstd3_vs_off"] = ratio(
        out["zstd_3"]["file_bytes_on_disk"], out["zstd_0"]["file_bytes_on_disk"]
    )
    return out


# --------------------------------------------------------------------------- main
def default_root() -> str:
    """/var/tmp unless it is a tmpfs (then the current directory's disk)."""
    for cand in ("/var/tmp", os.getcwd()):
        if os.path.isdir(cand) and _mount_of(cand)["fstype"] not in ("tmpfs", "ramfs"):
            return cand
    return "/var/tmp"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}"
    )
    p.add_argument(
        "--dir",
        default=None,
        help="spill and dd under a new directory in DIR (default: /var/tmp unless it is a tmpfs)",
    )
    p.add_argument("--objects", type=int, default=40, help="large objects (throughput)")
    p.add_argument("--size", default="100MiB", help="large object size")
    p.add_argument("--memory", default="1GiB", help="arena of the large-object nodes")
    p.add_argument("--dd-bytes", default="4GiB", help="dd reference size")
    p.add_argument("--small", type=int, default=100_000, help="1 KiB objects (small)")
    p.add_argument("--small-memory", default="32MiB", help="arena of the small-object node")
    p.add_argument("--loop-bytes", default="4GiB", help="bytes put during the loop part")
    p.add_argument("--compression-objects", type=int, default=20)
    p.add_argument("--_prober", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._prober:
        _prober(args._prober)
        return
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    for x in parts:
        if x not in PARTS:
            p.error(f"unknown part {x!r}; choose from {', '.join(PARTS)}")
    parent = args.dir or default_root()
    root = tempfile.mkdtemp(prefix="osb-spill-", dir=parent)
    t_start = time.perf_counter()
    out: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": machine_info(root),
        "noise": "shared machine: other processes may run at the same time; see "
        "machine.others_cores_at_start and each part's cpu_cores.others",
        "reference_ray_2_60_gbps": RAY,
        "targets": TARGETS,
    }
    if out["machine"]["disk"]["fstype"] in ("tmpfs", "ramfs"):
        out["warning"] = "the spill directory is on a tmpfs: the figures are memory, not disk"
    fns: dict[str, Callable[[str, argparse.Namespace], dict[str, Any]]] = {
        "throughput": part_throughput,
        "small": part_small,
        "loop": part_loop,
        "compression": part_compression,
    }
    try:
        for name in parts:
            t = time.perf_counter()
            try:
                out[name] = fns[name](root, args)
            except Exception as exc:  # noqa: BLE001 - report the part's failure, run the rest
                log(f"{name} failed: {exc!r}")
                out[name] = {"error": repr(exc)}
            out[name]["part_s"] = round(time.perf_counter() - t, 1)
    finally:
        left = glob.glob(os.path.join(root, "**", "*"), recursive=True)
        out["files_left_in_spill_root_before_cleanup"] = [
            os.path.relpath(f, root) for f in left if os.path.isfile(f)
        ]
        shutil.rmtree(root, ignore_errors=True)
        out["total_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
