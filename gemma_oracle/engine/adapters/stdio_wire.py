"""The stdio protocol's wire format (docs/stdio-protocol.md), shared by both sides: the adapter that starts an engine
in another process (process_engine) and our Python peer (stdio_serve).

A message is one line of UTF-8 JSON (the header, ending in ``\\n``), followed, when the header says so, by
``nbytes`` raw bytes: the arrays listed in ``header["arrays"]``, each little-endian, C order, back to back. Logits
travel as binary because a JSON row of a 262k vocabulary would be megabytes of decimal text and would round
float32 values through a decimal form that a careless writer can get wrong; raw bytes are exact by construction.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

PROTOCOL_VERSION = 1

# Wire dtype names -> numpy dtypes. Little-endian whatever the host: a peer on a big-endian machine swaps bytes.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
}

# A header longer than this is not a header (e.g. a peer printing a whole array as text): refused, not buffered.
MAX_HEADER_BYTES = 1 << 20

# The requests of protocol version 1 (a peer answers any other op with an "unknown_op" error).
OPS = ("hello", "describe", "new_sequence", "free", "prefill", "prefill_batch", "decode", "last_batch", "shutdown")

# Error types a peer may put in an error response (docs/stdio-protocol.md, "Errors"); others are passed through.
ERROR_TYPES = ("bad_request", "unknown_op", "unknown_sequence", "unsupported", "engine_error")


def wire_dtype(dtype: Any) -> str:
    """The wire name of a numpy dtype (float32, float64, int32, int64); ValueError for any other."""
    dt = np.dtype(dtype)
    for name, wire in DTYPES.items():
        if dt.kind == wire.kind and dt.itemsize == wire.itemsize:
            return name
    raise ValueError(f"dtype {dt} cannot travel on the stdio protocol (expected one of {', '.join(DTYPES)})")


def encode(header: Mapping[str, Any], arrays: Sequence[tuple[str, np.ndarray]] = ()) -> bytes:
    """One message: the header line (with ``arrays`` and ``nbytes`` filled in when arrays are given), then the bytes."""
    head = dict(header)
    payload = []
    if arrays:
        specs = []
        for name, arr in arrays:
            arr = np.asarray(arr)
            wire = wire_dtype(arr.dtype)
            specs.append({"name": name, "dtype": wire, "shape": list(arr.shape)})
            payload.append(np.ascontiguousarray(arr, dtype=DTYPES[wire]).tobytes())
        head["arrays"] = specs
        head["nbytes"] = sum(len(p) for p in payload)
    # allow_nan=False: a header is plain JSON that any parser reads (non-finite values travel in the arrays)
    line = json.dumps(head, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    return line + b"".join(payload)


def array_specs(header: Mapping[str, Any]) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of each array a header announces, checked against its ``nbytes``; ValueError saying
    what is wrong otherwise."""
    specs = header.get("arrays", [])
    nbytes = header.get("nbytes", 0)
    if not isinstance(specs, list) or not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"'arrays' must be a list and 'nbytes' an integer >= 0, got {specs!r} and {nbytes!r}")
    out, total = [], 0
    for spec in specs:
        if not isinstance(spec, dict):
            raise ValueError(f"array spec {spec!r} is not an object")
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or dtype not in DTYPES:
            raise ValueError(f"array spec {spec!r}: expected a string 'name' and 'dtype' one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"array {name!r}: 'shape' must be a list of integers >= 0, got {shape!r}")
        out.append((name, DTYPES[dtype], tuple(shape)))
        total += int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    if total != nbytes:
        raise ValueError(f"'nbytes' is {nbytes} but the arrays {[(n, str(d), s) for n, d, s in out]} take {total} bytes")
    return out


def decode_arrays(specs: Sequence[tuple[str, np.dtype, tuple[int, ...]]], payload: bytes) -> dict[str, np.ndarray]:
    """The arrays of a payload, as native-order numpy arrays that own their memory."""
    out, offset = {}, 0
    for name, dtype, shape in specs:
        count = int(np.prod(shape, dtype=np.int64))
        arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
        out[name] = arr.astype(dtype.newbyteorder("="), copy=True)
        offset += count * dtype.itemsize
    return out
