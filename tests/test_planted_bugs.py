"""The oracle's power: every planted batching bug (tests/planted_bugs.py) fails every policy the project uses at
every N where the bug is active, and the correct engines pass every policy (no false alarm).

Policies and the candidate each judges (the candidate is what the policy is used for on real engines):

* ``float64`` (FLOAT64_POLICY; the numpy64 golden suite): the numpy64 engine, batched vs its own single-user run;
* ``exact`` (the GPU's batch-invariant routes, WS on the 12B): the numpy64 engine on a row-at-a-time matmul
  backend (RowwiseBackend, bitwise batch-invariant like WS), batched vs single-user, bitwise;
* ``calibrated`` (decode-MMQ in auto mode, the 12B stand-ins, the real 12B, outside engines): a NOISY route, the
  numpy32 engine (float32 arithmetic: its single-user run is itself ~1e-13 NMSE off the reference), judged against
  the float64 reference engine by gemma_oracle.oracles.calibrated: the batch must not be much worse than the
  route's own single-user noise.

The retired fixed-bound policies (``decode-mmq``, ``seed-12b-mmq``) are run on the same noisy candidate for the
record only: ``test_retired_fixed_bounds_miss_bugs`` shows which bugs they pass (the reason they were retired).

Inputs that make every bug fire (PROMPT_LENGTHS, STEPS): mixed prompt lengths; the first row is 62 tokens, so its
3 decode steps write positions 62..64 (the global cache grows at 64) and it is past every sliding window (16, 8),
its ring wrapped, next to short rows that have not wrapped; forced tokens differ per row (PLE, KV swap).
``test_bugs_fire_exactly_where_predicted`` checks each bug's ``fires_at`` against the logits themselves.

Run as a script (``python -m tests.test_planted_bugs``) it prints the catch table as markdown (the README's).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from gemma_oracle.engine.engine import GemmaEngine
from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.oracles.calibrated import calibrated_single_vs_batched
from gemma_oracle.oracles.compare import (
    CALIBRATED_MAX_ABS_FACTOR,
    CALIBRATED_NMSE_FACTOR,
    CALIBRATED_POLICY,
    FLOAT64_POLICY,
    MMQ_POLICY,
    SEED_MMQ_POLICY,
    check_logits_close,
    exact,
)
from gemma_oracle.oracles.metrics import max_abs, nmse
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched, single_user_logits
from tests.planted_bugs import BUGS, HookedModel, PlantedEngine, RowwiseBackend

pytestmark = pytest.mark.synthetic

# Mixed lengths (module docstring says why each); N = 8 uses them all.
PROMPT_LENGTHS = (62, 20, 9, 40, 17, 5, 33, 12)
STEPS = 3
N_LIST = (1, 2, 3, 5, 8)
SEED = 2026
# Which fixture each bug runs on: the model must have the feature the bug breaks (PLE and a KV-shared tail on
# g4-e2b-mini; k_eq_v, GQA 16/8 heads, windows of 16 on g4-12b-mini).
FIXTURE = {name: "g4-12b-mini" for name in BUGS} | {"ple-rows-shifted": "g4-e2b-mini",
                                                     "shared-kv-source": "g4-e2b-mini"}
POLICIES = ("float64", "exact", "calibrated")          # every policy the project uses
RETIRED = ("decode-mmq", "seed-12b-mmq")               # fixed bounds the calibrated rule replaced (for the record)


@functools.lru_cache(maxsize=None)
def base(preset: str, backend: str) -> GemmaEngine:
    return GemmaEngine(fixture_path(preset, "f32"), backend, memo_prefill=True)


@functools.lru_cache(maxsize=None)
def inputs(vocab: int):
    rng = np.random.default_rng(SEED)
    prompts = [[2] + [int(t) for t in rng.integers(4, vocab, size=n - 1)] for n in PROMPT_LENGTHS]
    forced = [[int(t) for t in rng.integers(4, vocab, size=STEPS)] for _ in PROMPT_LENGTHS]
    return prompts, forced


_MEMOS: dict = {}     # prefill memo per (preset, ops): shared by the planted engines on those ops
_ENGINES: dict = {}
_REFS: dict = {}      # single-user runs by (engine name, prompt, forced)


def engine(preset: str, policy: str, bug: str | None) -> PlantedEngine:
    """The candidate a policy judges (module docstring), with ``bug`` planted (None: the correct engine)."""
    key = (preset, policy, bug)
    if key not in _ENGINES:
        backend = "numpy64" if policy in ("float64", "exact") else "numpy32"
        ops = RowwiseBackend("float64") if policy == "exact" else None
        memo = _MEMOS.setdefault((preset, backend, policy == "exact"), {})
        _ENGINES[key] = PlantedEngine(base(preset, backend), BUGS[bug] if bug else HookedModel, ops=ops, memo=memo)
    return _ENGINES[key]


def run(preset: str, policy: str, bug: str | None, n: int):
    eng = engine(preset, policy, bug)
    prompts, forced = inputs(eng.vocab_size)
    prompts, forced = prompts[:n], forced[:n]
    if policy == "calibrated":
        return calibrated_single_vs_batched(eng, prompts, forced, reference_engine=base(preset, "numpy64"),
                                            policy=CALIBRATED_POLICY, cache=_REFS)
    rule = {"float64": FLOAT64_POLICY, "exact": exact(), "decode-mmq": MMQ_POLICY,
            "seed-12b-mmq": SEED_MMQ_POLICY}[policy]
    return golden_single_vs_batched(eng, prompts, forced, policy=rule, cache=_REFS)


def active(bug: str, n: int) -> bool:
    return engine(FIXTURE[bug], "float64", bug).model.fires_at(PROMPT_LENGTHS, STEPS, n)


# ------------------------------------------------------------------------------------------------ the engines

@pytest.mark.parametrize("preset", sorted(set(FIXTURE.values())))
def test_hooked_model_is_the_reference(preset):
    """The hooked copy of the forward pass (no bug) gives the reference engine's bits, single-user and batched."""
    ref, hooked = base(preset, "numpy64"), engine(preset, "float64", None)
    prompts, forced = inputs(ref.vocab_size)
    for eng_a, eng_b in ((ref, hooked),):
        seqs_a, seqs_b = [eng_a.new_sequence() for _ in prompts], [eng_b.new_sequence() for _ in prompts]
        for sa, sb, p in zip(seqs_a, seqs_b, prompts):
            eng_a.prefill(sa, p), eng_b.prefill(sb, p)
        for t in range(STEPS):
            toks = [f[t] for f in forced]
            a, b = eng_a.decode(seqs_a, toks), eng_b.decode(seqs_b, toks)
            for i in range(len(prompts)):
                c = check_logits_close(ref=a[i], cand=b[i], name_ref="GemmaEngine", name_cand="HookedModel",
                                       policy=exact(), where=f"seq {i} step {t + 1}")
                assert c.passed, c.message


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_bugs_fire_exactly_where_predicted(bug):
    """Each bug's batched logits differ from the correct engine's at the N its ``fires_at`` names and nowhere
    else (so every 'active run' in the catch table really carries the bug, and N = 1 is exact)."""
    preset = FIXTURE[bug]
    for n in N_LIST:
        differs = False
        eng_c, eng_b = engine(preset, "exact", None), engine(preset, "exact", bug)
        prompts, forced = inputs(eng_c.vocab_size)
        seqs_c, seqs_b = [eng_c.new_sequence() for _ in range(n)], [eng_b.new_sequence() for _ in range(n)]
        for sc, sb, p in zip(seqs_c, seqs_b, prompts[:n]):
            eng_c.prefill(sc, p), eng_b.prefill(sb, p)
        for t in range(STEPS):
            toks = [f[t] for f in forced[:n]]
            lc, lb = eng_c.decode(seqs_c, toks), eng_b.decode(seqs_b, toks)
            differs |= any(not check_logits_close(ref=lc[i], cand=lb[i], name_ref="correct", name_cand=bug,
                                                  policy=exact()).passed for i in range(n))
        assert differs == active(bug, n), f"{bug} at N={n}: logits differ {differs}, predicted active {active(bug, n)}"


# ------------------------------------------------------------------------------------------------ the verdicts

# The calibrated factors must sit above the correct noisy route's own batched/single-user error ratio with at least
# this margin (gemma_oracle.oracles.compare's provenance comment quotes the measurement this test repeats).
NOISE_MARGIN = 1.3


def test_noise_ratio_of_a_correct_noisy_route():
    """The calibration's measurement: on the correct numpy32 engine (float32 noise), the per-position ratio of
    the batched error to the single-user error, both against numpy64, over every fixture and N >= 2."""
    worst_nmse = worst_abs = 0.0
    for preset in sorted(set(FIXTURE.values())):
        eng, ref = engine(preset, "calibrated", None), base(preset, "numpy64")
        prompts, forced = inputs(eng.vocab_size)
        r = [single_user_logits(ref, p, f) for p, f in zip(prompts, forced)]
        s = [single_user_logits(eng, p, f) for p, f in zip(prompts, forced)]
        for n in N_LIST[1:]:
            seqs = [eng.new_sequence() for _ in range(n)]
            b = [[eng.prefill(q, p)] for q, p in zip(seqs, prompts[:n])]
            for t in range(STEPS):
                for i, row in enumerate(eng.decode(seqs, [f[t] for f in forced[:n]])):
                    b[i].append(row)
            for i in range(n):
                bi = np.asarray(b[i])
                worst_nmse = max(worst_nmse, float(np.max(nmse(r[i], bi) / nmse(r[i], s[i]))))
                worst_abs = max(worst_abs, float(np.max(max_abs(r[i], bi) / max_abs(r[i], s[i]))))
    print(f"correct numpy32 route: worst batched/single-user ratio NMSE {worst_nmse:.3f}, max |diff| {worst_abs:.3f}")
    assert worst_nmse * NOISE_MARGIN <= CALIBRATED_NMSE_FACTOR and worst_abs * NOISE_MARGIN <= CALIBRATED_MAX_ABS_FACTOR

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_every_policy_catches_every_bug_where_active(bug, policy):
    preset = FIXTURE[bug]
    for n in N_LIST:
        result = run(preset, policy, bug, n)
        if active(bug, n):
            assert not result.passed, f"{policy} MISSED {bug} at N={n}: {result.summary()}"
        else:   # inactive (N = 1 or below the bug's switch point): the engine is the correct one there
            result.assert_passed()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("preset", sorted(set(FIXTURE.values())))
def test_correct_engine_passes_every_policy(preset, policy):
    for n in N_LIST:
        run(preset, policy, None, n).assert_passed()


def test_retired_fixed_bounds_miss_bugs():
    """The fixed bounds the calibrated rule replaced pass at least one active planted bug each (the softcap
    skipped among them for the seed's 12B bounds): why they are no longer used."""
    for policy in RETIRED:
        missed = {bug for bug in BUGS for n in N_LIST if active(bug, n) and run(FIXTURE[bug], policy, bug, n).passed}
        assert missed, f"{policy} caught every planted bug; the README's table says otherwise"
    seed_missed = [n for n in N_LIST if active("softcap-skipped", n)
                   and run(FIXTURE["softcap-skipped"], "seed-12b-mmq", "softcap-skipped", n).passed]
    assert seed_missed, "the seed's 12B bounds caught the skipped softcap here"


@pytest.mark.parametrize("bug", ["softcap-skipped", "keqv-v-normed-k", "padded-keys"])
def test_the_suites_judge_auto_mode_by_the_calibrated_policy(bug):
    """The suites' own path (gemma_oracle.harness.suites.synthetic.judge, which the nightly and the real-model
    suite run): an engine in route mode auto gets the calibrated policy against the float64 engine and fails the
    bugs the retired fixed bounds passed; without the bug it passes."""
    from gemma_oracle.harness.suites.synthetic import judge, policy_for

    preset, n = FIXTURE[bug], 5
    reference = functools.partial(base, preset, "numpy64")
    for planted, should_pass in ((None, True), (bug, False)):
        eng = PlantedEngine(base(preset, "numpy32"), BUGS[planted] if planted else HookedModel)
        eng.route_mode = "auto"   # what a CupyEngine in the fast mode reports
        assert policy_for(eng, "cupy") is CALIBRATED_POLICY
        prompts, forced = inputs(eng.vocab_size)
        result = judge(eng, "cupy", prompts[:n], forced[:n], reference=reference, cache=_REFS)
        assert result.policy == "calibrated" and result.passed == should_pass, result.summary()


# ------------------------------------------------------------------------------------------------ the table

def catch_table(policies=POLICIES + RETIRED) -> list[dict]:
    """One row per bug: for each policy 'caught/active' over N_LIST, plus the correct engine's false alarms."""
    rows = []
    for bug in sorted(BUGS):
        row = {"bug": bug, "fixture": FIXTURE[bug], "active N": ",".join(str(n) for n in N_LIST if active(bug, n))}
        for policy in policies:
            act = [n for n in N_LIST if active(bug, n)]
            caught = sum(not run(FIXTURE[bug], policy, bug, n).passed for n in act)
            row[policy] = f"{caught}/{len(act)}"
        rows.append(row)
    alarms = {"bug": "(correct engine: false alarms)", "fixture": "both", "active N": "-"}
    for policy in policies:
        runs = [(p, n) for p in sorted(set(FIXTURE.values())) for n in N_LIST]
        alarms[policy] = f"{sum(not run(p, policy, None, n).passed for p, n in runs)}/{len(runs)}"
    return rows + [alarms]


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(catch_table()))
