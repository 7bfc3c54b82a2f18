"""Mutation test of the loader: hundreds of corrupted copies of fixture files either load or raise a typed error.

Acceptance (bad-input issue): ">= 200 files, 0 untyped exceptions, 0 hangs". Every mutant is made
deterministically (numpy Generator seeded with (SEED, file index)) from a small synthetic fixture: bit flips in
the header (weighted toward the first 4 KiB, where counts, lengths and types live), flips in tensor data,
truncations, byte insertions and deletions, u64 length/count fields overwritten with huge values, u32 type
fields and scalar metadata values overwritten with edge values, zeroed ranges, and combinations.

The loads run in child processes (one per CPU, each loading many files and answering one JSON line per file),
so a hang (no answer within FILE_TIMEOUT_S) or a hard crash (segfault, abort, the child dies) is observed and
counted instead of taking pytest down; the child is then replaced and the run goes on. A file that loads is
also fully dequantized (every tensor the model reads), so corrupt-but-well-formed data is read end to end.
Each child runs under an address-space limit, so a runaway allocation shows as an untyped MemoryError.
A file that loads is also checked for tensors whose data views share bytes: "silent loads of overlapping data"
must stay at 0.

Data-offset damage (issue "no traceback, no silent pass, nothing corrupt trusted": one tensor's offset copied from
another's, bit flips that keep it aligned, offsets past the data section) is enumerated on top, in-process:
test_offset_damage_never_loads (two fixtures, about 2,100 mutants in 2 s) and, with `-m real`, on the Gemma 3 270M.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from gemma_oracle.harness.fixtures.cache import fixture_path

pytestmark = pytest.mark.synthetic

REPO = Path(__file__).resolve().parents[1]
SEED = 20240611
FILE_TIMEOUT_S = float(os.environ.get("GEMMA_ORACLE_MUTATION_TIMEOUT", "8"))
START_TIMEOUT_S = 120.0
CHILD_ADDRESS_SPACE = 4 << 30
# (preset, variant, number of mutants); optional bases are skipped (with a note) if their fixture cannot be built.
# g4-e2b-mini brings per-layer arrays (feed_forward_length), PLE tensors and a KV-shared tail into reach.
BASES = [
    ("keqv-mixed", "f32", 150, False),
    ("keqv-mixed", "q8_0", 150, False),
    ("g4-e2b-mini", "q8_0", 100, False),
    ("keqv-mixed", "q4_k_m", 100, True),
]
MIN_FILES = 200

# The child: reads one JSON request per line ({"id", "path"}), answers one JSON line per request.
WORKER = r"""
import faulthandler, json, os, resource, sys, time, traceback
faulthandler.enable()
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
dump_after = float(sys.argv[2])  # where a load hangs, its stack goes to stderr before the parent kills us
selftest = len(sys.argv) > 3 and sys.argv[3] == "--selftest"
import numpy as np
from gemma_oracle.engine.errors import GemmaOracleError
from gemma_oracle.engine.model_file import load_model
# answers go to a private copy of fd 1; anything else printing to stdout (Python or C) lands on stderr
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
def answer(obj):
    out.write(json.dumps(obj) + "\n")
    out.flush()
answer({"ready": os.getpid()})
for line in sys.stdin:
    req = json.loads(line)
    path = req["path"]
    res = {"id": req["id"]}
    faulthandler.dump_traceback_later(dump_after)
    if selftest and path.endswith("__hang__"):
        time.sleep(3600)
    if selftest and path.endswith("__crash__"):
        os.abort()
    t0 = time.perf_counter()
    stage = "load"
    try:
        m = load_model(path)
        stage = "dequantize"
        nonfinite = 0
        for name in m.tensors:
            v = m.dequantize(name)
            nonfinite += int(np.count_nonzero(~np.isfinite(v)))
        # an independent look at what was loaded: the views gguf-py hands out must not share bytes
        ts = list(m.gguf.tensors.values())
        overlap = next(([a.name, b.name] for k, a in enumerate(ts) for b in ts[k + 1:]
                        if np.may_share_memory(a.data, b.data)), None)
        res.update(outcome="ok", typed=True, tensors=len(m.tensors), nonfinite=nonfinite, overlap=overlap)
    except GemmaOracleError as exc:
        msg = str(exc)
        res.update(outcome=type(exc).__name__, typed=True, stage=stage, names_file=path in msg, msg=msg[-400:])
    except BaseException as exc:
        res.update(outcome=type(exc).__name__, typed=False, stage=stage, msg=str(exc)[-400:],
                   tb=traceback.format_exc()[-3000:])
    res["seconds"] = round(time.perf_counter() - t0, 4)
    faulthandler.cancel_dump_traceback_later()
    answer(res)
"""


# --------------------------------------------------------------------------------------------------- layout
@dataclass
class Layout:
    data: bytes
    data_start: int  # first byte of tensor data
    u64_fields: list[list[int]]  # per header field: offsets of its u64 slots (lengths, counts, ne, data offsets)
    u32_fields: list[list[int]]  # per header field: offsets of its u32 slots (value types, n_dims, ggml types, u32 values)
    scalars: list[tuple[int, int, str]]  # (offset, byte size, GGUF value type) of every scalar numeric metadata value


def _layout(path: Path) -> Layout:
    """Find every integer slot of the header from the views GGUFReader hands out (offset = pointer - base)."""
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(str(path))
    base = r.data.__array_interface__["data"][0]

    def off(a: np.ndarray) -> int:
        return a.__array_interface__["data"][0] - base

    u64s, u32s, scalars = [], [], []
    fields = list(r.fields.values()) + [t.field for t in r.tensors]
    for f in fields:
        a64 = [off(p) + 8 * j for p in f.parts if p.dtype == np.uint64 for j in range(p.size)]
        a32 = [off(p) + 4 * j for p in f.parts if p.dtype == np.uint32 for j in range(p.size)]
        if a64:
            u64s.append(a64)
        if a32:
            u32s.append(a32)
        if f.types and f.types[0] not in (GGUFValueType.STRING, GGUFValueType.ARRAY) and not f.name.startswith("GGUF."):
            if f in r.fields.values():
                p = f.parts[f.data[0]]
                scalars.append((off(p), int(p.nbytes), f.types[0].name))
    return Layout(path.read_bytes(), int(r.data_offset), u64s, u32s, scalars)


# --------------------------------------------------------------------------------------------------- mutations
def _header_pos(rng: np.random.Generator, lay: Layout, n: int) -> int:
    """A byte offset (< n) in the header, 60 % of them in the first 4 KiB (counts, lengths, types, the first keys)."""
    hi = min(lay.data_start, n)
    if rng.random() < 0.6:
        hi = min(4096, hi)
    return int(rng.integers(0, hi))


def _any_pos(rng: np.random.Generator, lay: Layout, n: int) -> int:
    return _header_pos(rng, lay, n) if rng.random() < 0.5 else int(rng.integers(0, n))


def _huge(rng: np.random.Generator, old: int) -> int:
    choices = [
        (1 << 64) - 1, 1 << 63, (1 << 63) - 1, 1 << 62, 1 << 40, 1 << 32, (1 << 32) + old, 1 << 31, old << 8,
        old + int(rng.integers(1, 64)), max(old - int(rng.integers(1, 64)), 0), int(rng.integers(0, 1 << 63)), 0,
    ]
    return int(choices[int(rng.integers(0, len(choices)))]) & ((1 << 64) - 1)


def _edge_u32(rng: np.random.Generator, old: int) -> int:
    choices = [0, 1, 2, 3, 7, 9, 10, 13, 31, 99, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, old ^ (1 << int(rng.integers(0, 32))),
               old + 1, max(old - 1, 0), int(rng.integers(0, 1 << 32))]
    return int(choices[int(rng.integers(0, len(choices)))]) & 0xFFFFFFFF


def _pick(rng: np.random.Generator, fields: list[list[int]]) -> int:
    slots = fields[int(rng.integers(0, len(fields)))]
    return slots[int(rng.integers(0, len(slots)))]


def _apply(kind: str, rng: np.random.Generator, lay: Layout, buf: bytearray) -> tuple[bytearray, str]:
    n = len(buf)
    if n == 0:  # an earlier step of a combination truncated everything
        return buf, "nothing left"
    if kind == "header-bitflip":
        spots = []
        for _ in range(int(rng.integers(1, 5))):
            at, bit = _header_pos(rng, lay, n), int(rng.integers(0, 8))
            buf[at] ^= 1 << bit
            spots.append(f"{at}.{bit}")
        return buf, "flip " + ",".join(spots)
    if kind == "header-byte":
        at = _header_pos(rng, lay, n)
        buf[at] = int(rng.integers(0, 256))
        return buf, f"byte {at}"
    if kind == "data-flip":
        k = int(rng.integers(1, 65))
        at = rng.integers(min(lay.data_start, n - 1), n, size=k)
        for a in at:
            buf[int(a)] = int(rng.integers(0, 256))
        return buf, f"data {k} bytes"
    if kind == "truncate":
        cut = _header_pos(rng, lay, n) if rng.random() < 0.5 else int(rng.integers(0, n))
        return buf[:cut], f"truncate {cut}"
    if kind == "insert":
        at, k = _any_pos(rng, lay, n), int(rng.integers(1, 17))
        return buf[:at] + bytearray(rng.integers(0, 256, size=k, dtype=np.uint8).tobytes()) + buf[at:], f"insert {k}@{at}"
    if kind == "delete":
        at, k = _any_pos(rng, lay, n), int(rng.integers(1, 17))
        return buf[:at] + buf[at + k :], f"delete {k}@{at}"
    if kind == "huge-u64":
        at = _pick(rng, lay.u64_fields)
        if at + 8 > n:
            return buf, "u64 slot past the end"
        old = int.from_bytes(buf[at : at + 8], "little")
        new = _huge(rng, old)
        buf[at : at + 8] = new.to_bytes(8, "little")
        return buf, f"u64@{at} {old}->{new}"
    if kind == "u32-field":
        at = _pick(rng, lay.u32_fields)
        if at + 4 > n:
            return buf, "u32 slot past the end"
        old = int.from_bytes(buf[at : at + 4], "little")
        new = _edge_u32(rng, old)
        buf[at : at + 4] = new.to_bytes(4, "little")
        return buf, f"u32@{at} {old}->{new}"
    if kind == "meta-value":
        at, size, vtype = lay.scalars[int(rng.integers(0, len(lay.scalars)))]
        if at + size > n:
            return buf, "value past the end"
        if vtype == "FLOAT32" and rng.random() < 0.5:
            x = float(rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-30, 1e30, -0.0]))
            buf[at : at + 4] = np.float32(x).tobytes()
            return buf, f"{vtype}@{at} -> {x}"
        new = _edge_u32(rng, int.from_bytes(buf[at : at + min(size, 4)], "little"))
        buf[at : at + size] = new.to_bytes(8, "little")[:size]
        return buf, f"{vtype}@{at} -> {new & ((1 << 8 * size) - 1)}"
    if kind == "zero-range":
        at, k = _any_pos(rng, lay, n), int(rng.integers(1, 4097))
        end = min(at + k, n)
        buf[at:end] = bytes(end - at)
        return buf, f"zero {at}..{end}"
    raise ValueError(kind)


KINDS = ("header-bitflip", "header-byte", "data-flip", "truncate", "insert", "delete", "huge-u64", "u32-field",
         "meta-value", "zero-range")
# Header-side kinds are drawn more often than data flips: the header is where a loader can go wrong.
KIND_WEIGHTS = np.array([3, 1, 1, 2, 1, 1, 3, 2, 2, 1], dtype=float)


def mutate(lay: Layout, index: int) -> tuple[bytes, str, str]:
    """(mutated bytes, kind, description) for mutant `index`; deterministic, never equal to the original."""
    rng = np.random.default_rng([SEED, index])
    for _ in range(100):
        if rng.random() < 0.15:
            kinds = list(rng.choice(KINDS, size=int(rng.integers(2, 4)), p=KIND_WEIGHTS / KIND_WEIGHTS.sum()))
        else:
            kinds = [str(rng.choice(KINDS, p=KIND_WEIGHTS / KIND_WEIGHTS.sum()))]
        buf, notes = bytearray(lay.data), []
        for kind in kinds:
            buf, note = _apply(str(kind), rng, lay, buf)
            notes.append(note)
        if bytes(buf) != lay.data:
            return bytes(buf), "+".join(kinds), "; ".join(notes)
    raise AssertionError(f"mutant {index} never differed from its base")


# --------------------------------------------------------------------------------------------------- runner
class Worker:
    """One child process answering load requests; `ask` returns its answer, or a hang/crash record."""

    def __init__(self, timeout: float, selftest: bool = False):
        self.timeout, self.selftest = timeout, selftest
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.restarts = 0

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.stderr = tempfile.TemporaryFile()
        args = [sys.executable, "-c", WORKER, str(CHILD_ADDRESS_SPACE), str(0.75 * self.timeout)]
        args += ["--selftest"] if self.selftest else []
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, cwd=REPO, env=env)
        self.buf = b""
        hello = self._line(START_TIMEOUT_S)
        if hello is None or "ready" not in hello:
            raise RuntimeError(f"mutation worker did not start: {hello!r} {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:].decode(errors="replace")

    def _line(self, timeout: float) -> dict | None:
        """The next JSON line, None on timeout; raises EOFError if the child's stdout closed."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def _stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for s in (self.proc.stdin, self.proc.stdout, self.stderr):
                try:
                    s.close()
                except OSError:
                    pass
            self.proc = None

    def ask(self, index: int, path: Path) -> dict:
        if self.proc is None:
            self._start()
        try:
            self.proc.stdin.write((json.dumps({"id": index, "path": str(path)}) + "\n").encode())
            self.proc.stdin.flush()
            res = self._line(self.timeout)
        except (EOFError, BrokenPipeError):
            self.proc.wait()
            res = {"id": index, "outcome": "crash", "typed": False, "returncode": self.proc.returncode,
                   "msg": self._stderr_tail()}
            self._stop()
            self.restarts += 1
            return res
        if res is None:
            time.sleep(0.1)  # let the child's traceback dump reach stderr
            res = {"id": index, "outcome": "hang", "typed": False,
                   "msg": f"no answer in {self.timeout} s; stack: {self._stderr_tail()}"}
            self._stop()
            self.restarts += 1
        return res

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._stop()


def run_jobs(jobs: list[tuple[int, Path, Callable[[Path], None] | None]], n_workers: int, timeout: float, selftest: bool = False) -> list[dict]:
    """Run (id, path, make) jobs over n_workers children; make() writes the file just before it is loaded.

    Files that load or fail typed are deleted at once; failures are kept for reproduction.
    """
    results: list[dict] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def serve(share):
        w = Worker(timeout, selftest)
        try:
            for index, path, make in share:
                if make is not None:
                    make(path)
                res = w.ask(index, path)
                res["path"] = str(path)
                if res.get("typed") and res.get("names_file", True) and make is not None:
                    path.unlink(missing_ok=True)
                with lock:
                    results.append(res)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            w.close()

    threads = [threading.Thread(target=serve, args=(jobs[k::n_workers],)) for k in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sorted(results, key=lambda r: r["id"])


def _n_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[tuple[str, Layout, int]]:
    d = tmp_path_factory.mktemp("mutation-fixtures")
    out, notes = [], []
    for preset, variant, count, optional in BASES:
        try:
            path = fixture_path(preset, variant, directory=d)
        except Exception as exc:  # an optional base whose quantizer is unavailable
            if not optional:
                raise
            notes.append(f"skipped base {preset}/{variant}: {type(exc).__name__}: {exc}")
            continue
        out.append((f"{preset}/{variant}", _layout(path), count))
    for n in notes:
        print(n)
    return out


def test_worker_detects_hang_and_crash(tmp_path: Path):
    """The runner itself: a hang and a hard crash are reported as such and the next file is still served."""
    good = fixture_path("keqv-mixed", "q8_0", directory=tmp_path)
    missing = tmp_path / "missing.gguf"
    jobs = [(0, tmp_path / "__hang__", None), (1, good, None), (2, tmp_path / "__crash__", None), (3, missing, None)]
    res = run_jobs(jobs, n_workers=1, timeout=3.0, selftest=True)
    assert [r["outcome"] for r in res] == ["hang", "ok", "crash", "GGUFFormatError"], res
    assert res[2]["returncode"] < 0  # killed by SIGABRT
    assert res[1]["tensors"] > 0 and res[3]["names_file"]
    assert "Timeout" in res[0]["msg"] and "line" in res[0]["msg"], res[0]  # the hung child's stack was dumped


def test_mutants_are_deterministic(bases):
    name, lay, _ = bases[0]
    for i in range(20):
        assert mutate(lay, i) == mutate(lay, i)
    assert len({mutate(lay, i)[0] for i in range(20)}) == 20


def test_mutated_files_load_or_raise_typed_error(bases, tmp_path: Path):
    plan = [(name, lay) for name, lay, count in bases for _ in range(count)]
    meta: dict[int, tuple[str, str, str]] = {}  # id -> (base, kind, description), filled as files are written

    def make_job(i: int, name: str, lay: Layout):
        def make(path: Path) -> None:
            data, kind, desc = mutate(lay, i)
            meta[i] = (name, kind, desc)
            path.write_bytes(data)

        return (i, tmp_path / f"mutant-{i:04d}.gguf", make)

    jobs = [make_job(i, name, lay) for i, (name, lay) in enumerate(plan)]

    t0 = time.monotonic()
    results = run_jobs(jobs, _n_workers(), FILE_TIMEOUT_S)
    wall = time.monotonic() - t0

    by_outcome = Counter(r["outcome"] for r in results)
    by_base = Counter((meta[r["id"]][0], r["outcome"]) for r in results)
    by_kind = Counter(("combo" if "+" in meta[r["id"]][1] else meta[r["id"]][1], r["outcome"]) for r in results)
    bad = [r for r in results if not r.get("typed")]
    overlapping = [r for r in results if r["outcome"] == "ok" and r.get("overlap")]
    unnamed = [r for r in results if r.get("typed") and r["outcome"] != "ok" and not r.get("names_file")]
    slowest = max(results, key=lambda r: r.get("seconds", 0))

    lines = [f"mutation run: {len(results)} files in {wall:.1f} s on {_n_workers()} workers; slowest load "
             f"{slowest.get('seconds')} s ({meta[slowest['id']][1]})",
             "outcomes: " + ", ".join(f"{k}={v}" for k, v in by_outcome.most_common()),
             f"silent loads of overlapping tensor data: {len(overlapping)}"]
    for base in sorted({b for b, _ in by_base}):
        lines.append(f"  {base}: " + ", ".join(f"{o}={n}" for (b, o), n in sorted(by_base.items()) if b == base))
    for kind in sorted({k for k, _ in by_kind}):
        lines.append(f"  {kind}: " + ", ".join(f"{o}={n}" for (k, o), n in sorted(by_kind.items()) if k == kind))
    for r in bad + unnamed + overlapping:
        base, kind, desc = meta[r["id"]]
        what = str(r.get("msg") or r.get("overlap", ""))[:300]
        lines.append(f"  FAIL #{r['id']} {base} {kind} [{desc}] -> {r['outcome']}: {what}\n"
                     f"     {r.get('tb', '')[-1500:]}  (kept at {r['path']})")
    summary = "\n".join(lines)
    print(summary)

    assert len(results) == len(jobs) >= MIN_FILES, summary
    assert by_outcome["hang"] == 0, summary
    assert by_outcome["crash"] == 0, summary
    assert not bad, summary
    assert not unnamed, summary
    assert not overlapping, summary
    # the mix is worth something only if it reaches both sides: some mutants load, most fail typed
    assert by_outcome["ok"] > 0 and len(results) - by_outcome["ok"] > len(results) // 2, summary


# --------------------------------------------------------------------------------------------------- offset damage
# Data-offset damage, enumerated rather than drawn. Each mutant rewrites one tensor's data-offset u64 and keeps it
# aligned, so only the data-range check can see it: "offset-copy" (tensor i takes tensor j's offset),
# "offset-bitflip" (every bit from the alignment's up to one past the data section's size: most land inside another
# tensor), "offset-outside" (a range crossing the file's end, starting at it, and offsets 2^40 and 2^64 - alignment).
# Before the check, such files loaded with one tensor reading another's bytes (3 of the 356 random mutants,
# one with NaN logits; 24 of 24 offset copies). The loads run in this process, one file per base patched in place:
# offset damage cannot hang the scan (it reads no data), and a rejected file costs one header scan.
# (preset, variant, every): damage tensors 0, every, 2 * every, ... (g4-e2b-mini: 176 tensors, a 9.6 MB file)
OFFSET_BASES = [("keqv-mixed", "q8_0", 1), ("g4-e2b-mini", "q8_0", 5)]
COPY_STEPS = (1, -1, 7)  # tensor i takes the offset of tensors i + step (mod n), and of tensor 0 (token_embd)
OUTSIDE = ("crossing the end", "at the end", "2^40", "2^64 - alignment")
REAL_EVERY = 80  # on the 270M (236 tensors, 0.3 s a rejected scan of its 262k-token vocabulary), damage tensors
REAL_BITS = 2  # 0, 80 and 160, and flip only the REAL_BITS highest bits below one past the section size


@dataclass(frozen=True)
class TensorSlot:
    name: str
    slot: int  # byte offset of the tensor's data-offset u64 in the file
    offset: int  # its data offset, relative to the data section (as the file stores it)
    nbytes: int


@dataclass(frozen=True)
class DataLayout:
    size: int  # file size: the data section is [data_start, size)
    data_start: int
    alignment: int
    tensors: tuple[TensorSlot, ...]  # file order

    @property
    def section(self) -> int:
        return self.size - self.data_start


def _data_layout(reader, size: int) -> DataLayout:
    """Every tensor's data-offset slot and data range, from the views a GGUFReader (or its subclass) hands out."""
    base = reader.data.__array_interface__["data"][0]
    slots = tuple(
        TensorSlot(t.name, t.field.parts[-1].__array_interface__["data"][0] - base,
                   int(t.data_offset) - int(reader.data_offset), int(t.n_bytes))
        for t in reader.tensors
    )
    return DataLayout(size, int(reader.data_offset), int(reader.alignment), slots)


@dataclass(frozen=True)
class OffsetMutant:
    kind: str
    index: int  # the tensor whose offset is rewritten
    offset: int  # its new data offset
    desc: str


def offset_mutants(lay: DataLayout, *, every: int = 1, top_bits: int | None = None) -> list[OffsetMutant]:
    """Every offset mutant of tensors 0, every, 2 * every, ... in a fixed order; `top_bits` keeps only the highest
    bit flips below one past the section size."""
    ts, n, align = lay.tensors, len(lay.tensors), lay.alignment
    up = lambda x: -(-x // align) * align  # noqa: E731
    bits = list(range(align.bit_length() - 1, lay.section.bit_length() + 1))
    bits = bits[-top_bits:] if top_bits else bits
    out = []
    for i in range(0, n, every):
        t = ts[i]
        for j in sorted(({(i + s) % n for s in COPY_STEPS} | {0}) - {i}):
            out.append(OffsetMutant("offset-copy", i, ts[j].offset, f"{t.name} takes the offset of {ts[j].name}"))
        for bit in bits:
            out.append(OffsetMutant("offset-bitflip", i, t.offset ^ (1 << bit), f"{t.name} offset bit {bit} flipped"))
        for new, how in zip((up(lay.section - t.nbytes + 1), up(lay.section), 1 << 40, (1 << 64) - align), OUTSIDE):
            out.append(OffsetMutant("offset-outside", i, new, f"{t.name} offset {new} ({how})"))
    return out


def expected_fault(lay: DataLayout, m: OffsetMutant) -> tuple[str, set[frozenset[str]]]:
    """What the damage is, found pairwise and independently of the loader: ("outside" | "overlap" | "clean", the
    overlapping pairs). Only tensor m.index moved, and the base has no overlap, so every pair includes it."""
    t = lay.tensors[m.index]
    if m.offset + t.nbytes > lay.section:
        return "outside", set()
    pairs = {frozenset((t.name, o.name)) for k, o in enumerate(lay.tensors) if k != m.index and o.nbytes and t.nbytes
             and m.offset < o.offset + o.nbytes and o.offset < m.offset + t.nbytes}
    return ("overlap" if pairs else "clean"), pairs


def run_offset_mutants(lay: DataLayout, path: Path, mutants: list[OffsetMutant]) -> tuple[Counter, list[str], int]:
    """Patch each mutant into `path` (a copy of the base), load it, restore the 8 bytes. Returns the tally
    (kind, expected, outcome) -> count, a line per wrong outcome, and the silent loads of overlapping data."""
    from gemma_oracle.engine.errors import GemmaOracleError, GGUFFormatError, TensorDataOverlapError
    from gemma_oracle.engine.model_file import load_model

    tally, wrong, silent = Counter(), [], 0
    with open(path, "r+b") as fh:
        for m in mutants:
            t = lay.tensors[m.index]
            expected, pairs = expected_fault(lay, m)
            os.pwrite(fh.fileno(), m.offset.to_bytes(8, "little"), t.slot)
            try:
                load_model(path)
                outcome, err = "ok", None
            except TensorDataOverlapError as exc:
                outcome, err = "overlap", exc
            except GGUFFormatError as exc:
                outcome, err = ("outside" if "data out of section" in str(exc) else type(exc).__name__), exc
            except GemmaOracleError as exc:
                outcome, err = type(exc).__name__, exc
            except Exception as exc:  # untyped: recorded as a wrong outcome, never raised out of the loop
                outcome, err = f"untyped {type(exc).__name__}", exc
            finally:
                os.pwrite(fh.fileno(), t.offset.to_bytes(8, "little"), t.slot)
            tally[(m.kind, expected, outcome)] += 1
            silent += expected == "overlap" and outcome == "ok"
            text = str(err) if err is not None else ""
            if outcome != {"overlap": "overlap", "outside": "outside", "clean": "ok"}[expected]:
                problem = f"expected {expected}"
            elif expected == "overlap":
                got = frozenset((err.subject, err.other))
                s0, e0 = err.ranges[err.subject]
                s1, e1 = err.ranges[err.other]
                named = all(x in text for x in (str(path), err.subject, err.other, f"{s0}..{e0}", f"{s1}..{e1}"))
                problem = None if got in pairs and named and t.name in got and max(s0, s1) < min(e0, e1) else \
                    f"error does not name an overlapping pair with their ranges (pairs {sorted(map(sorted, pairs))})"
            elif expected == "outside":
                section = f"the data section is bytes {lay.data_start}..{lay.size}"
                named = err.subject == t.name and all(x in text for x in (str(path), section, f"data offset {m.offset}"))
                problem = None if named else f"error does not name {t.name}, its offset and the section"
            else:
                problem = None
            if problem:
                wrong.append(f"{m.kind} [{m.desc}]: {problem}; got {outcome}: {text[-300:]}")
    return tally, wrong, silent


def _summary(name: str, n: int, tally: Counter, wrong: list[str], silent: int, seconds: float) -> str:
    lines = [f"offset damage on {name}: {n} mutants in {seconds:.1f} s; silent loads of overlapping data: {silent}"]
    for k, e in sorted({(k, e) for k, e, _ in tally}):
        lines.append(f"  {k} / expected {e}: " + ", ".join(f"{o}={c}" for (k2, e2, o), c in sorted(tally.items())
                                                            if (k2, e2) == (k, e)))
    return "\n".join(lines + [f"  WRONG {w}" for w in wrong[:20]])


@pytest.mark.parametrize("preset,variant,every", OFFSET_BASES, ids=[f"{p}-{v}" for p, v, _ in OFFSET_BASES])
def test_offset_damage_never_loads(preset: str, variant: str, every: int, synthetic_gguf, tmp_path: Path):
    """Overlapping and out-of-section data offsets raise a typed error naming the tensor(s) and ranges; 0 load."""
    from gguf import GGUFReader

    from gemma_oracle.engine.model_file import load_model

    base = synthetic_gguf(preset, variant)  # the shared cache: only read here
    load_model(base)  # the undamaged base loads
    lay = _data_layout(GGUFReader(str(base)), base.stat().st_size)
    mutants = offset_mutants(lay, every=every)
    assert all(expected_fault(lay, OffsetMutant("none", i, t.offset, "")) == ("clean", set())
               for i, t in enumerate(lay.tensors)), "the base itself has overlapping or out-of-section data"
    work = tmp_path / "offset-mutant.gguf"
    work.write_bytes(base.read_bytes())

    t0 = time.monotonic()
    tally, wrong, silent = run_offset_mutants(lay, work, mutants)
    summary = _summary(f"{preset}/{variant}", len(mutants), tally, wrong, silent, time.monotonic() - t0)
    print(summary)

    assert silent == 0, summary
    assert not wrong, summary
    overlaps = Counter(k for (k, e, _), c in tally.items() for _ in range(c) if e == "overlap")
    damaged = len(range(0, len(lay.tensors), every))
    assert overlaps["offset-copy"] >= damaged and overlaps["offset-bitflip"] >= damaged, summary
    assert sum(c for (k, e, _), c in tally.items() if e == "outside") >= len(OUTSIDE) * damaged, summary
    assert work.read_bytes() == base.read_bytes()  # every patch was undone


@pytest.mark.real
def test_offset_damage_never_loads_real_gemma3(gemma3_path, tmp_path: Path):
    """The same damage on a sample of the real Gemma 3 270M's tensors; the undamaged file still loads."""
    import shutil

    from gemma_oracle.engine.gguf_file import _reader_class
    from gemma_oracle.engine.model_file import load_model

    path = Path(gemma3_path)
    load_model(path)  # the undamaged file loads
    lay = _data_layout(_reader_class()(str(path), "r"), path.stat().st_size)
    mutants = offset_mutants(lay, every=REAL_EVERY, top_bits=REAL_BITS)
    work = tmp_path / "gemma3-offset-mutant.gguf"
    shutil.copyfile(path, work)

    t0 = time.monotonic()
    tally, wrong, silent = run_offset_mutants(lay, work, mutants)
    summary = _summary("gemma3-270m", len(mutants), tally, wrong, silent, time.monotonic() - t0)
    print(summary)

    assert silent == 0, summary
    assert not wrong, summary
    assert sum(c for (_, e, _), c in tally.items() if e == "overlap") >= len(mutants) // 2, summary
    load_model(work)  # every patch was undone: the copy loads like the original
