"""Which GPU a process runs on: the `--gpus` list, the GPUs a process can see, and pinning a process to one.

A process is pinned by setting CUDA_VISIBLE_DEVICES to one GPU before CUDA is initialised in it, so the code
under test sees that GPU as device 0 and nothing downstream needs a device argument. The GPU's number as the
host knows it is kept in GEMMA_ORACLE_GPU_INDEX, for result records (`current_gpu_index()`), because inside
the pinned process every GPU is device 0.

CUDA reads CUDA_VISIBLE_DEVICES once, at its first call in a process (cupy's getDeviceCount included, see
cupy/cupy#9094; `import cupy` alone does not initialise CUDA, cupy/cupy#964). So nothing here calls CUDA in
the calling process: the device count comes from CUDA_VISIBLE_DEVICES when it is set, else from a child
process.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from gemma_oracle.engine.errors import GemmaOracleError

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
INDEX_ENV = "GEMMA_ORACLE_GPU_INDEX"
ALL = "all"
EXPECTED = f"comma-separated GPU indices such as 0,2 (CUDA's numbering in this process), or '{ALL}'"

# CUDA_VISIBLE_DEVICES entries CUDA accepts: an index, or a (possibly abbreviated) GPU or MIG UUID.
_DEVICE_ENTRY = re.compile(r"\d+|(GPU|MIG)-\S+")
_WORKER_ID = re.compile(r"gw(\d+)")
COUNT_TIMEOUT_S = 60


class GpuSelectionError(GemmaOracleError, ValueError):
    """A GPU list that cannot be used: not a list of indices, a repeat, or an index no visible GPU has."""


@dataclass(frozen=True)
class Gpu:
    """One GPU as a pinned process needs it.

    index: its number in result records: the host's number (CUDA_VISIBLE_DEVICES's entry when that is a
    list of numbers, else CUDA's ordinal); device: the CUDA_VISIBLE_DEVICES entry that shows this GPU alone.
    """

    index: int
    device: str

    def env(self) -> dict[str, str]:
        """The environment a process needs to run on this GPU alone (to be set before its first CUDA call)."""
        return {VISIBLE_ENV: self.device, INDEX_ENV: str(self.index)}


def parse_gpus(spec: str | None, *, option: str = "--gpus") -> list[int] | None:
    """`"0,2"` -> [0, 2]; None or 'all' -> None (every visible GPU). Bad input raises GpuSelectionError."""
    if spec is None or spec.strip().lower() == ALL:
        return None
    entries = [e.strip() for e in spec.split(",")]
    if not any(entries):
        raise GpuSelectionError(f"{option} {spec!r}: no GPU given; expected {EXPECTED}")
    indices: list[int] = []
    for entry in entries:
        if not entry.isdigit():
            raise GpuSelectionError(f"{option} {spec!r}: {entry!r} is not a GPU index; expected {EXPECTED}")
        if int(entry) in indices:
            raise GpuSelectionError(f"{option} {spec!r}: GPU {int(entry)} is listed twice; list each GPU once "
                                    "(more xdist workers than GPUs share them, wrapping around)")
        indices.append(int(entry))
    return indices


def visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES entries CUDA will use, or None when the variable is unset (every GPU).

    CUDA uses the entries up to the first invalid one and ignores the rest (CUDA programming guide,
    "CUDA_VISIBLE_DEVICES"), so the count here must stop there too. A repeated entry also ends the list,
    so that two workers are never handed the same GPU under two positions.
    """
    raw = environ.get(VISIBLE_ENV)
    if raw is None:
        return None
    devices: list[str] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not _DEVICE_ENTRY.fullmatch(entry) or entry in devices:
            break
        devices.append(entry)
    return devices


def cuda_device_count() -> int:
    """How many GPUs CUDA reports, asked in a child process so that this one is still free to be pinned.
    0 where CuPy or a driver is missing."""
    code = "import cupy; print(cupy.cuda.runtime.getDeviceCount())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=COUNT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    out = done.stdout.strip()
    return int(out) if done.returncode == 0 and out.isdigit() else 0


def visible_gpus(environ: Mapping[str, str] | None = None,
                 count_devices: Callable[[], int] = cuda_device_count) -> list[Gpu]:
    """The GPUs this process can see, in CUDA's order (position k is CUDA device k)."""
    environ = os.environ if environ is None else environ
    listed = visible_devices(environ)
    if listed is None:
        return [Gpu(i, str(i)) for i in range(count_devices())]
    # Numbers name the host's GPUs; UUIDs carry no number, so a list holding any is numbered by position.
    numbered = all(d.isdigit() for d in listed)
    return [Gpu(int(d) if numbered else k, d) for k, d in enumerate(listed)]


def select_gpus(spec: str | None, visible: list[Gpu] | None = None, *, option: str = "--gpus") -> list[Gpu]:
    """The GPUs a `--gpus` value names, checked against the visible ones (looked up only when needed)."""
    wanted = parse_gpus(spec, option=option)
    visible = visible_gpus() if visible is None else visible
    if wanted is None:
        return list(visible)
    if not visible:
        raise GpuSelectionError(f"{option} {spec!r}: no GPU is visible to this process "
                                f"({VISIBLE_ENV}={os.environ.get(VISIBLE_ENV, '<unset>')}, and CUDA reports none)")
    beyond = [i for i in wanted if i >= len(visible)]
    if beyond:
        raise GpuSelectionError(f"{option} {spec!r}: GPU {beyond[0]} is not visible; this process sees "
                                f"{len(visible)} GPU(s), indices 0..{len(visible) - 1}")
    return [visible[i] for i in wanted]


def worker_number(worker_id: str) -> int:
    """xdist's worker id `gwK` -> K."""
    match = _WORKER_ID.fullmatch(worker_id)
    if match is None:
        raise GpuSelectionError(f"xdist worker id {worker_id!r} is not of the form gwK; "
                                "GPU pinning needs workers started with -n COUNT")
    return int(match.group(1))


def gpu_for_worker(worker_id: str, gpus: list[Gpu]) -> Gpu:
    """Worker gwK runs on the K-th GPU of the list, wrapping around when there are more workers than GPUs."""
    if not gpus:
        raise GpuSelectionError(f"no GPU to pin xdist worker {worker_id} to")
    return gpus[worker_number(worker_id) % len(gpus)]


def pin(gpu: Gpu, environ: MutableMapping[str, str] | None = None) -> None:
    """Make this process run on `gpu` alone. Effective only before the process's first CUDA call."""
    (os.environ if environ is None else environ).update(gpu.env())


def current_gpu_index(environ: Mapping[str, str] | None = None) -> int | None:
    """The host's number of the GPU this process was pinned to, for result rows; None when not pinned."""
    value = (os.environ if environ is None else environ).get(INDEX_ENV)
    return int(value) if value is not None and value.isdigit() else None


def worker_envs(gpus: str | None = None, visible: list[Gpu] | None = None) -> list[dict[str, str]]:
    """One environment per selected GPU, for a caller that starts its own processes (the nightly, bench):
    start process k with os.environ updated by the k-th dict."""
    return [gpu.env() for gpu in select_gpus(gpus, visible)]
