"""One node's figures: small puts and gets, batch gets, large puts, zero-copy gets, footprint.

Starts real node processes (``python -m objstore.node``) and real client
processes, and prints one JSON object.  Ratios are measured in the same run
as their reference (numpy's single-threaded copy) because the machine is
shared and noisy.

    python bench/local.py                 # everything (about a minute)
    python bench/local.py --only small    # small | large | footprint | free
    python bench/local.py --objects 200000  # fewer objects for the footprint

Client loops: figures are given with the client on asyncio's default loop and
on uvloop (the node always runs uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

import objstore

MiB = 1 << 20
GiB = 1 << 30


# --------------------------------------------------------------------------- nodes
class Node:
    def __init__(self, memory: str, prefault: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="osb-", dir="/tmp")
        self.socket = os.path.join(self.dir, "node.sock")
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
            "--log-level",
            "warning",
        ]
        if prefault is not None:
            args += ["--prefault", prefault]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.start_s = time.perf_counter() - t0
        if not line:
            raise SystemExit("node did not start")
        self.ready = json.loads(line)

    def rss(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon", "RssFile", "RssShmem", "VmRSS")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def _loop_runner(kind: str):
    if kind == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


# --------------------------------------------------------------------------- small objects
async def _settle(c: objstore.Client) -> None:
    """Wait until the node's background prefault and this client's warm-up are
    done, and the node has freed what the previous round dropped.

    The first two use the machine's two cores for up to a second after start,
    and the node frees a round's 20,000 dropped objects in the next one's
    first tenths of a second; figures taken meanwhile measure that work, not
    the store's put and get (the free is measured by ``--only free``).
    """
    deadline = time.perf_counter() + 30
    last = -1
    while time.perf_counter() < deadline:
        stats = await c.stats()
        if (
            stats["prefaulted"] >= min(GiB, stats["capacity"])
            and c._warm_mark.upto >= stats["prefaulted"]
            and stats["objects"] == last
        ):
            return
        last = stats["objects"]
        await asyncio.sleep(0.05)


async def _small(socket: str, n: int) -> dict[str, float]:
    data = b"x" * 100
    async with objstore.connect(socket) as c:
        await _settle(c)
        for _ in range(500):
            await c.put(data)
        t = time.perf_counter()
        refs = [await c.put(data) for _ in range(n)]
        puts = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for r in refs:
            await c.get(r)
        gets_own = n / (time.perf_counter() - t)
        # Five times, the rate over all five: a batch allocates a result per
        # object, and a single one either holds a full collection or not.
        t = time.perf_counter()
        for _ in range(5):
            await c.get(refs)
        batch_own = 5 * n / (time.perf_counter() - t)
        # Objects put by another process: the other process holds them alive.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--_producer",
            socket,
            str(n),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            other = [objstore.ObjectRef.from_hex(h) for h in json.loads(line)]
            t = time.perf_counter()
            for r in other:
                await c.get(r)
            gets_other = n / (time.perf_counter() - t)
            async with objstore.connect(socket, warm=False) as c2:
                t = time.perf_counter()
                await c2.get(other)
                batch_other = n / (time.perf_counter() - t)
        finally:
            proc.kill()
            await proc.wait()
    return {
        "puts_per_s": round(puts),
        "gets_per_s_own": round(gets_own),
        "gets_per_s_other_process": round(gets_other),
        "batch_get_objects_per_s_own": round(batch_own),
        "batch_get_objects_per_s_other_process": round(batch_other),
    }


async def _free_latency(socket: str, n: int, nbytes: int) -> dict[str, Any]:
    """Last ref dropped -> the node's memory back where it was, per object.

    The drop leaves the process at the next turn of the event loop (refs are
    counted in batches); the end is seen by polling ``stats()``, whose own
    round trip is measured alongside (``stats_round_trip_us``)."""
    payload = np.ones(nbytes, np.uint8) if nbytes > 1024 else b"x" * nbytes
    async with objstore.connect(socket) as c:
        await _settle(c)
        base = (await c.stats())["used"]
        rtt = []
        for _ in range(200):
            t = time.perf_counter()
            await c.stats()
            rtt.append(time.perf_counter() - t)
        lat = []
        polls = 0
        for _ in range(n):
            ref = await c.put(payload)
            t = time.perf_counter()
            del ref
            while (await c.stats())["used"] != base:
                polls += 1
            lat.append(time.perf_counter() - t)
    lat.sort()
    return {
        "objects": n,
        "free_p50_us": round(lat[len(lat) // 2] * 1e6),
        "free_p99_us": round(lat[int(len(lat) * 0.99)] * 1e6),
        "stats_round_trip_us": round(statistics.median(rtt) * 1e6),
        "extra_polls_per_free": round(polls / n, 2),
    }


def _producer(socket: str, n: int) -> None:
    async def run() -> None:
        async with objstore.connect(socket, warm=False) as c:
            refs = [await c.put(b"y" * 100) for _ in range(n)]
            sys.stdout.write(json.dumps([r.hex() for r in refs]) + "\n")
            sys.stdout.flush()
            # Hold the objects (they live while this client is connected) until told.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(run())


# --------------------------------------------------------------------------- large objects
def _numpy_copy(nbytes: int, repeat: int = 5) -> float:
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    dst[:] = 0  # touch
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(dst, src)
        best.append(time.perf_counter() - t)
    return nbytes / statistics.median(best) / 1e9


async def _large(socket: str, nbytes: int, repeat: int) -> dict[str, Any]:
    arr = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    async with objstore.connect(socket) as c:
        t = time.perf_counter()
        first = await c.put(arr)
        first_s = time.perf_counter() - t
        await c.delete(first)
        # Steady state: once the node's prefault and this client's warm-up are done.
        await _settle(c)
        times = []
        ratios = []
        # numpy's single-threaded copy of the same bytes, timed right after each
        # put, so that both see the same machine (it is shared and noisy).
        dst = np.zeros_like(arr)
        for _ in range(repeat):
            t = time.perf_counter()
            ref = await c.put(arr)
            times.append(time.perf_counter() - t)
            await c.delete(ref)
            t = time.perf_counter()
            np.copyto(dst, arr)
            ratios.append((time.perf_counter() - t) / times[-1])
        del dst
        # Loop responsiveness during a large put: worst gap of a 1 ms ticker.
        gaps: list[float] = []
        stop = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tk = asyncio.create_task(ticker())
        ref = await c.put(arr)
        stop = True
        await tk
        await c.delete(ref)
    return {
        "payload_bytes": nbytes,
        "first_put_gbps": round(nbytes / first_s / 1e9, 2),
        "put_gbps_median": round(nbytes / statistics.median(times) / 1e9, 2),
        "put_vs_numpy_interleaved": [round(r, 2) for r in sorted(ratios)],
        "max_loop_gap_ms_during_put": round(max(gaps) * 1000, 2) if gaps else None,
    }


async def _first_put_warm(
    socket: str, arr: np.ndarray, prefault: int, ready_at: float
) -> dict[str, Any]:
    """The first put on a node whose prefault and this client's warm-up are done."""
    nbytes = arr.nbytes
    async with objstore.connect(socket) as c:
        while (await c.stats())["prefaulted"] < prefault and time.perf_counter() - ready_at < 30:
            await asyncio.sleep(0.01)
        prefault_s = time.perf_counter() - ready_at
        while c._warm_mark.upto < prefault and time.perf_counter() - ready_at < 30:
            await asyncio.sleep(0.01)
        warm_s = time.perf_counter() - ready_at
        t = time.perf_counter()
        await c.put(arr)
        first_s = time.perf_counter() - t
    return {
        "gbps": nbytes / first_s / 1e9,
        "node_prefault_done_s_after_ready": prefault_s,
        "client_warm_done_s_after_ready": warm_s,
    }


async def _zero_copy_get(socket: str, nbytes: int, repeat: int) -> dict[str, Any]:
    arr = np.ones(nbytes // 8, np.float64)
    async with objstore.connect(socket) as c:
        ref = await c.put(arr)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            v = await c.get(ref)
            times.append(time.perf_counter() - t)
            del v
        async with objstore.connect(socket, warm=False) as c2:
            other = []
            for _ in range(repeat):
                t = time.perf_counter()
                v = await c2.get(ref)
                other.append(time.perf_counter() - t)
                del v
                await asyncio.sleep(0)
            held = await c2.get(ref)
            again = []
            for _ in range(repeat):
                t = time.perf_counter()
                v = await c2.get(ref)
                again.append(time.perf_counter() - t)
                del v
            del held
        await c.delete(ref)
    return {
        "object_bytes": nbytes,
        "get_us_median_own": round(statistics.median(times) * 1e6, 1),
        "get_us_median_other_client_first_view": round(statistics.median(other) * 1e6, 1),
        "get_us_median_other_client_while_mapped": round(statistics.median(again) * 1e6, 1),
    }


# --------------------------------------------------------------------------- footprint
def _filler(socket: str, n: int) -> None:
    """Put n small objects with pipelined requests, report, hold them until stdin closes."""

    async def run() -> None:
        async with objstore.connect(socket, warm=False) as c:
            data = b"z" * 100
            t = time.perf_counter()
            batch = 2000
            for i in range(0, n, batch):
                await asyncio.gather(*(c.put(data) for _ in range(min(batch, n - i))))
            rate = n / (time.perf_counter() - t)
            sys.stdout.write(json.dumps({"rate": rate}) + "\n")
            sys.stdout.flush()
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    import uvloop

    uvloop.run(run())


def footprint(n: int) -> dict[str, Any]:
    node = Node("1GiB")  # default prefault: the whole 1 GiB, 256 MiB of it before ready
    time.sleep(2.0)  # let the background prefault finish: idle means idle
    idle = node.rss()
    filler = subprocess.Popen(
        [sys.executable, __file__, "--_filler", node.socket, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert filler.stdout is not None and filler.stdin is not None
    rate = json.loads(filler.stdout.readline())["rate"]
    time.sleep(0.5)
    full = node.rss()
    filler.stdin.close()
    filler.wait(60)
    node.stop()
    private = lambda r: r["RssAnon"] + r["RssFile"]
    return {
        "start_to_ready_s": round(node.start_s, 3),
        "idle_rss_mib": round(idle["VmRSS"] / MiB, 1),
        "idle_rss_private_mib": round(private(idle) / MiB, 1),
        "objects": n,
        "pipelined_puts_per_s": round(rate),
        "node_bytes_per_object": round((private(full) - private(idle)) / n, 1),
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["small", "large", "footprint", "free"])
    p.add_argument("--small", type=int, default=10_000, help="small objects per figure")
    p.add_argument("--large", default="256MiB", help="large payload size")
    p.add_argument("--objects", type=int, default=1_000_000, help="objects for the footprint")
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--_producer", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_filler", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._producer:
        _producer(args._producer[0], int(args._producer[1]))
        return
    if args._filler:
        _filler(args._filler[0], int(args._filler[1]))
        return
    from objstore.config import parse_size

    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    if args.only in (None, "small"):
        node = Node("1GiB")
        for kind in ("asyncio", "uvloop"):
            # Three rounds: the machine is shared; report the median and the range.
            rounds = [_loop_runner(kind)(_small(node.socket, args.small)) for _ in range(3)]
            out[f"small_100B_client_{kind}"] = {
                key: {
                    "median": round(statistics.median(r[key] for r in rounds)),
                    "range": [
                        round(min(r[key] for r in rounds)),
                        round(max(r[key] for r in rounds)),
                    ],
                }
                for key in rounds[0]
            }
        node.stop()
    if args.only in (None, "large"):
        nbytes = parse_size(args.large)
        ref_gbps = _numpy_copy(nbytes)
        node = Node("2GiB")
        large = _loop_runner("uvloop")(_large(node.socket, nbytes, args.repeat))
        node.stop()
        arr = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8)
        warm_runs = []
        for _ in range(3):
            node = Node("2GiB", prefault="1GiB")
            ready_at = time.perf_counter()
            warm_runs.append(
                _loop_runner("uvloop")(_first_put_warm(node.socket, arr, GiB, ready_at))
            )
            node.stop()
        gb = sorted(r["gbps"] for r in warm_runs)
        large["first_put_after_warmup_gbps"] = [round(g, 2) for g in gb]
        large["node_prefault_done_s_after_ready"] = [
            round(r["node_prefault_done_s_after_ready"], 2) for r in warm_runs
        ]
        large["client_warm_done_s_after_ready"] = [
            round(r["client_warm_done_s_after_ready"], 2) for r in warm_runs
        ]
        large["numpy_copy_gbps"] = round(ref_gbps, 2)
        large["first_put_after_warmup_vs_numpy_median"] = round(gb[1] / ref_gbps, 2)
        large["first_put_vs_numpy"] = round(large["first_put_gbps"] / ref_gbps, 2)
        large["put_vs_numpy"] = round(large["put_gbps_median"] / ref_gbps, 2)
        out["large_put"] = large
        node = Node("2GiB", prefault="0")
        out["zero_copy_get_1GiB"] = _loop_runner("uvloop")(_zero_copy_get(node.socket, GiB, 21))
        node.stop()
    if args.only in (None, "free"):
        node = Node("1GiB")
        out["free_latency"] = {
            label: _loop_runner("uvloop")(_free_latency(node.socket, 2000, size))
            for label, size in (("100B", 100), ("1MiB", MiB))
        }
        node.stop()
    if args.only in (None, "footprint"):
        out["footprint"] = footprint(args.objects)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
