"""The result store: round trip of every table, xdist worker parts merged, unfinished or damaged runs
rejected with an error that names the file and the key, nothing half-written left behind."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gemma_oracle.reports.errors import StoreError
from gemma_oracle.reports.records import TABLES, columns
from gemma_oracle.reports.recorder import SessionRecorder
from gemma_oracle.reports.store import META_FILE, RunWriter, create_run_dir, list_runs, load_run

from .recorded_runs import ToyEngine, bench_row, golden_records, meta, op_row, route_row, store_run


def test_every_table_round_trips_with_its_columns(tmp_path):
    oracle = golden_records("toy-f32", n_list=(1, 2))
    run_dir = store_run(tmp_path, "r1", created="2026-11-25T00:00:00+00:00", oracle=oracle,
                        bench=[bench_row(n=1), bench_row(n=8)], op_profile=[op_row("attn_q", 40.0)],
                        routes=[route_row("blk.0.ffn_gate.weight", "decode_mmq")])
    run = load_run(run_dir)
    assert run.meta == meta("r1", created="2026-11-25T00:00:00+00:00")
    for table, record_type in TABLES.items():
        assert list(run[table].columns) == columns(record_type)
    # N=1: 1 sequence x 5 steps, N=2: 2 x 5
    assert len(run["oracle"]) == 15
    assert run["oracle"]["n"].tolist() == [1] * 5 + [2] * 10
    assert run["oracle"]["verdict"].eq("pass").all() and run["oracle"]["message"].eq("").all()
    assert run["oracle"]["gpu_index"].isna().all()  # CPU rows: no GPU
    assert run["bench"]["tokens_per_s"].tolist() == [1000.0, 1000.0]
    assert run["bench"]["gpu_index"].tolist() == [0, 0]
    assert run["routes"]["kernel"].tolist() == ["decode_mmq"]


def test_an_all_empty_nullable_column_keeps_its_type(tmp_path):
    """gpu_index is None on every CPU row: the parquet column is still int64, as on a GPU run."""
    writer = RunWriter(tmp_path / "r")
    path = writer.write_table("oracle", golden_records("toy-f32", n_list=(1,)))
    assert pq.read_schema(path).field("gpu_index").type == pa.int64()


def test_failed_rows_keep_their_message(tmp_path):
    rows = golden_records("toy-f32", n_list=(3,), broken_n=3)
    failed = [r for r in rows if not r.passed]
    assert len(failed) == 4 and all(r.verdict == "fail" and "FAILED" in r.message for r in failed)
    run = load_run(store_run(tmp_path, "r", created="2026-11-25T00:00:00+00:00", oracle=rows))
    assert run["oracle"].loc[run["oracle"]["verdict"] == "fail", "message"].str.contains("nmse").all()


def test_xdist_worker_parts_are_merged_once_the_controller_finishes(tmp_path):
    gw0 = SessionRecorder(tmp_path, "pytest-x", worker="gw0")
    gw1 = SessionRecorder(tmp_path, "pytest-x", worker="gw1")
    controller = SessionRecorder(tmp_path, "pytest-x")
    engine = ToyEngine()
    from gemma_oracle.oracles.compare import FLOAT64_POLICY
    from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched

    result = golden_single_vs_batched(engine, [[2, 5], [2, 6]], [[3], [4]], policy=FLOAT64_POLICY)
    gw0.record(result, test_id="t::a", fixture="toy-a", backend="numpy64")
    gw1.record(result, test_id="t::b", fixture="toy-b", backend="numpy64")
    assert gw0.finish() is None and gw1.finish() is None  # workers write parts, never meta.json
    assert sorted(p.name for p in (tmp_path / "pytest-x").iterdir()) == ["oracle.gw0.parquet", "oracle.gw1.parquet"]
    assert list_runs(tmp_path) == []  # not finished yet
    assert controller.finish() == tmp_path / "pytest-x" / META_FILE
    run = load_run(tmp_path / "pytest-x")
    assert run.meta.kind == "pytest"
    assert sorted(set(run["oracle"]["test_id"])) == ["t::a", "t::b"]
    assert len(run["oracle"]) == 2 * 2 * 2  # two results x 2 sequences x (prefill + 1 step)


def test_a_session_that_recorded_nothing_writes_nothing(tmp_path):
    assert SessionRecorder(tmp_path, "pytest-y").finish() is None
    assert not (tmp_path / "pytest-y").exists()


def test_an_unfinished_run_is_not_listed_and_not_loadable(tmp_path):
    RunWriter(tmp_path / "half").write_table("bench", [bench_row()])
    store_run(tmp_path, "done", created="2026-11-25T00:00:00+00:00", bench=[bench_row()])
    assert [p.name for p in list_runs(tmp_path)] == ["done"]
    with pytest.raises(StoreError, match="meta.json") as err:
        load_run(tmp_path / "half")
    assert err.value.path == str(tmp_path / "half" / META_FILE)


def test_runs_are_listed_oldest_first_by_creation_time(tmp_path):
    store_run(tmp_path, "b", created="2026-11-25T00:00:00+00:00")
    store_run(tmp_path, "a", created="2026-11-26T00:00:00+00:00")
    assert [p.name for p in list_runs(tmp_path)] == ["b", "a"]


def test_a_missing_column_names_the_file_and_the_column(tmp_path):
    run_dir = store_run(tmp_path, "r", created="2026-11-25T00:00:00+00:00")
    table = pa.Table.from_pylist([{"model": "m", "n": 1}])
    pq.write_table(table, run_dir / "bench.gw0.parquet")
    with pytest.raises(StoreError) as err:
        load_run(run_dir)
    assert err.value.path == str(run_dir / "bench.gw0.parquet")
    assert err.value.key == "backend"  # the first expected column it lacks
    assert "tokens_per_s" in str(err.value)


def test_a_damaged_parquet_file_is_named(tmp_path):
    run_dir = store_run(tmp_path, "r", created="2026-11-25T00:00:00+00:00")
    (run_dir / "oracle.main.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(StoreError, match="not a readable parquet file") as err:
        load_run(run_dir)
    assert err.value.path.endswith("oracle.main.parquet")


@pytest.mark.parametrize("text,key,fragment", [
    ("{not json", None, "not valid JSON"),
    ("[1, 2]", None, "expected a JSON object"),
    (json.dumps({"run_id": "r"}), "kind", "missing key"),
])
def test_bad_meta_names_the_file_and_key(tmp_path, text, key, fragment):
    run_dir = store_run(tmp_path, "r", created="2026-11-25T00:00:00+00:00")
    (run_dir / META_FILE).write_text(text)
    with pytest.raises(StoreError, match=fragment) as err:
        load_run(run_dir)
    assert err.value.path == str(run_dir / META_FILE) and err.value.key == key


def test_meta_with_a_wrong_type_names_the_key(tmp_path):
    run_dir = store_run(tmp_path, "r", created="2026-11-25T00:00:00+00:00")
    data = json.loads((run_dir / META_FILE).read_text())
    data["packages"] = "numpy 2"
    (run_dir / META_FILE).write_text(json.dumps(data))
    with pytest.raises(StoreError, match="expected a dict") as err:
        load_run(run_dir)
    assert err.value.key == "packages"


def test_run_directories_are_unique_within_one_second(tmp_path):
    first, second, third = (create_run_dir(tmp_path, "2026-11-25-010203") for _ in range(3))
    assert [p.name for p in (first, second, third)] == ["2026-11-25-010203", "2026-11-25-010203-2",
                                                       "2026-11-25-010203-3"]


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    writer = RunWriter(tmp_path / "r")

    def broken(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"half a parquet file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        writer.write_table("bench", [bench_row()])
    assert list((tmp_path / "r").iterdir()) == []


def test_writer_rejects_unknown_tables_and_foreign_rows(tmp_path):
    writer = RunWriter(tmp_path / "r")
    with pytest.raises(ValueError, match="unknown table 'benchmarks'"):
        writer.write_table("benchmarks", [bench_row()])
    with pytest.raises(TypeError, match="BenchRecord"):
        writer.write_table("oracle", [bench_row()])
    assert writer.write_table("oracle", []) is None
