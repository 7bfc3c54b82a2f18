"""What an outside engine's adapter needs from a GGUF's vocabulary, read straight from the header: the vocabulary
size and the ids of byte tokens that are not valid UTF-8 alone.

Why not ``GGUFFile``: gguf-py builds every tensor view and every metadata field, about 8 s for the 262,144-token
Gemma 3 vocabulary on 2 cores; the adapters only need two arrays, which this header walk reads in well under a second.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from gemma_oracle.engine.errors import MetadataError
from gemma_oracle.engine.gguf_file import scan_header

__all__ = ["VocabInfo", "read_vocab_info"]

_TOKENS, _TYPES = "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"
_STRING, _ARRAY, _INT32 = 8, 9, 5
_BYTE = 6  # llama.cpp's LLAMA_TOKEN_TYPE_BYTE
# GGUF value type -> size in bytes (strings and arrays are walked)
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Cursor:
    """Little-endian reads from a header that ``scan_header`` has already validated (so no bounds checks here)."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n: int, what: str = "") -> int:
        at, self.pos = self.pos, self.pos + n
        return at

    def u32(self, what: str = "") -> int:
        return struct.unpack_from("<I", self.buf, self.take(4))[0]

    def u64(self, what: str = "") -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8))[0]

    def string(self, what: str = "") -> str:
        n = self.u64()
        at = self.take(n)
        return bytes(self.buf[at:at + n]).decode("utf-8", "replace")


def _skip_value(cur: _Cursor, vtype: int, key: str) -> None:
    if vtype == _STRING:
        cur.take(cur.u64())
    elif vtype == _ARRAY:
        etype, count = cur.u32(), cur.u64()
        if etype in _SIZES:
            cur.take(_SIZES[etype] * count)
        else:
            for _ in range(count):
                _skip_value(cur, etype, key)
    else:
        cur.take(_SIZES[vtype])


@dataclass(frozen=True)
class VocabInfo:
    """``vocab_size`` = the number of tokens in ``tokenizer.ggml.tokens``; ``partial_utf8_ids`` = the byte-fallback
    tokens <0x80>..<0xFF>. A llama.cpp server withholds a sampled token that is an incomplete UTF-8 sequence, and its
    log-probabilities with it, so adapters ban these ids from *sampling* (their log-probabilities still come back)."""

    vocab_size: int
    partial_utf8_ids: tuple[int, ...]


def read_vocab_info(path: os.PathLike | str) -> VocabInfo:
    """The vocabulary of a GGUF file (GGUFFormatError for a malformed header, MetadataError when the tokenizer
    arrays are missing or of the wrong type)."""
    p = str(path)
    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        scan_header(p, mm)  # the same validation every model file gets: counts and extents are then trustworthy
        cur = _Cursor(mm)
        cur.take(8, "magic and version")
        cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        tokens: list[str] | None = None
        types: np.ndarray | None = None
        for i in range(n_kv):
            key = cur.string(f"key of metadata entry {i}")
            vtype = cur.u32(f"value type of {key}")
            if key in (_TOKENS, _TYPES) and vtype == _ARRAY:
                etype, count = cur.u32(f"element type of {key}"), cur.u64(f"element count of {key}")
                if key == _TOKENS and etype == _STRING:
                    tokens = _strings(mm, cur, count, key)
                    continue
                if key == _TYPES and etype == _INT32:
                    at = cur.take(4 * count, f"array data of {key}")
                    types = np.frombuffer(mm, dtype="<i4", count=count, offset=at).copy()
                    continue
                raise MetadataError(p, f"array of element type {etype}: expected "
                                       f"{'strings' if key == _TOKENS else 'int32'}", subject=key)
            _skip_value(cur, vtype, key)
    if tokens is None:
        raise MetadataError(p, "missing: expected the token list of the model's vocabulary", subject=_TOKENS)
    if types is None or len(types) != len(tokens):
        raise MetadataError(p, f"expected {len(tokens)} int32 token types (one per token)", subject=_TYPES)
    partial = tuple(i for i in np.flatnonzero(types == _BYTE).tolist()
                    if tokens[i].startswith("<0x") and len(tokens[i]) == 6 and int(tokens[i][3:5], 16) >= 0x80)
    return VocabInfo(len(tokens), partial)


def _strings(buf, cur: _Cursor, count: int, key: str) -> list[str]:
    """``count`` GGUF strings (u64 length + bytes) from the cursor on; undecodable bytes are kept as U+FFFD (only
    byte-token spellings, which are ASCII, are ever looked at)."""
    out = []
    unpack = struct.unpack_from
    for _ in range(count):
        n = unpack("<Q", buf, cur.take(8, f"string length in {key}"))[0]
        at = cur.take(n, f"string in {key}")
        out.append(bytes(buf[at:at + n]).decode("utf-8", "replace"))
    return out
