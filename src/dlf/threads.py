"""How many threads dlf-study computes with, chosen so that it never spins against other work.

A CPU-bound run collapses on a busy machine for two reasons: OpenMP threads that busy-wait
(spin) between parallel regions burn the cores the other processes need, and a run with more
threads than idle cores waits in every parallel region for its slowest, descheduled thread
(docs/performance.md §9 measures both). So dlf-study

* bounds OpenMP's spinning: an idle thread spins for ``GOMP_SPINCOUNT`` = 10 000 iterations
  (microseconds) and then sleeps, set when ``dlf`` is imported and before torch is, unless the
  user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``. libgomp's default spins 300 000 iterations,
  which is what collapsed beside other work; fully passive waiting (no spin) was measured 1.7×
  slower on an idle machine, where the short hand-offs between parallel regions need a spin;
* uses as many threads as the CPUs this process may use have idle capacity now (sampled over
  0.1 s from ``/proc/stat``), at least one;
* lets ``--threads N`` or ``DLF_THREADS=N`` override the choice.

This module imports neither torch nor anything else of dlf, so that ``dlf/__init__`` can call
:func:`bound_spinning` first.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "DLF_THREADS"
SAMPLE_SECONDS = 0.1


@dataclass(frozen=True)
class ThreadChoice:
    """The number of threads and, in words, why (recorded in every trace)."""

    threads: int
    reason: str


SPIN_COUNT = "10000"  # libgomp's iterations of busy-waiting before a thread sleeps


def bound_spinning() -> None:
    """Let idle OpenMP threads spin only briefly before they sleep, unless the user chose a
    wait policy or spin count. Takes effect only for OpenMP runtimes loaded after it: call
    before ``import torch``."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def wait_policy() -> str:
    """The OpenMP wait policy in force, as recorded in traces."""
    if "OMP_WAIT_POLICY" in os.environ:
        policy = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    elif "GOMP_SPINCOUNT" in os.environ:
        policy = f"spin GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}, then sleep"
    else:
        policy = "OpenMP's default (spin 300000, then sleep)"
    if _torch_loaded_first:
        policy += " (set after torch was loaded: torch's own threads may spin longer)"
    return policy


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), at most its cgroup's CPU quota."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    quota = _cgroup_quota()
    return cpus[: max(1, int(quota))] if quota is not None and quota < len(cpus) else cpus


def _cgroup_quota() -> float | None:
    """The cgroup v2 CPU limit in CPUs (``cpu.max``), None where there is none."""
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) / int(period)


def _cpu_times(cpus: list[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` from ``/proc/stat``; None where unreadable."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            # user nice system idle iowait irq softirq steal
            values = [float(v) for v in fields[:8]]
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return (busy, total) if total > 0 else None


def busy_cpus(cpus: list[int], seconds: float = SAMPLE_SECONDS) -> float:
    """How many of ``cpus`` other work keeps busy now: ``/proc/stat`` sampled over ``seconds``
    (this process sleeps meanwhile), else the 1-minute load average."""
    before = _cpu_times(cpus)
    if before is None:
        return min(float(len(cpus)), os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    time.sleep(seconds)
    after = _cpu_times(cpus)
    if after is None or after[1] <= before[1]:
        return 0.0
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def choose(requested: int | None = None) -> ThreadChoice:
    """The thread count: ``requested`` (``--threads``), else ``$DLF_THREADS``, else the idle
    share of the usable CPUs, rounded, at least 1."""
    if requested is not None:
        return ThreadChoice(requested, f"--threads {requested}")
    if (text := os.environ.get(ENV, "").strip()) != "":
        return ThreadChoice(parse(text, ENV), f"{ENV}={text}")
    cpus = usable_cpus()
    busy = busy_cpus(cpus)
    threads = max(1, min(len(cpus), round(len(cpus) - busy)))
    return ThreadChoice(threads, f"auto: {len(cpus)} usable CPUs, {busy:.1f} busy with other work")


def parse(text: str, field: str) -> int:
    """A thread count given as text: a positive integer, else a one-line error naming ``field``."""
    from dlf.errors import ConfigError

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(field, f"{text!r} is not a thread count; allowed: an integer >= 1")
    return value


def apply(choice: ThreadChoice) -> ThreadChoice:
    """Make torch (and so the C kernels, which take torch's count) compute with ``choice``."""
    import torch

    torch.set_num_threads(choice.threads)
    global _applied
    _applied = choice
    return choice


def current() -> ThreadChoice:
    """The choice applied in this process, or torch's own thread count if none was."""
    if _applied is not None:
        return _applied
    import torch

    return ThreadChoice(torch.get_num_threads(), "torch's default (no thread policy applied)")


_applied: ThreadChoice | None = None
_torch_loaded_first = "torch" in sys.modules and not {
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
} & set(os.environ)
