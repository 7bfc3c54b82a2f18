"""Per-op time profile of a decode step: how the step's time splits over matmul roles (attn_q, ffn_gate,
per_layer_model_proj, inp_gate, proj, lm_head, ...), attention, norms and the rest.

Spans are context managers keyed by a name: a GGUF tensor name for a matmul (grouped by its role) or an
op class. The numpy backend is timed by swapping a `TimedOps` proxy in as the model's ops for one pass;
the CuPy engine calls its `op_spans` hook around each matmul, attention, norm ("norms", with the Q8_1 quantization
a fused norm makes) and q/k norm + RoPE ("rope") launch (CUDA events, an eager pass). `STEP` spans the whole
step; "other" is the step minus every timed op.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from gemma_oracle.reports.records import OpProfileRecord

STEP = "step"
OTHER = "other"
LM_HEAD = "lm_head"
# numpy backend op -> op class (matmuls are grouped by the weight's role instead)
NUMPY_OP_CLASS = {"rms_norm": "norms", "attend": "attention", "rope": "rope", "gelu_tanh": "activations",
                  "softcap": "activations"}
# gemma_oracle.engine.weights field -> matmul role (the GGUF tensor's base name)
LAYER_MATMULS = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate",
                 "up": "ffn_up", "down": "ffn_down", "inp_gate": "inp_gate", "proj": "proj"}
MODEL_MATMULS = {"ple_model_proj": "per_layer_model_proj", "output": LM_HEAD}


def tensor_role(name: str) -> str:
    """"blk.3.attn_q.weight" -> "attn_q"; the output matrix (tied token_embd or output) -> "lm_head";
    a name that is not a tensor's (an op class such as "attention") is its own role."""
    if not name.endswith(".weight"):
        return name
    base = name.split(".")[-2]
    return LM_HEAD if base in ("token_embd", "output") else base


class HostSpans:
    """Wall-clock spans (time.perf_counter): for the numpy backend, whose ops run synchronously."""

    def __init__(self):
        self.totals: dict[str, list] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            entry = self.totals.setdefault(tensor_role(name), [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t0

    def seconds(self) -> dict[str, tuple[int, float]]:
        return {k: (c, s) for k, (c, s) in self.totals.items()}


class CudaSpans:
    """CUDA-event spans on the current stream; read after the pass (one synchronisation at the end)."""

    def __init__(self):
        import cupy as cp

        self.cp = cp
        self.events: list = []

    @contextmanager
    def __call__(self, name: str):
        start = self.cp.cuda.Event()
        start.record()
        try:
            yield
        finally:
            stop = self.cp.cuda.Event()
            stop.record()
            self.events.append((tensor_role(name), start, stop))

    def seconds(self) -> dict[str, tuple[int, float]]:
        self.cp.cuda.Device().synchronize()
        totals: dict[str, list] = {}
        for role, start, stop in self.events:
            entry = totals.setdefault(role, [0, 0.0])
            entry[0] += 1
            entry[1] += self.cp.cuda.get_elapsed_time(start, stop) / 1e3
        return {k: (c, s) for k, (c, s) in totals.items()}


def numpy_matmul_weights(weights) -> dict[int, tuple[str, int]]:
    """id(array) -> (role, bytes) for every matrix an gemma_oracle.engine.weights.ModelWeights multiplies by."""
    found = {}
    for field, role in MODEL_MATMULS.items():
        w = getattr(weights, field)
        if w is not None:
            found[id(w)] = (role, int(w.nbytes))
    for layer in weights.layers:
        for field, role in LAYER_MATMULS.items():
            w = getattr(layer, field)
            if w is not None:
                found[id(w)] = (role, int(w.nbytes))
    return found


class TimedOps:
    """A numpy backend whose ops run inside spans: swapped in as GemmaModel.ops for a profiling pass.
    Ops without an op class (weight, zeros, to_host, ...) pass through untimed."""

    def __init__(self, ops, spans, weight_roles: dict[int, tuple[str, int]]):
        self._ops, self._spans, self._roles = ops, spans, weight_roles

    def __getattr__(self, name):
        fn = getattr(self._ops, name)
        op_class = NUMPY_OP_CLASS.get(name)
        if op_class is None:
            return fn

        def timed(*args, **kwargs):
            with self._spans(op_class):
                return fn(*args, **kwargs)

        return timed

    def matmul(self, x, w):
        role = self._roles.get(id(w), ("matmul",))[0]
        with self._spans(role):
            return self._ops.matmul(x, w)


@dataclass(frozen=True)
class ProfileContext:
    model: str
    backend: str
    route: str
    n: int
    timing: str


def profile_records(seconds: dict[str, tuple[int, float]], passes: int, ctx: ProfileContext,
                    weight_bytes: dict[str, int]) -> list[OpProfileRecord]:
    """Records per op class, per step (totals / passes), largest first, with "other" = step - timed ops."""
    if STEP not in seconds:
        raise ValueError(f"profile has no {STEP!r} span: {sorted(seconds)}")
    step = seconds[STEP][1] / passes
    ops = {k: v for k, v in seconds.items() if k != STEP}
    timed = sum(s for _, s in ops.values()) / passes
    rows = [(op, calls / passes, s / passes) for op, (calls, s) in ops.items()]
    rows.append((OTHER, 0, max(step - timed, 0.0)))
    rows.sort(key=lambda r: -r[2])
    return [OpProfileRecord(model=ctx.model, backend=ctx.backend, route=ctx.route, n=ctx.n, op=op,
                            calls=int(round(calls)), ms=s * 1e3, share_pct=100 * s / step if step else 0.0,
                            weight_bytes=int(weight_bytes.get(op, 0)), timing=ctx.timing)
            for op, calls, s in rows]
