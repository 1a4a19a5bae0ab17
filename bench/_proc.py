"""What /proc says about the machine, shared by the benchmarks."""

from __future__ import annotations

import os

__all__ = ["CLK_TCK", "machine_busy_s"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, from /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / CLK_TCK
