"""The planted-bug suite: engines around the reference model, exact when decoding one sequence, wrong only batched,
and the runs that show every policy the project uses failing them (the catch table of the README and the nightly).

Each bug is a subclass of :class:`HookedModel` that overrides ONE hook of the batched path, modelled on a bug seen
in a real engine. ``HookedModel`` is gemma_oracle.engine.model.GemmaModel with its attention and FFN split into
named hooks (the only copied code; ``test_hooked_model_is_the_reference`` checks it is bitwise the original); a
hook misbehaves only while ``self.batched`` is set, which :class:`PlantedEngine` does for decode calls of
``bug.min_n`` rows or more. Prefill (one sequence) and single-user decode are therefore the reference's bits.

Where each bug is ACTIVE (``fires_at`` says it in code, the docstring in words) depends on the inputs; the
inputs below (PROMPT_LENGTHS: mixed lengths, the first row crossing the global cache's growth at position 64 and
every sliding window, its ring wrapped next to rows that have not wrapped; forced tokens that differ per row) make
every bug fire at every N >= its ``min_n``; tests/test_planted_bugs.py checks that against the logits.

Policies and the candidate each judges (the candidate is what the policy is used for on real engines):

* ``float64`` (FLOAT64_POLICY; the numpy64 golden suite): the numpy64 engine, batched vs its own single-user run;
* ``exact`` (the GPU's batch-invariant routes, WS on the 12B): the numpy64 engine on a row-at-a-time matmul
  backend (RowwiseBackend, bitwise batch-invariant like WS), batched vs single-user, bitwise;
* ``pinned`` (our GPU engine's auto mode: gemma_oracle.oracles.pinned): an engine that routes as auto mode does
  (AutoRoutesBackend: float32 row by row below 3 rows, int8 activations from 3), batched vs its own single-user
  run pinned to the batch's routes, bitwise;
* ``calibrated`` (decode-MMQ in auto mode, the 12B stand-ins, the real 12B, outside engines): a NOISY route, the
  numpy32 engine (float32 arithmetic: its single-user run is itself ~1e-12 NMSE off the reference), judged against
  the float64 engine by gemma_oracle.oracles.calibrated: the batch must not be much worse than the route's own
  single-user noise.
* ``outside-f32`` / ``outside-quant`` (OUTSIDE_F32_POLICY / OUTSIDE_QUANT_POLICY: llama.cpp and served engines):
  the same numpy32 candidate dressed as an outside engine (:class:`AsOutsideEngine`): its rows are
  log-probabilities, dense for ``outside-f32``, its top 20 (TopKLogprobs) for ``outside-quant``, so both the
  log-softmaxed reference and the top-k metrics are exercised. The candidate's noise is float32-sized; on a
  quantized engine's int8-sized noise the ``calibrated@int8`` record shows what such a rule cannot see.

For the record, not gated: ``calibrated@int8``, the calibrated rule on a route with int8-sized noise
(Q8ActivationBackend: decode-MMQ's Q8_1 activation rounding on every matmul, as auto mode serves from N = 1; the
float64 engine the reference), which shows what the rule cannot see on such a route; and the retired fixed-bound
policies (``decode-mmq``, ``seed-12b-mmq``) on the float32 candidate, which show what they passed.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from gemma_oracle.engine.backends.numpy_backend import NumpyBackend
from gemma_oracle.engine.engine import GemmaEngine
from gemma_oracle.engine.kv_cache import LayerKV, SequenceState
from gemma_oracle.engine.model import GemmaModel, Row
from gemma_oracle.reports.records import PlantedRecord
from gemma_oracle.reports.tables import CORRECT_SUBJECT


class RowwiseBackend(NumpyBackend):
    """The numpy backend with every matmul run one row at a time: batched rows get the N = 1 bits, as the GPU's
    WS / batch-invariant routes do. The exact (bitwise) policy's candidate engine runs on it."""

    def __init__(self, dtype: str = "float64"):
        super().__init__(dtype)
        self.name = f"rowwise-{self.name}"

    def matmul(self, x, w):
        return np.concatenate([x[i : i + 1] @ w.T for i in range(x.shape[0])], axis=0)


class Q8ActivationBackend(NumpyBackend):
    """float32 arithmetic with every matmul input rounded as decode-MMQ's Q8_1 activations are: blocks of 32
    values as int8 times one scale (max |x| / 127), row by row (so batch-invariant, as the MMQ tiles are). The
    noisy candidate of the ``calibrated@int8`` column: a route whose own noise is int8-sized (~1e-4 NMSE on
    these logits), like decode-MMQ in auto mode, where it serves from N = 1."""

    def __init__(self):
        super().__init__("float32")
        self.name = "q8act-numpy32"

    def matmul(self, x, w):
        rows, k = x.shape
        if k % 32:
            return x @ w.T
        blocks = x.reshape(rows, k // 32, 32)
        scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127
        safe = np.where(scale > 0, scale, 1)
        q = (np.round(blocks / safe) * scale).reshape(rows, k).astype(x.dtype)
        return np.concatenate([q[i : i + 1] @ w.T for i in range(rows)], axis=0)


class AutoRoutesBackend(Q8ActivationBackend):
    """A router's batch-dependent route choice over batch-invariant kernels, as our GPU engine's auto mode: a step
    of fewer than ``switch`` rows multiplies in plain float32, row by row (WS), a step of ``switch`` or more on
    int8 activations (decode-MMQ). ``route_n``, when set (the engine's pinned twin, decode only), chooses as for a
    step of that many rows. The candidate of the ``pinned`` column; its single-user run at N = 1 is on the float
    route, so plain batched-vs-single-user cannot be bitwise for it, and calibrated sees int8 noise only."""

    def __init__(self, switch: int = 3):
        super().__init__()
        self.name, self.switch, self.route_n = f"auto-routes{switch}-numpy32", switch, None

    def matmul(self, x, w):
        rows = x.shape[0] if self.route_n is None else self.route_n
        if rows >= self.switch:
            return super().matmul(x, w)
        return np.concatenate([x[i : i + 1] @ w.T for i in range(x.shape[0])], axis=0)


class AsOutsideEngine:
    """An engine dressed as an outside one: every row it returns becomes log-probabilities (``output_logprobs``),
    or its top ``k`` as TopKLogprobs (``output_topk``) when k > 0, as llama.cpp and served engines answer."""

    output_logprobs = True

    def __init__(self, inner, k: int = 0):
        self.inner, self.output_topk = inner, k
        self.name = f"{inner.name}+{'top%d' % k if k else 'logprobs'}"
        self.vocab_size = inner.vocab_size

    def _rows(self, x):
        from gemma_oracle.engine.protocol import TopKLogprobs
        from gemma_oracle.oracles.metrics import log_softmax

        return TopKLogprobs.from_logits(x, self.output_topk) if self.output_topk else log_softmax(x)

    def new_sequence(self):
        return self.inner.new_sequence()

    def prefill(self, seq, tokens):
        return self._rows(self.inner.prefill(seq, tokens))

    def decode(self, seqs, tokens):
        return self._rows(self.inner.decode(seqs, tokens))


class HookedModel(GemmaModel):
    """GemmaModel with the batched path's pieces as hooks; the base class's hooks are the reference's
    arithmetic. ``batched`` is True while the engine runs a decode step of at least the bug's ``min_n`` rows."""

    name = "correct"
    min_n = 2
    batched = False

    # --- hooks (reference behaviour) ---------------------------------------------------------------
    def rope_positions(self, layer: int, positions: np.ndarray) -> np.ndarray:
        return positions

    def keqv_v_raw(self, k_raw, k_normed):
        return k_raw  # k_eq_v: V is the raw K projection, before k_norm and RoPE

    def kv_rows(self, n: int) -> list[int]:
        return list(range(n))  # rows[r]'s cache gets the K/V computed for row kv_rows(n)[r]

    def window(self, layer: int) -> int | None:
        return self.cfg.sliding_window if self.cfg.layer_is_sliding[layer] else None

    def kv_source(self, layer: int) -> int:
        return self.cfg.kv_source[layer]

    def visible(self, rows: Sequence[Row], r: int, src: int, window: int | None):
        row = rows[r]
        return row.seq.layers[src].visible(row.position, window)

    def attend(self, layer: int, q, keys, values):
        return self.ops.attend(q, keys, values, self.cfg.query_scale)

    def ffn_input(self, u):
        return u

    def prepare_caches(self, rows: Sequence[Row]) -> None:
        pass

    # --- the model's blocks, written over the hooks ----------------------------------------------------
    def attention(self, layer, lw, h, rows, positions):
        cfg, o = self.cfg, self.ops
        d, hq, hkv = cfg.head_dim(layer), cfg.n_heads, cfg.n_kv_heads[layer]
        pos = self.rope_positions(layer, positions)
        a = o.rms_norm(h, lw.attn_norm, cfg.rms_eps)
        q = o.matmul(a, lw.q).reshape(-1, hq, d)
        q = o.rope(o.rms_norm(q, lw.q_norm, cfg.rms_eps), pos, self.inv_freq[layer])
        if cfg.owns_kv(layer):
            k_raw = o.matmul(a, lw.k).reshape(-1, hkv, d)
            k_normed = o.rms_norm(k_raw, lw.k_norm, cfg.rms_eps)
            v_raw = self.keqv_v_raw(k_raw, k_normed) if lw.v is None else o.matmul(a, lw.v).reshape(-1, hkv, d)
            k = o.rope(k_normed, pos, self.inv_freq[layer])
            v = o.rms_norm(v_raw, None, cfg.rms_eps) if cfg.v_norm else v_raw
            for r, src_row in zip(range(len(rows)), self.kv_rows(len(rows))):  # all rows write before any attends
                rows[r].seq.layers[layer].write(rows[r].position, k[src_row], v[src_row])
        window, src = self.window(layer), self.kv_source(layer)
        out = o.zeros((len(rows), hq, d))
        for r in range(len(rows)):
            keys, values = self.visible(rows, r, src, window)
            out[r] = self.attend(layer, q[r], keys, values)
        attn = o.matmul(out.reshape(len(rows), hq * d), lw.o)
        return h + o.rms_norm(attn, lw.post_attn_norm, cfg.rms_eps)

    def ffn(self, lw, h):
        o, eps = self.ops, self.cfg.rms_eps
        u = self.ffn_input(o.rms_norm(h, lw.ffn_norm, eps))
        f = o.matmul(o.gelu_tanh(o.matmul(u, lw.gate)) * o.matmul(u, lw.up), lw.down)
        return h + o.rms_norm(f, lw.post_ffw_norm, eps)

    def forward(self, rows, logits_for, trace=None):
        self.prepare_caches(rows)
        return super().forward(rows, logits_for, trace)

    # --- where the bug fires (the test checks these predictions against the logits) ----------------------
    def fires_at(self, lengths: Sequence[int], steps: int, n: int) -> bool:
        """Whether N rows of these prompt lengths, decoded `steps` times together, make the bug change a logit."""
        return n >= self.min_n


# ------------------------------------------------------------------------------------------------ the bugs

class RopeOtherRow(HookedModel):
    """RoPE at another row's position: the batched kernel indexes the position array with a shifted row id
    (row r rotates q and k by row r-1's position). Active from N = 2 when neighbouring rows sit at different
    positions (mixed prompt lengths)."""
    name = "rope-other-row"

    def rope_positions(self, layer, positions):
        return np.roll(positions, 1) if self.batched else positions

    def fires_at(self, lengths, steps, n):
        return n >= 2 and len(set(lengths[:n])) > 1


class WindowOffByOne(HookedModel):
    """Sliding window off by one: the batched mask keeps p - j <= window instead of < window (one key too many).
    Active from N = 2 once a row's position reaches the window (prompt longer than the sliding window)."""
    name = "window-off-by-one"

    def window(self, layer):
        w = super().window(layer)
        return w + 1 if self.batched and w is not None else w

    def fires_at(self, lengths, steps, n):
        return n >= 2 and max(lengths[:n]) + steps - 1 >= self.cfg.sliding_window  # last decoded position


class KvRowsSwapped(HookedModel):
    """KV rows swapped between sequences: the batched KV write gathers the new K/V of rows 0 and 1 from each
    other (a wrong row index in the scatter), each stored at its own sequence's position. Active from N = 2 when
    rows 0 and 1 differ (different tokens or positions)."""
    name = "kv-rows-swapped"

    def kv_rows(self, n):
        order = list(range(n))
        if self.batched:
            order[0], order[1] = 1, 0
        return order


class PaddedKeys(HookedModel):
    """Attention over zero-padded keys: the batched kernel runs every row over the batch's longest visible key
    range, the missing keys zero (score 0 joins the softmax, value 0 the sum). Active from N = 2 when rows see
    different numbers of keys (mixed lengths)."""
    name = "padded-keys"

    def visible(self, rows, r, src, window):
        keys, values = super().visible(rows, r, src, window)
        if not self.batched:
            return keys, values
        longest = max(super(PaddedKeys, self).visible(rows, i, src, window)[0].shape[0] for i in range(len(rows)))
        pad = longest - keys.shape[0]
        if pad == 0:
            return keys, values
        zeros = np.zeros((pad,) + keys.shape[1:], dtype=keys.dtype)
        return np.concatenate([keys, zeros]), np.concatenate([values, zeros])

    def fires_at(self, lengths, steps, n):
        return n >= 2 and len(set(lengths[:n])) > 1


class RingModulus(HookedModel):
    """Ring wrap: the batched decode kernel finds a sliding layer's keys at slot (p - j) mod window, while
    prefill wrote the ring of window + chunk - 1 slots at p mod capacity. Before a row wraps both agree; once a row's
    position reaches the window the kernel reads other positions' keys. Active from N = 2 with a row whose
    position is >= the window next to rows that have not wrapped (mixed lengths)."""
    name = "ring-wrap"

    def visible(self, rows, r, src, window):
        kv: LayerKV = rows[r].seq.layers[src]
        p = rows[r].position
        if not (self.batched and kv.ring and window is not None and p >= window):
            return super().visible(rows, r, src, window)
        slots = [(p - j) % window for j in range(window - 1, -1, -1)]  # oldest first, as visible() orders them
        return kv.k[slots], kv.v[slots]

    def fires_at(self, lengths, steps, n):
        return n >= 2 and max(lengths[:n]) + steps - 1 >= self.cfg.sliding_window


class CacheGrowthLosesKeys(HookedModel):
    """Cache growth losing old keys: when a batched step needs a global layer's cache to grow, the reallocation
    does not copy the old keys/values (they read as zeros, their positions still marked valid). Active from N = 2
    when a row writes position >= the initial capacity (64) during a batched step: a prompt of 62 tokens and
    3 decode steps crosses it."""
    name = "cache-growth"

    def prepare_caches(self, rows):
        if not self.batched:
            return
        for row in rows:
            for kv in row.seq.layers.values():
                if not kv.ring and row.position >= kv.capacity:
                    cap = kv.capacity
                    while cap <= row.position:
                        cap *= 2
                    cap = min(cap, kv.max_len)
                    kv.k, kv.v = kv.backend.zeros((cap, *kv.shape)), kv.backend.zeros((cap, *kv.shape))
                    kv.pos = np.concatenate([kv.pos, np.full(cap - kv.pos.shape[0], -1, dtype=np.int64)])

    def fires_at(self, lengths, steps, n):
        # decode steps write positions length .. length + steps - 1; prefill (length <= 64) did not grow the cache
        return n >= 2 and any(length <= 64 <= length + steps - 1 for length in lengths[:n])


class KeqvVFromNormedK(HookedModel):
    """k_eq_v V taken from the NORMED K: the batched KV kernel fuses k_norm before it copies K into V on a
    global layer without attn_v. Active from N = 2 on a model with k_eq_v layers."""
    name = "keqv-v-normed-k"

    def keqv_v_raw(self, k_raw, k_normed):
        return k_normed if self.batched else k_raw

    def fires_at(self, lengths, steps, n):
        return n >= 2 and any(self.cfg.layer_k_eq_v)


class PleRowsShifted(HookedModel):
    """PLE rows shifted: the batched per-layer-input gather reads row r - 1's per-layer embedding. Active from
    N = 2 on a PLE model when neighbouring rows feed different tokens."""
    name = "ple-rows-shifted"

    def ple_inputs(self, tokens, x0):
        pli = super().ple_inputs(tokens, x0)
        return np.roll(pli, 1, axis=0) if self.batched else pli

    def fires_at(self, lengths, steps, n):
        return n >= 2 and self.cfg.ple_width > 0


class SharedKvWrongSource(HookedModel):
    """Shared-KV layers reading the wrong source: in batched decode the KV-shared tail reads the KV-owning layer
    before the right one (same attention type). Active from N = 2 on a model with a KV-shared tail and two
    owners of the source's type."""
    name = "shared-kv-source"

    def kv_source(self, layer):
        src = self.cfg.kv_source[layer]
        if not self.batched or src == layer:
            return src
        sliding = self.cfg.layer_is_sliding[layer]
        earlier = [i for i in range(src) if self.cfg.owns_kv(i) and self.cfg.layer_is_sliding[i] == sliding]
        return earlier[-1] if earlier else src

    def fires_at(self, lengths, steps, n):
        return n >= 2 and self.cfg.shared_kv_layers > 0


class SoftcapSkipped(HookedModel):
    """Final softcap skipped: the batched lm-head kernel used from the decode-MMQ switch point (N >= 5) writes
    raw logits. Monotonic, so argmax and top-5 stay put; |dlogit| grows with the logit. Active from N = 5."""
    name = "softcap-skipped"
    min_n = 5

    def logits(self, x):
        if not self.batched:
            return super().logits(x)
        return self.ops.matmul(self.ops.rms_norm(x, self.w.output_norm, self.cfg.rms_eps), self.w.output)


class GqaMappingWrong(HookedModel):
    """Per-head GQA mapping wrong: the batched attention gives query head h the KV head h mod Hkv instead of
    h // (Hq / Hkv). Active from N = 2 on layers with 1 < Hkv < Hq."""
    name = "gqa-mapping"

    def attend(self, layer, q, keys, values):
        hq, hkv = q.shape[0], keys.shape[1]
        if not self.batched or hkv in (1, hq):
            return super().attend(layer, q, keys, values)
        idx = np.arange(hq) % hkv
        return self.ops.attend(q, keys[:, idx], values[:, idx], self.cfg.query_scale)

    def fires_at(self, lengths, steps, n):
        return n >= 2 and any(1 < h < self.cfg.n_heads for h in self.cfg.n_kv_heads)


class ReducedPrecisionFromSwitch(HookedModel):
    """Reduced precision from a switch point: from N = 5 the batched FFN gate/up matmuls read their input rounded
    to fp16 (a half-precision GEMM path taken only for larger batches). Active from N = 5."""
    name = "fp16-from-n5"
    min_n = 5

    def ffn_input(self, u):
        return u.astype(np.float16).astype(u.dtype) if self.batched else u


BUGS: dict[str, type[HookedModel]] = {cls.name: cls for cls in (
    RopeOtherRow, WindowOffByOne, KvRowsSwapped, PaddedKeys, RingModulus, CacheGrowthLosesKeys, KeqvVFromNormedK,
    PleRowsShifted, SharedKvWrongSource, SoftcapSkipped, GqaMappingWrong, ReducedPrecisionFromSwitch)}


class PlantedEngine(GemmaEngine):
    """A GemmaEngine whose model is ``model_cls`` (a HookedModel) over ``base``'s weights, on ``ops`` (default
    the base's backend). Shares the base's prompt memo when the ops are the base's (prefill is the reference's
    bits in every planted model). The name carries the bug, so reference memos never mix engines."""

    def __init__(self, base: GemmaEngine, model_cls: type[HookedModel] = HookedModel, ops=None,
                 memo: dict | None = None, pin: int | None = None):
        # Not GemmaEngine.__init__: the file is loaded and dequantized once, in `base`.
        self.model_file, self.config = base.model_file, base.config
        self.ops = base.ops if ops is None else ops
        self.model = model_cls(self.config, base.model.w, self.ops)
        self.prefill_chunk = base.prefill_chunk
        self._prefill_memo = memo if memo is not None else {}
        # pin: decode steps take the routes of a pin-row step (AutoRoutesBackend.route_n), as the GPU's auto@pin
        self.pin = pin
        self.name = f"{self.ops.name}:{self.model_file.path.name}+{model_cls.name}" + (f"@{pin}" if pin else "")
        self.vocab_size = self.config.vocab_size
        self.backend = self.ops.name
        self._last_batch = None

    def describe(self) -> dict:
        return {**super().describe(), "engine": "gemma-oracle planted bug", "planted": self.model.name}

    def new_sequence(self) -> SequenceState:
        return SequenceState(self.config, self.ops, prefill_chunk=self.prefill_chunk)

    def decode(self, seqs, tokens):
        self.model.batched = len(seqs) >= self.model.min_n
        if self.pin is not None:
            self.ops.route_n = self.pin
        try:
            return super().decode(seqs, tokens)
        finally:
            self.model.batched = False
            if self.pin is not None:
                self.ops.route_n = None


# ------------------------------------------------------------------------------------------------ the suite

# Mixed lengths (module docstring says why each); N = 8 uses them all.
PROMPT_LENGTHS = (62, 20, 9, 40, 17, 5, 33, 12)
STEPS = 3
N_LIST = (1, 2, 3, 5, 8)
SEED = 2026
# Which fixture each bug runs on: the model must have the feature the bug breaks (PLE and a KV-shared tail on
# g4-e2b-mini; k_eq_v, GQA 16/8 heads, windows of 16 on g4-12b-mini).
FIXTURE = {name: "g4-12b-mini" for name in BUGS} | {"ple-rows-shifted": "g4-e2b-mini",
                                                     "shared-kv-source": "g4-e2b-mini"}
FIXTURES = tuple(sorted(set(FIXTURE.values())))
POLICIES = ("float64", "exact", "pinned", "calibrated", "outside-f32", "outside-quant")   # every policy in use (gated)
OUTSIDE_TOPK = {"outside-f32": 0, "outside-quant": 20}  # how each outside column's candidate answers
# For the record, not gated: the calibrated rule on an int8-noise route (what it cannot see there), and the fixed
# bounds it replaced (what they passed).
INT8_ROUTE = "calibrated@int8"
CALIBRATED_COLUMNS = ("calibrated", INT8_ROUTE, "outside-f32", "outside-quant")   # judged by the calibrated rule
RETIRED = ("decode-mmq", "seed-12b-mmq")
RECORD_ONLY = (INT8_ROUTE,) + RETIRED
CORRECT = CORRECT_SUBJECT                               # the subject name of the engines without a bug


@functools.lru_cache(maxsize=None)
def base(preset: str, backend: str) -> GemmaEngine:
    from gemma_oracle.harness.fixtures.cache import fixture_path

    return GemmaEngine(fixture_path(preset, "f32"), backend, memo_prefill=True)


@functools.lru_cache(maxsize=None)
def inputs(vocab: int):
    rng = np.random.default_rng(SEED)
    prompts = [[2] + [int(t) for t in rng.integers(4, vocab, size=n - 1)] for n in PROMPT_LENGTHS]
    forced = [[int(t) for t in rng.integers(4, vocab, size=STEPS)] for _ in PROMPT_LENGTHS]
    return prompts, forced


_MEMOS: dict = {}     # prefill memo per (preset, backend, rowwise): shared by the planted engines on those ops
_ENGINES: dict = {}
REFERENCE_MEMO: dict = {}   # single-user runs by (engine name, prompt, forced)


def engine(preset: str, policy: str, bug: str | None):
    """The candidate a policy judges (module docstring), with ``bug`` planted (None: the correct engine)."""
    if policy in OUTSIDE_TOPK:   # the calibrated column's candidate, answering as an outside engine
        return AsOutsideEngine(engine(preset, "calibrated", bug), OUTSIDE_TOPK[policy])
    return _engine(preset, policy, bug, None)


def _engine(preset: str, policy: str, bug: str | None, pin: int | None):
    key = (preset, policy, bug, pin)
    if key not in _ENGINES:
        backend = "numpy64" if policy in ("float64", "exact") else "numpy32"
        ops = {"exact": lambda: RowwiseBackend("float64"), INT8_ROUTE: Q8ActivationBackend,
               "pinned": AutoRoutesBackend}.get(policy)
        ops = ops() if ops else None
        memo = _MEMOS.setdefault((preset, backend, ops.name if ops else None), {})
        _ENGINES[key] = PlantedEngine(base(preset, backend), BUGS[bug] if bug else HookedModel, ops=ops, memo=memo,
                                      pin=pin)
    return _ENGINES[key]


@functools.lru_cache(maxsize=None)
def run(preset: str, policy: str, bug: str | None, n: int):
    """(Memoised) the golden result of ``policy`` on its candidate with ``bug`` planted (None: the correct engine),
    on the first n sequences of the suite's inputs."""
    from gemma_oracle.oracles.calibrated import calibrated_single_vs_batched
    from gemma_oracle.oracles.compare import (CALIBRATED_POLICY, FLOAT64_POLICY, MMQ_POLICY, OUTSIDE_F32_POLICY,
                                              OUTSIDE_QUANT_POLICY, SEED_MMQ_POLICY, exact)
    from gemma_oracle.oracles.pinned import pinned_single_vs_batched
    from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched

    eng = engine(preset, policy, bug)
    prompts, forced = inputs(eng.vocab_size)
    prompts, forced = prompts[:n], forced[:n]
    calibrated = {"calibrated": CALIBRATED_POLICY, INT8_ROUTE: CALIBRATED_POLICY, "outside-f32": OUTSIDE_F32_POLICY,
                  "outside-quant": OUTSIDE_QUANT_POLICY}
    if policy in calibrated:
        return calibrated_single_vs_batched(eng, prompts, forced, reference_engine=base(preset, "numpy64"),
                                            policy=calibrated[policy], cache=REFERENCE_MEMO)
    if policy == "pinned":
        return pinned_single_vs_batched(eng, prompts, forced, pinned=lambda k: _engine(preset, policy, bug, k),
                                        cache=REFERENCE_MEMO)
    rule = {"float64": FLOAT64_POLICY, "exact": exact(), "decode-mmq": MMQ_POLICY,
            "seed-12b-mmq": SEED_MMQ_POLICY}[policy]
    return golden_single_vs_batched(eng, prompts, forced, policy=rule, cache=REFERENCE_MEMO)


def active(bug: str, n: int) -> bool:
    return engine(FIXTURE[bug], "float64", bug).model.fires_at(PROMPT_LENGTHS, STEPS, n)


def catch_runs(policies: Sequence[str] = POLICIES + RECORD_ONLY, progress=None) -> list[PlantedRecord]:
    """Every (bug or correct engine) x policy x N of the suite; ``progress``, when given, is called after each."""
    from gemma_oracle.oracles.calibrated import noise_ratios

    out = []
    subjects = [(bug, FIXTURE[bug]) for bug in sorted(BUGS)] + [(CORRECT, f) for f in FIXTURES]
    for subject, fixture in subjects:
        for policy in policies:
            for n in N_LIST:
                bug = None if subject == CORRECT else subject
                on = bug is not None and active(bug, n)
                result = run(fixture, policy, bug, n)
                ratio = noise_ratios(result)["max_nmse_ratio"] if policy in CALIBRATED_COLUMNS else float("nan")
                verdict = "pass" if result.passed else "fail"
                expected = "fail" if on else "pass"
                out.append(PlantedRecord(subject, fixture, policy, policy in POLICIES, n, on, verdict, expected,
                                         verdict == expected, len(result.comparisons), len(result.failures),
                                         "" if result.passed else result.failures[0].message, ratio))
                if progress is not None:
                    progress()
    return out


def catch_table(runs: Sequence[PlantedRecord]) -> list[dict]:
    """The catch table of ``runs`` (gemma_oracle.reports.tables.catch_table) as a list of row dicts."""
    import dataclasses

    import pandas as pd

    from gemma_oracle.reports.tables import catch_table as table

    return table(pd.DataFrame([dataclasses.asdict(r) for r in runs])).to_dict("records")


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(catch_table(catch_runs())))
