"""The control: our reference engine with a batching bug planted on purpose (registry name ``broken-rope``).

In a decode step of N >= 2 rows every row's q and k are rotated (RoPE) at the LONGEST row's position, the largest
position in the batch, as a batched kernel that reads one position for the whole batch would; its cache slots and
attention windows stay right. Alone (N = 1, and every prefill) it is the reference's bits, and a batch whose rows
all sit at one position is untouched too. So an oracle run against it must fail wherever rows of one batch sit at
different positions and pass elsewhere: the proof that a green run of the oracle is not green by construction.
"""
from __future__ import annotations

import os

import numpy as np

from gemma_oracle.engine.engine import GemmaEngine
from gemma_oracle.engine.model import GemmaModel

BACKENDS = {"numpy": "numpy64", "numpy32": "numpy32"}
CONTROL = ("deliberately broken control: in a decode step of N >= 2 rows every row is rotated (RoPE) at the "
           "batch's largest position; exact when alone and when all rows sit at one position")


class LongestRowRope(GemmaModel):
    """GemmaModel whose RoPE uses the batch's largest position while ``batched`` is set (the engine sets it for
    decode steps of N >= 2 rows only; a prefill chunk of one sequence also spans several positions)."""

    batched = False

    def rope_positions(self, layer: int, positions: np.ndarray) -> np.ndarray:
        return np.full_like(positions, positions.max()) if self.batched else positions


class BrokenRopeEngine(GemmaEngine):
    """GemmaEngine with LongestRowRope as its model; the name says it is the control, so memos never mix it with
    the engine it wraps."""

    def __init__(self, model_path: os.PathLike | str, backend: str = "numpy64", **options):
        super().__init__(model_path, backend, **options)
        self.model = LongestRowRope(self.config, self.model.w, self.ops)
        self.name = f"broken-rope[{backend}]:{self.model_file.path.name}"

    def describe(self) -> dict:
        return super().describe() | {"engine": "gemma-oracle broken-rope control", "control": CONTROL}

    def decode(self, seqs, tokens):
        self.model.batched = len(seqs) >= 2
        try:
            return super().decode(seqs, tokens)
        finally:
            self.model.batched = False


def make(model_path: os.PathLike | str, *, base: str = "numpy") -> BrokenRopeEngine:
    """The registry's ``broken-rope`` factory: ``base`` is the wrapped engine (numpy: float64, numpy32)."""
    if base not in BACKENDS:
        raise ValueError(f"base {base!r}: expected one of {', '.join(BACKENDS)}")
    return BrokenRopeEngine(model_path, BACKENDS[base])
