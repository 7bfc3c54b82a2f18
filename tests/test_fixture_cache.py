"""The fixture cache: parallel builders share one file; a failed build leaves nothing a later run would trust."""
from __future__ import annotations

import multiprocessing as mp

import pytest

from gemma_oracle.harness.fixtures import cache as fixtures

pytestmark = pytest.mark.synthetic


def _build(directory: str, queue) -> None:
    queue.put(str(fixtures.fixture_path("keqv-mixed", "q8_0", seed=5, directory=directory)))


def test_parallel_builders_share_one_file(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    ggufs = sorted(tmp_path.glob("*.gguf"))
    assert [str(p) for p in ggufs] == list(paths)
    assert not list(tmp_path.glob("*.tmp*"))  # no temporary left behind
    reference = fixtures.write_fixture(tmp_path / "direct.gguf", "keqv-mixed", "q8_0", seed=5)
    assert reference.read_bytes() == ggufs[0].read_bytes()


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken_writer(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"GGUF partial")  # a half-written file at the temporary path
        raise OSError("disk full")

    monkeypatch.setattr(fixtures, "write_fixture", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        fixtures.fixture_path("keqv-mixed", "f32", seed=9, directory=tmp_path)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob("*.tmp*"))
