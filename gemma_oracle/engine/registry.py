"""Engines by name: `--engine NAME[:key=value,...]` on the CLI, in the pytest plugin and in the nightly.

Built-in names live in BUILTIN (imported lazily, so naming one engine never imports another's dependencies);
third-party engines register a Python entry point in the group ``gemma_oracle.engines``::

    [project.entry-points."gemma_oracle.engines"]
    myengine = "my_package.oracle_adapter:ENGINE"      # an EngineEntry, or a factory(model_path, **options)

A spec's option values are strings; an entry's ``options`` maps each accepted key to (converter, help), so a bad
key or value is refused before anything starts, with the known keys listed. A value may be quoted ('...' or "...")
to hold commas or colons: ``process:cmd="./peer --threads 2",timeout=30``.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Mapping

from .errors import GemmaOracleError

ENTRY_POINT_GROUP = "gemma_oracle.engines"

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "EngineEntry", "EngineSpec", "EngineSpecError", "check_spec", "choice", "engine_label", "engines", "entry",
           "make_engine", "non_negative_int", "on_off", "parse_engine_spec", "positive_int", "unavailable_reason"]


class EngineSpecError(GemmaOracleError, ValueError):
    """An --engine spec that names no known engine, or a key or value that engine does not accept."""


@dataclass(frozen=True)
class EngineSpec:
    """``NAME[:key=value,...]`` parsed: the engine's name and its options as strings, in the order given."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def option_dict(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        def q(v):
            return f'"{v}"' if any(c in v for c in ",:= '\"") else v
        return self.name + ":" + ",".join(f"{k}={q(v)}" for k, v in self.options)


def _split_options(text: str, spec: str) -> list[tuple[str, str]]:
    pairs, i, n = [], 0, len(text)
    while i < n:
        eq = text.find("=", i)
        if eq < 0:
            raise EngineSpecError(f"--engine {spec!r}: option {text[i:]!r} is not key=value")
        key = text[i:eq].strip()
        if not key or "," in key:
            raise EngineSpecError(f"--engine {spec!r}: option {text[i:eq]!r} is not key=value")
        j = eq + 1
        if j < n and text[j] in "'\"":
            end = text.find(text[j], j + 1)
            if end < 0:
                raise EngineSpecError(f"--engine {spec!r}: unterminated quote in the value of {key!r}")
            value, j = text[j + 1 : end], end + 1
            if j < n and text[j] != ",":
                raise EngineSpecError(f"--engine {spec!r}: expected ',' after the quoted value of {key!r}")
        else:
            end = text.find(",", j)
            end = n if end < 0 else end
            value, j = text[j:end].strip(), end
        if key in dict(pairs):
            raise EngineSpecError(f"--engine {spec!r}: option {key!r} given twice")
        pairs.append((key, value))
        i = j + 1
    return pairs


# Options that say where or how patiently to reach an engine, not what it computes: left out of an engine's label so
# that runs on another port or host stay comparable (a label is part of a result row's key).
UNLABELLED_OPTIONS = ("url", "api_key", "cmd", "timeout", "retries")


def engine_label(spec: "EngineSpec | str") -> str:
    """The name a result row carries for an engine: its spec without UNLABELLED_OPTIONS (`cupy:mode=auto`,
    `llamacpp:topk=64`, `openai`)."""
    spec = parse_engine_spec(spec) if isinstance(spec, str) else spec
    return str(EngineSpec(spec.name, tuple((k, v) for k, v in spec.options if k not in UNLABELLED_OPTIONS)))


def parse_engine_spec(text: str) -> EngineSpec:
    """``NAME[:key=value,...]`` -> EngineSpec; EngineSpecError for a malformed spec (names are not checked here)."""
    text = (text or "").strip()
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise EngineSpecError(f"--engine {text!r}: expected NAME[:key=value,...]")
    return EngineSpec(name, tuple(_split_options(rest, text)) if rest.strip() else ())


# ------------------------------------------------------------------------------------------------- option values

def positive_int(v: str) -> int:
    x = int(v)
    if x < 1:
        raise ValueError("expected an integer >= 1")
    return x


def non_negative_int(v: str) -> int:
    x = int(v)
    if x < 0:
        raise ValueError("expected an integer >= 0")
    return x


def on_off(v: str) -> bool:
    s = v.strip().lower()
    if s in ("on", "true", "1", "yes"):
        return True
    if s in ("off", "false", "0", "no"):
        return False
    raise ValueError("expected on or off")


def choice(*allowed: str) -> Callable[[str], str]:
    def convert(v: str) -> str:
        if v not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return v
    convert.__name__ = "|".join(allowed)
    return convert


# ------------------------------------------------------------------------------------------------- entries

@dataclass(frozen=True)
class EngineEntry:
    """One selectable engine. ``factory`` is ``"module:attribute"`` (imported on first use) or a callable
    ``factory(model_path, **options) -> engine``; ``available()`` returns None when the engine can run here, else
    the reason and the fix; ``options`` maps each accepted key to (converter from str, help)."""

    name: str
    factory: Any
    summary: str
    options: Mapping[str, tuple[Callable[[str], Any], str]] = field(default_factory=dict)
    available: Callable[[], str | None] = lambda: None
    origin: str = "built-in"

    def load_factory(self) -> Callable[..., Any]:
        if callable(self.factory):
            return self.factory
        module, _, attr = str(self.factory).partition(":")
        return getattr(importlib.import_module(module), attr)

    def convert(self, spec: EngineSpec) -> dict[str, Any]:
        out = {}
        for key, raw in spec.options:
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise EngineSpecError(f"--engine {spec}: engine {self.name!r} has no option {key!r} (its options: {known})")
            convert, help_text = self.options[key]
            try:
                out[key] = convert(raw)
            except (TypeError, ValueError) as exc:
                raise EngineSpecError(f"--engine {spec}: option {key}={raw!r} of engine {self.name!r}: {exc} "
                                      f"({help_text})") from None
        return out


def _module_present(module: str, hint: str) -> Callable[[], str | None]:
    def check() -> str | None:
        import importlib.util

        return None if importlib.util.find_spec(module) is not None else f"needs {module}: {hint}"
    return check


def _gpu_reason() -> str | None:
    from .factory import gpu_available

    return None if gpu_available() else "needs an NVIDIA GPU and pip install 'gemma-oracle[gpu]'"


def route_mode(raw: str) -> str:
    """A route mode of gemma_oracle.engine.routing (MODES, or auto@K): ValueError names what is expected."""
    from .routing import split_mode

    split_mode(raw)
    return raw

BUILTIN: dict[str, EngineEntry] = {e.name: e for e in (
    EngineEntry("numpy", "gemma_oracle.engine.factory:numpy64_engine",
                "our float64 numpy reference engine (the oracle's yardstick)",
                {"prefill_chunk": (positive_int, "prompt tokens per prefill forward, default 8")}),
    EngineEntry("numpy32", "gemma_oracle.engine.factory:numpy32_engine",
                "our numpy engine in float32",
                {"prefill_chunk": (positive_int, "prompt tokens per prefill forward, default 8")}),
    EngineEntry("cupy", "gemma_oracle.engine.factory:cupy_engine",
                "our CuPy GPU engine with the BatchDecodeMatMul router",
                {"mode": (route_mode, "route mode (gemma_oracle.engine.routing.MODES, or auto@K: the auto routes of a K-row "
                                      "step, single-user twin of an auto batch of K), default auto"),
                 "kv": (choice("float32", "float16"), "KV cache type, default float32")},
                available=_gpu_reason),
    EngineEntry("llamacpp", "gemma_oracle.engine.adapters.llamacpp_engine:make",
                "llama.cpp in-process through xllamacpp (CPU), N sequences in one llama_decode per step",
                {"slots": (positive_int, "parallel slots (default: the largest N of the run, at least 1)"),
                 "threads": (positive_int, "CPU threads, default 1"),
                 "kv": (choice("f32", "f16", "q8_0"), "KV cache type, default f32"),
                 "flash_attn": (on_off, "flash attention, default off"),
                 "topk": (non_negative_int, "answer with the top k log-probabilities (0: the full vocabulary)"),
                 "ctx": (positive_int, "context tokens per slot, default 512"),
                 "retries": (non_negative_int, "re-issues of a step that was not one llama_decode, default 8")},
                available=_module_present("xllamacpp", "pip install 'gemma-oracle[parity]'")),
    EngineEntry("openai", "gemma_oracle.engine.adapters.openai_engine:make",
                "any OpenAI-compatible completions server that returns logprobs (llama.cpp server, vLLM, SGLang, TGI)",
                {"url": (str, "base URL, e.g. http://127.0.0.1:8080 (required)"),
                 "model": (str, "model name sent in each request"),
                 "topk": (non_negative_int, "log-probabilities per row, default 64 (0: the full vocabulary)"),
                 "api_key": (str, "bearer token, if the server wants one"),
                 "timeout": (float, "seconds per request, default 120"),
                 "metrics": (on_off, "read the server's /metrics to check that every step was one batch, default on"),
                 "retries": (non_negative_int, "re-issues of a step that was not one llama_decode, default 8"),
                 "slot_similarity": (float, "the llama.cpp server's --slot-prompt-similarity, default 0.1 (a batched "
                                            "prefill's slot placement must beat it)")}),
    EngineEntry("process", "gemma_oracle.engine.adapters.process_engine:make",
                "an engine in another process (any language) speaking the stdio protocol (docs/stdio-protocol.md)",
                {"cmd": (str, "the command line that starts the peer (required)"),
                 "timeout": (float, "seconds per request, default 120")}),
    EngineEntry("broken-rope", "gemma_oracle.engine.adapters.broken:make",
                "a control: our float64 engine with every batched row rotated at the longest row's position "
                "(must fail the oracle)",
                {"base": (choice("numpy", "numpy32"), "the wrapped engine, default numpy")}),
)}


def _entry_point_entries() -> dict[str, EngineEntry]:
    found = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"entry point {ep.value}" + (f" ({dist.name} {dist.version})" if dist is not None else "")

        def loaded_entry(_ep=ep, _origin=origin) -> EngineEntry:
            try:
                obj = _ep.load()
            except Exception as exc:  # a broken plug-in names itself, it does not take the CLI down
                raise EngineSpecError(f"engine {_ep.name!r} ({_origin}) failed to load: {type(exc).__name__}: {exc}") from exc
            if isinstance(obj, EngineEntry):
                return EngineEntry(_ep.name, obj.factory, obj.summary, obj.options, obj.available, _origin)
            if not callable(obj):
                raise EngineSpecError(f"engine {_ep.name!r} ({_origin}) is neither an EngineEntry nor a factory")
            doc = (obj.__doc__ or "").strip().splitlines()
            # a bare factory takes any options as strings
            return EngineEntry(_ep.name, obj, doc[0] if doc else "third-party engine", _AnyOptions(), origin=_origin)

        found[ep.name] = loaded_entry
    return found


class _AnyOptions(dict):
    """Options of a bare third-party factory: every key accepted, passed on as a string."""

    def __contains__(self, key) -> bool:
        return True

    def __getitem__(self, key):
        return (str, "passed to the engine's factory as a string")


def engines() -> dict[str, EngineEntry]:
    """Every selectable engine: the built-ins, then third-party entry points (a built-in name cannot be taken)."""
    out = dict(BUILTIN)
    for name, load in _entry_point_entries().items():
        if name not in out:
            out[name] = load
    return out


def entry(name: str) -> EngineEntry:
    found = engines()
    if name not in found:
        raise EngineSpecError(f"unknown engine {name!r}: expected one of {', '.join(sorted(found))} "
                              f"(third-party engines register in the entry-point group {ENTRY_POINT_GROUP!r})")
    e = found[name]
    return e() if callable(e) and not isinstance(e, EngineEntry) else e


def check_spec(spec: EngineSpec | str) -> tuple[EngineEntry, dict[str, Any]]:
    """The entry and converted options of a spec; EngineSpecError before anything starts when either is wrong."""
    spec = parse_engine_spec(spec) if isinstance(spec, str) else spec
    e = entry(spec.name)
    return e, e.convert(spec)


def unavailable_reason(spec: EngineSpec | str) -> str | None:
    """Why the engine cannot run on this machine (with the fix), or None."""
    e, _ = check_spec(spec)
    return e.available()


def make_engine(spec: EngineSpec | str, model_path: os.PathLike | str, **defaults):
    """Build the engine a spec names on one model file. ``defaults`` (e.g. ``slots=8`` for the largest N of a run)
    fill options the spec leaves out and the engine accepts; the spec's own values win."""
    spec = parse_engine_spec(spec) if isinstance(spec, str) else spec
    e, options = check_spec(spec)
    reason = e.available()
    if reason:
        raise EngineSpecError(f"engine {spec.name!r} cannot run here: {reason}")
    for key, value in defaults.items():
        if key in e.options and not isinstance(e.options, _AnyOptions) and key not in options:
            options[key] = value
    return e.load_factory()(model_path, **options)
