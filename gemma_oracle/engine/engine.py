"""GemmaEngine: a decode engine over one model file and one backend (meets gemma_oracle.engine.protocol).

`prefill` runs a prompt for one sequence in chunks; `prefill_batch` runs N prompts together (each chunk's forward
carries a chunk of every prompt still running); `decode` runs ONE step for N sequences together, each at its own
position with its own cache (one matmul over the N rows).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .backends import make_backend
from .kv_cache import SequenceState
from .model import GemmaModel, Row
from .model_file import ModelFile, load_model
from .prefill_plan import prefill_forwards
from .protocol import BatchRecord
from .weights import load_weights

PREFILL_CHUNK = 8


class GemmaEngine:
    def __init__(self, model: ModelFile | os.PathLike | str, backend: str = "numpy64", *,
                 embed_scale_mode: str = "fp32", prefill_chunk: int = PREFILL_CHUNK, memo_prefill: bool = False):
        self.model_file = model if isinstance(model, ModelFile) else load_model(model, embed_scale_mode=embed_scale_mode)
        self.config = self.model_file.config
        self.ops = make_backend(backend)
        self.model = GemmaModel(self.config, load_weights(self.model_file, self.ops), self.ops)
        self.prefill_chunk = prefill_chunk
        # memo_prefill: a fresh sequence prefilled with a prompt seen before gets a copy of the state and
        # logits that prompt produced (a prompt cache). Prefill is deterministic, so the copy is bitwise
        # what recomputing would give; oracle sweeps that re-prefill the same prompts for every N use it.
        self._prefill_memo: dict[tuple[int, ...], tuple[SequenceState, np.ndarray]] | None = {} if memo_prefill else None
        self.name = f"{backend}:{self.model_file.path.name}"
        self.vocab_size = self.config.vocab_size
        self.backend = backend
        self._last_batch: BatchRecord | None = None

    def describe(self) -> dict:
        from gemma_oracle import __version__

        return {"name": self.name, "engine": "gemma-oracle numpy", "version": __version__, "dtype": self.backend,
                "model": self.model_file.path.name, "prefill_chunk": self.prefill_chunk}

    def last_batch(self) -> BatchRecord | None:
        return self._last_batch

    def new_sequence(self) -> SequenceState:
        return SequenceState(self.config, self.ops, prefill_chunk=self.prefill_chunk)

    def prefill(self, seq: SequenceState, tokens: Sequence[int]) -> np.ndarray:
        """Feed `tokens` after what `seq` already holds; return the logits [vocab] of the last one."""
        assert len(tokens) > 0, "prefill needs at least one token"
        key = tuple(int(t) for t in tokens)
        if self._prefill_memo is not None and seq.length == 0 and key in self._prefill_memo:
            state, logits = self._prefill_memo[key]
            seq.restore(state)
            return logits.copy()
        fresh = seq.length == 0
        for start in range(0, len(tokens), self.prefill_chunk):
            chunk = tokens[start : start + self.prefill_chunk]
            rows = [Row(seq, int(t), seq.length + i) for i, t in enumerate(chunk)]
            logits = self.model.forward(rows, logits_for=[len(rows) - 1])
            seq.length += len(rows)
        out = self.ops.to_host(logits[0])
        if self._prefill_memo is not None and fresh:
            self._prefill_memo[key] = (seq.clone(), out.copy())
        return out

    def prefill_batch(self, seqs: Sequence[SequenceState], prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """N prompts processed together -> [N, vocab], the logits of each prompt's last token. Chunk c of every
        prompt that has one goes through ONE forward (prefill_chunk tokens per prompt, so sliding rings hold)."""
        assert len(seqs) == len(prompts) and len({id(s) for s in seqs}) == len(seqs), "one prompt per distinct sequence"
        forwards = prefill_forwards(prompts, self.prefill_chunk)
        out: list = [None] * len(seqs)
        for fw in forwards:
            rows = [Row(seqs[i], t, seqs[i].length + j) for i, piece in fw.pieces for j, t in enumerate(piece)]
            logits = self.model.forward(rows, logits_for=[r for _, r in fw.ends])
            for i, piece in fw.pieces:
                seqs[i].length += len(piece)
            host = self.ops.to_host(logits)
            for k, (i, _) in enumerate(fw.ends):
                out[i] = host[k]
        self._last_batch = BatchRecord(rows=len(seqs), forward_calls=len(forwards), min_forward_calls=len(forwards),
                                       detail="model.forward calls, one per prefill chunk")
        return np.stack(out)

    def decode(self, seqs: Sequence[SequenceState], tokens: Sequence[int]) -> np.ndarray:
        """One token for each of N distinct sequences -> logits [N, vocab]."""
        assert len(seqs) == len(tokens) and len({id(s) for s in seqs}) == len(seqs), "one token per distinct sequence"
        rows = [Row(s, int(t), s.length) for s, t in zip(seqs, tokens)]
        logits = self.model.forward(rows, logits_for=range(len(rows)))
        for s in seqs:
            s.length += 1
        self._last_batch = BatchRecord(rows=len(rows), forward_calls=1, detail="model.forward calls")
        return self.ops.to_host(logits)
