"""CupyEngine: the GPU decode engine (CuPy + the CUDA kernels in kernels/), same protocol as GemmaEngine.

Weights are uploaded once, matrices as their raw GGUF blocks (the matvec kernels decode them on the fly),
vectors as float32. KV caches live on the device in per-layer pools with one slot per live sequence
(kernels/kv_cache.py). A step is one pass of rows through the layers: decode = N rows of N sequences,
prefill = a chunk of rows of one sequence. Every matmul is one launch over all rows on the route engine/routing
picks (WS, GEMM-N or decode-MMQ); in the default batch-invariant mode each matrix's route depends on its shape
only, and attention reduces each row over its own sequence only, so a sequence's logits do not depend on what
else is in the batch.
"""
from __future__ import annotations

import contextlib
import math
import os
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import routing
from .model import rope_inv_freq
from .model_file import ModelFile, load_model
from .prefill_plan import prefill_forwards
from .protocol import BatchRecord

PREFILL_CHUNK = 8  # same as the reference engine: ring capacity = window + chunk - 1


@dataclass
class _StepGraph:
    graph: object
    pool: object
    tokens: object
    positions: object
    slots: object
    logits: object
    routes: dict  # matrix name -> route, as captured


@dataclass
class _Matrix:
    raw: object  # cupy uint8 [rows, row_bytes]
    type_name: str
    n_cols: int
    rows: int
    packed: object = None  # kernels/packed_mma.py PackedMatrix, made when a mode that routes to packed MMA is set


def attention_matrices(cfg, i: int) -> list[str]:
    """The matrices that read layer i's attn_norm output: q, then k and v where the layer owns its KV (a k_eq_v
    layer has no v: V is the raw K projection)."""
    p = f"blk.{i}."
    owns = cfg.owns_kv(i)
    return ([p + "attn_q.weight"] + ([p + "attn_k.weight"] if owns else [])
            + ([p + "attn_v.weight"] if owns and not cfg.layer_k_eq_v[i] else []))


def output_matrix(cfg) -> str:
    return "token_embd.weight" if cfg.tied_output else "output.weight"


def next_input_norm(cfg, i: int) -> tuple[str, list[str]]:
    """The norm that reads layer i's output residual and the matrices that read that norm's output: layer i + 1's
    attn_norm and q/k/v, or after the last layer output_norm and the lm head."""
    if i + 1 < cfg.n_layers:
        return f"blk.{i + 1}.attn_norm.weight", attention_matrices(cfg, i + 1)
    return "output_norm.weight", [output_matrix(cfg)]


class SeparateNorms:
    """A step's norms as separate launches: rms_norm, add_rms_norm then rms_norm, rms_norm then rope_neox; Q8_1
    blocks are left to _matvecs. The sequence the fused kernels equal bit for bit (CupyEngine(fused_norms=False))."""

    @staticmethod
    def norm(x, w, eps: float, quantize: bool):
        from gemma_oracle.kernels.norms import rms_norm

        return rms_norm(x, w, eps), None

    @staticmethod
    def add_norm(h, x, w_add, w_next, eps: float, scale: float, quantize: bool, packed: bool = False):
        from gemma_oracle.kernels.norms import add_rms_norm, rms_norm

        h = add_rms_norm(h, x, w_add, eps, scale=scale)
        return h, rms_norm(h, w_next, eps), None

    @staticmethod
    def norm_rope(x, w, eps: float, positions, inv_freq):
        from gemma_oracle.kernels.norms import rms_norm
        from gemma_oracle.kernels.rope import rope_neox

        return rope_neox(rms_norm(x, w, eps), positions, inv_freq)  # rms_norm: per head row of x [R, H, d]

    @staticmethod
    def qkv_rope_kv(q_raw, k_raw, v_raw, q_w, k_w, eps: float, positions, inv_freq, pool, rows_slot, v_norm: bool):
        """A KV-owning layer's q = norm_rope(q_raw); k = norm_rope(k_raw) and v = rms_norm(v_raw) (or v_raw) into
        `pool` at the rows' positions. q_raw [R, Hq, d], k_raw and v_raw [R, Hkv, d] (v_raw is k_raw on k_eq_v)."""
        from gemma_oracle.kernels.kv_cache import kv_write_layer
        from gemma_oracle.kernels.norms import rms_norm

        q = SeparateNorms.norm_rope(q_raw, q_w, eps, positions, inv_freq)
        k = SeparateNorms.norm_rope(k_raw, k_w, eps, positions, inv_freq)
        kv_write_layer(pool, rows_slot, k, rms_norm(v_raw, None, eps) if v_norm else v_raw, positions)
        return q

    # The producers of decode-MMQ inputs that are no norm: gelu * up (ffn_down's, the PLE proj's) and attention
    # (attn_output's); plain launches here, Q8_1 blocks and packed-MMA records left to _matvecs
    @staticmethod
    def gelu_mul(gate, up, quantize: bool, packed: bool = False):
        from gemma_oracle.kernels.ffn_act import gelu_tanh_mul

        return gelu_tanh_mul(gate, up), None

    @staticmethod
    def attention(q, pool, rows_slot, positions, window: int, scale: float, max_position: int, quantize: bool,
                  packed: bool = False):
        from gemma_oracle.kernels.attention import decode_attention_layer

        return decode_attention_layer(q, pool, rows_slot, positions, window=window, scale=scale,
                                      max_position=max_position, fused=False), None


class FusedNorms:
    """The same steps as one launch each (kernels/fused_norms.py), the norm's output quantized to Q8_1 in the norm's
    launch when `quantize` (one of the matrices that read it routes to decode-MMQ)."""

    @staticmethod
    def norm(x, w, eps: float, quantize: bool):
        from gemma_oracle.kernels.fused_norms import rms_norm_q8_1
        from gemma_oracle.kernels.norms import rms_norm

        return rms_norm_q8_1(x, w, eps) if quantize else (rms_norm(x, w, eps), None)

    @staticmethod
    def add_norm(h, x, w_add, w_next, eps: float, scale: float, quantize: bool, packed: bool = False):
        from gemma_oracle.kernels.fused_norms import add_rms_norm_rms_norm

        return add_rms_norm_rms_norm(h, x, w_add, w_next, eps, scale, quantize=quantize, packed=packed)

    @staticmethod
    def norm_rope(x, w, eps: float, positions, inv_freq):
        from gemma_oracle.kernels.fused_norms import rms_norm_rope_neox

        return rms_norm_rope_neox(x, w, eps, positions, inv_freq)

    @staticmethod
    def qkv_rope_kv(q_raw, k_raw, v_raw, q_w, k_w, eps: float, positions, inv_freq, pool, rows_slot, v_norm: bool):
        from gemma_oracle.kernels.qkv_rope_kv import qkv_rope_kv

        return qkv_rope_kv(q_raw, k_raw, v_raw, q_w, k_w, eps, positions, inv_freq, pool, rows_slot, v_norm=v_norm)

    # gelu * up and attention with their output's Q8_1 blocks made in the same launch when `quantize`; gelu * up,
    # attention (and the residual add's norm) with their output's packed-MMA records when `packed`
    @staticmethod
    def gelu_mul(gate, up, quantize: bool, packed: bool = False):
        from gemma_oracle.kernels.ffn_act import gelu_tanh_mul

        if packed:
            return gelu_tanh_mul(gate, up, packed=True)
        return gelu_tanh_mul(gate, up, quantize=True) if quantize else (gelu_tanh_mul(gate, up), None)

    @staticmethod
    def attention(q, pool, rows_slot, positions, window: int, scale: float, max_position: int, quantize: bool,
                  packed: bool = False):
        from gemma_oracle.kernels.attention import decode_attention_layer

        if packed:  # the records from the fused launch where it runs (kernels/attention.py ENV_FUSED)
            return decode_attention_layer(q, pool, rows_slot, positions, window=window, scale=scale,
                                          max_position=max_position, packed=True)
        o = decode_attention_layer(q, pool, rows_slot, positions, window=window, scale=scale,
                                   max_position=max_position, quantize=quantize)
        return o if quantize else (o, None)


NORM_STEPS = {True: FusedNorms, False: SeparateNorms}  # CupyEngine(fused_norms=...)

# Whether the fused residual-add norm and gelu * up also write packed MMA's input records in their own launch
# (instead of a packed_x launch per input). Off: the A/B in one call on an H100 (reports/history/2026-12-07-s17.md,
# call 4, both producers against none) had the packed mode 5-9 % slower at N = 1-8 and 2-5 % at 16-32 with them on,
# on both stand-ins; the suspect, not measured alone yet, is gelu * up's one block a (15360-wide) row. The kernels
# themselves are bitwise checked (tests/test_kernels_packed_mma_gpu.py).
# 0: none; 1: the norm and gelu * up; else producer names joined by "+" (e.g. norm+attention), so one A/B call can
# tell them apart. "attention": the attention output's records from the fused attention launch (kernels/attention.py
# ENV_FUSED; without it, a packed_x launch after the merge, as in _matvecs).
ENV_PACKED_PRODUCERS = "GEMMA_ORACLE_PACKED_PRODUCERS"
PACKED_PRODUCERS = ("norm", "gelu", "attention")  # the residual-add norm, gelu * up, attention
_PACKED_PRODUCER_VALUES = {"0": frozenset(), "1": frozenset({"norm", "gelu"})}


# The default: the residual-add norm writes packed MMA's records (96 of the 12B step's 193 packed_x launches gone:
# whole step 1.02-1.045x on both stand-ins at N = 1-32, H100, reports/history/2026-12-07-s18.md call 1); gelu * up
# does not: with one block a 15360-wide row both producers were 0.91-0.98x (reports/history/2026-12-07-s17.md), and
# with a cluster of 8 blocks a row (kernels/packed_out.py) 0.98-1.02x, level (2026-12-07-s20.md, call 2).
DEFAULT_PACKED_PRODUCERS = "norm"


def packed_producers_from_env() -> frozenset[str]:
    value = os.environ.get(ENV_PACKED_PRODUCERS, "").strip() or DEFAULT_PACKED_PRODUCERS
    if value in _PACKED_PRODUCER_VALUES:
        return _PACKED_PRODUCER_VALUES[value]
    names = [n.strip() for n in value.split("+")]
    if not set(names) <= set(PACKED_PRODUCERS):
        raise ValueError(f"{ENV_PACKED_PRODUCERS}={value!r}: expected 0 (packed_x launches), 1 (the norm and gelu * "
                         f"up write packed MMA's input records), or producers of {PACKED_PRODUCERS} joined by +, "
                         "e.g. norm or gelu (that producer alone)")
    return frozenset(names)


class GpuSequence:
    def __init__(self, engine: "CupyEngine", slot: int):
        self.slot, self.length = slot, 0
        weakref.finalize(self, engine._release, slot)


class CupyEngine:
    def __init__(self, model: ModelFile | os.PathLike | str, *, kv_dtype: str = "float32", max_sequences: int = 80,
                 max_context: int = 2048, route_mode: str | None = None, embed_scale_mode: str = "fp32",
                 prefill_chunk: int = PREFILL_CHUNK, use_graphs: bool = True, fused_norms: bool = True,
                 packed_producers: frozenset[str] | None = None, disabled_routes: frozenset[str] | None = None):
        import cupy as cp

        from gemma_oracle.kernels.kv_cache import alloc_layer_kv

        self.cp = cp
        self.model_file = model if isinstance(model, ModelFile) else load_model(model, embed_scale_mode=embed_scale_mode)
        cfg = self.config = self.model_file.config
        self.name = f"cupy-{kv_dtype}{'' if use_graphs else '-eager'}:{self.model_file.path.name}"
        self.vocab_size = cfg.vocab_size
        self.kv_dtype = kv_dtype
        self._last_batch: BatchRecord | None = None
        # gemma_oracle.engine.routing: which kernel serves each matmul; the default keeps batch invariance (WS/GEMM-N).
        self._base_name = self.name
        # routes taken out of the tables (default: routing.ENV_DISABLE); packed_mma out: nothing is packed
        self.disabled_routes = (routing.disabled_from_env() if disabled_routes is None
                                else routing.checked_disabled(disabled_routes, "disabled_routes"))
        self._graphs: dict[int, _StepGraph] = {}
        self._decoding = False  # set by decode: a pinned route mode (auto@K) applies to decode steps only (route)
        self.set_route_mode(route_mode or routing.mode_from_env())
        self.prefill_chunk = prefill_chunk
        self.max_context = min(max_context, cfg.context_length or max_context)
        mf = self.model_file

        def vec(name):
            return cp.asarray(mf.dequantize(name).astype(np.float32)) if mf.has(name) else None

        def mat(name):
            if not mf.has(name):
                return None
            t = mf.tensors[name]
            data = np.ascontiguousarray(np.asarray(t.data))
            raw = data.view(np.uint8).reshape(t.ne[1], -1)
            return _Matrix(cp.asarray(raw), t.type_name, t.ne[0], t.ne[1])

        self.w = {name: (mat(name) if len(info.ne) == 2 else vec(name)) for name, info in mf.tensors.items()
                  if name != "rope_freqs.weight"}
        if routing.uses_packed(self.route_mode, self.disabled_routes):
            self._pack_matrices()
        self.out_scale = [float(mf.dequantize(f"blk.{i}.layer_output_scale.weight")[0])
                          if mf.has(f"blk.{i}.layer_output_scale.weight") else 1.0 for i in range(cfg.n_layers)]
        rope_freqs = mf.dequantize("rope_freqs.weight").astype(np.float64) if mf.has("rope_freqs.weight") else None
        self.inv_freq = [cp.asarray(rope_inv_freq(cfg, i, rope_freqs).astype(np.float32)) for i in range(cfg.n_layers)]
        self.pools = {}
        for i in range(cfg.n_layers):
            if cfg.owns_kv(i):
                sliding = cfg.layer_is_sliding[i]
                cap = min(cfg.sliding_window + prefill_chunk - 1, self.max_context) if sliding else self.max_context
                self.pools[i] = alloc_layer_kv(max_sequences, cap, cfg.n_kv_heads[i], cfg.head_dim(i), ring=sliding,
                                               dtype=kv_dtype)
        self.max_sequences = max_sequences
        self._free = list(range(max_sequences - 1, -1, -1))
        self.use_graphs = use_graphs
        # fused_norms=False: every norm, RoPE and Q8_1 quantization as its own launch; the same bits (a test compares)
        self.norms = NORM_STEPS[fused_norms]
        # the producers that write packed MMA's input records (PACKED_PRODUCERS; default: ENV_PACKED_PRODUCERS)
        self._producers_from_env = packed_producers is None
        self.packed_producers = packed_producers_from_env() if packed_producers is None else frozenset(packed_producers)
        if not self.packed_producers <= set(PACKED_PRODUCERS):
            raise ValueError(f"packed_producers: expected names from {PACKED_PRODUCERS}, got "
                             f"{sorted(self.packed_producers)}")
        # l2_ahead_bytes: what a decode step asks into L2 of the next matmuls' weights after each matmul
        # (kernels/l2_ahead.py; 0: off), with the packed producers the switches a step reads at capture
        self.read_step_switches()
        self.stream = cp.cuda.Stream()  # blocking: ordered with the default stream that prefill uses
        from gemma_oracle.kernels.mmq import prepare_counters

        prepare_counters()  # decode-MMQ's split-K counters exist (zeroed) before any step graph is captured
        # rows R -> {matrix name: route} as dispatched by the last forward pass of R rows (a graph replay reports
        # the routes of its capture): what actually ran, for the route tests and the bench's route table
        self.routes_served: dict[int, dict[str, str]] = {}
        self._served: dict[str, str] = {}
        # Profiling hook (gemma_oracle.harness.perf.op_profile): a callable name -> context manager, set only around an eager
        # forward, never during capture; each matmul (by tensor name) and attention launch runs inside one.
        self.op_spans = None

    # --- sequences ---------------------------------------------------------------------------------
    def _release(self, slot: int) -> None:
        self._free.append(slot)

    def new_sequence(self) -> GpuSequence:
        if not self._free:
            raise RuntimeError(f"all {self.max_sequences} sequence slots are in use (CupyEngine(max_sequences=...))")
        slot = self._free.pop()
        for pool in self.pools.values():
            pool.pos[slot] = -1
        return GpuSequence(self, slot)

    def set_route_mode(self, mode: str) -> None:
        """Serve the matmuls in another gemma_oracle.engine.routing mode from the next step on (the bench compares modes on one
        copy of the weights). Captured step graphs hold the old mode's kernels, so they are dropped; sequences and
        their caches are kept. Setting the mode already in use changes nothing (its graphs stay)."""
        if mode == getattr(self, "route_mode", None):
            return
        routing.explain_route("F32", 1, 256, 1, mode=mode)  # a bad mode fails here, not mid-step
        self.route_mode = mode
        if routing.uses_packed(mode, self.disabled_routes):
            self._pack_matrices()
        self.name = self._base_name
        if mode != "batch-invariant" or self.disabled_routes:  # different numbers: a different name
            self.name += f"[{mode}{'-' + '-'.join(sorted(self.disabled_routes)) if self.disabled_routes else ''}]"
        self._graphs.clear()

    def _pack_matrices(self) -> None:
        """The packed copy (kernels/packed_mma.py) of every matrix packed MMA can serve, made once on the GPU (4.5-5 bits
        a weight beside the GGUF rows): before any step graph is captured with the packed route."""
        from gemma_oracle.kernels.packed_mma import pack_weights

        for name, m in getattr(self, "w", {}).items():  # none yet while __init__ sets the first mode
            if (isinstance(m, _Matrix) and m.packed is None and self._multiplies(name)
                    and routing.packable(m.type_name, m.rows, m.n_cols)):
                m.packed = pack_weights(m.raw, m.type_name, m.n_cols)

    # --- the forward pass ----------------------------------------------------------------------------
    def route(self, name: str, n: int, decoding: bool | None = None) -> str:
        m = self.w[name]
        mode = self.route_mode
        if not (self._decoding if decoding is None else decoding):
            # a pinned mode (auto@K) pins decode steps only: prefill chunks keep the auto routes
            mode = routing.split_mode(mode)[0]
        return routing.route_for(m.type_name, m.rows, m.n_cols, n, mode=mode, disabled=self.disabled_routes)

    def _multiplies(self, name: str) -> bool:
        """Whether a step multiplies by this matrix (the embedding tables are only read a row at a time)."""
        return name != "per_layer_token_embd.weight" and not (name == "token_embd.weight" and not self.config.tied_output)

    def route_table(self, n: int) -> list[tuple[str, str, int, int, str]]:
        """(tensor, type, rows, cols, route) for every matrix a step of N rows multiplies by."""
        return [(name, m.type_name, m.rows, m.n_cols, self.route(name, n, decoding=True)) for name, m in self.w.items()
                if isinstance(m, _Matrix) and self._multiplies(name)]

    def _span(self, name: str):
        return contextlib.nullcontext() if self.op_spans is None else self.op_spans(name)

    def _matvecs(self, names: Sequence[str], x, xq=None) -> list:
        """x @ W.T for each matrix W in `names` (all with the same input). The decode-MMQ ones read x as Q8_1 blocks:
        `xq` when the caller made them (a fused norm), else x is quantized here once for all of them (q/k/v share
        one input, gate/up another), and those that can share a launch do (_launch_groups); the packed-MMA ones
        likewise share one packed_x and grouped launches."""
        from gemma_oracle.kernels.dq_mma import dq_mma_matvec
        from gemma_oracle.kernels.f16_rows import f16_rows
        from gemma_oracle.kernels.matvec import matvec
        from gemma_oracle.kernels.mmq import mmq_matvec_group
        from gemma_oracle.kernels.packed_mma import packed_mma_group, packed_x
        from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1

        x = self.cp.ascontiguousarray(x)
        rows = int(x.shape[0])
        routes = {name: self.route(name, rows) for name in names}
        xf = None  # the packed-MMA matrices' fragment-ordered fp16 rows: from the producer (a pair) or made below
        if isinstance(xq, tuple):
            xf, xq = xq, None
        self._served.update(routes)
        out = {}
        for group in self._launch_groups([n for n in names if routes[n] == routing.DECODE_MMQ],
                                         lambda name: self._mmq_key(name, rows)):
            with self._span(group[0]):  # a quantization made here is counted in the first MMQ matmul's span
                xq = quantize_q8_1(x) if xq is None else xq
                members = [(self.w[n].raw, self.w[n].type_name, self.w[n].n_cols) for n in group]
                out.update(zip(group, mmq_matvec_group(members, xq)))
        for group in self._launch_groups([n for n in names if routes[n] == routing.PACKED_MMA],
                                         lambda name: self._packed_key(name, rows)):
            chunks, slices = self._packed_key(group[0], rows)[2]  # the group's shared K split
            with self._span(group[0]):  # packed_x made here is counted in the first packed matmul's span
                xf = packed_x(x) if xf is None else xf
                out.update(zip(group, packed_mma_group([self.w[n].packed for n in group], xf, slices=slices,
                                                       chunks=chunks)))
        x16 = None  # the dequant-MMA matrices' fp16 rows, likewise
        for name in names:
            if routes[name] in (routing.PACKED_MMA, routing.DECODE_MMQ):
                continue
            if routes[name] == routing.DQ_MMA:
                m = self.w[name]
                with self._span(name):
                    x16 = f16_rows(x) if x16 is None else x16
                    out[name] = dq_mma_matvec(m.raw, m.type_name, m.n_cols, x16)
            else:
                m = self.w[name]
                with self._span(name):
                    out[name] = matvec(m.raw, m.type_name, m.n_cols, x, route=routes[name])
        return [out[name] for name in names]

    def _launch_groups(self, names: Sequence[str], key) -> list[list[str]]:
        """The matrices of one input that share a launch (decode-MMQ: gemma_oracle.kernels.mmq.mmq_matvec_group;
        packed MMA: kernels.packed_mma.packed_mma_group): those with the same `key(name)` (type, columns and
        whatever else the launch must share), up to GROUP_MAX (3 for both) a launch, in `names` order. The bits are
        those of one launch each, which is what a profiled pass runs (op_spans times each matrix)."""
        from gemma_oracle.kernels.mmq import GROUP_MAX

        if self.op_spans is not None:
            return [[name] for name in names]
        groups: dict[tuple, list[list[str]]] = {}
        for name in names:
            runs = groups.setdefault(key(name), [[]])
            if len(runs[-1]) == GROUP_MAX:
                runs.append([])
            runs[-1].append(name)
        return [group for runs in groups.values() for group in runs]

    def _mmq_key(self, name: str, rows: int) -> tuple:
        """What decode-MMQ matrices must share to share a launch at `rows` tokens: type, columns, tile, K split."""
        from gemma_oracle.kernels.mmq import choose_tile, split_k_slices

        m = self.w[name]
        return (m.type_name, m.n_cols, choose_tile(m.type_name, m.rows, m.n_cols, rows).name,
                split_k_slices(m.rows, m.n_cols // 32))

    def _packed_key(self, name: str, rows: int) -> tuple:
        """What packed matrices must share to share a launch at `rows` tokens: type, columns, K split (chunks,
        slices), tile. The K chunks (kernels.packed_mma.packed_split) are the shape's alone, or in a mode whose
        numbers may vary with N (auto) also N's: a pinned decode step (auto@K) takes the split of K rows, as an auto
        step of K rows does. The slices that walk them follow N in every mode (the same bits)."""
        from gemma_oracle.kernels.packed_mma import choose_tile, packed_split

        m = self.w[name]
        base, pin = routing.split_mode(self.route_mode)
        policy_n = pin if pin is not None and self._decoding else rows
        return (m.type_name, m.n_cols, packed_split(m.rows, m.n_cols // 32, policy_n,
                                                    routing.routes_vary_with_n(base)),
                choose_tile(rows, m.rows, m.n_cols).name)

    def read_step_switches(self) -> None:
        """Read again the environment switches a step takes at capture (GEMMA_ORACLE_L2_AHEAD, and
        GEMMA_ORACLE_PACKED_PRODUCERS unless the engine was given its producers) and drop the captured step graphs:
        for tools that time one loaded model under several settings (harness/perf/step_variants.py). The attention
        launcher reads its switch at each call (kernels/attention.py ENV_FUSED)."""
        from gemma_oracle.kernels.l2_ahead import ahead_bytes_from_env

        self.l2_ahead_bytes = ahead_bytes_from_env()
        if getattr(self, "_producers_from_env", False):
            self.packed_producers = packed_producers_from_env()
        self._graphs.clear()

    def _ahead(self, groups: Sequence[Sequence[str]], rows: int) -> None:
        """Ask the weights of the next launches' matrices (`groups`: a launch's matrices each, in step order) into L2
        while the small launches between run (kernels/l2_ahead.py): the packed copy where a matrix routes to packed
        MMA at `rows` rows, else its GGUF rows, up to l2_ahead_bytes in all. Decode steps only; no result changes."""
        if not self.l2_ahead_bytes or not self._decoding:
            return
        from gemma_oracle.kernels.l2_ahead import l2_ahead, plan_ahead

        arrays = [[self._read_by(name, rows) for name in group if name in self.w] for group in groups]
        shares = plan_ahead([[a.nbytes for a in group] for group in arrays], self.l2_ahead_bytes)
        picked = [(a, n) for group, share in zip(arrays, shares) for a, n in zip(group, share) if n]
        for i in range(0, len(picked), 3):  # the kernel takes three ranges a launch
            l2_ahead([a for a, _ in picked[i:i + 3]], [n for _, n in picked[i:i + 3]])

    def _read_by(self, name: str, rows: int):
        """The device array a matmul of `rows` rows by `name` reads its weights from."""
        m = self.w[name]
        return m.packed.data if self.route(name, rows) == routing.PACKED_MMA else m.raw

    def _matvec(self, name: str, x, xq=None):
        return self._matvecs([name], x, xq)[0]

    def _quantizes(self, names: Sequence[str], rows: int) -> bool:
        """Whether an input of these matrices is made as Q8_1 too: one of them routes to decode-MMQ at `rows` rows
        (WS and GEMM-N read the float32 input)."""
        return any(self.route(name, rows) == routing.DECODE_MMQ for name in names)

    def _packs(self, producer: str, names: Sequence[str], rows: int) -> bool:
        """Whether `producer` (PACKED_PRODUCERS: the fused residual-add norm, gelu * up) also writes its output as
        packed-MMA records: it is in packed_producers (ENV_PACKED_PRODUCERS), one of these matrices routes to packed
        MMA and none to decode-MMQ (whose Q8_1 blocks the producer makes instead; _matvecs then converts for the
        packed ones)."""
        if producer not in self.packed_producers:
            return False
        routes = [self.route(name, rows) for name in names]
        return routing.PACKED_MMA in routes and routing.DECODE_MMQ not in routes

    # The norm steps (self.norms: fused or separate launches, the same bits); each returns its float32 output and,
    # when a matrix in `names` (the ones that read it) routes to decode-MMQ and the norms are fused, its Q8_1 blocks.
    def _norm(self, x, weight, names: Sequence[str]):
        with self._span("norms"):
            return self.norms.norm(x, weight, self.config.rms_eps, self._quantizes(names, int(x.shape[0])))

    def _add_norm(self, h, x, w_add, w_next, scale: float, names: Sequence[str]):
        """(h + rms_norm(x) * w_add) * scale, the residual, and its rms_norm(.) * w_next (with Q8_1 blocks)."""
        rows = int(h.shape[0])
        with self._span("norms"):
            return self.norms.add_norm(h, x, w_add, w_next, self.config.rms_eps, scale, self._quantizes(names, rows),
                                       packed=self._packs("norm", names, rows))

    def _norm_rope(self, x, weight, positions, inv_freq):
        """NEOX RoPE of the per-head rms_norm(x [R, H, d]) * weight (q and k)."""
        with self._span("rope"):
            return self.norms.norm_rope(x, weight, self.config.rms_eps, positions, inv_freq)

    def forward(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int], logits_rows, trace=None,
                static=None):
        """One pass of R rows. `static` = (tokens, positions, slots) device int32 arrays for CUDA-graph capture:
        then nothing is uploaded from the host, the attention grid is sized for the whole context, and the
        logits of every row are returned."""
        from gemma_oracle.kernels.dequant import dequantize_rows
        from gemma_oracle.kernels.ffn_act import softcap
        from gemma_oracle.kernels.norms import add_rms_norm, rms_norm

        cp, cfg, w = self.cp, self.config, self.w
        if static is None:
            R = len(tokens)
            tok = cp.asarray(np.asarray(tokens, dtype=np.int32))
            pos = cp.asarray(np.asarray(positions, dtype=np.int32))
            seq = cp.asarray(np.asarray(slots, dtype=np.int32))
            max_pos = int(max(positions))
        else:
            tok, pos, seq = static
            R = int(tok.shape[0])
            max_pos = self.max_context - 1  # grid for any position (extra split-KV chunks exit early)
        self._served = self.routes_served[R] = {}
        emb = w["token_embd.weight"]
        x = dequantize_rows(emb.raw, emb.type_name, emb.n_cols, tok) * np.float32(cfg.embed_scale)
        pli = None
        if cfg.ple_width:
            P, L = cfg.ple_width, cfg.n_layers
            pe = w["per_layer_token_embd.weight"]
            e = dequantize_rows(pe.raw, pe.type_name, pe.n_cols, tok) * np.float32(math.sqrt(P))
            c = self._matvec("per_layer_model_proj.weight", x) * np.float32(cfg.hidden**-0.5)
            with self._span("norms"):
                c = rms_norm(c.reshape(R * L, P), w["per_layer_proj_norm.weight"], cfg.rms_eps).reshape(R, L, P)
            pli = (c + e.reshape(R, L, P)) * np.float32(2**-0.5)
        eps = cfg.rms_eps
        # x is the residual stream; a (with aq: its Q8_1 blocks, its packed-MMA records (xf, inv) or None) the normed
        # input of the next matmuls
        a, aq = self._norm(x, w["blk.0.attn_norm.weight"], attention_matrices(cfg, 0))
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            d, hq, hkv = cfg.head_dim(i), cfg.n_heads, cfg.n_kv_heads[i]
            own_v = cfg.owns_kv(i) and not cfg.layer_k_eq_v[i]
            qkv = self._matvecs(attention_matrices(cfg, i), a, aq)
            ffn = [p + "ffn_gate.weight", p + "ffn_up.weight"]
            self._ahead([[p + "attn_output.weight"], ffn], R)  # while RoPE, the KV write and attention run
            q_raw = qkv[0].reshape(R, hq, d)
            if cfg.owns_kv(i):  # q and k normed + roped, v normed, k and v into the pool: one launch when fused
                k_raw = qkv[1].reshape(R, hkv, d)
                v_raw = qkv[2].reshape(R, hkv, d) if own_v else k_raw
                with self._span("rope"):
                    q = self.norms.qkv_rope_kv(q_raw, k_raw, v_raw, w[p + "attn_q_norm.weight"],
                                               w[p + "attn_k_norm.weight"], eps, pos, self.inv_freq[i], self.pools[i],
                                               seq, cfg.v_norm)
            else:
                q = self._norm_rope(q_raw, w[p + "attn_q_norm.weight"], pos, self.inv_freq[i])
            # a ring shorter than the window (max_context < window) holds every position the engine can reach, so
            # the window is the ring: the same positions are visible
            window = min(cfg.sliding_window, self.pools[cfg.kv_source[i]].capacity) if cfg.layer_is_sliding[i] else 0
            with self._span("attention"):
                o_name = [p + "attn_output.weight"]
                o, oq = self.norms.attention(q, self.pools[cfg.kv_source[i]], seq, pos, window, cfg.query_scale,
                                             max_pos, self._quantizes(o_name, R),
                                             packed=self._packs("attention", o_name, R))
            attn = self._matvec(p + "attn_output.weight", o.reshape(R, hq * d), oq)
            x, u, uq = self._add_norm(x, attn, w[p + "post_attention_norm.weight"], w[p + "ffn_norm.weight"], 1.0, ffn)
            down = [p + "ffn_down.weight"]
            gate_up = self._matvecs(ffn, u, uq)
            self._ahead([down], R)  # while gelu * up runs
            act, actq = self.norms.gelu_mul(*gate_up, self._quantizes(down, R), packed=self._packs("gelu", down, R))
            f = self._matvec(p + "ffn_down.weight", act, actq)
            # while the residual add and the next norm run: the next layer's q/k/v, or after the last the lm head
            self._ahead([attention_matrices(cfg, i + 1) if i + 1 < cfg.n_layers else [output_matrix(cfg)]], R)
            if pli is None:
                last_in, last_norm = f, w[p + "post_ffw_norm.weight"]
            else:
                with self._span("norms"):
                    x = add_rms_norm(x, f, w[p + "post_ffw_norm.weight"], eps)
                proj = [p + "proj.weight"]
                g, gq = self.norms.gelu_mul(self._matvec(p + "inp_gate.weight", x), cp.ascontiguousarray(pli[:, i]),
                                            self._quantizes(proj, R), packed=self._packs("gelu", proj, R))
                last_in, last_norm = self._matvec(p + "proj.weight", g, gq), w[p + "post_norm.weight"]
            # the layer's last residual add (times layer_output_scale), fused with the norm that reads its output
            next_norm, next_names = next_input_norm(cfg, i)
            x, a, aq = self._add_norm(x, last_in, last_norm, w[next_norm], self.out_scale[i], next_names)
            if trace is not None:
                trace.append(cp.asnumpy(x))
        # a = rms_norm(x) * output_norm; rows are normed (and quantized) independently, so picking rows afterwards
        # gives the bits of norming the picked rows (the Q8_1 blocks were made if the lm head routes to decode-MMQ at
        # R rows; where it does so only at the picked count, _matvecs quantizes them). Packed-MMA records (a pair)
        # are laid out by 8-token tile, so _matvecs makes the picked rows' afresh (the same bits: a row's own).
        if static is None and list(logits_rows) != list(range(R)):
            keep = cp.asarray(np.asarray(logits_rows, dtype=np.int64))
            picked_q = None if aq is None or isinstance(aq, tuple) else cp.ascontiguousarray(aq[keep])
            a, aq = cp.ascontiguousarray(a[keep]), picked_q
        z = self._matvec(output_matrix(cfg), a, aq)
        return softcap(z, cfg.final_softcap) if cfg.final_softcap else z

    # --- the engine protocol -------------------------------------------------------------------------
    def prefill(self, seq: GpuSequence, tokens: Sequence[int]) -> np.ndarray:
        assert len(tokens) > 0, "prefill needs at least one token"
        for start in range(0, len(tokens), self.prefill_chunk):
            chunk = [int(t) for t in tokens[start : start + self.prefill_chunk]]
            positions = [seq.length + i for i in range(len(chunk))]
            logits = self.forward(chunk, positions, [seq.slot] * len(chunk), [len(chunk) - 1])
            seq.length += len(chunk)
        return self.cp.asnumpy(logits[0])

    def describe(self) -> dict:
        from gemma_oracle import __version__

        dev = self.cp.cuda.Device()
        return {"name": self.name, "engine": "gemma-oracle cupy", "version": __version__, "route_mode": self.route_mode,
                "kv_dtype": self.kv_dtype, "cuda_graphs": self.use_graphs, "prefill_chunk": self.prefill_chunk,
                "model": self.model_file.path.name,
                "device": self.cp.cuda.runtime.getDeviceProperties(dev.id)["name"].decode(errors="replace")}

    def last_batch(self) -> BatchRecord | None:
        return self._last_batch

    def prefill_batch(self, seqs: Sequence[GpuSequence], prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """N prompts together -> [N, vocab]: chunk c of every prompt that has one goes through ONE forward."""
        assert len(seqs) == len(prompts) and len({s.slot for s in seqs}) == len(seqs), "one prompt per distinct sequence"
        forwards = prefill_forwards(prompts, self.prefill_chunk)
        if max(s.length + len(p) for s, p in zip(seqs, prompts)) > self.max_context:
            raise ValueError(f"a prompt reaches beyond this engine's context ({self.max_context})")
        out: list = [None] * len(seqs)
        for fw in forwards:
            tokens = [t for _, piece in fw.pieces for t in piece]
            positions = [seqs[i].length + j for i, piece in fw.pieces for j in range(len(piece))]
            slots = [seqs[i].slot for i, piece in fw.pieces for _ in piece]
            # a forward where no prompt ends still runs (it fills the caches); the lm head takes no empty batch, so
            # it computes one row nobody reads, and nothing is copied to the host
            logits = self.forward(tokens, positions, slots, [r for _, r in fw.ends] or [len(tokens) - 1])
            for i, piece in fw.pieces:
                seqs[i].length += len(piece)
            if fw.ends:
                host = self.cp.asnumpy(logits)
                for k, (i, _) in enumerate(fw.ends):
                    out[i] = host[k]
        self._last_batch = BatchRecord(rows=len(seqs), forward_calls=len(forwards), min_forward_calls=len(forwards),
                                       detail="forward calls, one per prefill chunk")
        return np.stack(out)

    def decode(self, seqs: Sequence[GpuSequence], tokens: Sequence[int]) -> np.ndarray:
        """One step for N sequences: a replay of the step's CUDA graph for this N (captured on first use)."""
        assert len(seqs) == len(tokens) and len({s.slot for s in seqs}) == len(seqs), "one token per distinct sequence"
        tokens = [int(t) for t in tokens]
        positions, slots = [s.length for s in seqs], [s.slot for s in seqs]
        if max(positions) >= self.max_context:
            raise ValueError(f"position {max(positions)} is beyond this engine's context ({self.max_context})")
        self._decoding = True   # a pinned route mode applies (route)
        try:
            if self.use_graphs:
                logits = self._graph_step(tokens, positions, slots)
            else:
                logits = self.cp.asnumpy(self.forward(tokens, positions, slots, list(range(len(seqs)))))
        finally:
            self._decoding = False
        for s in seqs:
            s.length += 1
        self._last_batch = BatchRecord(rows=len(seqs), forward_calls=1,
                                       detail="one CUDA graph replay" if self.use_graphs else "one forward")
        return logits

    # --- CUDA graphs: one per batch size N ---------------------------------------------------------
    def _graph_step(self, tokens, positions, slots) -> np.ndarray:
        n = len(tokens)
        g = self._graphs.get(n) or self._capture(n)
        self.routes_served[n] = dict(g.routes)
        with self.stream:
            g.tokens.set(np.asarray(tokens, dtype=np.int32), stream=self.stream)
            g.positions.set(np.asarray(positions, dtype=np.int32), stream=self.stream)
            g.slots.set(np.asarray(slots, dtype=np.int32), stream=self.stream)
            g.graph.launch(self.stream)
            return self._host_logits(g.logits)

    def _host_logits(self, logits) -> np.ndarray:
        """The step's logits in a new host array backed by page-locked memory (CuPy's pinned pool: the buffer
        returns to the pool when the array is dropped). A pageable copy goes through the driver's staging buffer:
        N = 32 rows of a 262144-token vocabulary are 33.5 MB a step. On the H100 the shape12b N = 32 step took
        33.8 ms against 23.4 ms of kernel time (ncu) with the pageable copy, and 21.1 ms against 21.1 ms with this
        one. The step's only host synchronisation."""
        mem = self.cp.cuda.alloc_pinned_memory(logits.nbytes)
        host = np.frombuffer(mem, dtype=logits.dtype, count=logits.size).reshape(logits.shape)
        logits.get(stream=self.stream, out=host)
        self.stream.synchronize()
        return host

    def _capture(self, n: int) -> "_StepGraph":
        """Record one decode step of n rows. The step's temporaries come from a memory pool owned by this
        graph alone, so no later allocation can take memory a replay writes."""
        cp = self.cp
        pool = cp.cuda.MemoryPool()
        with cp.cuda.using_allocator(pool.malloc), self.stream:
            tokens = cp.zeros(n, dtype=cp.int32)
            positions = cp.zeros(n, dtype=cp.int32)
            slots = cp.arange(n, dtype=cp.int32)
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                logits = self.forward(None, None, None, None, static=(tokens, positions, slots))
            finally:
                graph = self.stream.end_capture()
        g = _StepGraph(graph, pool, tokens, positions, slots, logits, dict(self.routes_served[n]))
        self._graphs[n] = g
        return g
