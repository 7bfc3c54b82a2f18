"""`--go-model` and the real-model suites' skips and labels: without the 12B file `pytest -m real12b` skips
every item naming the download command (never a pass), and a stand-in's results say SYNTHETIC."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gemma_oracle
from gemma_oracle.harness.real import models as real_models
from gemma_oracle.harness.real.errors import UnknownFixtureError

REPO_ROOT = Path(gemma_oracle.__file__).resolve().parents[1]

# A stand-in the CPU can build in a second: the 12B's structure scaled down (gemma_oracle.harness.fixtures.presets), with the
# layout it really has (8/1 KV heads, head dims 64/128, k_eq_v global layer).
MINI_CATALOG = """
[mini12b]
source = "synthetic"
preset = "g4-12b-mini"
variant = "f32"
stands_in_for = "real12b"

[mini12b.layout]
k_eq_v_global = true
kv_heads = [8, 1]
head_dim = [64, 128]
ple = false
shared_kv = false
"""


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real model anywhere: empty caches, no GEMMA_ORACLE_MODEL_* variables, the mini catalog."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(MINI_CATALOG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GEMMA_ORACLE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), GEMMA_ORACLE_CACHE=str(tmp_path / "go"), GEMMA_ORACLE_CATALOG=str(catalog))
    for k in [k for k in os.environ if k.startswith("GEMMA_ORACLE_MODEL_")]:
        monkeypatch.delenv(k)
    for k in ("GEMMA_ORACLE_CACHE", "GEMMA_ORACLE_CATALOG"):
        monkeypatch.setenv(k, env[k])
    real_models.resolve.cache_clear()
    yield env
    real_models.resolve.cache_clear()


def test_labels_and_descriptions(isolated, tmp_path):
    assert real_models.label("real12b") == "real12b"
    assert real_models.label("shape12b") == "shape12b-SYNTHETIC"
    assert real_models.label("mini12b") == "mini12b-SYNTHETIC"
    assert "SYNTHETIC stand-in for real12b" in real_models.describe("shape12b")
    assert "unsloth/gemma-4-12b-it-GGUF/gemma-4-12b-it-Q4_K_M.gguf" in real_models.describe("real12b")
    gguf = tmp_path / "any.gguf"
    gguf.write_bytes(b"GGUF")
    assert real_models.label(str(gguf)) == "file-any.gguf"
    with pytest.raises(UnknownFixtureError, match="neither a catalog name"):
        real_models.label("no-such-model")


def test_absent_models_name_what_provides_them(isolated, tmp_path, monkeypatch):
    assert "`gemma-oracle fixtures download real12b`" in real_models.absent_reason("real12b")
    assert "GEMMA_ORACLE_MODEL_REAL12B" in real_models.absent_reason("real12b")
    assert "`gemma-oracle fixtures download e4b-q8`" in real_models.absent_reason("e4b-q8")
    assert real_models.absent_reason("mini12b") is None  # its preset exists: built on use
    monkeypatch.setenv("GEMMA_ORACLE_MODEL_REAL12B", str(tmp_path / "nowhere.gguf"))
    assert "GEMMA_ORACLE_MODEL_REAL12B=" in real_models.absent_reason("real12b")


def test_a_stand_in_resolves_to_its_built_fixture(isolated):
    from gemma_oracle.harness.fixtures.cache import fixture_path

    resolved = real_models.resolve("mini12b")
    assert resolved.synthetic and resolved.verified
    assert resolved.path == fixture_path("g4-12b-mini", "f32")
    assert resolved.layout.head_dim == (64, 128)


def test_real12b_suite_skips_without_the_file_and_labels_stand_ins(isolated):
    """The acceptance run: `pytest -m real12b` with and without the stand-in, on a machine without the 12B."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_real12b.py", "-m", "real12b", "--go-model", "real12b",
         "--go-model", "mini12b", "-k", "layout_preconditions or not mini12b", "-v", "-rs", "-p", "no:xdist",
         "-p", "no:cacheprovider"],
        cwd=REPO_ROOT, env=isolated, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    real12b_items = re.findall(r"^tests/test_real12b.py::(\w+)\[real12b\] (\w+)", out, flags=re.M)
    assert len(real12b_items) == 7 and {verdict for _, verdict in real12b_items} == {"SKIPPED"}
    skip_lines = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    assert skip_lines and all("`gemma-oracle fixtures download real12b`" in ln for ln in skip_lines)
    assert "tests/test_real12b.py::test_layout_preconditions[mini12b-SYNTHETIC] PASSED" in out
    assert "gemma-oracle --go-model mini12b: SYNTHETIC stand-in for real12b" in out  # report header
    assert "SYNTHETIC model results" in out  # terminal summary
    assert re.search(r"1 passed, 7 skipped", out)
