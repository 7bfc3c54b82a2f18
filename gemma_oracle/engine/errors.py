"""Typed errors for everything that reads model files.

Every error names the file and the tensor or key at fault and says what was expected, so a user can
tell a corrupt download from an unsupported model from a bug in a writer.
"""
from __future__ import annotations

import os


class GemmaOracleError(Exception):
    """Base of every error gemma-oracle raises on purpose."""


class GGUFError(GemmaOracleError):
    """A GGUF file that cannot be used; `path` is the file, `subject` the tensor or key (if any)."""

    def __init__(self, path: os.PathLike | str, message: str, *, subject: str | None = None):
        self.path = str(path)
        self.subject = subject
        where = f"{self.path}" + (f" [{subject}]" if subject else "")
        super().__init__(f"{where}: {message}")


class GGUFFormatError(GGUFError):
    """Not a readable GGUF container: wrong magic, unsupported version, truncated or malformed header/data."""


class TensorDataOverlapError(GGUFFormatError):
    """Two tensors' data ranges overlap: a wrong data offset, which would make one tensor read another's bytes.

    `subject` is the tensor whose range starts later (at the same start, the later one in the file), `other` the
    tensor it overlaps; `ranges` maps both to their absolute byte ranges [start, end) in the file."""

    def __init__(self, path: os.PathLike | str, message: str, *, subject: str, other: str,
                 ranges: dict[str, tuple[int, int]]):
        super().__init__(path, message, subject=subject)
        self.other = other
        self.ranges = ranges


class MetadataError(GGUFError):
    """A metadata key is missing, has the wrong type, or contradicts other keys or the tensors."""


class UnsupportedQuantTypeError(GGUFError):
    """A tensor is stored in a type the loader does not decode (or not allowed for that tensor)."""


class MissingTensorError(GGUFError):
    """A tensor the configuration requires is absent."""


class TensorShapeError(GGUFError):
    """A tensor's ne (GGUF dims, ne[0] = contiguous row length) differs from what the config implies."""


class UnsupportedModelError(GGUFError):
    """A well-formed file of an architecture or feature the engine does not implement (e.g. MoE)."""
