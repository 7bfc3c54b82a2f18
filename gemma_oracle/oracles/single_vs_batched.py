"""The golden comparison: every batched row against its own single-user run (FlashInfer's test shape).

Protocol (teacher-forced: both sides are fed the same tokens, so one side's argmax never steers the other):

* Reference, per sequence i, ALONE: ``new_sequence``, ``prefill(prompts[i])``, then for t in 0..T-1 one
  ``decode([seq], [forced[i][t]])``. Reference engine defaults to the candidate engine itself.
* Candidate, all N together: ``new_sequence`` and ``prefill`` for each sequence, then T batched
  ``decode(all_seqs, [forced[i][t] for i])`` calls.

Step numbering (keys and messages): **step 0** = the logits of the last prompt position (from ``prefill``);
**step s in 1..T** = the logits returned by the s-th decode call, after feeding ``forced[i][s-1]``. The key's
``token`` is the token fed at that position (``prompts[i][-1]`` for step 0, ``forced[i][s-1]`` after), and
``pos`` = len(prompts[i]) - 1 + s is its 0-based position in the sequence.

The batch probe: an engine that offers ``last_batch()`` is asked after every batched call (a decode of N >= 2
rows, a ``prefill_batch``) how many forward passes it took; a call that was not one batch is recorded in the
result (``not_batched``) and fails it, whatever the logits say: a server that quietly runs the rows one by one
is not batching, so its numbers say nothing about batched decode.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, MutableMapping, Optional, Sequence

import numpy as np

from gemma_oracle.oracles.compare import Comparison, Policy, check_logits_close
from gemma_oracle.engine.protocol import (BatchRecord, DecodeEngine, TopKLogprobs, batch_record, describe_engine,
                                          output_logprobs)

__all__ = [
    "GoldenResult",
    "NotBatched",
    "RefCache",
    "golden_single_vs_batched",
    "greedy_forced_tokens",
    "host_logits",
    "memoised_single_user",
    "probe_batch",
    "require_engine",
    "single_user_logits",
    "stack_rows",
]

# (reference engine name, prompt, forced script) -> read-only [T+1, vocab] logits of the single-user run
RefKey = tuple[str, tuple[int, ...], tuple[int, ...]]
RefCache = MutableMapping[RefKey, np.ndarray]


def require_engine(engine: Any, role: str) -> None:
    """TypeError unless ``engine`` meets the DecodeEngine protocol (``role`` names it in the message)."""
    if not isinstance(engine, DecodeEngine):
        raise TypeError(f"{role} {engine!r} does not meet gemma_oracle.engine.protocol.DecodeEngine "
                        "(needs name, vocab_size, new_sequence, prefill, decode)")


def host_logits(x: Any, shape: tuple[int, ...], engine: DecodeEngine, call: str) -> "np.ndarray | TopKLogprobs":
    """An engine's rows as a host copy of the expected shape (ValueError naming ``call`` otherwise).

    ``shape`` is the dense shape ((vocab,) or (N, vocab)). An engine that answers with ``TopKLogprobs`` (see
    gemma_oracle.engine.protocol.output_topk) passes when its leading shape matches and every row lists between 1
    and vocab distinct ids inside the vocabulary with finite log-probabilities; the copy is a TopKLogprobs.
    """
    if isinstance(x, TopKLogprobs):
        ids, lp = np.array(x.ids, copy=True), np.array(x.logprobs, copy=True)
        vocab = shape[-1]
        lead_ok = ids.shape[:-1] == shape[:-1] and 1 <= ids.shape[-1] <= vocab
        problem = None if lead_ok else f"top-k rows of shape {ids.shape}, expected {shape[:-1] + ('k',)} with 1 <= k <= {vocab}"
        if problem is None and ids.size and (ids.min() < 0 or ids.max() >= vocab):
            problem = f"top-k ids outside the vocabulary [0, {vocab})"
        if problem is None and not np.isfinite(lp).all():
            problem = "non-finite top-k log-probabilities (an unknown entry is left out, not -inf)"
        if problem is None and (np.diff(np.sort(ids, axis=-1), axis=-1) == 0).any():
            problem = "a top-k row lists an id twice"
        if problem is not None:
            raise ValueError(f"engine {engine.name!r}: {call} returned {problem}")
        return TopKLogprobs(ids, lp)
    # Copy: an engine may hand back a view of a buffer that its next call overwrites.
    arr = np.array(x, copy=True)
    if arr.shape != shape:
        raise ValueError(f"engine {engine.name!r}: {call} returned logits of shape {arr.shape}, expected {shape}")
    return arr


def stack_rows(rows: Sequence[Any]) -> "np.ndarray | TopKLogprobs":
    """Rows of one run stacked ([T, vocab], or TopKLogprobs of shape (T, k) when the engine answers with top-k)."""
    if rows and all(isinstance(r, TopKLogprobs) for r in rows):
        if len({r.k for r in rows}) != 1:
            raise ValueError(f"top-k rows of one run must share k, got {sorted({r.k for r in rows})}")
        return TopKLogprobs(np.stack([r.ids for r in rows]), np.stack([r.logprobs for r in rows]))
    if any(isinstance(r, TopKLogprobs) for r in rows):
        raise ValueError("an engine answered some steps with top-k rows and others with dense rows")
    return np.stack(rows)


def single_user_logits(engine: DecodeEngine, prompt: Sequence[int], forced: Sequence[int]) -> np.ndarray:
    """One sequence decoded alone: returns [T+1, vocab], row 0 = prefill, row s = after feeding forced[s-1]."""
    v = engine.vocab_size
    seq = engine.new_sequence()
    rows = [host_logits(engine.prefill(seq, list(prompt)), (v,), engine, "prefill")]
    for tok in forced:
        rows.append(host_logits(engine.decode([seq], [int(tok)]), (1, v), engine, "decode (N=1)")[0])
    return stack_rows(rows)


def _top_token(row) -> int:
    return int(row.ids[0]) if isinstance(row, TopKLogprobs) else int(np.argmax(row))


def greedy_forced_tokens(engine: DecodeEngine, prompt: Sequence[int], T: int) -> list[int]:
    """A forced-token script of length T made by greedy decoding the prompt alone (ties: lower token id).

    Token 0 is the argmax of the prefill logits; each later token is the argmax after feeding the previous one,
    so T tokens take T-1 decode calls.
    """
    require_engine(engine, "engine")
    if T <= 0:
        return []
    v = engine.vocab_size
    seq = engine.new_sequence()
    logits = host_logits(engine.prefill(seq, list(prompt)), (v,), engine, "prefill")
    tokens = [_top_token(logits)]
    while len(tokens) < T:
        logits = host_logits(engine.decode([seq], [tokens[-1]]), (1, v), engine, "decode (N=1)")[0]
        tokens.append(_top_token(logits))
    return tokens


# (step, record) of a batched call that was not one batch: ``step`` numbers the call as the result's rows do (the
# decode step 1..T in the sweep; in a field test the call's index in its run, see GoldenResult.calls)
NotBatched = tuple[int, BatchRecord]


def _describe_record(step: int, rec: BatchRecord) -> str:
    extra = f", {rec.attempts} attempts" if rec.attempts != 1 else ""
    detail = f"; {rec.detail}" if rec.detail else ""
    return (f"step {step}: {rec.rows} rows in {rec.forward_calls} forward calls where {rec.min_forward_calls} "
            f"carry them together{extra}{detail}")


@dataclass(frozen=True)
class GoldenResult:
    """All per-(sequence, step) comparisons of one golden run. ``keys[j]`` = (seq, step, token) of
    ``comparisons[j]``; ``positions[j]`` its sequence position. ``reference_cache_hits`` = how many of the N
    single-user references came from the memo instead of being run.

    ``test`` names the run: "sweep" for the golden comparison, a field test's name (gemma_oracle.oracles.field)
    otherwise; ``engine_info`` is the candidate's ``describe_engine``, stored with every row so a finding names
    what produced it. ``not_batched`` lists the batched calls the engine's own probe (``last_batch``) says were
    not one batch: each fails the result (module docstring). ``calls[j]``, when given, is the step number (as in
    ``not_batched``) of the batched call that produced row j, None for a row from a one-sequence call; empty means
    the key's step (the sweep). ``cases[j]``, when given, is the field test's label of row j (e.g. where the needle
    sat). ``note`` says what kind of comparison the test makes; ``skipped``, when set, why it did not run (then
    there are no rows).
    """

    engine: str
    reference: str
    policy: str
    n: int
    t: int
    keys: tuple[tuple[int, int, int], ...]
    positions: tuple[int, ...]
    comparisons: tuple[Comparison, ...]
    reference_cache_hits: int = 0
    test: str = "sweep"
    engine_info: dict = field(default_factory=dict, hash=False)
    not_batched: tuple[NotBatched, ...] = ()
    calls: tuple[Optional[int], ...] = ()
    cases: tuple[str, ...] = ()
    note: str = ""
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return not self.not_batched and all(c.passed for c in self.comparisons)

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    @property
    def failing_keys(self) -> list[tuple[int, int, int]]:
        return [k for k, c in zip(self.keys, self.comparisons) if not c.passed]

    def not_batched_message(self) -> str:
        """The not-batched finding in words ("" when every batched call was one batch)."""
        if not self.not_batched:
            return ""
        calls = "; ".join(_describe_record(step, rec) for step, rec in self.not_batched)
        return (f"NOT BATCHED: {len(self.not_batched)} batched call(s) were not one batch ({calls}); an engine that "
                f"runs the rows one by one is not batching, whatever its numbers")

    def summary(self) -> str:
        title = "golden single-vs-batched" if self.test == "sweep" else f"field test {self.test}"
        head = (f"{title}: {self.engine} (batched) vs {self.reference} (single-user), "
                f"policy {self.policy}, N={self.n}, T={self.t}: ")
        if self.skipped:
            return head + f"SKIPPED: {self.skipped}"
        total = len(self.comparisons)
        fails = self.failing_keys
        if not fails:
            text = head + f"all {total} comparisons passed"
        else:
            seqs = sorted({k[0] for k in fails})
            text = head + (f"{len(fails)}/{total} comparisons FAILED in seq(s) {seqs}; "
                           f"first: {self.failures[0].message}")
        finding = self.not_batched_message()
        text = f"{text}; {finding}" if finding else text
        return f"{text} ({self.note})" if self.note else text

    def assert_passed(self, max_shown: int = 5) -> None:
        """Raise AssertionError listing the first ``max_shown`` failures (sequence, step, token, numbers) and the
        calls that were not one batch."""
        if self.passed:
            return
        fails = self.failures
        lines = [self.summary()] + [f"  - {c.message}" for c in fails[:max_shown]]
        if len(fails) > max_shown:
            lines.append(f"  ... and {len(fails) - max_shown} more")
        raise AssertionError("\n".join(lines))

    def to_rows(self) -> list[dict]:
        """One plain dict per (sequence, step) for a result store: keys, every metric, the verdict. A row made by a
        call that was not one batch fails (``one_batch`` False), whatever its numbers."""
        info = json.dumps(self.engine_info, sort_keys=True, default=str)
        unbatched = {step: rec for step, rec in self.not_batched}
        rows = []
        for j, ((seq, step, token), pos, c) in enumerate(zip(self.keys, self.positions, self.comparisons)):
            call = self.calls[j] if self.calls else step
            rec = unbatched.get(call) if call is not None else None
            passed = c.passed and rec is None
            message = c.message if rec is None else f"not one batch ({_describe_record(call, rec)}); {c.message}"
            rows.append({
                "test": self.test, "engine": self.engine, "reference": self.reference, "policy": self.policy,
                "n": self.n, "t": self.t, "seq": seq, "step": step, "token": token, "pos": pos,
                "case": self.cases[j] if self.cases else "",
                "max_abs": c.max_abs, "nmse": c.nmse, "kl": c.kl,
                "ref_argmax": c.ref_argmax, "cand_argmax": c.cand_argmax, "argmax_agree": c.argmax_agree,
                "near_tie": c.near_tie, "margin": c.margin, "ref_top_margin": c.ref_top_margin,
                "topk": c.topk, "topk_overlap": c.topk_overlap, "nonfinite": c.nonfinite,
                "one_batch": rec is None, "passed": passed, "verdict": "pass" if passed else "fail",
                "message": message, "engine_info": info,
            })
        return rows


def memoised_single_user(engine: DecodeEngine, prompt: Sequence[int], forced: Sequence[int],
                         cache: Optional[RefCache]) -> tuple[np.ndarray, bool]:
    """``single_user_logits`` through the memo ``cache`` (keyed by engine name, prompt, forced): the read-only
    logits and whether they came from the memo."""
    key: RefKey = (engine.name, tuple(int(t) for t in prompt), tuple(int(t) for t in forced))
    if cache is not None and key in cache:
        return cache[key], True
    logits = single_user_logits(engine, prompt, forced)
    for arr in ((logits.ids, logits.logprobs) if isinstance(logits, TopKLogprobs) else (logits,)):
        arr.setflags(write=False)   # shared through the memo: nobody may edit it
    if cache is not None:
        cache[key] = logits
    return logits, False


def check_golden_inputs(engine: DecodeEngine, reference_engine: DecodeEngine, prompts: Sequence[Sequence[int]],
                        forced: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(N, T) of a golden run's inputs, or TypeError / ValueError for misuse: both sides meet the engine protocol and
    share a vocabulary, N >= 1 non-empty prompts, one forced script of one length T per prompt."""
    require_engine(engine, "engine")
    require_engine(reference_engine, "reference_engine")
    n = len(prompts)
    if n == 0 or len(forced) != n:
        raise ValueError(f"need N >= 1 prompts and one forced script per prompt, got {n} and {len(forced)}")
    lengths = {len(f) for f in forced}
    if len(lengths) != 1:
        raise ValueError(f"all forced scripts must have the same length T, got lengths {sorted(lengths)}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if reference_engine.vocab_size != engine.vocab_size:
        raise ValueError(f"vocab sizes differ: {engine.name} {engine.vocab_size} vs {reference_engine.name} "
                         f"{reference_engine.vocab_size}")
    return n, lengths.pop()


def probe_batch(engine: DecodeEngine, step: int, rows: int, sink: Optional[list]) -> None:
    """After a batched call of ``rows`` rows: append (step, record) to ``sink`` when the engine's probe says the call
    was not one batch, or describes another call (a record of a different row count is stale: it cannot vouch for
    this one). Nothing when ``sink`` is None or the engine offers no probe."""
    if sink is None:
        return
    rec = batch_record(engine)
    if rec is not None and (not rec.batched or rec.rows != rows):
        sink.append((step, rec))


def batched_logits(engine: DecodeEngine, prompts: Sequence[Sequence[int]],
                   forced: Sequence[Sequence[int]], *, not_batched: Optional[list] = None) -> list[list[np.ndarray]]:
    """Every sequence's logits when all N run together: its own prefill, then one row per batched decode step
    (all N sequences in one `decode` call), as host arrays: [sequence][step] -> (vocab,).

    ``not_batched``, when given, receives (step, BatchRecord) for each decode step of N >= 2 rows that the engine's
    ``last_batch`` says was not one batch (see probe_batch)."""
    n, v = len(prompts), engine.vocab_size
    seqs = [engine.new_sequence() for _ in range(n)]
    rows = [[host_logits(engine.prefill(s, list(p)), (v,), engine, "prefill")] for s, p in zip(seqs, prompts)]
    for t in range(len(forced[0])):
        out = host_logits(engine.decode(seqs, [int(f[t]) for f in forced]), (n, v), engine, f"decode (N={n})")
        if n >= 2:
            probe_batch(engine, t + 1, n, not_batched)
        for i in range(n):
            rows[i].append(out[i])
    return rows


def compared_rows(prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]]):
    """(sequence, step, token fed at that step, position) of every compared logits row, in result order: step 0 is
    the prefill's last token, step t >= 1 the t-th forced token."""
    for i, (prompt, script) in enumerate(zip(prompts, forced)):
        fed = [int(prompt[-1])] + [int(tok) for tok in script]
        for step, token in enumerate(fed):
            yield i, step, token, len(prompt) - 1 + step


def golden_single_vs_batched(
    engine: DecodeEngine,
    prompts: Sequence[Sequence[int]],
    forced: Sequence[Sequence[int]],
    *,
    policy: Policy,
    reference_engine: Optional[DecodeEngine] = None,
    cache: Optional[RefCache] = None,
) -> GoldenResult:
    """Compare N sequences decoded together by ``engine`` with each decoded alone by ``reference_engine``.

    ``forced[i]`` is the teacher-forced token script of sequence i; all scripts have one length T (>= 0), and
    every prompt has at least one token. ``cache``, when given, memoises single-user references by
    (reference engine name, prompt, forced), so a sweep over N re-uses them. Steps: see the module docstring.
    Raises TypeError/ValueError only for misuse or a broken engine contract (wrong logits shape); numeric
    mismatches are reported in the result, never raised (use ``assert_passed``).
    """
    ref_engine = engine if reference_engine is None else reference_engine
    n, t_steps = check_golden_inputs(engine, ref_engine, prompts, forced)

    hits = 0
    refs = []
    for p, f in zip(prompts, forced):
        logits, hit = memoised_single_user(ref_engine, p, f, cache)
        refs.append(logits)
        hits += hit

    not_batched: list = []
    cand = batched_logits(engine, prompts, forced, not_batched=not_batched)
    keys, positions, comparisons = [], [], []
    for i, step, token, pos in compared_rows(prompts, forced):
        keys.append((i, step, token))
        positions.append(pos)
        comparisons.append(check_logits_close(
            ref=refs[i][step], cand=cand[i][step], name_ref=f"{ref_engine.name}[single]",
            name_cand=f"{engine.name}[batched N={n}]", policy=policy,
            where=f"seq {i}, step {step}, token {token} (pos {pos})",
            ref_logprobs=output_logprobs(ref_engine), cand_logprobs=output_logprobs(engine)))

    return GoldenResult(engine=engine.name, reference=ref_engine.name, policy=policy.name, n=n, t=t_steps,
                        keys=tuple(keys), positions=tuple(positions), comparisons=tuple(comparisons),
                        reference_cache_hits=hits, engine_info=describe_engine(engine),
                        not_batched=tuple(not_batched))
