"""The command line's bad-input matrix: every subcommand x kind of bad input (missing, a directory or a file where
the other is expected, empty, read-only, invalid values) ends in exactly one "gemma-oracle: error: ..." line on
stderr, no traceback, and the exit code of the convention (gemma_oracle.harness.cli.EXIT_CODES): 2 for input
refused before any work, 1 for work that ran and failed, 130 for Ctrl-C.

Read-only places must be read-only for root too (tests and CI run as root, and chmod does not stop root): a
read-only tmpfs mounted in a private mount namespace (`unshare -rm`) when the kernel allows one, else a directory
of sysfs (/sys/kernel), where root cannot create files either. Most cases run main() in-process (fast); the
namespace cases and the Ctrl-C case run the command in a child process.
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma_oracle.harness import cli
from gemma_oracle.harness.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, PROG, main
from gemma_oracle.harness.progress import Progress
from gemma_oracle.reports.store import list_runs, load_run

pytestmark = pytest.mark.synthetic

PREFIX = f"{PROG}: error: "
REPO = Path(__file__).resolve().parents[1]
TINY_BENCH = ["--backend", "numpy", "--model", "keqv-mixed", "--variant", "f32", "--n", "1", "--steps", "1",
              "--repeats", "1", "--warmup", "0", "--context", "32", "--no-profile", "--no-progress"]


@functools.lru_cache(maxsize=1)
def _unshare_works() -> bool:
    """Can this machine mount a read-only tmpfs in a private mount namespace (and is it refused for root)?"""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"gemma-oracle-ro-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && ! touch "$0/x"',
                               str(probe)], capture_output=True, timeout=30)
        return proc.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        probe.rmdir()


SYSFS_RO = Path("/sys/kernel")  # the fallback: root gets EACCES / EPERM creating anything there


def _child_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}
    env.pop("COLUMNS", None)
    return env


def _run_child(args: list[str], env: dict, readonly: Path | None = None) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "gemma_oracle", *args]
    if readonly is not None:
        cmd = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(readonly), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    return proc.returncode, proc.stderr


def _run_main(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse: _Parser.error, --help
        code = exc.code
    return code, capsys.readouterr().err


def _assert_one_error_line(code: int, err: str, expected_code: int, needle: str | None = None) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert code == expected_code, (code, err)
    if needle is not None:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ the matrix
# (subcommand, kind of bad input) -> (argv, exit code, a piece of the message). "{file}", "{dir}", "{empty_dir}"
# and "{missing}" are replaced by a regular file, a directory, an empty directory and a path that does not exist.
MATRIX: dict[tuple[str, str], tuple[list[str], int, str]] = {
    ("no command", "missing"): ([], EXIT_USAGE, "required"),
    ("no command", "invalid"): (["frobnicate"], EXIT_USAGE, "invalid choice"),
    ("fixtures build", "missing"): (["fixtures", "build"], EXIT_USAGE, "name at least one preset"),
    ("fixtures build", "invalid preset"): (["fixtures", "build", "nope"], EXIT_USAGE, "unknown preset 'nope'"),
    ("fixtures build", "invalid variant"): (["fixtures", "build", "keqv-mixed", "--variant", "q9"], EXIT_USAGE,
                                            "unknown variant 'q9'"),
    ("fixtures build", "stand-in variant"): (["fixtures", "build", "shape12b", "--variant", "f32"], EXIT_USAGE,
                                             "shape12b has no variant f32"),
    ("fixtures build", "negative seed"): (["fixtures", "build", "keqv-mixed", "--seed", "-1"], EXIT_USAGE, "--seed"),
    ("fixtures build", "seed not a number"): (["fixtures", "build", "keqv-mixed", "--seed", "x"], EXIT_USAGE,
                                              "'x' is not an integer"),
    ("fixtures build", "--out a file"): (["fixtures", "build", "keqv-mixed", "--out", "{file}"], EXIT_USAGE,
                                         "is not a directory"),
    ("fixtures build", "--out under a file"): (["fixtures", "build", "keqv-mixed", "--out", "{file}/sub"], EXIT_USAGE,
                                               "not a writable directory"),
    ("fixtures build", "--out empty"): (["fixtures", "build", "keqv-mixed", "--out", ""], EXIT_USAGE, "empty path"),
    ("fixtures path", "missing"): (["fixtures", "path"], EXIT_USAGE, "required"),
    ("fixtures path", "invalid"): (["fixtures", "path", "no-such-model"], EXIT_USAGE, "unknown model"),
    ("fixtures download", "missing"): (["fixtures", "download"], EXIT_USAGE, "required"),
    ("fixtures download", "invalid"): (["fixtures", "download", "no-such-model"], EXIT_USAGE, "unknown model"),
    ("fixtures download", "--local-dir a file"): (["fixtures", "download", "gemma3-270m", "--local-dir", "{file}"],
                                                  EXIT_USAGE, "is not a directory"),
    ("fixtures download", "--local-dir empty"): (["fixtures", "download", "gemma3-270m", "--local-dir", ""],
                                                 EXIT_USAGE, "empty path"),
    ("fixtures", "missing"): (["fixtures"], EXIT_USAGE, "required"),
    ("oracle", "n zero"): (["oracle", "--n", "0"], EXIT_USAGE, "0 is out of range"),
    ("oracle", "n negative"): (["oracle", "--n", "-2"], EXIT_USAGE, "-2 is out of range"),
    ("oracle", "n too large"): (["oracle", "--n", "100000"], EXIT_USAGE, "a batch size is 1..32"),
    ("oracle", "n not a number"): (["oracle", "--n", "two"], EXIT_USAGE, "'two' is not an integer"),
    ("oracle", "n missing value"): (["oracle", "--n"], EXIT_USAGE, "expected at least one argument"),
    ("oracle", "invalid preset"): (["oracle", "--preset", "nope"], EXIT_USAGE, "unknown preset 'nope'"),
    ("oracle", "invalid preset, old spelling"): (["oracle", "--presets", "nope"], EXIT_USAGE, "unknown preset"),
    ("oracle", "invalid variant"): (["oracle", "--variant", "q9"], EXIT_USAGE, "unknown variant 'q9'"),
    ("oracle", "invalid backend"): (["oracle", "--backend", "tpu"], EXIT_USAGE, "invalid choice"),
    ("oracle", "unknown option"): (["oracle", "--fast"], EXIT_USAGE, "unrecognized arguments"),
    ("nightly", "--out a file"): (["nightly", "--backend", "numpy", "--out", "{file}"], EXIT_USAGE, "not a directory"),
    ("nightly", "--root a file"): (["nightly", "--backend", "numpy", "--root", "{file}"], EXIT_USAGE,
                                   "not a directory"),
    ("nightly", "--out empty"): (["nightly", "--out", ""], EXIT_USAGE, "empty path"),
    ("nightly", "invalid part"): (["nightly", "--skip", "lunch"], EXIT_USAGE, "invalid choice"),
    ("nightly", "bad --gpus"): (["nightly", "--gpus", "0,x"], EXIT_USAGE, "not a GPU index"),
    ("bench", "n too large"): (["bench", "--n", "100000"], EXIT_USAGE, "a batch size is 1..256"),
    ("bench", "n zero"): (["bench", "--n", "0"], EXIT_USAGE, "0 is out of range"),
    ("bench", "steps zero"): (["bench", "--steps", "0"], EXIT_USAGE, "--steps"),
    ("bench", "warmup negative"): (["bench", "--warmup", "-1"], EXIT_USAGE, "--warmup"),
    ("bench", "invalid variant"): (["bench", "--variant", "q9"], EXIT_USAGE, "unknown variant 'q9'"),
    ("bench", "invalid model"): (["bench", *TINY_BENCH[:2], "--model", "no-such-model", "--out", "{dir}"], EXIT_USAGE,
                                 "--model no-such-model: not a preset"),
    ("bench", "model path a directory"): (["bench", *TINY_BENCH[:2], "--model", "{dir}", "--out", "{dir}"],
                                          EXIT_USAGE, "nor an existing GGUF file"),
    ("bench", "context too short"): (["bench", *TINY_BENCH[:6], "--context", "1", "--out", "{dir}"], EXIT_USAGE,
                                     "--context"),
    ("bench", "--out a file"): (["bench", *TINY_BENCH, "--out", "{file}"], EXIT_USAGE, "not a directory"),
    ("bench", "--out empty"): (["bench", "--out", ""], EXIT_USAGE, "empty path"),
    ("report", "missing"): (["report"], EXIT_USAGE, "required"),
    ("report", "missing directory"): (["report", "{missing}"], EXIT_USAGE, "no such directory"),
    ("report", "a file"): (["report", "{file}"], EXIT_USAGE, "not a directory"),
    ("report", "empty directory"): (["report", "{empty_dir}"], EXIT_USAGE, "meta.json"),
    ("inspect", "missing"): (["inspect"], EXIT_USAGE, "required"),
    ("inspect", "missing file"): (["inspect", "{missing}"], EXIT_USAGE, "no such file"),
    ("inspect", "a directory"): (["inspect", "{dir}"], EXIT_USAGE, "is a directory"),
    ("inspect", "empty file"): (["inspect", "{file}"], EXIT_FAILED, "{file}"),  # the work (validation) ran: 1
}


def _fill(args: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in args]


@pytest.fixture
def paths(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_bytes(b"")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "empty-dir").mkdir()
    monkeypatch.chdir(tmp_path)  # defaults such as reports/nightly land here
    return {"file": str(tmp_path / "a-file"), "dir": str(tmp_path / "a-dir"),
            "empty_dir": str(tmp_path / "empty-dir"), "missing": str(tmp_path / "not-there")}


@pytest.mark.parametrize("key", list(MATRIX), ids=[f"{c}:{k}" for c, k in MATRIX])
def test_bad_input_gives_one_error_line(key, paths, capsys):
    args, expected_code, needle = MATRIX[key]
    code, err = _run_main(_fill(args, paths), capsys)
    _assert_one_error_line(code, err, expected_code, needle.format(**paths))


# read-only for root: each case's command, the read-only directory given as {ro}, or the cache pointed there
READ_ONLY: dict[str, tuple[list[str], dict[str, str], str]] = {
    "fixtures build --out": (["fixtures", "build", "keqv-mixed", "--variant", "f32", "--out", "{ro}"], {}, "--out"),
    "fixtures build --out below": (["fixtures", "build", "keqv-mixed", "--out", "{ro}/sub"], {}, "--out"),
    "fixtures build, cache": (["fixtures", "build", "keqv-mixed", "--variant", "f32"],
                              {"GEMMA_ORACLE_CACHE": "{ro}"}, "GEMMA_ORACLE_CACHE"),
    "fixtures download --local-dir": (["fixtures", "download", "gemma3-270m", "--local-dir", "{ro}"], {},
                                      "--local-dir"),
    "oracle, cache": (["oracle", "--backend", "numpy", "--preset", "keqv-mixed", "--variant", "f32", "--n", "1"],
                      {"GEMMA_ORACLE_CACHE": "{ro}/cache"}, "GEMMA_ORACLE_CACHE"),
    "nightly --out": (["nightly", "--backend", "numpy", "--out", "{ro}"], {}, "--out"),
    "nightly --root": (["nightly", "--backend", "numpy", "--root", "{ro}/nightly"], {}, "--out"),
    "nightly, cache": (["nightly", "--backend", "numpy", "--out", "{tmp}/n"], {"GEMMA_ORACLE_CACHE": "{ro}"},
                       "GEMMA_ORACLE_CACHE"),
    "bench --out": (["bench", *TINY_BENCH, "--out", "{ro}"], {}, "--out"),
    "bench, cache": (["bench", *TINY_BENCH, "--out", "{tmp}/b"], {"GEMMA_ORACLE_CACHE": "{ro}"},
                     "GEMMA_ORACLE_CACHE"),
}


@pytest.mark.parametrize("case", list(READ_ONLY))
def test_read_only_for_root_is_refused_before_any_work(case, tmp_path, capsys, monkeypatch):
    args, env, needle = READ_ONLY[case]
    if _unshare_works():  # a read-only tmpfs, in a mount namespace of the child's own
        ro = tmp_path / "ro"
        ro.mkdir()
        fill = {"ro": str(ro), "tmp": str(tmp_path)}
        code, err = _run_child(_fill(args, fill), _child_env(**{k: v.format(**fill) for k, v in env.items()}),
                               readonly=ro)
    else:  # sysfs: root cannot create files there either
        fill = {"ro": str(SYSFS_RO), "tmp": str(tmp_path)}
        for k, v in env.items():
            monkeypatch.setenv(k, v.format(**fill))
        code, err = _run_main(_fill(args, fill), capsys)
    _assert_one_error_line(code, err, EXIT_USAGE, needle)
    assert "writable" in err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [], "work started before the check"


# ------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_in_the_nightly_is_one_line_exit_130_and_leaves_no_run(tmp_path):
    root, cache = tmp_path / "nightly", tmp_path / "cache"
    # SIGINT at its default in the child, whatever this process inherited (a background CI job ignores it), so
    # Python turns it into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "gemma_oracle", "nightly", "--backend", "numpy", "--no-progress",
                             "--out", str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=_child_env(GEMMA_ORACLE_CACHE=str(cache)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()  # printed once the checks passed and the run is about to start
        assert first.startswith("nightly: backend numpy64"), first
        time.sleep(1.0)  # inside the run: fixture builds (a fresh cache) and the synthetic suite
        assert proc.poll() is None, "the nightly ended before the interrupt"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_one_error_line(proc.returncode, err, EXIT_INTERRUPTED, "interrupted")
    assert list_runs(root) == [] and [p.name for p in root.iterdir()] == [], "a run directory was left behind"


# ------------------------------------------------------------------------------------------ results are kept
def test_a_failed_write_after_the_bench_keeps_the_results_and_says_where(tmp_path, capsys, monkeypatch):
    real_store = cli._store_bench
    out = tmp_path / "runs"

    def store(root, stem, result, meta):
        if Path(root) == out:
            raise PermissionError(13, "Permission denied", str(root / stem))
        return real_store(root, stem, result, meta)

    monkeypatch.setattr(cli, "_store_bench", store)
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp_path))  # the fallback under tmp_path
    code, err = _run_main(["bench", *TINY_BENCH, "--out", str(out)], capsys)
    # the bench's own result lines come first (tqdm.write), then one error line
    assert err.splitlines()[0].startswith("bench keqv-mixed-f32 none N=1: ")
    _assert_one_error_line(code, "\n".join(err.splitlines()[1:]), EXIT_FAILED, "the results are in ")
    kept = Path(err.strip().rsplit("the results are in ", 1)[1])
    assert list_runs(kept.parent) == [kept] and load_run(kept)["bench"]["n"].tolist() == [1]
    assert list_runs(out) == []


# ------------------------------------------------------------------------------------------ flags and help
def _parsers(parser: argparse.ArgumentParser, name: str = PROG):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, parser in _parsers(cli.build_parser()) for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help != argparse.SUPPRESS)]
    assert missing == []


def test_one_flag_vocabulary_with_the_old_spellings_kept():
    parser = cli.build_parser()
    commands = dict(_parsers(parser))
    for command in ("oracle", "nightly", "bench"):
        options = {s for a in commands[f"{PROG} {command}"]._actions for s in a.option_strings}
        assert {"--backend", "--no-progress"} <= options, command
    for command in ("nightly", "bench", "fixtures build"):
        assert "--out" in {s for a in commands[f"{PROG} {command}"]._actions for s in a.option_strings}, command
    new = parser.parse_args(["oracle", "--preset", "keqv-mixed", "--variant", "f32"])
    old = parser.parse_args(["oracle", "--presets", "keqv-mixed", "--variants", "f32"])
    assert (new.preset, new.variant) == (old.preset, old.variant) == (["keqv-mixed"], ["f32"])
    assert parser.parse_args(["nightly", "--root", "x"]).out == parser.parse_args(["nightly", "--out", "x"]).out == "x"


def test_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes" in text and "130" in text and "--no-progress" in text


# ------------------------------------------------------------------------------------------ progress
def test_progress_off_a_terminal_is_plain_lines(capsys):
    with Progress(3, "stage", True, period_s=0.0) as bar:  # capsys's stderr is not a terminal
        for i in range(3):
            bar.set_postfix_str(f"case {i}")
            bar.update()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["stage: 1/3 cases (case 0), 0 s", "stage: 2/3 cases (case 1), 0 s",
                                "stage: 3/3 cases, 0 s"]
    with Progress(3, "quiet", False, period_s=0.0) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_oracle_in_a_log_has_no_carriage_returns(capsys):
    assert main(["oracle", "--backend", "numpy", "--preset", "keqv-mixed", "--variant", "f32", "--n", "1"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "oracle: 1/1 cases" in captured.err
    assert "1 passed, 0 failed" in captured.out
