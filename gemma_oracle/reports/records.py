"""Result records: one frozen dataclass per row kind that the result store holds.

The oracle comparison, the bench, its per-op profile and its route table each produce rows of one kind;
the store (reports/store.py) writes each kind to its own parquet table, and the report code reads those
tables back. Field types decide the parquet column types (``arrow_schema``), so a run where a nullable
column happens to be all-empty still reads back with the same schema as any other run.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Sequence

NO_ROUTE = "none"  # the route of an engine that has no matmul routes (the numpy reference)


@dataclass(frozen=True)
class OracleRecord:
    """One (sequence, step) comparison of a golden single-vs-batched run, with where it came from.

    ``route`` is the engine's route mode (gemma_oracle.engine.routing.MODES) or NO_ROUTE; ``routes_taken`` counts the
    kernels that served the batched step's matmuls at this N ("ws:47 gemm_n:1"), empty where unknown.
    ``message`` is kept for failures only: a passing row's numbers are all in the metric columns.
    ``backend`` names the engine (our backends numpy64 / cupy, or an --engine name such as llamacpp, openai, process);
    ``engine_info`` is its configuration (``describe()``, JSON) so a finding names what produced it; ``test`` is the
    comparison (``sweep``: the golden sweep over N; the field tests of gemma_oracle.oracles.field: needle,
    composition, ...).
    """

    test_id: str
    suite: str
    fixture: str
    backend: str
    route: str
    n: int
    seq: int
    step: int
    token: int
    pos: int
    policy: str
    max_abs: float
    nmse: float
    kl: float
    argmax_agree: bool
    near_tie: bool
    margin: float
    ref_top_margin: float
    topk: int
    topk_overlap: int
    nonfinite: str
    passed: bool
    verdict: str
    message: str
    gpu_index: int | None = None
    routes_taken: str = ""
    test: str = "sweep"
    engine_info: str = ""


@dataclass(frozen=True)
class VerdictRecord:
    """One verdict class per engine x fixture x test x N (gemma_oracle.oracles.verdicts): ``verdict`` is one of
    bitwise / close / near-tie flips / broken, ``not_batched`` counts the batched steps the engine's own probe said
    were not one batch (a finding whatever the numbers), ``thresholds`` the policy's bounds in words, ``reason`` the
    worst row and the bound it broke. ``batched_rows`` counts the compared rows a batched call produced (the rest:
    prompts prefilled alone, N = 1), so a pass count is never inflated by rows that nothing batched."""

    engine: str
    engine_info: str
    fixture: str
    test: str
    n: int
    verdict: str
    policy: str
    thresholds: str
    reason: str
    rows: int
    failed: int
    not_batched: int
    passed: bool
    batched_rows: int = 0


@dataclass(frozen=True)
class BenchRecord:
    """Decode speed of one (model, route mode, N). Times are per decode step, medians over ``repeats``
    timed runs of ``steps`` steps each; ``spread_pct`` = (slowest - fastest) / median of those runs.

    ``weight_bytes`` and ``kv_bytes`` are what one step reads (all N sequences, mean over the timed
    positions); ``roofline_tokens_per_s`` = N * read_gb_s / (weight_bytes + kv_bytes): the memory-only
    ceiling at the bandwidth the run measured.
    """

    model: str
    backend: str
    device: str
    route: str
    n: int
    timing: str
    context: int
    prompt_lens: str
    mean_position: float
    warmup: int
    steps: int
    repeats: int
    step_ms: float
    step_ms_min: float
    step_ms_max: float
    spread_pct: float
    tokens_per_s: float
    per_seq_tokens_per_s: float
    weight_bytes: int
    kv_bytes: int
    read_gb_s: float
    roofline_tokens_per_s: float
    roofline_pct: float
    routes: str
    gpu_index: int | None = None


@dataclass(frozen=True)
class OpProfileRecord:
    """Time one decode step of N spends in one op class (a matmul role such as ffn_gate or
    per_layer_model_proj, or attention, norms, ...; "other" = the step minus every timed op)."""

    model: str
    backend: str
    route: str
    n: int
    op: str
    calls: int
    ms: float
    share_pct: float
    weight_bytes: int
    timing: str


@dataclass(frozen=True)
class RouteRecord:
    """Which kernel (``kernel``: gemma_oracle.engine.routing route name) serves one matrix at batch size N."""

    model: str
    route: str
    n: int
    tensor: str
    role: str
    type_name: str
    rows: int
    cols: int
    kernel: str


@dataclass(frozen=True)
class PlantedRecord:
    """One run of the planted-bug suite (gemma_oracle.harness.suites.planted): ``subject`` (a planted bug, or
    "correct" for an engine without one) judged by ``policy`` at N. ``expected`` is "fail" where the bug is
    active, else "pass"; ``ok`` says whether the verdict is the expected one (False: a missed bug or a false
    alarm). ``gated``: the run's verdict gates the nightly (a policy in use on the candidate it is used for);
    False: shown for the record only (a retired policy, or the calibrated rule on an int8-noise candidate, where
    bugs smaller than int8 noise are out of its reach).
    ``message`` is the first failing comparison's, empty when the run passed. ``noise_ratio`` (calibrated policies
    only, else NaN): the largest per-position ratio of the batched error to the single-user error, NMSE against
    the reference (gemma_oracle.oracles.calibrated.noise_ratios): how far above the route's own noise the bug
    got, so a miss says by how much it stayed inside."""

    subject: str
    fixture: str
    policy: str
    gated: bool
    n: int
    active: bool
    verdict: str
    expected: str
    ok: bool
    comparisons: int
    failed: int
    message: str
    noise_ratio: float = float("nan")


# table name in the store -> its row type
TABLES: dict[str, type] = {
    "oracle": OracleRecord,
    "verdicts": VerdictRecord,
    "planted": PlantedRecord,
    "bench": BenchRecord,
    "op_profile": OpProfileRecord,
    "routes": RouteRecord,
}


def columns(record_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(record_type)]


def oracle_records(result, *, test_id: str, suite: str, fixture: str, backend: str, route: str = NO_ROUTE,
                   gpu_index: int | None = None, routes_taken: str = "", engine_info: str | None = None,
                   test: str | None = None) -> list[OracleRecord]:
    """The rows of one gemma_oracle.oracles.single_vs_batched.GoldenResult (its ``to_rows``), with their provenance.
    ``engine_info``: the engine's configuration as JSON (default: what the result carries); ``test``: the name the
    caller knows the comparison by (default: the result's own)."""
    import json

    out = []
    for row in result.to_rows():
        info = engine_info if engine_info is not None else row.get("engine_info", "")
        info = info if isinstance(info, str) else json.dumps(info, sort_keys=True, default=str)
        out.append(OracleRecord(
            test_id=test_id, suite=suite, fixture=fixture, backend=backend, route=route, n=row["n"],
            seq=row["seq"], step=row["step"], token=row["token"], pos=row["pos"], policy=row["policy"],
            max_abs=float(row["max_abs"]), nmse=float(row["nmse"]), kl=float(row["kl"]),
            argmax_agree=bool(row["argmax_agree"]), near_tie=bool(row["near_tie"]), margin=float(row["margin"]),
            ref_top_margin=float(row["ref_top_margin"]), topk=int(row["topk"]), topk_overlap=int(row["topk_overlap"]),
            nonfinite=row["nonfinite"] or "", passed=bool(row["passed"]), verdict=row["verdict"],
            message="" if row["passed"] else row["message"], gpu_index=gpu_index, routes_taken=routes_taken,
            test=test or row.get("test", "sweep"), engine_info=info,
        ))
    return out


# ----------------------------------------------------------------------------------------------- schema
def _arrow_type(annotation: Any):
    import pyarrow as pa

    # `int | None` and Optional[int]: nullable columns of the inner type
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(inner[0])
    return {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}[annotation]


def arrow_schema(record_type: type):
    import pyarrow as pa

    hints = typing.get_type_hints(record_type)
    return pa.schema([(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(record_type)])


def arrow_table(records: Sequence, record_type: type):
    """A pyarrow Table of ``records`` (all of ``record_type``) with the type's fixed schema."""
    import pyarrow as pa

    wrong = {type(r).__name__ for r in records if not isinstance(r, record_type)}
    if wrong:
        raise TypeError(f"arrow_table({record_type.__name__}): got rows of type(s) {sorted(wrong)}")
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in records], schema=arrow_schema(record_type))
