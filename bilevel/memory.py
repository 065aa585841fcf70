"""Peak memory of a run (issue #12): CUDA's max allocated bytes on a GPU, the process's resident
high-water mark (Linux ``VmHWM``, reset at the start of each run so that a worker process that
runs several jobs reports each run's own peak) on the CPU. Recorded in ``run.json``."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak(device: torch.device) -> None:
    """Start a new peak measurement for ``device``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: writing 5 resets the process's resident high-water mark
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_mb(device: torch.device) -> tuple[float, str]:
    """(peak memory in MiB, what was measured) since the last :func:`reset_peak`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "cpu_max_rss"
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 1024), "cpu_max_rss_process"
