"""Benchmark: how fast can a client copy a put payload into the node's memfd arena?

The objstore node creates ONE arena per node::

    fd = os.memfd_create("objstore-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
    mm = mmap.mmap(fd, size)

and hands the fd to clients (``socket.send_fds``); a client maps it itself and
copies put payloads into it with ``numpy.copyto`` on ``np.frombuffer`` views,
possibly from several threads (copyto releases the GIL).

This script measures, each strategy on a FRESH memfd (nothing is warm unless the
strategy warms it) and every client-side figure in a real second process (a
``spawn``-ed multiprocessing child that receives the fd over a
``socket.socketpair`` with ``send_fds``/``recv_fds``, like the real client):

1. ``numpy_copy_warm``: numpy.copyto into an already-touched private array,
   1 thread: the reference figure (``ratio_vs_numpy`` = figure / this).
2. ``cold_1thread`` / ``cold_nthreads``: client copies into fresh memfd pages.
3. ``owner_populated_then_client_copy``: the owner (node) populates the whole
   arena with ``mmap.madvise(MADV_POPULATE_WRITE)`` (time reported per GiB),
   then the client (own, fresh mapping: minor faults only) copies, 1 / n threads.
4. ``client_populate_then_copy``: as 3, but each client copy thread first
   MADV_POPULATE_WRITEs its own slice of its own mapping, then copies
   (populate, copy and total reported). Done with ``mmap.madvise`` (which holds
   the GIL during the syscall, so n threads serialise their populates) and with
   libc ``madvise`` through ctypes (GIL released); extra variant with
   MADV_POPULATE_READ (ctypes), which is enough to fill the page tables for
   shmem pages that are already resident.
   ``cold_client_populate_then_copy``: the same on a fresh, NOT owner-populated
   memfd (n threads, ctypes).
5. ``client_map_populate``: after the owner populated, the client maps with
   ``MAP_SHARED | MAP_POPULATE``; the mmap() call for the whole arena is timed,
   then copies with 1 / n threads into that mapping.
6. ``warm_reuse``: the client copies a second time into the same region (page
   cache and page tables warm), 1 / n threads.
7. ``populate_background_cost``: the owner populates the whole arena from a
   background thread with 1 thread (whole range) and 2 threads (split ranges;
   mmap.madvise vs ctypes madvise), while the main thread measures how long it
   is starved of the GIL (what an asyncio loop would see).

For populate-then-copy figures, ``total_s`` is wall time (start to last
join); ``populate_s`` / ``copy_s`` are the slowest thread's phase durations,
so with n threads whose phases do not overlap ``gbps_copy_only`` is optimistic.

Every figure is the median of ``--repeat`` runs (all samples are in
``samples``). GB/s = 1e9 bytes/s.

VM note: on a Firecracker guest with free-page reporting, memory freed by the
guest is handed back to the host within a few seconds, and touching it again
costs a host fault per page (several times slower than a guest-only fault).
A node starting on an idle machine gets such "host-cold" memory, so before
every measurement whose result depends on that (fresh-page copies and populate
timings) the script sleeps ``--settle`` seconds after the previous free.
``populate_background_cost.recycled_*`` shows the same populate done right
after a free (guest-recycled pages), for comparison. ``--settle 0`` disables it.

Run::

    python bench/arena.py                      # 1 GiB arena, 256 MiB payload, 2 threads, 3 repeats
    python bench/arena.py --payload 100MiB
    python bench/arena.py --size 512MiB --threads 2 --repeat 5 --settle 4

Prints ONE JSON object on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import mmap
import multiprocessing as mp
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
PAGE = mmap.PAGESIZE
ALIGN = 64
GIB = 1 << 30

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


# --------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size: {text!r}")
    num, unit, binary = m.groups()
    exp = " KMGT".index(unit.upper() or " ")
    base = 1024 if (binary or unit == "") else 1000
    return int(float(num) * base**exp)


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def split_ranges(n: int, parts: int, align: int) -> list[tuple[int, int]]:
    """n bytes -> `parts` contiguous [a, b) ranges whose inner bounds are multiples of align."""
    bounds = [0]
    for i in range(1, parts):
        bounds.append(min(n, (n * i // parts) // align * align))
    bounds.append(n)
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def page_span(a: int, b: int, limit: int) -> tuple[int, int]:
    """Page-aligned (start, length) covering [a, b)."""
    start = a // PAGE * PAGE
    end = min(limit, -(-b // PAGE) * PAGE)
    return start, end - start


def mapping_address(mm: mmap.mmap) -> int:
    buf = ctypes.c_char.from_buffer(mm)
    addr = ctypes.addressof(buf)
    del buf  # release the buffer export so mm can be closed later
    return addr


def madvise_populate(mm: mmap.mmap, addr: int, start: int, length: int, impl: str) -> None:
    """impl: "mmap" = mmap.madvise(POPULATE_WRITE) (holds the GIL for the whole syscall in
    CPython 3.11); "ctypes" = libc madvise(POPULATE_WRITE) via ctypes (GIL released);
    "ctypes_read" = libc madvise(POPULATE_READ): on shmem pages that are already resident a
    read fault maps them writable, with fault-around, so it is cheaper (NB: on holes it
    allocates pages, like POPULATE_WRITE)."""
    if length <= 0:
        return
    if impl == "mmap":
        mm.madvise(MADV_POPULATE_WRITE, start, length)
    else:
        advice = MADV_POPULATE_READ if impl == "ctypes_read" else MADV_POPULATE_WRITE
        if _libc.madvise(addr + start, length, advice) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


def page_reporting_kib() -> int | None:
    try:
        with open("/sys/module/page_reporting/parameters/reported_kib") as f:
            return int(f.read())
    except OSError:
        return None


# --------------------------------------------------------------------------- client process


class Client:
    """Runs in the spawned child: owns a warm source payload and a thread pool."""

    def __init__(self, payload: int, threads: int) -> None:
        self.n = payload
        self.threads = threads
        self.src = np.empty(payload, np.uint8)
        self.src.fill(0x5A)  # fully touched (warm) source payload
        self.src[::4096] = 7
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads))
        list(self.pool.map(lambda _: None, range(threads * 4)))  # spin the workers up now
        self.mm: mmap.mmap | None = None
        self.fd = -1
        self.size = 0
        self.addr = 0
        self.dst: np.ndarray | None = None

    # -- mapping
    def map(self, populate: bool) -> dict:
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
        t0 = time.perf_counter()
        mm = mmap.mmap(self.fd, self.size, flags=flags)
        dt = time.perf_counter() - t0
        self.mm = mm
        self.addr = mapping_address(mm)
        self.dst = np.frombuffer(mm, np.uint8, count=self.n, offset=0)
        return {"map_s": dt}

    def unmap(self) -> dict:
        self.dst = None
        if self.mm is not None:
            self.mm.close()
        self.mm = None
        return {}

    # -- copies
    def _parts(self, threads: int) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
        assert self.dst is not None
        return [
            (self.dst[a:b], self.src[a:b], a, b) for a, b in split_ranges(self.n, threads, ALIGN)
        ]

    def copy(self, threads: int) -> dict:
        parts = self._parts(threads)
        if threads == 1:
            d, s, _, _ = parts[0]
            t0 = time.perf_counter()
            np.copyto(d, s)
            dt = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            futs = [self.pool.submit(np.copyto, d, s) for d, s, _, _ in parts]
            for f in futs:
                f.result()
            dt = time.perf_counter() - t0
        return {"s": dt}

    def popcopy(self, threads: int, impl: str) -> dict:
        parts = self._parts(threads)
        mm, addr, size = self.mm, self.addr, self.size

        def work(d: np.ndarray, s: np.ndarray, a: int, b: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            start, length = page_span(a, b, size)
            madvise_populate(mm, addr, start, length, impl)
            t1 = time.perf_counter()
            np.copyto(d, s)
            t2 = time.perf_counter()
            return t1 - t0, t2 - t1

        t0 = time.perf_counter()
        if threads == 1:
            res = [work(*parts[0])]
        else:
            futs = [self.pool.submit(work, *p) for p in parts]
            res = [f.result() for f in futs]
        total = time.perf_counter() - t0
        return {"s": total, "populate_s": max(r[0] for r in res), "copy_s": max(r[1] for r in res)}

    def numpy_warm(self, threads: int) -> dict:
        dst = np.empty(self.n, np.uint8)
        dst.fill(1)
        np.copyto(dst, self.src)  # warm-up pass
        parts = [(dst[a:b], self.src[a:b]) for a, b in split_ranges(self.n, threads, ALIGN)]
        t0 = time.perf_counter()
        if threads == 1:
            np.copyto(dst, self.src)
        else:
            futs = [self.pool.submit(np.copyto, d, s) for d, s in parts]
            for f in futs:
                f.result()
        dt = time.perf_counter() - t0
        del parts, dst
        return {"s": dt}


def client_main(sock: socket.socket, payload: int, threads: int) -> None:
    c = Client(payload, threads)
    sock.send(b'{"ready": true}')
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 4)
        if not msg:
            break
        req = json.loads(msg)
        if req.get("op") == "quit":
            break
        out: list[dict] = []
        try:
            if req["op"] == "numpy_warm":
                out.append(c.numpy_warm(req["threads"]))
            elif req["op"] == "session":
                (c.fd,) = fds
                c.size = req["size"]
                for step in req["steps"]:
                    kind = step["do"]
                    if kind == "map":
                        out.append(c.map(step.get("populate", False)))
                    elif kind == "unmap":
                        out.append(c.unmap())
                    elif kind == "copy":
                        out.append(c.copy(step["threads"]))
                    elif kind == "popcopy":
                        out.append(c.popcopy(step["threads"], step["impl"]))
                    else:
                        raise ValueError(kind)
                c.unmap()
            reply = {"ok": True, "results": out}
        except Exception as e:  # noqa: BLE001 - report instead of hanging the parent
            reply = {"ok": False, "error": repr(e)}
        finally:
            for fd in fds:
                os.close(fd)
            c.fd = -1
        sock.send(json.dumps(reply).encode())


class ClientProc:
    def __init__(self, payload: int, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = ctx.Process(
            target=client_main, args=(child_sock, payload, threads), daemon=True
        )
        self.proc.start()
        child_sock.close()
        assert json.loads(self.sock.recv(1 << 16))["ready"]

    def call(self, req: dict, fd: int | None = None) -> list[dict]:
        data = json.dumps(req).encode()
        if fd is None:
            self.sock.send(data)
        else:
            socket.send_fds(self.sock, [data], [fd])
        reply = json.loads(self.sock.recv(1 << 20))
        if not reply["ok"]:
            raise RuntimeError(f"client failed: {reply['error']}")
        return reply["results"]

    def session(self, fd: int, size: int, steps: list[dict]) -> list[dict]:
        return self.call({"op": "session", "size": size, "steps": steps}, fd)

    def close(self) -> None:
        try:
            self.sock.send(json.dumps({"op": "quit"}).encode())
        except OSError:
            pass
        self.proc.join(10)
        self.sock.close()


# --------------------------------------------------------------------------- owner (node) side


class Arena:
    """The node's arena: memfd, sealed against resizing, mapped by the owner."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create("objstore-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        fcntl.fcntl(
            self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
        self.mm = mmap.mmap(self.fd, size)
        self.addr = mapping_address(self.mm)

    def populate(self, threads: int, impl: str, background: bool = True) -> dict:
        """Populate the whole arena from `threads` worker threads; main thread probes GIL stalls."""
        ranges = split_ranges(self.size, threads, PAGE)
        if not background and threads == 1:
            t0 = time.perf_counter()
            madvise_populate(self.mm, self.addr, 0, self.size, impl)
            return {"s": time.perf_counter() - t0, "max_main_stall_ms": None}
        done = threading.Event()
        go = threading.Barrier(len(ranges) + 1)
        t_end: list[float] = []

        def work(a: int, b: int) -> None:
            go.wait()
            madvise_populate(self.mm, self.addr, a, b - a, impl)
            t_end.append(time.perf_counter())
            if len(t_end) == len(ranges):
                done.set()

        ths = [threading.Thread(target=work, args=r) for r in ranges]
        for t in ths:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        max_gap = 0.0
        while not done.is_set():  # what an event loop ticking every 1 ms would experience
            a = time.perf_counter()
            time.sleep(0.001)
            max_gap = max(max_gap, time.perf_counter() - a)
        for t in ths:
            t.join()
        return {"s": max(t_end) - t0, "max_main_stall_ms": round(max_gap * 1e3, 2)}

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


# --------------------------------------------------------------------------- driver


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.size: int = args.size
        self.n: int = args.payload
        self.k: int = args.threads
        self.samples: dict[str, list[float]] = {}
        self.last_free = 0.0

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(key, []).append(value)

    def settle(self) -> None:
        """Let freed memory go back to the host so the next fresh memfd is host-cold."""
        wait = self.a.settle - (time.perf_counter() - self.last_free)
        if wait > 0:
            time.sleep(wait)

    def new_arena(self, settle: bool) -> Arena:
        if settle:
            self.settle()
        return Arena(self.size)

    def free(self, arena: Arena) -> None:
        arena.close()
        self.last_free = time.perf_counter()

    def run_once(self, c: ClientProc, r: int) -> None:
        k, size = self.k, self.size
        log(f"[repeat {r + 1}/{self.a.repeat}]")

        # 1. reference: private warm copy
        self.add("numpy_copy_warm.s", c.call({"op": "numpy_warm", "threads": 1})[0]["s"])
        self.add("numpy_copy_warm_nthreads.s", c.call({"op": "numpy_warm", "threads": k})[0]["s"])

        # 2. cold copies (host-cold fresh pages)
        for key, th in (("cold_1thread.s", 1), ("cold_nthreads.s", k)):
            ar = self.new_arena(settle=True)
            res = c.session(ar.fd, size, [{"do": "map"}, {"do": "copy", "threads": th}])
            self.add(key, res[1]["s"])
            self.free(ar)

        # 3 (+ 7 one-thread). owner populates from a background thread, then client copies
        ar = self.new_arena(settle=True)
        p = ar.populate(1, "mmap")
        self.add("owner_populate.s", p["s"])
        self.add("owner_populate.stall_ms", p["max_main_stall_ms"])
        res = c.session(
            ar.fd,
            size,
            [
                {"do": "map"},
                {"do": "copy", "threads": 1},
                {"do": "unmap"},
                {"do": "map"},
                {"do": "copy", "threads": k},
                {"do": "unmap"},
            ],
        )
        self.add("owner_populated.client_1thread.s", res[1]["s"])
        self.add("owner_populated.client_nthreads.s", res[4]["s"])
        self.free(ar)

        # 4. client populates its own slice per thread, then copies (owner-populated arena)
        ar = self.new_arena(settle=False)
        ar.populate(1, "ctypes", background=False)
        res = c.session(
            ar.fd,
            size,
            [
                {"do": "map"},
                {"do": "popcopy", "threads": 1, "impl": "mmap"},
                {"do": "unmap"},
                {"do": "map"},
                {"do": "popcopy", "threads": k, "impl": "mmap"},
                {"do": "unmap"},
                {"do": "map"},
                {"do": "popcopy", "threads": k, "impl": "ctypes"},
                {"do": "unmap"},
                {"do": "map"},
                {"do": "popcopy", "threads": k, "impl": "ctypes_read"},
                {"do": "unmap"},
            ],
        )
        for name, i in (
            ("1thread", 1),
            ("nthreads_mmap_madvise", 4),
            ("nthreads_ctypes_madvise", 7),
            ("nthreads_ctypes_populate_read", 10),
        ):
            for f in ("s", "populate_s", "copy_s"):
                self.add(f"client_populate.{name}.{f}", res[i][f])
        self.free(ar)

        # 4b. same on a host-cold arena the owner did NOT populate
        ar = self.new_arena(settle=True)
        res = c.session(
            ar.fd, size, [{"do": "map"}, {"do": "popcopy", "threads": k, "impl": "ctypes"}]
        )
        for f in ("s", "populate_s", "copy_s"):
            self.add(f"cold_client_populate.nthreads_ctypes_madvise.{f}", res[1][f])
        self.free(ar)

        # 5. client maps with MAP_POPULATE after the owner populated
        ar = self.new_arena(settle=False)
        ar.populate(1, "ctypes", background=False)
        res = c.session(
            ar.fd,
            size,
            [
                {"do": "map", "populate": True},
                {"do": "copy", "threads": 1},
                {"do": "unmap"},
                {"do": "map", "populate": True},
                {"do": "copy", "threads": k},
                {"do": "unmap"},
            ],
        )
        self.add("client_map_populate.mmap_s", res[0]["map_s"])
        self.add("client_map_populate.mmap_s", res[3]["map_s"])
        self.add("client_map_populate.client_1thread.s", res[1]["s"])
        self.add("client_map_populate.client_nthreads.s", res[4]["s"])
        self.free(ar)

        # 6. warm reuse: second copy into the same region, same mapping
        ar = self.new_arena(settle=False)
        res = c.session(
            ar.fd,
            size,
            [
                {"do": "map"},
                {"do": "copy", "threads": k},  # first (cold-ish) copy, not the figure
                {"do": "copy", "threads": 1},
                {"do": "copy", "threads": k},
            ],
        )
        self.add("warm_reuse.1thread.s", res[2]["s"])
        self.add("warm_reuse.nthreads.s", res[3]["s"])
        self.free(ar)

        # 7. background populate cost: 2 threads, mmap.madvise (GIL held) vs ctypes (GIL released)
        for impl in ("mmap", "ctypes"):
            ar = self.new_arena(settle=True)
            p = ar.populate(2, impl)
            self.add(f"populate_2threads_{impl}.s", p["s"])
            self.add(f"populate_2threads_{impl}.stall_ms", p["max_main_stall_ms"])
            self.free(ar)
        # same populate right after a free (guest-recycled, not host-cold)
        ar = self.new_arena(settle=False)
        p = ar.populate(1, "ctypes")
        self.add("populate_recycled_1thread_ctypes.s", p["s"])
        self.add("populate_recycled_1thread_ctypes.stall_ms", p["max_main_stall_ms"])
        self.free(ar)

    # -- reporting
    def med(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def copy_fig(self, key: str, ref: float) -> dict:
        s = self.med(key)
        g = gbps(self.n, s)
        return {"s": round(s, 5), "gbps": round(g, 3), "ratio_vs_numpy": round(g / ref, 3)}

    def report(self) -> dict:
        n, k, gib = self.n, self.k, self.size / GIB
        ref = gbps(n, self.med("numpy_copy_warm.s"))
        r = lambda x, d=4: None if x is None else round(x, d)

        def pop(key: str) -> dict:
            s = self.med(key)
            out = {"s": r(s), "s_per_gib": r(s / gib), "gbps": r(gbps(self.size, s), 3)}
            if key.replace(".s", ".stall_ms") in self.samples:
                out["max_main_thread_stall_ms"] = r(self.med(key.replace(".s", ".stall_ms")), 1)
            return out

        def popcopy(prefix: str) -> dict:
            d = self.copy_fig(prefix + ".s", ref)
            d = {"total_s": d["s"], "gbps_total": d["gbps"], "ratio_vs_numpy": d["ratio_vs_numpy"]}
            d["populate_s"] = r(self.med(prefix + ".populate_s"), 5)
            d["copy_s"] = r(self.med(prefix + ".copy_s"), 5)
            cg = gbps(n, self.med(prefix + ".copy_s"))
            d["gbps_copy_only"] = r(cg, 3)
            d["ratio_vs_numpy_copy_only"] = r(cg / ref, 3)
            return d

        owner_pop = pop("owner_populate.s")
        map_s = self.med("client_map_populate.mmap_s")
        return {
            "config": {
                "arena_bytes": self.size,
                "payload_bytes": n,
                "threads": k,
                "repeat": self.a.repeat,
                "settle_s": self.a.settle,
                "python": platform.python_version(),
                "numpy": np.__version__,
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
                "page_size": PAGE,
                "madv_populate_write": MADV_POPULATE_WRITE,
                "free_page_reporting": page_reporting_kib() is not None,
            },
            "numpy_copy_warm": self.copy_fig("numpy_copy_warm.s", ref),
            "numpy_copy_warm_nthreads": self.copy_fig("numpy_copy_warm_nthreads.s", ref),
            "cold_1thread": self.copy_fig("cold_1thread.s", ref),
            "cold_nthreads": self.copy_fig("cold_nthreads.s", ref),
            "owner_populated_then_client_copy": {
                "owner_populate": owner_pop,
                "client_1thread": self.copy_fig("owner_populated.client_1thread.s", ref),
                "client_nthreads": self.copy_fig("owner_populated.client_nthreads.s", ref),
            },
            "client_populate_then_copy": {
                "1thread": popcopy("client_populate.1thread"),
                "nthreads_mmap_madvise": popcopy("client_populate.nthreads_mmap_madvise"),
                "nthreads_ctypes_madvise": popcopy("client_populate.nthreads_ctypes_madvise"),
                "nthreads_ctypes_populate_read": popcopy(
                    "client_populate.nthreads_ctypes_populate_read"
                ),
            },
            "cold_client_populate_then_copy": {
                "nthreads_ctypes_madvise": popcopy("cold_client_populate.nthreads_ctypes_madvise"),
            },
            "client_map_populate": {
                "mmap_s": r(map_s, 5),
                "mmap_s_per_gib": r(map_s / gib, 5),
                "client_1thread": self.copy_fig("client_map_populate.client_1thread.s", ref),
                "client_nthreads": self.copy_fig("client_map_populate.client_nthreads.s", ref),
            },
            "warm_reuse": {
                "1thread": self.copy_fig("warm_reuse.1thread.s", ref),
                "nthreads": self.copy_fig("warm_reuse.nthreads.s", ref),
            },
            "populate_background_cost": {
                "note": "whole arena, host-cold pages, populated from background thread(s) while the "
                "main thread sleeps 1 ms per tick; 1thread = the owner_populate run above",
                "1thread_mmap_madvise": owner_pop,
                "2threads_mmap_madvise": pop("populate_2threads_mmap.s"),
                "2threads_ctypes_madvise": pop("populate_2threads_ctypes.s"),
                "recycled_pages_1thread_ctypes_madvise": pop("populate_recycled_1thread_ctypes.s"),
            },
            "samples": {key: [round(v, 5) for v in vals] for key, vals in self.samples.items()},
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=GIB, help="arena size (default 1GiB)")
    ap.add_argument(
        "--payload", type=parse_size, default=256 << 20, help="put payload (default 256MiB)"
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="client copy threads for the n-thread figures"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds to wait after a free before a host-cold measurement (VM free-page reporting)",
    )
    args = ap.parse_args()
    if args.payload > args.size:
        ap.error("--payload must be <= --size")
    if args.size % PAGE:
        ap.error("--size must be a multiple of the page size")
    if args.threads < 1 or args.repeat < 1:
        ap.error("--threads and --repeat must be >= 1")

    t_start = time.perf_counter()
    bench = Bench(args)
    client = ClientProc(args.payload, args.threads)
    try:
        for r in range(args.repeat):
            bench.run_once(client, r)
    finally:
        client.close()
    out = bench.report()
    out["runtime_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
