"""Test helper: a REAL llama.cpp HTTP server in a child process (see gemma_oracle.engine.adapters.llamacpp_server),
as a context manager (tests wrap it in module-scoped fixtures). No mocks: tests talk to llama.cpp's own HTTP code."""
from __future__ import annotations

from gemma_oracle.engine.adapters.llamacpp_server import llama_server

__all__ = ["llama_server"]
