"""One GPU per xdist worker, on the CPU: fake device counts (CUDA_VISIBLE_DEVICES, or a count function),
worker -> GPU for 1, 2, 4 and 8 GPUs and explicit lists, bad --gpus values, the loadgroup grouping, the
plugin end to end (pytest -n 2 in a child process, each worker on its own fake GPU before cupy is
imported), and the bench fan-out's commands, environments and report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gemma_oracle.engine.errors import GemmaOracleError
from gemma_oracle.harness import cli, gpu_pinning
from gemma_oracle.harness.perf import multi_gpu
from gemma_oracle.harness.gpu_pinning import (
    INDEX_ENV,
    VISIBLE_ENV,
    Gpu,
    GpuSelectionError,
    current_gpu_index,
    gpu_for_worker,
    parse_gpus,
    pin,
    select_gpus,
    visible_devices,
    visible_gpus,
    worker_envs,
    worker_number,
)
from gemma_oracle.reports.junit_summary import junit_rows
from gemma_oracle.harness.suites.synthetic import GPU_BOUNDARY_N, GPU_N_LIST, cases

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 600  # a child pytest on 2 busy CPU cores


def _fake_count(n: int):
    return lambda: n


def _no_count():
    raise AssertionError("the device count was asked although CUDA_VISIBLE_DEVICES says it")


# ------------------------------------------------------------------------------------------- --gpus values
@pytest.mark.parametrize("spec,expected", [
    ("0", [0]), ("0,2", [0, 2]), (" 3 , 1 ", [3, 1]), ("7,6,5,4,3,2,1,0", [7, 6, 5, 4, 3, 2, 1, 0]),
    (None, None), ("all", None), ("ALL", None),
])
def test_parse_gpus(spec, expected):
    assert parse_gpus(spec) == expected


@pytest.mark.parametrize("spec,says", [
    ("", "no GPU given"),
    (" , ", "no GPU given"),
    ("0,x", "'x' is not a GPU index"),
    ("-1", "'-1' is not a GPU index"),
    ("0,,1", "'' is not a GPU index"),
    ("1.5", "'1.5' is not a GPU index"),
    ("cuda:0", "'cuda:0' is not a GPU index"),
    ("0,1,0", "GPU 0 is listed twice"),
])
def test_bad_gpu_lists_name_the_option_and_what_was_expected(spec, says):
    with pytest.raises(GpuSelectionError) as err:
        parse_gpus(spec)
    message = str(err.value)
    assert message.startswith(f"--gpus {spec!r}: ") and says in message
    if "index" in says or "given" in says:
        assert "expected comma-separated GPU indices such as 0,2" in message and "'all'" in message
    assert isinstance(err.value, GemmaOracleError) and isinstance(err.value, ValueError)


def test_the_option_name_in_errors_is_the_callers():
    with pytest.raises(GpuSelectionError, match=r"^GPU_SUITE_GPUS '0,x': 'x' is not a GPU index"):
        parse_gpus("0,x", option="GPU_SUITE_GPUS")


# ------------------------------------------------------------------------------------------ visible GPUs
@pytest.mark.parametrize("value,expected", [
    ("0,1", ["0", "1"]),
    ("2,0", ["2", "0"]),                      # CUDA's order is the list's order
    (" 0 , 1 ", ["0", "1"]),
    ("", []),                                 # set but empty: no GPU
    ("0,2,-1,1", ["0", "2"]),                 # the CUDA guide's example: an invalid entry ends the list
    ("0,foo,1", ["0"]),
    ("0,0,1", ["0"]),                         # a repeat ends it too
    ("GPU-8932f937-d72c-4106-c12f-20bd9faed9f6,MIG-GPU-8932f937/1/0", ["GPU-8932f937-d72c-4106-c12f-20bd9faed9f6",
                                                                       "MIG-GPU-8932f937/1/0"]),
])
def test_visible_devices_reads_cuda_visible_devices_as_cuda_does(value, expected):
    assert visible_devices({VISIBLE_ENV: value}) == expected


def test_visible_devices_unset_means_every_gpu():
    assert visible_devices({}) is None


@pytest.mark.parametrize("count", [0, 1, 2, 4, 8])
def test_without_cuda_visible_devices_the_count_is_asked(count):
    gpus = visible_gpus({}, count_devices=_fake_count(count))
    assert [g.index for g in gpus] == list(range(count))
    assert [g.device for g in gpus] == [str(i) for i in range(count)]


def test_cuda_visible_devices_numbers_are_the_host_indices_and_no_count_is_asked():
    assert visible_gpus({VISIBLE_ENV: "4,6"}, count_devices=_no_count) == [Gpu(4, "4"), Gpu(6, "6")]


def test_uuid_entries_are_numbered_by_position():
    gpus = visible_gpus({VISIBLE_ENV: "GPU-aaaa,3"}, count_devices=_no_count)
    assert gpus == [Gpu(0, "GPU-aaaa"), Gpu(1, "3")]


@pytest.mark.parametrize("stdout,returncode,expected", [("4\n", 0, 4), ("", 1, 0), ("no cupy\n", 0, 0)])
def test_cuda_device_count_is_asked_in_a_child_process(monkeypatch, stdout, returncode, expected):
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(gpu_pinning.subprocess, "run", fake_run)
    assert gpu_pinning.cuda_device_count() == expected
    assert seen and seen[0][0] == sys.executable and "getDeviceCount" in seen[0][-1]


def test_cuda_device_count_is_zero_when_the_child_hangs(monkeypatch):
    def hang(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(gpu_pinning.subprocess, "run", hang)
    assert gpu_pinning.cuda_device_count() == 0


# -------------------------------------------------------------------------------------- worker -> GPU
# gpus visible -> GPU index of worker gw0, gw1, ...: K mod count, written out.
WORKER_TABLE = {
    "1gpu": (1, [0, 0, 0]),
    "2gpu": (2, [0, 1, 0, 1, 0]),
    "4gpu": (4, [0, 1, 2, 3, 0, 1]),
    "8gpu": (8, [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]),
}


@pytest.mark.parametrize("count,expected", WORKER_TABLE.values(), ids=WORKER_TABLE.keys())
def test_worker_k_runs_on_gpu_k_mod_count(count, expected):
    gpus = visible_gpus({}, count_devices=_fake_count(count))
    got = [gpu_for_worker(f"gw{k}", gpus) for k in range(len(expected))]
    assert [g.index for g in got] == expected
    assert [g.device for g in got] == [str(i) for i in expected]
    first = got[:count]  # as many workers as GPUs: every GPU exactly once
    assert len({g.device for g in first}) == count


@pytest.mark.parametrize("env,spec,expected", [
    ({}, "6,2,5", [Gpu(6, "6"), Gpu(2, "2"), Gpu(5, "5"), Gpu(6, "6")]),
    ({VISIBLE_ENV: "4,5,6,7"}, "1,3", [Gpu(5, "5"), Gpu(7, "7"), Gpu(5, "5"), Gpu(7, "7")]),
    ({VISIBLE_ENV: "GPU-aa,GPU-bb"}, "1", [Gpu(1, "GPU-bb")] * 4),
    ({VISIBLE_ENV: "3,1"}, "all", [Gpu(3, "3"), Gpu(1, "1"), Gpu(3, "3"), Gpu(1, "1")]),
], ids=["host8-list", "visible4-list", "uuids", "visible-all"])
def test_an_explicit_list_gives_worker_k_the_kth_entry(env, spec, expected):
    visible = visible_gpus(env, count_devices=_fake_count(8))
    gpus = select_gpus(spec, visible)
    assert [gpu_for_worker(f"gw{k}", gpus) for k in range(4)] == expected


@pytest.mark.parametrize("count,spec,says", [
    (4, "4", "GPU 4 is not visible; this process sees 4 GPU(s), indices 0..3"),
    (2, "0,1,5", "GPU 5 is not visible; this process sees 2 GPU(s), indices 0..1"),
    (0, "0", "no GPU is visible to this process"),
])
def test_indices_beyond_the_visible_gpus_are_refused(count, spec, says):
    with pytest.raises(GpuSelectionError) as err:
        select_gpus(spec, visible_gpus({}, count_devices=_fake_count(count)))
    assert str(err.value).startswith(f"--gpus {spec!r}: ") and says in str(err.value)


def test_all_gpus_of_none_is_an_empty_list_not_an_error():
    assert select_gpus(None, []) == [] and select_gpus("all", []) == []


@pytest.mark.parametrize("worker_id", ["master", "gw", "gwx", "gw-1", "popen-gw1"])
def test_worker_ids_that_are_not_gwk_are_refused(worker_id):
    with pytest.raises(GpuSelectionError, match="is not of the form gwK"):
        worker_number(worker_id)


def test_no_gpu_to_pin_to_is_an_error():
    with pytest.raises(GpuSelectionError, match="no GPU to pin xdist worker gw0 to"):
        gpu_for_worker("gw0", [])


# ----------------------------------------------------------------------------------- pinning, records
def test_pin_sets_the_device_and_keeps_the_host_index():
    env = {VISIBLE_ENV: "4,5,6,7"}
    assert current_gpu_index(env) is None
    pin(Gpu(6, "6"), env)
    assert env == {VISIBLE_ENV: "6", INDEX_ENV: "6"}
    assert current_gpu_index(env) == 6
    # pinned, the process sees one GPU, device 0, whose record is still the host's 6
    assert visible_gpus(env, count_devices=_no_count) == [Gpu(6, "6")]


def test_pin_defaults_to_this_process(monkeypatch):
    monkeypatch.setenv(INDEX_ENV, "")  # so that monkeypatch restores both variables afterwards
    monkeypatch.setenv(VISIBLE_ENV, "0,1")
    assert current_gpu_index() is None
    pin(Gpu(1, "1"))
    assert os.environ[VISIBLE_ENV] == "1" and current_gpu_index() == 1


def test_worker_envs_for_the_nightly():
    visible = visible_gpus({VISIBLE_ENV: "2,3,5"}, count_devices=_no_count)
    assert worker_envs(None, visible) == [{VISIBLE_ENV: "2", INDEX_ENV: "2"}, {VISIBLE_ENV: "3", INDEX_ENV: "3"},
                                          {VISIBLE_ENV: "5", INDEX_ENV: "5"}]
    assert worker_envs("2,0", visible) == [{VISIBLE_ENV: "5", INDEX_ENV: "5"}, {VISIBLE_ENV: "2", INDEX_ENV: "2"}]
    with pytest.raises(GpuSelectionError, match="GPU 3 is not visible"):
        worker_envs("3", visible)


# ------------------------------------------------------------------------------------------ grouping
@pytest.fixture
def model_group():
    pytest.importorskip("xdist", reason="needs pytest-xdist: pip install 'gemma-oracle[dev]'")
    from gemma_oracle.harness.pytest_plugin.xdist_groups import model_group

    return model_group


@pytest.mark.parametrize("nodeid,expected", [
    ("tests/test_gpu_engine.py::test_gpu_batched_equals_single_user_bitwise[g4-12b-mini-q4_k_m-n5]", "g4-12b-mini-q4_k_m"),
    ("tests/test_gpu_engine.py::test_gpu_engine_matches_float64_reference[keqv-mixed-q8_0]", "keqv-mixed-q8_0"),
    ("tests/test_gpu_engine.py::test_decode_mmq_batched_is_argmax_stable[g4-12b-mini-q4_0]", "g4-12b-mini-q4_0"),
    ("tests/t.py::TestX::test_y[g4-e2b-mini-f32-n17]", "g4-e2b-mini-f32"),
    ("tests/test_kernels_matvec_gpu.py::test_matvec[q4_k-r2048-c3840-n6]", None),
    ("tests/t.py::test_z[g4-12b-mini]", None),            # a preset without its variant is no engine
    ("tests/t.py::test_z[g4-12b-mini-q4_k_mx]", None),    # nor a longer name that starts like one
    ("tests/test_gpu_engine.py::test_long_context_rings_wrap_with_mixed_lengths", None),
])
def test_the_group_is_the_model_named_in_the_test_id(model_group, nodeid, expected):
    assert model_group(nodeid) == expected


def test_12b_modules_run_on_one_worker():
    from gemma_oracle.harness.pytest_plugin.xdist_groups import model_group

    assert model_group("tests/test_standin_gpu.py::test_standin_fast_mode_golden[shape12b-2]") == "tests/test_standin_gpu.py"
    assert model_group("tests/test_real12b.py::test_n6_through_decode_mmq[shape12b]") == "tests/test_real12b.py"


def test_every_golden_gpu_case_is_grouped_by_its_engine(model_group):
    """The ids the GPU suite gives its golden cases lead to the engine they load (engine_for's cache key)."""
    golden = cases(n_list=GPU_N_LIST, boundary_n=GPU_BOUNDARY_N)
    assert len(golden) >= 100
    for case in golden:
        nodeid = f"tests/test_gpu_engine.py::test_gpu_batched_equals_single_user_bitwise[{case.id}]"
        assert model_group(nodeid) == f"{case.preset}-{case.variant}", nodeid


# ------------------------------------------------------------------------- the plugin, end to end
CHILD_CONFTEST = '''
import importlib.abc
import json
import os
import sys
from pathlib import Path

pytest_plugins = ["gemma_oracle.harness.pytest_plugin"]

LOG = Path(os.environ["PIN_LOG"])


class FirstCupyImport(importlib.abc.MetaPathFinder):
    """Writes down CUDA_VISIBLE_DEVICES at this process's first attempt to import cupy."""

    seen = False

    def find_spec(self, name, path=None, target=None):
        if name == "cupy" and not self.seen:
            FirstCupyImport.seen = True
            who = os.environ.get("PYTEST_XDIST_WORKER", "main")
            (LOG / f"cupy-{who}.json").write_text(json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES")))
        return None


sys.meta_path.insert(0, FirstCupyImport())
'''

CHILD_TESTS = '''
import json
import os
import time
from pathlib import Path

import pytest

from gemma_oracle.harness.suites.synthetic import cases

LOG = Path(os.environ["PIN_LOG"])
CASES = cases(["keqv-mixed", "g4-e2b-mini"], ["f32", "q8_0"], (1, 2, 3), boundary_n=())
PAIRS = [("keqv-mixed", "f32"), ("g4-e2b-mini", "q8_0")]


def record(request, gpu_index, model):
    try:
        import cupy  # noqa: F401  (if nothing imported cupy before, the first attempt is here)
    except ImportError:
        pass
    node = request.node
    (LOG / f"test-{node.name}.json").write_text(json.dumps({
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "model": model,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_index": gpu_index,
        "name": node.name, "order": time.monotonic_ns()}))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, request, gpu_index):
    record(request, gpu_index, f"{case.preset}-{case.variant}")


@pytest.mark.parametrize("preset,variant", PAIRS)
def test_pair(preset, variant, request, gpu_index):
    record(request, gpu_index, f"{preset}-{variant}")


@pytest.mark.parametrize("rows", range(6))
def test_kernel(rows, request, gpu_index):
    record(request, gpu_index, None)
'''


def _child_pytest(tmp_path: Path, args: list[str], visible: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run pytest on the generated files in a child process that sees the GPUs `visible` (fake ones here)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CHILD_CONFTEST)
    (tmp_path / "test_pinned.py").write_text(CHILD_TESTS)
    log = tmp_path / "log"
    log.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (INDEX_ENV, "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env.update({VISIBLE_ENV: visible, "PIN_LOG": str(log), "PYTHONPATH": str(REPO)})
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    return done, log


def _collection_order(name: str) -> tuple:
    """Where a test of the generated file stands in collection order: test_case (by case), then test_pair."""
    kind, _, params = name.partition("[")
    return (kind != "test_case", params)


def _records(log: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(log.glob("test-*.json"))]


def test_two_xdist_workers_each_get_their_own_gpu_before_cupy_is_imported(tmp_path):
    pytest.importorskip("xdist", reason="needs pytest-xdist: pip install 'gemma-oracle[dev]'")
    done, log = _child_pytest(tmp_path, ["-n", "2", "--dist", "loadgroup"], visible="0,1")
    assert done.returncode == 0, done.stdout + done.stderr
    records = _records(log)
    assert len(records) == 12 + 2 + 6, done.stdout
    pinned = {r["worker"]: r["visible"] for r in records}
    assert pinned == {"gw0": "0", "gw1": "1"}  # both workers ran tests, each on its own GPU
    for r in records:
        assert r["visible"] == pinned[r["worker"]] and r["gpu_index"] == int(pinned[r["worker"]])
    for worker, visible in pinned.items():  # the env was already pinned at the worker's first cupy import
        assert json.loads((log / f"cupy-{worker}.json").read_text()) == visible
    # loadgroup: each model's tests ran on one worker, in collection order
    for model in ("keqv-mixed-f32", "keqv-mixed-q8_0", "g4-e2b-mini-f32", "g4-e2b-mini-q8_0"):
        mine = sorted((r for r in records if r["model"] == model), key=lambda r: r["order"])
        assert len(mine) in (3, 4) and {r["worker"] for r in mine} == {mine[0]["worker"]}, model
        assert [r["name"] for r in mine] == sorted((r["name"] for r in mine), key=_collection_order), model


def test_without_xdist_the_run_is_pinned_to_the_first_listed_gpu(tmp_path):
    done, log = _child_pytest(tmp_path, ["-p", "no:xdist", "--go-gpus", "1", "-k", "kernel"], visible="4,5")
    assert done.returncode == 0, done.stdout + done.stderr
    records = _records(log)
    assert len(records) == 6
    assert all(r["worker"] == "main" and r["visible"] == "5" and r["gpu_index"] == 5 for r in records)
    assert json.loads((log / "cupy-main.json").read_text()) == "5"


def test_a_plain_run_is_left_alone(tmp_path):
    done, log = _child_pytest(tmp_path, ["-p", "no:xdist", "-k", "kernel"], visible="4,5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(r["visible"] == "4,5" and r["gpu_index"] is None for r in _records(log))


@pytest.mark.parametrize("args,says", [
    (["--go-gpus", "0,x"], "--go-gpus '0,x': 'x' is not a GPU index; expected comma-separated GPU indices"),
    (["-n", "2", "--go-gpus", "2"], "--go-gpus '2': GPU 2 is not visible; this process sees 2 GPU(s), indices 0..1"),
], ids=["syntax", "beyond-visible"])
def test_pytest_refuses_a_bad_gpus_option(tmp_path, args, says):
    if "-n" in args:
        pytest.importorskip("xdist", reason="needs pytest-xdist: pip install 'gemma-oracle[dev]'")
    done, log = _child_pytest(tmp_path, args, visible="0,1")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert says in done.stderr
    assert not _records(log)


# ------------------------------------------------------------------------------------ bench fan-out
@pytest.mark.parametrize("models,n_gpus,expected", [
    (["a"], 1, [["a"]]),
    (["a", "b"], 2, [["a"], ["b"]]),
    (["a", "b", "c"], 2, [["a", "c"], ["b"]]),
    (["a", "b", "c", "d", "e"], 2, [["a", "c", "e"], ["b", "d"]]),
    (["a"], 4, [["a"], ["a"], ["a"], ["a"]]),
    (["a", "b"], 4, [["a"], ["b"], ["a"], ["b"]]),
])
def test_models_are_dealt_over_the_gpus(models, n_gpus, expected):
    assert multi_gpu.deal_models(models, n_gpus) == expected


def test_dealing_needs_models_and_gpus():
    with pytest.raises(ValueError, match="at least one model and one GPU"):
        multi_gpu.deal_models([], 2)


@pytest.mark.parametrize("argv,expected", [
    (["bench", "--gpus", "0,1", "--n", "1", "2"], ["bench", "--n", "1", "2"]),
    (["bench", "--n", "1", "--gpus=0,1"], ["bench", "--n", "1"]),
    (["bench", "--gpus", "0", "--gpus", "1,2", "--eager"], ["bench", "--eager"]),
    (["bench", "--gpusx", "1"], ["bench", "--gpusx", "1"]),
])
def test_without_option(argv, expected):
    assert multi_gpu.without_option(argv, "--gpus") == expected


def test_bench_jobs_restart_the_bench_once_per_gpu(tmp_path):
    argv = ["bench", "--model", "m1", "m2", "m3", "--gpus", "0,3", "--n", "1", "8", "--out", "/elsewhere", "--eager"]
    jobs = multi_gpu.bench_jobs(argv, ["m1", "m2", "m3"], [Gpu(0, "0"), Gpu(3, "3")], tmp_path)
    assert [j.models for j in jobs] == [("m1", "m3"), ("m2",)]
    assert [j.out for j in jobs] == [tmp_path / "gpu0", tmp_path / "gpu3"]
    assert jobs[1].command("PY") == ["PY", "-m", "gemma_oracle.harness.cli", "bench", "--model", "m1", "m2", "m3", "--n", "1", "8",
                                     "--out", "/elsewhere", "--eager", "--model", "m2", "--out", str(tmp_path / "gpu3")]
    env = jobs[1].env({"PATH": "/bin", VISIBLE_ENV: "0,1,2,3"})
    assert env == {"PATH": "/bin", VISIBLE_ENV: "3", INDEX_ENV: "3"}
    # what the child's own parser makes of it: its share, its directory, no fan-out, the other options kept
    child = cli.build_parser().parse_args(jobs[0].argv)
    assert (child.model, child.out, child.gpus, child.n, child.eager) == (["m1", "m3"], str(tmp_path / "gpu0"),
                                                                           None, [1, 8], True)


FAKE_BENCH = '''#!{python}
"""Stands in for `python -m gemma_oracle.harness.cli bench ...`: writes what a bench writes, from its GPU environment."""
import json, os, sys
from pathlib import Path

argv = sys.argv[3:]
out = Path(argv[len(argv) - 1 - argv[::-1].index("--out") + 1])
model = argv[len(argv) - 1 - argv[::-1].index("--model") + 1]
gpu = int(os.environ["{index_env}"])
print("benching", model, "on CUDA_VISIBLE_DEVICES", os.environ["{visible_env}"])
if gpu == 3:
    print("CUDA error: out of memory")
    sys.exit(3)
out.mkdir(parents=True, exist_ok=True)
row = {{"model": model, "n": 1, "step_ms": 1.0 + gpu, "visible": os.environ["{visible_env}"]}}
(out / "bench.json").write_text(json.dumps({{"device": "Fake GPU", "gpu": gpu, "read_gb_s": 100.0, "rows": [row]}}))
(out / "bench.md").write_text(f"| model | N | step ms |\\n|---|---|---|\\n| {{model}} | 1 | {{1.0 + gpu:.3f}} |\\n")
'''


def test_the_fan_out_runs_every_gpu_and_reports_each(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_BENCH.format(python=sys.executable, index_env=INDEX_ENV, visible_env=VISIBLE_ENV))
    fake.chmod(0o755)
    gpus = [Gpu(0, "0"), Gpu(2, "2"), Gpu(3, "3")]
    jobs = multi_gpu.bench_jobs(["bench"], ["ma", "mb", "mc"], gpus, tmp_path / "out")
    codes = multi_gpu.run_jobs(jobs, environ={"PATH": os.environ.get("PATH", "")}, python=str(fake))
    assert codes == [0, 0, 3]
    assert (tmp_path / "out" / "gpu2" / "bench.log").read_text() == "benching mb on CUDA_VISIBLE_DEVICES 2\n"
    text, combined = multi_gpu.report(jobs, codes, wall_s=12.5)
    assert text.splitlines()[0] == "bench on 3 GPUs in parallel: wall 12.5 s"
    assert "## GPU 0: ma\n\n| model | N | step ms |\n|---|---|---|\n| ma | 1 | 1.000 |" in text
    assert "## GPU 2: mb\n\n| model | N | step ms |\n|---|---|---|\n| mb | 1 | 3.000 |" in text
    assert f"## GPU 3: mc: FAILED (exit 3); the end of {tmp_path / 'out' / 'gpu3' / 'bench.log'}:" in text
    assert "    CUDA error: out of memory" in text
    assert [(r["gpu"], r["model"], r["visible"]) for r in combined["rows"]] == [(0, "ma", "0"), (2, "mb", "2")]
    assert [(g["gpu"], g["exit_code"]) for g in combined["gpus"]] == [(0, 0), (2, 0), (3, 3)]
    assert combined["gpus"][1]["device"] == "Fake GPU" and combined["wall_s"] == 12.5


def test_the_report_reads_a_stored_bench_run(tmp_path):
    """The real bench stores a run directory (reports/store.py) under --out: the report takes its report.md and
    its bench parquet rows, and ignores a run without meta.json (unfinished)."""
    import pandas as pd

    out = tmp_path / "gpu1"
    done, unfinished = out / "bench-2026-11-25-010000", out / "bench-2026-11-25-020000"
    done.mkdir(parents=True)
    unfinished.mkdir()
    pd.DataFrame([{"model": "shape12b", "n": 8, "tokens_per_s": 184.5}]).to_parquet(done / "bench.main.parquet")
    (done / "report.md").write_text("| model | N | t/s |\n| shape12b | 8 | 184.5 |\n")
    (done / "meta.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "backend": "cupy"}))
    job = multi_gpu.BenchJob(Gpu(1, "1"), ("shape12b",), out, ("bench",))
    text, combined = multi_gpu.report([job], [0], wall_s=3.0)
    assert "## GPU 1: shape12b\n\n| model | N | t/s |\n| shape12b | 8 | 184.5 |" in text
    assert combined["rows"] == [{"model": "shape12b", "n": 8, "tokens_per_s": 184.5, "gpu": 1}]
    assert combined["gpus"][0]["device"] == "NVIDIA H100 80GB HBM3"


def test_bench_gpus_errors_name_the_option(monkeypatch, capsys):
    monkeypatch.setenv(VISIBLE_ENV, "0,1")
    assert cli.main(["bench", "--gpus", "0,x"]) == 2
    assert "error: --gpus '0,x': 'x' is not a GPU index" in capsys.readouterr().err
    assert cli.main(["bench", "--gpus", "2"]) == 2
    assert "error: --gpus '2': GPU 2 is not visible; this process sees 2 GPU(s), indices 0..1" in capsys.readouterr().err


def test_bench_with_several_gpus_fans_out(monkeypatch):
    monkeypatch.setenv(VISIBLE_ENV, "0,1")
    calls = []
    monkeypatch.setattr(multi_gpu, "bench_on_gpus", lambda *a: calls.append(a) or 0)
    argv = ["bench", "--model", "g4-12b-mini", "g4-e2b-mini", "--gpus", "all", "--out", "o"]
    assert cli.main(argv) == 0
    assert calls == [(argv, ["g4-12b-mini", "g4-e2b-mini"], [Gpu(0, "0"), Gpu(1, "1")], "o")]


# ---------------------------------------------------------------------------------- result rows
def test_junit_rows_carry_the_gpu(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest">
          <testcase classname="tests.test_gpu_engine" name="test_x[g4-12b-mini-q4_k_m-n1]" time="1.5">
            <properties><property name="gpu" value="3"/></properties>
          </testcase>
          <testcase classname="tests.test_kernels_matvec_gpu" name="test_y[q4_k]" time="0.5"/>
        </testsuite></testsuites>
        """))
    rows = junit_rows(junit)
    assert [(r["test"], r["gpu"], r["outcome"]) for r in rows] == [
        ("tests.test_gpu_engine::test_x[g4-12b-mini-q4_k_m-n1]", 3, "passed"),
        ("tests.test_kernels_matvec_gpu::test_y[q4_k]", None, "passed"),
    ]


def test_summary_names_every_gpu_and_the_wall_time(tmp_path):
    pd = pytest.importorskip("pandas")
    from gemma_oracle.reports import junit_summary as gpu_summary

    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.t" name="test_a" time="1"><properties><property name="gpu" value="1"/></properties></testcase>'
        '<testcase classname="tests.t" name="test_b" time="1"/>'
        '</testsuite></testsuites>')
    (tmp_path / "gpu.txt").write_text("GPU 0, NVIDIA H200, 580.159.03, 143771 MiB\nGPU 1, NVIDIA H200, 580.159.03, 143771 MiB\n")
    (tmp_path / "wall.txt").write_text("wall 61 s: pytest -n 2 --dist loadgroup --gpus all\n")
    assert gpu_summary.main(str(tmp_path / "junit.xml"), str(tmp_path)) == 0
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[:5] == ["# GPU suite on GPU 0, NVIDIA H200, 580.159.03, 143771 MiB; GPU 1, NVIDIA H200, 580.159.03, 143771 MiB",
                         "", "wall 61 s: pytest -n 2 --dist loadgroup --gpus all", "", "passed 2"]
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert str(df["gpu"].dtype) == "Int64" and df["gpu"].tolist()[0] == 1 and pd.isna(df["gpu"].tolist()[1])
