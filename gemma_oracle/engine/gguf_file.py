"""Open a GGUF file: a bounds-checked scan of the header, then gguf-py's GGUFReader for the contents.

GGUFReader trusts the counts and lengths in a file: a flipped bit in an array length can make it loop
for hours or raise anything from IndexError to MemoryError. So the header is walked once here first,
every count checked against the bytes that remain, every tensor's data range checked to lie inside the data
section and to overlap no other tensor's, and only a file that passes is handed to GGUFReader.
Every failure is a typed error from gemma_oracle.engine.errors that names the file and the key or tensor.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gemma_oracle.kernels.reference.dequant import BLOCK_SIZES

from .errors import GGUFFormatError, GGUFError, TensorDataOverlapError, UnsupportedQuantTypeError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# GGUF metadata value types -> fixed byte size (None: variable length).
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: None, 9: None, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9

# ggml type id of every type this project decodes (ggml.h); block geometry comes from the dequantizers.
GGML_TYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}
# ggml type id -> (name, values per block, bytes per block)
SUPPORTED_TYPES: dict[int, tuple[str, int, int]] = {
    tid: (name, *BLOCK_SIZES[name]) for name, tid in GGML_TYPE_IDS.items()
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as stored: GGML type name, ne (ne[0] = contiguous row length) and the raw data view."""

    name: str
    type_name: str
    ne: tuple[int, ...]
    data: np.ndarray  # zero-copy view as GGUFReader gives it (numpy order; uint8 bytes for quantized/BF16)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne))

    @property
    def nbytes(self) -> int:
        block, size = BLOCK_SIZES[self.type_name]
        return self.n_elements // block * size


class _Cursor:
    """Reads little-endian values from the mapped file, raising GGUFFormatError past the end."""

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path, self.end = buf, 0, path, len(buf)

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.end:
            raise GGUFFormatError(
                self.path,
                f"truncated header: {what} needs {n} bytes at offset {self.pos}, file has {self.end}",
            )
        at = self.pos
        self.pos += n
        return at

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        at = self.take(n, what)
        try:
            return bytes(self.buf[at : at + n]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFFormatError(self.path, f"{what} is not valid UTF-8 ({exc.reason})") from None


def _skip_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    """Walk one metadata value; returns the value for scalars the scan itself needs, else None."""
    if vtype not in _VALUE_SIZES:
        raise GGUFFormatError(cur.path, f"unknown metadata value type {vtype}", subject=key)
    if vtype == _STRING:
        cur.string(f"string value of {key}")
        return None
    if vtype == _ARRAY:
        if depth > 1:
            raise GGUFFormatError(cur.path, "arrays nested deeper than 2 levels", subject=key)
        etype = cur.u32(f"element type of {key}")
        count = cur.u64(f"element count of {key}")
        if etype not in _VALUE_SIZES:
            raise GGUFFormatError(cur.path, f"unknown array element type {etype}", subject=key)
        size = _VALUE_SIZES[etype]
        remaining = cur.end - cur.pos
        min_size = size if size is not None else (8 if etype == _STRING else 12)
        if count * min_size > remaining:
            raise GGUFFormatError(
                cur.path, f"array of {count} elements cannot fit in the {remaining} bytes left", subject=key
            )
        if size is not None:
            cur.take(count * size, f"array data of {key}")
        else:
            for _ in range(count):
                _skip_value(cur, etype, key, depth + 1)
        return None
    at = cur.take(_VALUE_SIZES[vtype], f"value of {key}")
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}[vtype]
    return struct.unpack_from(fmt, cur.buf, at)[0]


def scan_header(path: str, buf) -> None:
    """Validate the whole header and the data extents of every tensor (inside the data section, pairwise disjoint)
    without trusting any count."""
    cur = _Cursor(buf, path)
    at = cur.take(4, "magic")
    magic = bytes(buf[at : at + 4])
    if magic != GGUF_MAGIC:
        raise GGUFFormatError(path, f"wrong magic {magic!r}: expected {GGUF_MAGIC!r} (not a GGUF file)")
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        hint = " (a big-endian GGUF, which is not supported)" if swapped in SUPPORTED_VERSIONS else ""
        raise GGUFFormatError(path, f"GGUF version {version}{hint}: expected one of {SUPPORTED_VERSIONS}")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # The smallest possible metadata entry is 8 (key length) + 4 (type) + 1 bytes; a tensor info 8+4+8+4+8.
    if n_kv * 13 > cur.end or n_tensors * 32 > cur.end:
        raise GGUFFormatError(path, f"header claims {n_kv} metadata entries and {n_tensors} tensors; the file is only {cur.end} bytes")

    alignment = DEFAULT_ALIGNMENT
    keys: set[str] = set()
    for i in range(n_kv):
        key = cur.string(f"key of metadata entry {i}")
        if key in keys:
            raise GGUFFormatError(path, "duplicate metadata key", subject=key)
        keys.add(key)
        vtype = cur.u32(f"value type of {key}")
        value = _skip_value(cur, vtype, key)
        if key == "general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                raise GGUFFormatError(path, f"expected a u32 power of two, got type {vtype} value {value}", subject=key)
            alignment = value

    tensors = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"name of tensor {i}")
        if name in names:
            raise GGUFFormatError(path, "duplicate tensor name", subject=name)
        names.add(name)
        n_dims = cur.u32(f"n_dims of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(path, f"n_dims {n_dims}: expected 1..{MAX_DIMS}", subject=name)
        ne = tuple(cur.u64(f"ne[{d}] of {name}") for d in range(n_dims))
        type_id = cur.u32(f"type of {name}")
        offset = cur.u64(f"data offset of {name}")
        if type_id not in SUPPORTED_TYPES:
            raise UnsupportedQuantTypeError(
                path,
                f"ggml type id {type_id} is not supported: expected one of "
                + ", ".join(f"{n} ({t})" for t, (n, _, _) in SUPPORTED_TYPES.items()),
                subject=name,
            )
        tname, block, size = SUPPORTED_TYPES[type_id]
        if any(d == 0 for d in ne) or any(d >= 1 << 40 for d in ne):
            raise GGUFFormatError(path, f"implausible shape ne={list(ne)}", subject=name)
        if ne[0] % block:
            raise GGUFFormatError(path, f"ne[0]={ne[0]} is not a multiple of the {tname} block size {block}", subject=name)
        n_el = 1
        for d in ne:
            n_el *= d
        if offset % alignment:
            raise GGUFFormatError(path, f"data offset {offset} is not aligned to {alignment}", subject=name)
        tensors.append((name, offset, n_el // block * size))

    check_data_ranges(path, -(-cur.pos // alignment) * alignment, cur.end, tensors)


def check_data_ranges(path: str, data_start: int, file_end: int, tensors: list[tuple[str, int, int]]) -> None:
    """Every tensor's data [data_start + offset, + nbytes) lies inside the data section [data_start, file_end),
    and no two tensors' data overlap (zero-size tensors overlap nothing). `tensors` holds (name, offset relative
    to the data section, nbytes) in file order. One sort, O(n log n)."""
    ranges = []
    for index, (name, offset, nbytes) in enumerate(tensors):
        start, end = data_start + offset, data_start + offset + nbytes
        if end > file_end:
            raise GGUFFormatError(
                path,
                f"data out of section: tensor needs bytes {start}..{end} (data offset {offset}, {nbytes} bytes), "
                f"the data section is bytes {data_start}..{file_end}: expected the tensor's data inside it "
                f"(the file is truncated or the data offset is wrong)",
                subject=name,
            )
        if nbytes:
            ranges.append((start, index, end, name))
    ranges.sort()
    reach, holder = data_start, None  # the furthest end so far and the tensor it belongs to
    for start, _, end, name in ranges:
        if holder is not None and start < reach:
            other, (o_start, o_end) = holder
            raise TensorDataOverlapError(
                path,
                f"data bytes {start}..{end} overlap the data of tensor {other} (bytes {o_start}..{o_end}) by "
                f"{min(end, o_end) - start} bytes: expected every tensor's data disjoint from every other's "
                f"(a wrong data offset in {name} or {other})",
                subject=name,
                other=other,
                ranges={name: (start, end), other: (o_start, o_end)},
            )
        if end > reach:
            reach, holder = end, (name, (start, end))


def _reader_class():
    from gguf import GGUFReader

    class _PlainViewReader(GGUFReader):
        """GGUFReader with its element reads taken from a plain ndarray view of the memmap.

        Same bytes, same fields; slicing np.memmap per element made a 262k-token vocabulary take
        ~30 s to read (the Gemma 3 270M file), a plain view takes ~8 s."""

        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            dt = np.dtype(dtype)
            count = int(count)
            arr = plain[offset : offset + dt.itemsize * count].view(dt)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return _PlainViewReader


class GGUFFile:
    """A validated GGUF file: `metadata` (key -> Python value) and `tensors` (name -> TensorInfo)."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        p = str(self.path)
        try:
            size = os.path.getsize(p)
            with open(p, "rb") as fh:
                if size == 0:
                    raise GGUFFormatError(p, "empty file: expected a GGUF header")
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    scan_header(p, mm)
        except OSError as exc:
            raise GGUFFormatError(p, f"cannot read file: {exc.strerror or exc}") from None

        try:
            self._reader = _reader_class()(p, "r")
            self.metadata: dict[str, Any] = {}
            for key, field in self._reader.fields.items():
                if key.startswith("GGUF."):
                    continue
                self.metadata[key] = field.contents()
            self.tensors: dict[str, TensorInfo] = {}
            for t in self._reader.tensors:
                ne = tuple(int(d) for d in t.shape)
                self.tensors[t.name] = TensorInfo(t.name, t.tensor_type.name, ne, t.data)
        except GGUFError:
            raise
        except Exception as exc:  # the scan passed, so this is a GGUF-level inconsistency GGUFReader found
            raise GGUFFormatError(p, f"gguf-py could not read the file: {type(exc).__name__}: {exc}") from None

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, arch={self.architecture!r}, tensors={len(self.tensors)})"
