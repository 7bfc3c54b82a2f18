"""How N prompts are prefilled together (`prefill_batch` of both engines): forward c carries chunk c of every prompt
that still has one, at most `chunk` tokens per prompt, so a sliding ring (window + chunk - 1 slots) holds what one
forward writes exactly as in single-prompt prefill; a prompt's logits come from the forward its last token is in."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class PrefillForward:
    """One forward of a batched prefill: ``pieces`` = (prompt index, tokens) in row order; ``ends`` = (prompt index,
    row in this forward) of each prompt whose last token is in it."""

    pieces: tuple[tuple[int, tuple[int, ...]], ...]
    ends: tuple[tuple[int, int], ...]


def prefill_forwards(prompts: Sequence[Sequence[int]], chunk: int) -> list[PrefillForward]:
    """The forwards that prefill ``prompts`` together (at least one token each), in order."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prefill needs at least one token per prompt")
    out = []
    for start in range(0, max(len(p) for p in prompts), chunk):
        pieces, ends, rows = [], [], 0
        for i, prompt in enumerate(prompts):
            piece = tuple(int(t) for t in prompt[start : start + chunk])
            if not piece:
                continue
            pieces.append((i, piece))
            rows += len(piece)
            if start + len(piece) == len(prompt):
                ends.append((i, rows - 1))
        out.append(PrefillForward(tuple(pieces), tuple(ends)))
    return out
