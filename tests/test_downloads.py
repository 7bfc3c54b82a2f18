"""`gemma-oracle fixtures download` against a local Hub stand-in (tests/hub_server.py), no mocks.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every download runs
in a fresh `python -m gemma_oracle.harness.cli` process with its own environment.

Full disks and read-only directories are real: the CLI runs in a private mount namespace (`unshare -m`) over a
small tmpfs or a read-only bind mount, so the code meets ENOSPC / EROFS from the kernel, also as root (for whom
chmod stops nothing). Where no mount namespace can be made, those tests skip and say so.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shlex
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
from gemma_oracle.harness.real.hub_download import ATTEMPTS
from gemma_oracle.harness.real.verification import remember_file

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
             GEMMA_ORACLE_DOWNLOAD_BACKOFF_S="0.01",  # retries after 10, 20, 40 ms: the file stays fast
             PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else [])))
    return e


def cli(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemma_oracle.harness.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (nohup, `cmd &` in a script, some CI wrappers), and Python then installs
    # no KeyboardInterrupt handler: the Ctrl-C a test sends would do nothing. Give the child the terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gemma_oracle.harness.cli", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


@functools.lru_cache(maxsize=1)
def _unshare() -> list[str] | None:
    """`unshare -m` (root) or `unshare -rm` (user namespaces) if it can mount a tmpfs here, else None."""
    for cmd in (["unshare", "-m"], ["unshare", "-rm"]):
        try:
            probe = subprocess.run(cmd + ["sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                                                      "mount -t tmpfs -o size=64k tmpfs /tmp"],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if probe.returncode == 0:
            return cmd
    return None


def cli_mounted(env: dict, mounts: list[str], *args: str) -> subprocess.CompletedProcess:
    """The CLI in a private mount namespace after `mounts` (shell commands); the mounts end with the process."""
    unshare = _unshare()
    if unshare is None:
        pytest.skip("needs a private mount namespace (`unshare -m` as root, or user namespaces for `unshare -rm`) "
                    "to give the CLI a really full or read-only filesystem")
    script = " && ".join(mounts + ['exec "$@"'])
    return subprocess.run(unshare + ["sh", "-c", script, "sh", sys.executable, "-m", "gemma_oracle.harness.cli", *args],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def read_only(path: Path) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    q = shlex.quote(str(path))
    return [f"mount --bind {q} {q}", f"mount -o remount,bind,ro {q}"]


def tmpfs(path: Path, size: str, *, fill: bool = False) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    q = shlex.quote(str(path))
    return [f"mount -t tmpfs -o size={size} tmpfs {q}"] + ([f"{{ dd if=/dev/zero of={q}/filler bs=4k 2>/dev/null; true; }}"] if fill else [])


ERROR_PREFIX = "gemma-oracle: error: "  # the CLI's one error line (README, "The command line")


def one_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """A failed run that said so in one error line (warnings aside), no traceback and exit code `code` (1: the work
    failed; 2: bad input refused before any work); return that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(ERROR_PREFIX)]
    others = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith((ERROR_PREFIX, "warning:"))]
    assert len(errors) == 1 and not others, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


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


# ---------------------------------------------------------------------------------------------------------
# Transient HTTP statuses: retried with backoff like a dropped connection
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hub", [Faults(get_statuses=(503,)), Faults(get_statuses=(500,)), Faults(get_statuses=(429,)),
                                 Faults(head_statuses=(503,))], indirect=True,
                         ids=["get-503", "get-500", "get-429", "head-503"])
def test_one_transient_status_then_success(env, hub):
    proc = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert printed_path(proc).read_bytes() == CONTENT
    if hub.faults.get_statuses:  # the failed GET, then its retry, which gets the whole file
        assert hub.ranges() == [None, None]
    else:  # the failed HEAD, then its retry, then the transfer
        assert [m for m, _, _ in hub.requests][:3] == ["HEAD", "HEAD", "GET"] and hub.count("GET") == 1
    assert hub.bytes_sent == len(CONTENT)
    assert not leftovers(Path(env["HF_HOME"]))


@pytest.mark.parametrize("hub", [Faults(get_statuses=(503,) * 10), Faults(head_statuses=(503,) * 10)], indirect=True,
                         ids=["get", "head"])
def test_repeated_503_is_one_error_after_the_retries(env, hub):
    proc = cli(env, "fixtures", "download", "tiny", "--no-progress")
    one_error(proc, "HTTP 503", f"{ATTEMPTS} requests", "again later")
    method = "GET" if hub.faults.get_statuses else "HEAD"
    assert hub.count(method) == ATTEMPTS  # bounded: no more requests than the budget
    assert hub.count("GET") == (ATTEMPTS if method == "GET" else 0)
    assert not (repo_dir(env) / "blobs" / SHA256).exists() and not (repo_dir(env) / "snapshots").exists()
    assert not (Path(env["GEMMA_ORACLE_CACHE"]) / "verified" / "sources").exists()


# ---------------------------------------------------------------------------------------------------------
# A size mismatch: one error, no re-download loop
# ---------------------------------------------------------------------------------------------------------

SIZE_CASES = {
    "metadata-larger": (len(CONTENT) + 4096, None),
    "metadata-smaller": (len(CONTENT) - 4096, None),
    # a partial from an earlier run that is longer than the file the server now has: the Range is a 416
    "stale-partial-416": (len(CONTENT) + 4096, len(CONTENT) + 1),
}


@pytest.mark.parametrize("hub,case", [(Faults(advertised_size=size), name) for name, (size, _) in SIZE_CASES.items()],
                         indirect=["hub"], ids=list(SIZE_CASES))
def test_size_mismatch_is_one_error_without_a_redownload(env, hub, case):
    announced, partial = SIZE_CASES[case]
    part = repo_dir(env) / "blobs" / f"{SHA256}.gemma-oracle.part"
    if partial is not None:
        part.parent.mkdir(parents=True)
        part.write_bytes(CONTENT + b"\0" * (partial - len(CONTENT)))
    proc = cli(env, "fixtures", "download", "tiny", "--no-progress")
    one_error(proc, f"serves a file of {len(CONTENT)} bytes", f"metadata says {announced}", "nothing was installed")
    assert hub.count("GET") == 1  # refused on the response's size, before writing its body, and not asked again
    assert hub.ranges() == [None if partial is None else f"bytes={partial}-"]
    assert not part.exists() and not (repo_dir(env) / "blobs" / SHA256).exists()
    assert not (Path(env["GEMMA_ORACLE_CACHE"]) / "verified" / "sources").exists()


# ---------------------------------------------------------------------------------------------------------
# Full disks and read-only directories: one typed error naming the directory, no retry
# ---------------------------------------------------------------------------------------------------------

def test_full_hub_cache_is_one_error_without_retry(env, hub):
    cache = Path(env["HF_HOME"]) / "hub"
    proc = cli_mounted(env, tmpfs(cache, "1m"), "fixtures", "download", "tiny", "--no-progress")
    one_error(proc, "no space left in", str(repo_dir(env) / "blobs"), "--cache-dir")
    assert "connection" not in proc.stderr
    assert hub.count("GET") == 1  # a full disk is not retried
    assert not (Path(env["GEMMA_ORACLE_CACHE"]) / "verified" / "sources").exists()  # nothing recorded as verified


def test_full_gemma_oracle_cache_leaves_nothing_trusted_and_the_next_run_recovers(env, hub):
    """The records directory fills after the transfer: the verified blob is in place but unrecorded, so the next
    run (with room) hashes it again and installs it without a second transfer."""
    records = Path(env["GEMMA_ORACLE_CACHE"]) / "verified"
    proc = cli_mounted(env, tmpfs(records, "64k", fill=True), "fixtures", "download", "tiny", "--no-progress")
    one_error(proc, "no space left in", str(records), "GEMMA_ORACLE_CACHE")
    assert hub.count("GET") == 1
    assert not (repo_dir(env) / "snapshots").exists()  # nothing a test would load
    again = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert printed_path(again).read_bytes() == CONTENT and hub.count("GET") == 1


@pytest.mark.parametrize("where", ["hub-cache", "local-dir", "gemma-oracle-cache"])
def test_read_only_directory_is_one_error_before_any_transfer(env, hub, tmp_path, where):
    directory = {"hub-cache": Path(env["HF_HOME"]) / "hub", "local-dir": tmp_path / "models",
                 "gemma-oracle-cache": Path(env["GEMMA_ORACLE_CACHE"])}[where]
    extra = ["--local-dir", str(tmp_path / "models")] if where == "local-dir" else []
    proc = cli_mounted(env, read_only(directory), "fixtures", "download", "tiny", "--no-progress", *extra)
    # --local-dir is the user's own argument, checked before any work (bad input: 2); the caches are found
    # read-only by the download itself (the work failed: 1)
    line = one_error(proc, "Read-only file system", str(directory), code=2 if where == "local-dir" else 1)
    assert {"hub-cache": "--cache-dir", "local-dir": "--local-dir", "gemma-oracle-cache": "GEMMA_ORACLE_CACHE"}[where] in line
    assert hub.count("GET") == 0
    # writable again: the next run downloads once and installs
    again = cli(env, "fixtures", "download", "tiny", "--no-progress", *extra)
    assert again.returncode == 0, again.stderr
    assert printed_path(again).read_bytes() == CONTENT and hub.count("GET") == 1


def test_read_only_hub_cache_with_the_file_is_used(env, hub):
    first = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert first.returncode == 0, first.stderr
    ro = read_only(Path(env["HF_HOME"]) / "hub")
    for args in (("fixtures", "download", "tiny", "--no-progress"), ("fixtures", "path", "tiny"),
                 ("fixtures", "verify", "tiny", "--no-progress")):
        proc = cli_mounted(env, ro, *args)
        assert proc.returncode == 0, proc.stderr
        assert str(printed_path(first)) in proc.stdout
    assert hub.count("GET") == 1


# ---------------------------------------------------------------------------------------------------------
# Copies changed on disk: re-hashed when their stat changes, and always by `fixtures verify`
# ---------------------------------------------------------------------------------------------------------

def _flip_a_byte_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    with path.open("r+b") as fh:
        fh.seek(len(CONTENT) // 2)
        b = fh.read(1)
        fh.seek(len(CONTENT) // 2)
        fh.write(bytes([b[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_edit_in_place_with_size_and_mtime_kept_is_hashed_again(env, hub):
    first = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert first.returncode == 0, first.stderr
    _flip_a_byte_keeping_size_and_mtime(Path(os.path.realpath(printed_path(first))))
    # the write changed the ctime, which the file record holds: the copy is hashed again and refused
    one_error(cli(env, "fixtures", "path", "tiny"), f"expected {SHA256}")


def test_bit_rot_is_found_by_fixtures_verify_and_no_longer_trusted(env, hub, monkeypatch):
    first = cli(env, "fixtures", "download", "tiny", "--no-progress")
    assert first.returncode == 0, first.stderr
    path = printed_path(first)
    blob = Path(os.path.realpath(path))
    _flip_a_byte_keeping_size_and_mtime(blob)
    rotten = hashlib.sha256(blob.read_bytes()).hexdigest()
    # Bit rot on the medium changes no stat at all: a record that matches the file's stat as it is now stands in
    # for that (the file record of the download, with a stat nothing moved).
    monkeypatch.setenv("GEMMA_ORACLE_CACHE", env["GEMMA_ORACLE_CACHE"])
    remember_file(blob, SHA256)
    assert cli(env, "fixtures", "path", "tiny").returncode == 0  # the record is trusted: the limit verify exists for

    proc = cli(env, "fixtures", "verify", "tiny", "--no-progress")
    one_error(proc, "tiny")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("tiny: ")]
    assert len(line) == 1 and "MISMATCH" in line[0] and rotten in line[0] and f"expected {SHA256}" in line[0]
    assert "gemma-oracle fixtures download tiny" in line[0]
    one_error(cli(env, "fixtures", "path", "tiny"), f"has sha256 {rotten}", f"expected {SHA256}")  # not trusted now

    again = cli(env, "fixtures", "download", "tiny", "--no-progress")  # replaces it: one more transfer
    assert again.returncode == 0, again.stderr
    assert printed_path(again) == path and path.read_bytes() == CONTENT and hub.count("GET") == 2
    every = cli(env, "fixtures", "verify", "--no-progress")
    assert every.returncode == 0, every.stdout + every.stderr
    assert f"tiny: ok  {path}  sha256 {SHA256}" in every.stdout
    assert "missing-file: not present" in every.stdout


def test_fixtures_verify_of_an_absent_fixture_fails(env, hub):
    proc = cli(env, "fixtures", "verify", "tiny", "--no-progress")
    one_error(proc, "tiny")
    assert "tiny: not present (gemma-oracle fixtures download tiny)" in proc.stdout
    assert hub.requests == []  # verify never uses the network


def test_backoff_doubles_honours_retry_after_and_rejects_a_bad_setting(monkeypatch):
    from gemma_oracle.harness.real.errors import FixtureError
    from gemma_oracle.harness.real.hub_download import BACKOFF_ENV, MAX_DELAY_S, backoff_s

    monkeypatch.setenv(BACKOFF_ENV, "1")
    assert [backoff_s(n) for n in range(1, ATTEMPTS)] == [1, 2, 4, 8]
    assert backoff_s(1, "30") == 30 and backoff_s(1, "3600") == MAX_DELAY_S and backoff_s(3, "1") == 4
    assert backoff_s(1, "Wed, 21 Oct 2026 07:28:00 GMT") == 1  # an HTTP date is not waited for
    monkeypatch.setenv(BACKOFF_ENV, "soon")
    with pytest.raises(FixtureError, match=f"{BACKOFF_ENV}='soon'"):
        backoff_s(1)


@pytest.mark.parametrize("code,kind", [("ENOSPC", "DiskFullError"), ("EDQUOT", "DiskFullError"),
                                       ("EROFS", "NotWritableError"), ("EACCES", "NotWritableError"),
                                       ("EPERM", "NotWritableError"), ("EIO", "StorageError")])
def test_each_disk_errno_has_its_typed_error(code, kind, tmp_path):
    """The errno table of storage.writing (the mounts above reach ENOSPC and EROFS for real; a non-root user
    meets EACCES where root does not)."""
    import errno

    from gemma_oracle.harness.real import errors
    from gemma_oracle.harness.real.storage import writing

    with pytest.raises(errors.StorageError) as caught:
        with writing(tmp_path, doing="tiny: writing x", fix="pass --cache-dir DIR"):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    assert type(caught.value) is getattr(errors, kind)
    assert caught.value.directory == str(tmp_path) and str(tmp_path) in str(caught.value)
    assert str(caught.value).startswith("tiny: writing x") and "pass --cache-dir DIR" in str(caught.value)
