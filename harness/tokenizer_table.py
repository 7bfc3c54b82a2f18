"""A small real SentencePiece-style ("llama") vocabulary for synthetic fixtures.

llama.cpp refuses files whose tokenizer model is "none", so fixtures carry a genuine table: Gemma's
special ids (pad 0, eos 1, bos 2, unk 3), the 256 byte-fallback tokens, then ordinary pieces.
"""
from __future__ import annotations

from dataclasses import dataclass

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
VOCAB_SIZE = 512


@dataclass(frozen=True)
class TokenizerTable:
    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    bos: int = 2
    eos: int = 1
    unk: int = 3
    pad: int = 0


def _pieces(n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    out: list[str] = []
    for c in letters:
        out += [c, "\u2581" + c]
    for a in letters:
        for b in "aeioun":
            out += ["\u2581" + a + b, a + b]
            if len(out) >= n:
                return out[:n]
    return out[:n]


def small_vocab(size: int = VOCAB_SIZE) -> TokenizerTable:
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [CONTROL, CONTROL, CONTROL, UNKNOWN] + [BYTE] * 256
    rest = size - len(tokens)
    tokens += _pieces(rest)
    types += [NORMAL] * rest
    if len(tokens) != size:
        raise ValueError(f"cannot make a vocabulary of {size} tokens")
    scores = [0.0] * 260 + [-float(i) for i in range(rest)]
    return TokenizerTable(tuple(tokens), tuple(scores), tuple(types))


def _long_pieces():
    """Pieces of 3 and 4 letters, with and without the word-start mark, in a fixed order."""
    from itertools import product

    letters = "abcdefghijklmnopqrstuvwxyz"
    for length in (3, 4):
        for combo in product(letters, repeat=length):
            piece = "".join(combo)
            yield "\u2581" + piece
            yield piece


def large_vocab(size: int) -> TokenizerTable:
    """A vocabulary of `size` tokens (e.g. Gemma's 262144) laid out like small_vocab: the same specials and byte
    tokens, the small table's pieces, then 3- and 4-letter pieces, all distinct."""
    base = small_vocab()
    tokens, types = list(base.tokens), list(base.types)
    seen = set(tokens)
    if size > len(tokens):
        for piece in _long_pieces():
            if len(tokens) == size:
                break
            if piece not in seen:
                tokens.append(piece)
                types.append(NORMAL)
                seen.add(piece)
    if len(tokens) != size:
        raise ValueError(f"cannot make a vocabulary of {size} tokens (have {len(tokens)})")
    scores = [0.0] * 260 + [-float(i) for i in range(size - 260)]
    return TokenizerTable(tuple(tokens), tuple(scores), tuple(types))
