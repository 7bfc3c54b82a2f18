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


class GpuSequence:
    def __init__(self, engine: "CupyEngine", slot: int):
        self.slot, self.length = slot, 0
        weakref.finalize(self, engine._release, slot)


class CupyEngine:
    def __init__(self, model: ModelFile | os.PathLike | str, *, kv_dtype: str = "float32", max_sequences: int = 80,
                 max_context: int = 2048, route_mode: str | None = None, embed_scale_mode: str = "fp32",
                 prefill_chunk: int = PREFILL_CHUNK, use_graphs: bool = True):
        import cupy as cp

        from kernels.kv_cache import alloc_layer_kv

        self.cp = cp
        self.model_file = model if isinstance(model, ModelFile) else load_model(model, embed_scale_mode=embed_scale_mode)
        cfg = self.config = self.model_file.config
        self.name = f"cupy-{kv_dtype}{'' if use_graphs else '-eager'}:{self.model_file.path.name}"
        self.vocab_size = cfg.vocab_size
        # engine.routing: which kernel serves each matmul; the default keeps batch invariance (WS/GEMM-N).
        self._base_name = self.name
        self.disabled_routes = routing.disabled_from_env()
        self._graphs: dict[int, _StepGraph] = {}
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
        self.stream = cp.cuda.Stream()  # blocking: ordered with the default stream that prefill uses
        from kernels.mmq import prepare_counters

        prepare_counters()  # decode-MMQ's split-K counters exist (zeroed) before any step graph is captured
        # rows R -> {matrix name: route} as dispatched by the last forward pass of R rows (a graph replay reports
        # the routes of its capture): what actually ran, for the route tests and the bench's route table
        self.routes_served: dict[int, dict[str, str]] = {}
        self._served: dict[str, str] = {}
        # Profiling hook (harness.op_profile): a callable name -> context manager, set only around an eager
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
        """Serve the matmuls in another engine.routing mode from the next step on (the bench compares modes on one
        copy of the weights). Captured step graphs hold the old mode's kernels, so they are dropped; sequences and
        their caches are kept. Setting the mode already in use changes nothing (its graphs stay)."""
        if mode == getattr(self, "route_mode", None):
            return
        routing.explain_route("F32", 1, 256, 1, mode=mode)  # a bad mode fails here, not mid-step
        self.route_mode = mode
        self.name = self._base_name
        if mode != "batch-invariant" or self.disabled_routes:  # different numbers: a different name
            self.name += f"[{mode}{'-' + '-'.join(sorted(self.disabled_routes)) if self.disabled_routes else ''}]"
        self._graphs.clear()

    # --- the forward pass ----------------------------------------------------------------------------
    def route(self, name: str, n: int) -> str:
        m = self.w[name]
        return routing.route_for(m.type_name, m.rows, m.n_cols, n, mode=self.route_mode, disabled=self.disabled_routes)

    def route_table(self, n: int) -> list[tuple[str, str, int, int, str]]:
        """(tensor, type, rows, cols, route) for every matrix a step of N rows multiplies by."""
        return [(name, m.type_name, m.rows, m.n_cols, self.route(name, n)) for name, m in self.w.items()
                if isinstance(m, _Matrix) and name not in ("per_layer_token_embd.weight",)
                and not (name == "token_embd.weight" and not self.config.tied_output)]

    def _span(self, name: str):
        return contextlib.nullcontext() if self.op_spans is None else self.op_spans(name)

    def _matvecs(self, names: Sequence[str], x) -> list:
        """x @ W.T for each matrix W in `names` (all with the same input): x is quantized to Q8_1 once for all the
        decode-MMQ ones (q/k/v share one input, gate/up another)."""
        from kernels.matvec import matvec
        from kernels.mmq import mmq_matvec
        from kernels.quantize_q8_1 import quantize_q8_1

        x = self.cp.ascontiguousarray(x)
        rows = int(x.shape[0])
        xq, out = None, []
        for name in names:
            m = self.w[name]
            route = self._served[name] = self.route(name, rows)
            with self._span(name):  # the shared Q8_1 quantization is counted in the first MMQ matmul's span
                if route == routing.DECODE_MMQ:
                    xq = quantize_q8_1(x) if xq is None else xq
                    out.append(mmq_matvec(m.raw, m.type_name, m.n_cols, xq))
                else:
                    out.append(matvec(m.raw, m.type_name, m.n_cols, x, route=route))
        return out

    def _matvec(self, name: str, x):
        return self._matvecs([name], x)[0]

    def forward(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int], logits_rows, trace=None,
                static=None):
        """One pass of R rows. `static` = (tokens, positions, slots) device int32 arrays for CUDA-graph capture:
        then nothing is uploaded from the host, the attention grid is sized for the whole context, and the
        logits of every row are returned."""
        from kernels.attention import decode_attention_layer
        from kernels.dequant import dequantize_rows
        from kernels.ffn_act import gelu_tanh_mul, softcap
        from kernels.kv_cache import kv_write_layer
        from kernels.norms import add_rms_norm, rms_norm
        from kernels.rope import rope_neox

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
            c = rms_norm(c.reshape(R * L, P), w["per_layer_proj_norm.weight"], cfg.rms_eps).reshape(R, L, P)
            pli = (c + e.reshape(R, L, P)) * np.float32(2**-0.5)
        eps = cfg.rms_eps
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            d, hq, hkv = cfg.head_dim(i), cfg.n_heads, cfg.n_kv_heads[i]
            a = rms_norm(x, w[p + "attn_norm.weight"], eps)
            own_v = cfg.owns_kv(i) and not cfg.layer_k_eq_v[i]
            qkv = self._matvecs([p + "attn_q.weight"] + ([p + "attn_k.weight"] if cfg.owns_kv(i) else [])
                                + ([p + "attn_v.weight"] if own_v else []), a)
            q = rope_neox(rms_norm(qkv[0].reshape(R * hq, d), w[p + "attn_q_norm.weight"], eps).reshape(R, hq, d),
                          pos, self.inv_freq[i])
            if cfg.owns_kv(i):
                k_raw = qkv[1]
                v_raw = qkv[2] if own_v else k_raw
                k = rope_neox(rms_norm(k_raw.reshape(R * hkv, d), w[p + "attn_k_norm.weight"], eps).reshape(R, hkv, d),
                              pos, self.inv_freq[i])
                v = v_raw.reshape(R * hkv, d)
                v = (rms_norm(v, None, eps) if cfg.v_norm else cp.ascontiguousarray(v)).reshape(R, hkv, d)
                kv_write_layer(self.pools[i], seq, k, v, pos)
            # a ring shorter than the window (max_context < window) holds every position the engine can reach, so
            # the window is the ring: the same positions are visible
            window = min(cfg.sliding_window, self.pools[cfg.kv_source[i]].capacity) if cfg.layer_is_sliding[i] else 0
            with self._span("attention"):
                o = decode_attention_layer(q, self.pools[cfg.kv_source[i]], seq, pos, window=window,
                                           scale=cfg.query_scale, max_position=max_pos)
            attn = self._matvec(p + "attn_output.weight", o.reshape(R, hq * d))
            x = add_rms_norm(x, attn, w[p + "post_attention_norm.weight"], eps)
            u = rms_norm(x, w[p + "ffn_norm.weight"], eps)
            act = gelu_tanh_mul(*self._matvecs([p + "ffn_gate.weight", p + "ffn_up.weight"], u))
            f = self._matvec(p + "ffn_down.weight", act)
            if pli is None:
                x = add_rms_norm(x, f, w[p + "post_ffw_norm.weight"], eps, scale=self.out_scale[i])
            else:
                x = add_rms_norm(x, f, w[p + "post_ffw_norm.weight"], eps)
                g = gelu_tanh_mul(self._matvec(p + "inp_gate.weight", x), cp.ascontiguousarray(pli[:, i]))
                x = add_rms_norm(x, self._matvec(p + "proj.weight", g), w[p + "post_norm.weight"], eps,
                                 scale=self.out_scale[i])
            if trace is not None:
                trace.append(cp.asnumpy(x))
        if static is None and list(logits_rows) != list(range(R)):
            x = cp.ascontiguousarray(x[cp.asarray(np.asarray(logits_rows, dtype=np.int64))])
        y = rms_norm(x, w["output_norm.weight"], eps)
        out_name = "token_embd.weight" if cfg.tied_output else "output.weight"
        z = self._matvec(out_name, y)
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

    def decode(self, seqs: Sequence[GpuSequence], tokens: Sequence[int]) -> np.ndarray:
        """One step for N sequences: a replay of the step's CUDA graph for this N (captured on first use)."""
        assert len(seqs) == len(tokens) and len({s.slot for s in seqs}) == len(seqs), "one token per distinct sequence"
        tokens = [int(t) for t in tokens]
        positions, slots = [s.length for s in seqs], [s.slot for s in seqs]
        if max(positions) >= self.max_context:
            raise ValueError(f"position {max(positions)} is beyond this engine's context ({self.max_context})")
        if self.use_graphs:
            logits = self._graph_step(tokens, positions, slots)
        else:
            logits = self.cp.asnumpy(self.forward(tokens, positions, slots, list(range(len(seqs)))))
        for s in seqs:
            s.length += 1
        return logits

    # --- CUDA graphs: one per batch size N ---------------------------------------------------------
    def _graph_step(self, tokens, positions, slots) -> np.ndarray:
        cp, n = self.cp, len(tokens)
        g = self._graphs.get(n) or self._capture(n)
        self.routes_served[n] = dict(g.routes)
        with self.stream:
            g.tokens.set(np.asarray(tokens, dtype=np.int32), stream=self.stream)
            g.positions.set(np.asarray(positions, dtype=np.int32), stream=self.stream)
            g.slots.set(np.asarray(slots, dtype=np.int32), stream=self.stream)
            g.graph.launch(self.stream)
            return g.logits.get(stream=self.stream)  # the step's only host synchronisation

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
