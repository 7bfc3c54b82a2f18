"""A third-party engine registered as a user would: a tiny distribution with entry points in the group
``gemma_oracle.engines``, installed beside this checkout's wheel in a fresh virtual environment (tests/venvs.py),
and the registry seen from inside that environment:

* a bare factory (``toy-numpy = "toy_engine:make"``) is listed with its origin (the entry point and the
  distribution), built by ``make_engine("toy-numpy:...", path)`` with its options as strings, and decodes;
* an ``EngineEntry`` (``toy-entry``) gets its options checked by the registry: a bad key or value is its typed
  EngineSpecError before the factory runs;
* a plug-in that fails to import, or names something that is no engine, is the registry's typed error naming it,
  and takes nothing else down; a plug-in cannot take a built-in's name.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from filelock import FileLock

from tests.venvs import build_wheel, checkout_source, clean_env, deps_folder, make_venv, run

TOY_PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "toy-engine"
version = "0.3.1"
dependencies = ["gemma-oracle"]

[project.entry-points."gemma_oracle.engines"]
toy-numpy = "toy_engine:make"
toy-entry = "toy_engine:ENTRY"
toy-broken = "toy_broken:make"
toy-constant = "toy_engine:NOT_AN_ENGINE"
numpy = "toy_engine:make"

[tool.setuptools]
py-modules = ["toy_engine", "toy_broken"]
'''

TOY_ENGINE = '''
"""A third-party engine: gemma-oracle's float64 engine under its own name."""
from gemma_oracle.engine.registry import EngineEntry, positive_int


def make(model_path, **options):
    """toy numpy engine from a plug-in"""
    from gemma_oracle.engine.factory import numpy64_engine

    chunk = int(options.pop("prefill_chunk", 8))  # a bare factory gets its options as strings
    if options:
        raise TypeError(f"toy-numpy: unknown options {sorted(options)}")
    engine = numpy64_engine(model_path, prefill_chunk=chunk)
    engine.name = "toy-" + engine.name
    return engine


ENTRY = EngineEntry("toy-entry", make, "toy numpy engine with typed options",
                    {"prefill_chunk": (positive_int, "prompt tokens per prefill forward")})

NOT_AN_ENGINE = 42
'''

TOY_BROKEN = '''
raise ImportError("toy_broken needs libtoy.so, which is not installed")
'''

# Run inside the environment: what the registry says there, as JSON.
PROBE = '''
import json, sys
import numpy as np
from gemma_oracle.engine import registry

model = sys.argv[1]
out = {"listed": sorted(registry.engines())}
e = registry.entry("toy-numpy")
out["origin"], out["summary"] = e.origin, e.summary
out["numpy_origin"] = registry.entry("numpy").origin
eng = registry.make_engine("toy-numpy:prefill_chunk=4", model)
seqs = [eng.new_sequence() for _ in range(2)]
rows = [eng.prefill(s, p) for s, p in zip(seqs, [[2, 11, 5], [2, 7]])]
step = eng.decode(seqs, [1, 2])
out["engine"] = {"name": eng.name, "vocab": eng.vocab_size, "chunk": eng.prefill_chunk, "shape": list(step.shape),
                 "finite": bool(np.isfinite(step).all()), "dtype": str(step.dtype)}
ref = registry.make_engine("numpy", model)
out["same_as_builtin"] = bool(np.array_equal(rows[0], ref.prefill(ref.new_sequence(), [2, 11, 5])))
typed = registry.make_engine("toy-entry:prefill_chunk=3", model)
out["typed_chunk"] = typed.prefill_chunk
errors = {}
for spec in ("toy-entry:prefill_chunk=0", "toy-entry:chunk=4", "toy-broken", "toy-constant", "toy-nothing"):
    try:
        registry.make_engine(spec, model)
        errors[spec] = None
    except Exception as exc:
        errors[spec] = [type(exc).__name__, isinstance(exc, registry.EngineSpecError), str(exc)]
out["errors"] = errors
print(json.dumps(out))
'''


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory):
    """A virtual environment with this checkout's wheel and the toy distribution's (made once per session)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "entry-points"
    root.mkdir(exist_ok=True)
    with FileLock(str(root.with_suffix(".lock"))):
        done = root / "python.txt"
        if not done.exists():
            ours, log = build_wheel(checkout_source(root / "src"), root / "dist")
            assert ours is not None, log
            toy = root / "toy"
            toy.mkdir()
            (toy / "pyproject.toml").write_text(TOY_PYPROJECT)
            (toy / "toy_engine.py").write_text(textwrap.dedent(TOY_ENGINE))
            (toy / "toy_broken.py").write_text(TOY_BROKEN)
            toy_wheel, log = build_wheel(toy, root / "dist")
            assert toy_wheel is not None, log
            python = make_venv(root / "venv", deps_folder(root / "deps", with_test_tooling=False), ours, toy_wheel)
            done.write_text(str(python))
    return Path(done.read_text())


@pytest.fixture(scope="module")
def probe(plugin_env, synthetic_gguf, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("probe")  # not the checkout: the environment's own gemma_oracle is imported
    proc = run([plugin_env, "-c", PROBE, synthetic_gguf("keqv-mixed", "f32")], cwd=cwd, env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_registry_lists_the_plugin_with_its_origin(probe):
    assert {"toy-numpy", "toy-entry", "toy-broken", "toy-constant"} <= set(probe["listed"])
    assert {"numpy", "numpy32", "process"} <= set(probe["listed"])
    assert probe["origin"] == "entry point toy_engine:make (toy-engine 0.3.1)"
    assert probe["summary"] == "toy numpy engine from a plug-in"  # a bare factory's docstring
    assert probe["numpy_origin"] == "built-in"  # the plug-in's `numpy` entry point cannot take the built-in's name


def test_make_engine_builds_the_plugin_and_it_decodes(probe):
    eng = probe["engine"]
    assert eng["name"].startswith("toy-numpy64:") and eng["vocab"] == 512 and eng["chunk"] == 4
    assert eng["shape"] == [2, 512] and eng["finite"] and eng["dtype"] == "float64"
    assert probe["same_as_builtin"]  # it is our float64 engine under another name
    assert probe["typed_chunk"] == 3  # an EngineEntry's converter turned "3" into 3


@pytest.mark.parametrize("spec, says", [
    ("toy-entry:prefill_chunk=0", "option prefill_chunk='0' of engine 'toy-entry': expected an integer >= 1"),
    ("toy-entry:chunk=4", "engine 'toy-entry' has no option 'chunk' (its options: prefill_chunk)"),
    ("toy-broken", "engine 'toy-broken' (entry point toy_broken:make (toy-engine 0.3.1)) failed to load: ImportError: "
                   "toy_broken needs libtoy.so"),
    ("toy-constant", "engine 'toy-constant' (entry point toy_engine:NOT_AN_ENGINE (toy-engine 0.3.1)) is neither an "
                     "EngineEntry nor a factory"),
    ("toy-nothing", "unknown engine 'toy-nothing'"),
])
def test_a_bad_option_or_a_broken_plugin_is_the_registrys_typed_error(probe, spec, says):
    kind, is_spec_error, message = probe["errors"][spec]
    assert (kind, is_spec_error) == ("EngineSpecError", True), message
    assert says in message, message


def test_gemma_oracle_check_selects_the_plugin_by_name(plugin_env, synthetic_gguf, tmp_path):
    """The same plug-in from the command line a user types, in that environment: `gemma-oracle check --engine
    toy-numpy` runs the sweep and the needle on it, passes, and labels its rows with the plug-in's name."""
    model = synthetic_gguf("keqv-mixed", "f32")
    cli = plugin_env.parent / "gemma-oracle"
    proc = run([cli, "check", "--engine", "toy-numpy:prefill_chunk=4", "--fixtures", str(model), "--n", "1", "2",
                "--tests", "sweep", "needle", "--steps", "2", "--out", str(tmp_path / "runs"), "--no-progress"],
               cwd=tmp_path, env=clean_env(), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| toy-numpy:prefill_chunk=4 |" in proc.stdout and "PASS: 3 of 3 cases passed" in proc.stdout, proc.stdout
    bad = run([cli, "check", "--engine", "toy-broken", "--out", str(tmp_path / "runs")], cwd=tmp_path, env=clean_env(),
              timeout=60)
    assert bad.returncode == 2 and "engine 'toy-broken'" in bad.stderr and "failed to load" in bad.stderr, bad.stderr
