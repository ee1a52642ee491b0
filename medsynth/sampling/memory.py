"""Memory budgets: parse ``max_memory`` ("4GB", "512MiB", bytes) and find the memory free to use.

The decoder's working set is chosen from a budget (``medsynth.sampling.tiling``); this module
only says how many bytes that budget is. Torch-free at import, so a protocol or the CLI can
check a ``max_memory`` value without loading torch.
"""

from __future__ import annotations

import numbers
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from medsynth.errors import InputError

if TYPE_CHECKING:
    import torch

# Share of the free memory a decode may use when no budget is given: the rest stays for the
# model, the sampler's latents, the writers and whatever else runs on the machine.
DEFAULT_FRACTION = 0.5

# Decimal SI units (KB = 1000), binary IEC units (KiB = 1024); a bare K/M/G/T is binary, as in
# Docker, Slurm and `free -h`.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: object, field: str = "max_memory") -> int | None:
    """``value`` in bytes: a positive int, or a string such as ``"4GB"``, ``"512MiB"``, ``"1.5G"``.

    ``None`` stays ``None`` (the caller's default budget). Raises a one-line ``InputError``
    naming ``field`` and the value otherwise.
    """
    if value is None:
        return None
    expected = (
        f'{field}={value!r}: expected a memory size in bytes (a positive integer) or a string such as "4GB", '
        '"512MiB" or "1.5G" (KB/MB/GB/TB = powers of 1000; KiB/MiB/GiB/TiB and K/M/G/T = powers of 1024)'
    )
    if isinstance(value, bool):
        raise InputError(expected)
    if isinstance(value, numbers.Integral):
        if int(value) < 1:
            raise InputError(expected)
        return int(value)
    if not isinstance(value, str):
        raise InputError(expected)
    m = _SIZE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(expected)
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < 1:
        raise InputError(expected)
    return n


def format_bytes(n: float) -> str:
    """``n`` bytes as a short binary size: ``"3.2 GiB"``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom() -> int | None:
    """Bytes left under a cgroup v2 memory limit (a container's), or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes free for new tensors on ``device``: free GPU memory on CUDA, else available host RAM.

    Host RAM is ``MemAvailable`` of /proc/meminfo (``os.sysconf`` where there is none), capped
    by a cgroup v2 limit (psutil is not a dependency).
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    found = _meminfo_available()
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = 4 * 2**30  # no way to ask: assume a small machine
    headroom = _cgroup_headroom()
    return int(found if headroom is None else min(found, headroom))


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
_allocator_bounded = False


def bound_allocator_caching() -> None:
    """Make glibc return freed tensor memory to the system at once (process-wide, once).

    glibc raises its mmap threshold each time a large block is freed, so later blocks of up to
    32 MiB come from the heap, where slabs of changing sizes fragment it: a slab decode measured
    2.7x its working set in resident memory. A fixed 128 KiB threshold (the glibc default
    before adjustment) serves every tensor from mmap, returned when freed, and keeps the
    resident memory at the estimate (benchmarks/bench_decode.py). No-op off glibc.
    """
    global _allocator_bounded
    if _allocator_bounded:
        return
    _allocator_bounded = True
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # an unusual libc: the budget then holds less tightly
        return


def memory_budget(max_memory: int | None, device: str | torch.device = "cpu") -> int:
    """The decode's budget in bytes: ``max_memory``, or ``DEFAULT_FRACTION`` of the free memory."""
    if max_memory is not None:
        return int(max_memory)
    return int(available_memory(device) * DEFAULT_FRACTION)
