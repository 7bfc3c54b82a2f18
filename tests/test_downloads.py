"""`gemma-oracle fixtures download` against a local Hub stand-in (tests/hub_server.py), no mocks.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every download runs
in a fresh `python -m gemma_oracle.harness.cli` process with its own environment.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gemma_oracle
from gemma_oracle.harness.real import files as real_files
from gemma_oracle.harness.real.catalog import get

from .hub_server import Faults, LocalHub, Repo

REPO_ROOT = Path(gemma_oracle.__file__).resolve().parents[1]
REPO_ID = "gemma-oracle-test/tiny-GGUF"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# A few transfer blocks (1 MiB reads) long, so a cut lands mid-file with whole blocks on either side.
CONTENT = np.random.default_rng(7).integers(0, 256, size=(3 << 20) + 12345, dtype=np.uint8).tobytes()
SHA256 = hashlib.sha256(CONTENT).hexdigest()
CUT = (1 << 20) + 777  # where faults interrupt the first GET

CATALOG = f"""
[tiny]
source = "hub"
repo_id = "{REPO_ID}"
filename = "tiny.gguf"
revision = "main"
purpose = "download tests"

[missing-file]
source = "hub"
repo_id = "{REPO_ID}"
filename = "absent.gguf"
"""


def start_hub(faults: Faults = Faults()) -> LocalHub:
    return LocalHub({REPO_ID: Repo({"tiny.gguf": CONTENT}, commit=COMMIT)}, faults=faults).start()


@pytest.fixture
def hub(request):
    """The local Hub; a test that wants faults parametrizes it indirectly with a Faults."""
    server = start_hub(getattr(request, "param", Faults()))
    yield server
    server.stop()


def faults(**kwargs):
    return pytest.mark.parametrize("hub", [Faults(**kwargs)], indirect=True, ids=["-".join(kwargs)])


@pytest.fixture
def env(tmp_path, hub):
    """Environment of one user on one machine: own HF_HOME, own gemma-oracle cache, the test catalog."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GEMMA_ORACLE_MODEL_"))}
    e.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url, GEMMA_ORACLE_CACHE=str(tmp_path / "go"),
             GEMMA_ORACLE_CATALOG=str(catalog), HF_HUB_DISABLE_TELEMETRY="1",
             PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else [])))
    return e


def cli(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemma_oracle.harness.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def popen(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gemma_oracle.harness.cli", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def repo_dir(env: dict) -> Path:
    return Path(env["HF_HOME"]) / "hub" / ("models--" + REPO_ID.replace("/", "--"))


def printed_path(proc) -> Path:
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("tiny: ")]
    assert len(line) == 1, proc.stdout + proc.stderr
    return Path(line[0][len("tiny: "):])


def leftovers(root: Path) -> list[Path]:
    """Partial or temporary files anywhere under root."""
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".incomplete")) or ".tmp" in p.name]


def test_download_then_offline_uses_the_cached_copy(env, hub, monkeypatch, capsys):
    first = cli(env, "fixtures", "download", "tiny")
    assert first.returncode == 0, first.stderr
    path = printed_path(first)
    assert path == repo_dir(env) / "snapshots" / COMMIT / "tiny.gguf"
    assert path.read_bytes() == CONTENT
    assert Path(os.path.realpath(path)).name == SHA256  # the huggingface_hub blob, named by its LFS sha256
    assert (repo_dir(env) / "refs" / "main").read_text() == COMMIT
    assert hub.count("GET") == 1 and hub.bytes_sent == len(CONTENT)
    assert not leftovers(Path(env["HF_HOME"]))
    records = list((Path(env["GEMMA_ORACLE_CACHE"]) / "verified" / "sources").glob("*.json"))
    assert len(records) == 1 and SHA256 in records[0].read_text()  # the first verified download's sha256

    # `fixtures list` sees it, verified (in-process: it uses no network and an explicit cache dir)
    for k in ("GEMMA_ORACLE_CACHE", "GEMMA_ORACLE_CATALOG"):
        monkeypatch.setenv(k, env[k])
    from gemma_oracle.harness.cli import main

    assert main(["fixtures", "list", "--cache-dir", str(Path(env["HF_HOME"]) / "hub")]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tiny ")]
    assert row and row[0].split()[1:3] == ["hub", "yes"] and row[0].split()[5] == "yes" and str(path) in row[0]

    seen = len(hub.requests)
    offline = cli(env | {"HF_HUB_OFFLINE": "1"}, "fixtures", "download", "tiny")
    assert offline.returncode == 0, offline.stderr
    assert printed_path(offline) == path
    again = cli(env | {"HF_HUB_OFFLINE": "1"}, "fixtures", "path", "tiny")
    assert again.returncode == 0 and again.stdout.strip() == str(path)
    assert len(hub.requests) == seen  # offline: not one request


def test_offline_without_a_cached_copy_names_the_download(env, hub):
    proc = cli(env | {"HF_HUB_OFFLINE": "1"}, "fixtures", "download", "tiny")
    assert proc.returncode == 1
    assert "HF_HUB_OFFLINE" in proc.stderr and "`gemma-oracle fixtures download tiny`" in proc.stderr
    assert hub.requests == []


@faults(drop_after=CUT)
def test_dropped_connection_is_resumed_with_a_range_request(env, hub):
    proc = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert printed_path(proc).read_bytes() == CONTENT
    assert hub.ranges() == [None, f"bytes={CUT}-"]
    assert hub.bytes_sent == len(CONTENT)  # nothing sent twice
    assert not leftovers(Path(env["HF_HOME"]))


@faults(stall_after=CUT)
def test_interrupted_download_continues_in_the_next_run(env, hub):
    part = repo_dir(env) / "blobs" / f"{SHA256}.gemma-oracle.part"
    proc = popen(env, "fixtures", "download", "tiny", "--no-progress")
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size == CUT):
        assert time.monotonic() < deadline and proc.poll() is None, "the first run never reached the stall"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # the user's Ctrl-C in the middle of the file
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    hub.release()
    assert part.stat().st_size == CUT  # kept for the next run
    assert not (repo_dir(env) / "blobs" / SHA256).exists() and not (repo_dir(env) / "snapshots").exists()

    second = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert second.returncode == 0, second.stderr
    assert printed_path(second).read_bytes() == CONTENT
    assert hub.ranges() == [None, f"bytes={CUT}-"]
    assert hub.bytes_sent == len(CONTENT)
    assert not part.exists()


@faults(corrupt=True)
def test_wrong_content_under_the_right_etag_is_removed(env, hub):
    proc = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert proc.returncode == 1
    assert f"expected {SHA256}" in proc.stderr and "nothing was installed" in proc.stderr
    assert hub.count("GET") == 1
    files = [p for p in repo_dir(env).rglob("*") if p.is_file() or p.is_symlink()] if repo_dir(env).exists() else []
    assert files == []  # no blob, no partial, no snapshot entry a test could load
    assert not (Path(env["GEMMA_ORACLE_CACHE"]) / "verified" / "sources").exists()  # nothing recorded as verified
    where = cli(env, "fixtures", "path", "tiny")
    assert where.returncode == 1 and "`gemma-oracle fixtures download tiny`" in where.stderr


def test_unknown_revision_is_a_typed_error(env, hub):
    proc = cli(env, "fixtures", "download", "tiny", "--revision", "v9-nosuch")
    assert proc.returncode == 1
    assert "no revision 'v9-nosuch'" in proc.stderr and "RevisionNotFound" in proc.stderr
    assert hub.count("GET") == 0 and not (repo_dir(env) / "blobs").exists()


def test_missing_file_is_a_typed_error(env, hub):
    proc = cli(env, "fixtures", "download", "missing-file")
    assert proc.returncode == 1
    assert "no file 'absent.gguf'" in proc.stderr and "EntryNotFound" in proc.stderr and REPO_ID in proc.stderr
    assert hub.count("GET") == 0


@faults(hold_until_heads=4)
def test_four_processes_download_once(env, hub, tmp_path):
    """The first GET is held until all four processes have asked for the file's metadata, so they really
    overlap; the lock must leave three of them waiting and then reuse the verified blob."""
    shared = tmp_path / "shared-cache"
    procs = [popen(env, "fixtures", "download", "tiny", "--cache-dir", str(shared), "--no-progress") for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    path = Path(paths.pop()[len("tiny: "):])
    assert path.read_bytes() == CONTENT
    assert hub.count("GET") == 1 and hub.bytes_sent == len(CONTENT)
    assert hub.count("HEAD") >= 4
    assert len(list((shared / ("models--" + REPO_ID.replace("/", "--")) / "blobs").iterdir())) == 1
    assert not leftovers(shared)


def test_local_dir_copy_is_found_again(env, hub, tmp_path, monkeypatch):
    models = tmp_path / "models"
    proc = cli(env, "fixtures", "download", "tiny", "--local-dir", str(models), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert printed_path(proc) == models / "tiny.gguf" and (models / "tiny.gguf").read_bytes() == CONTENT
    assert not leftovers(models) and not (Path(env["HF_HOME"]) / "hub").exists()
    # later lookups (tests, `fixtures path`) find it through the verification record, without the network
    for k in ("GEMMA_ORACLE_CACHE", "GEMMA_ORACLE_CATALOG"):
        monkeypatch.setenv(k, env[k])
    assert real_files.local_path(get("tiny")) == (models / "tiny.gguf", True)


def test_a_copy_the_user_has_skips_the_download(env, hub, tmp_path):
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(CONTENT)
    proc = cli(env | {"GEMMA_ORACLE_MODEL_TINY": str(mine)}, "fixtures", "download", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert printed_path(proc) == mine
    assert hub.count("GET") == 0 and hub.count("HEAD") == 1  # verified against the Hub's LFS sha256 only

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(CONTENT[:-1] + b"\0")
    proc = cli(env | {"GEMMA_ORACLE_MODEL_TINY": str(bad)}, "fixtures", "download", "tiny")
    assert proc.returncode == 1 and f"expected {SHA256}" in proc.stderr
    assert bad.exists()  # the user's file is reported, never deleted


def test_later_runs_verify_against_the_recorded_sha256(env, hub):
    """No pinned sha256: the first verified download records the Hub's; when the revision later serves
    other bytes, the next run refuses before transferring anything."""
    assert cli(env, "fixtures", "download", "tiny", "--no-progress").returncode == 0
    hub.stop()
    moved = LocalHub({REPO_ID: Repo({"tiny.gguf": CONTENT[::-1]}, commit="f" * 40)}).start()
    try:
        proc = cli(env | {"HF_ENDPOINT": moved.url}, "fixtures", "download", "tiny", "--no-progress")
        assert proc.returncode == 1
        assert f"is now {hashlib.sha256(CONTENT[::-1]).hexdigest()}" in proc.stderr
        assert f"{SHA256} is recorded at the first verified download" in proc.stderr
        assert moved.count("GET") == 0
    finally:
        moved.stop()
