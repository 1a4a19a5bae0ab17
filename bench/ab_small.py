"""Small puts and gets of two checkouts, interleaved batch by batch: a ratio the noise shares.

On a shared machine a figure moves by tens of per cent from one minute to the
next, so two checkouts measured one after the other (even alternated run by
run) differ by more than the change between them.  This starts one node and
one client process per checkout (each with its own ``PYTHONPATH``) and has the
two clients take turns: a batch of puts on A, the same on B, A again, and so
on, then the same for gets of that batch one by one (``get``) and in one
call (``batch``).  Each batch sees the machine as the neighbouring
batch of the other side saw it, and the median of the per-batch ratios is the
figure.

    python bench/ab_small.py --a ../objstore-before --b .
    python bench/ab_small.py --a REV_DIR --b . --loop uvloop --batches 60

``--a``/``--b`` are source trees (a ``git worktree add DIR REV`` makes one for a
commit).  The objects are 100 bytes (as in ``bench/local.py --only small``); the
client holds every ref until the end, so nothing is freed while it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import IO, Any


def _worker(socket_path: str, loop: str) -> None:
    """Serve ``put N`` / ``get`` lines from stdin; answer each with its seconds."""
    import objstore

    async def run() -> None:
        data = b"x" * 100
        async with objstore.connect(socket_path) as c:
            for _ in range(1000):
                await c.put(data)
            refs: list[Any] = []
            batch: list[Any] = []
            stdin = asyncio.get_running_loop()
            print("ready", flush=True)
            while True:
                line = await stdin.run_in_executor(None, sys.stdin.readline)
                words = line.split()
                if not words or words[0] == "quit":
                    return
                if words[0] == "put":
                    n = int(words[1])
                    t = time.perf_counter()
                    batch = [await c.put(data) for _ in range(n)]
                    took = time.perf_counter() - t
                    refs.extend(batch)
                elif words[0] == "get":  # the last batch put, one get each
                    t = time.perf_counter()
                    for r in batch:
                        await c.get(r)
                    took = time.perf_counter() - t
                else:  # batch: the last batch put, in one get
                    t = time.perf_counter()
                    await c.get(batch)
                    took = time.perf_counter() - t
                print(took, flush=True)

    if loop == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


class _Side:
    """One checkout's node and client process."""

    def __init__(self, tree: str, loop: str) -> None:
        self.tree = os.path.abspath(tree)
        if not os.path.isdir(os.path.join(self.tree, "objstore")):
            raise SystemExit(f"{tree}: no objstore package in it")
        env = {**os.environ, "PYTHONPATH": self.tree}
        self.dir = tempfile.mkdtemp(prefix="osab-", dir="/tmp")
        sock = os.path.join(self.dir, "node.sock")
        self.node = subprocess.Popen(
            [sys.executable, "-m", "objstore.node", "--head", "--memory", "1GiB"]
            + ["--socket", sock, "--fallback-dir", self.dir, "--log-level", "warning"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        assert self.node.stdout is not None
        if not self.node.stdout.readline():
            raise SystemExit(f"{tree}: the node did not start")
        self.client = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_worker", sock, loop],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        if self._read() != "ready":
            raise SystemExit(f"{tree}: the client did not start")

    def _read(self) -> str:
        out: IO[str] | None = self.client.stdout
        assert out is not None
        line = out.readline().strip()
        if not line:
            raise SystemExit(f"{self.tree}: the client exited")
        return line

    def ask(self, cmd: str) -> float:
        assert self.client.stdin is not None
        self.client.stdin.write(cmd + "\n")
        self.client.stdin.flush()
        return float(self._read())

    def stop(self) -> None:
        if self.client.stdin is not None:
            self.client.stdin.write("quit\n")
            self.client.stdin.flush()
        self.client.wait(30)
        self.node.terminate()
        self.node.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", help="the first source tree (the one compared against)")
    p.add_argument("--b", help="the second source tree")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--batches", type=int, default=40, help="batches per side")
    p.add_argument("--batch", type=int, default=1000, help="objects per batch")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        _worker(*args._worker)
        return
    if not args.a or not args.b:
        p.error("--a and --b are required")
    a, b = _Side(args.a, args.loop), _Side(args.b, args.loop)
    try:
        time.sleep(1.0)  # the nodes' prefault
        ops = ("put", "get", "batch")
        runs: dict[str, dict[str, list[float]]] = {op: {"a": [], "b": []} for op in ops}
        for i in range(args.batches):
            # Who goes first alternates too: a side that always follows the
            # other would always find the caches the other left.
            order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
            for op in ops:
                cmd = f"put {args.batch}" if op == "put" else op
                for key, side in order:
                    runs[op][key].append(side.ask(cmd))
    finally:
        a.stop()
        b.stop()
    out: dict[str, Any] = {
        "a": a.tree,
        "b": b.tree,
        "loop": args.loop,
        "batches": args.batches,
        "batch": args.batch,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    for op, sides in runs.items():
        ratios = [ta / tb for ta, tb in zip(sides["a"], sides["b"])]
        out[op] = {
            "a_per_s_median": round(args.batch / statistics.median(sides["a"])),
            "b_per_s_median": round(args.batch / statistics.median(sides["b"])),
            # >1: b is faster.  Quartiles of the per-batch ratios show the spread.
            "b_over_a_speed": round(statistics.median(ratios), 3),
            "b_over_a_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)],
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
