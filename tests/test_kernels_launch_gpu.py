"""GPU tests of programmatic dependent launch (kernels/launch.py): that the next grid really starts before the one
before it ends, and that `grid_dependency_enter()` (kernels/cuda/common.cuh) is what keeps stream order.

Two kernels: `slow_write` lets its dependents launch, spins for SPIN_NS, then writes `value`; `read_*` copies that
word. `read_after_enter` starts with grid_dependency_enter() as every kernel of kernels/cuda/ does; `read_racy` does
not (the control). With PDL, replayed from a CUDA graph, the racy reader runs during the spin and sees the old word,
which shows the overlap is real (eager launches were not seen to overlap); the reader that enters through the wait
sees the new one, eagerly and in the graph. With plain launches (the default: compiled without GRID_DEPENDENCY,
launched by CuPy) both see the new word. Cluster launches (Kernel(..., cluster=...)) share shared memory across the
cluster, plain and with PDL, eagerly and in a graph.
"""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.kernels import launch
from gemma_oracle.kernels._compile import NVRTC_OPTIONS, nvrtc_options

try:  # collection must work without cupy; the gpu marker makes the plugin skip these items with its reason
    import cupy as cp
except ImportError:  # pragma: no cover - exercised only on machines without cupy
    cp = None

pytestmark = pytest.mark.gpu

SPIN_NS = 2_000_000  # 2 ms: far longer than a launch, so a reader that does not wait runs inside it
SOURCE = r"""
#include "common.cuh"
extern "C" __global__ void slow_write(int* word, int value, long long spin_ns) {
    grid_dependency_enter();  // as every kernel: the dependents may launch from here on
    long long t0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    for (;;) {
        long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 >= spin_ns) break;
    }
    *word = value;
}
extern "C" __global__ void read_after_enter(const int* word, int* seen) {
    grid_dependency_enter();
    *seen = *word;
}
extern "C" __global__ void read_racy(const int* word, int* seen) {
    *seen = *word;  // no grid_dependency_enter(): the bug the host test's scan rejects in kernels/cuda/
}
// Each block writes its cluster rank and size and the sum of its cluster's blockIdx.z read from the siblings'
// shared memory (distributed shared memory, as packed_mma.cu's split K).
extern "C" __global__ void cluster_ranks(int* out) {
    grid_dependency_enter();
    __shared__ int z;
    unsigned rank, size;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
    if (threadIdx.x == 0) z = blockIdx.z;
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
    int sum = 0;
    for (unsigned r = 0; r < size; ++r) {
        unsigned local = (unsigned)__cvta_generic_to_shared(&z), remote;
        int v;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(r));
        asm volatile("ld.shared::cluster.s32 %0, [%1];" : "=r"(v) : "r"(remote) : "memory");
        sum += v;
    }
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
    const int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    if (threadIdx.x == 0) out[3 * b] = rank, out[3 * b + 1] = size, out[3 * b + 2] = sum;
}
"""


@pytest.fixture(scope="module")
def kernels():
    """The source compiled as GEMMA_ORACLE_PDL=1 compiles (GRID_DEPENDENCY=1), launched with PDL."""
    return launch.Module(cp.RawModule(code=SOURCE, options=nvrtc_options(pdl=True)), pdl=True)


@pytest.fixture(scope="module")
def plain_kernels():
    """The source compiled and launched as by default (grid_dependency_enter() empty, CuPy's launch)."""
    return launch.Module(cp.RawModule(code=SOURCE, options=NVRTC_OPTIONS), pdl=False)


def _write_then_read(kernels, reader: str, value: int) -> int:
    # On a stream of its own, as the graph test below and the engine's captured steps: on CuPy's default (legacy)
    # stream the racy reader saw the written word, no overlap (H100, 2026-12-07, reports/history/2026-12-07-s17.md),
    # while the same kernels overlapped in a graph. The overlap is the runtime's to grant ("opportunistically"), so
    # this test asks for it where it was seen; the ordering assertion is the guarantee.
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        word, seen = cp.zeros(1, dtype=cp.int32), cp.full(1, -1, dtype=cp.int32)
        kernels.get_function("slow_write")((1,), (1,), (word, np.int32(value), np.int64(SPIN_NS)))
        kernels.get_function(reader)((1,), (1,), (word, seen))
        stream.synchronize()
        return int(seen.get()[0])


def _needs_pdl():
    if int(cp.cuda.Device().compute_capability[:-1]) < 9:
        pytest.skip(f"compute capability {cp.cuda.Device().compute_capability}: no programmatic dependent launch")


def test_pdl_is_used_when_asked_on_this_device(monkeypatch):
    monkeypatch.setenv(launch.ENV, "0")
    assert launch.launch_mode() == "plain"
    monkeypatch.setenv(launch.ENV, "1")
    major = int(cp.cuda.Device().compute_capability[:-1])
    assert launch.launch_mode() == ("pdl" if major >= 9 else "plain")


def test_pdl_enter_call_orders_eager_launches(kernels):
    """Eager PDL launches: the reader that enters through the wait sees the write. Whether the next grid starts
    early here is the runtime's choice: on an H100 the racy reader saw the written word on a stream of its own, alone
    in its process (2026-12-07, reports/history/2026-12-07-s19.md) as under 8 xdist workers (s17), so the overlap
    is asserted where it was seen, in a CUDA graph (test_pdl_in_a_cuda_graph), and here only the ordering."""
    _needs_pdl()
    assert _write_then_read(kernels, "read_after_enter", 7) == 7


def test_pdl_in_a_cuda_graph(kernels):
    _needs_pdl()
    stream = cp.cuda.Stream(non_blocking=True)
    word, seen_racy, seen = (cp.zeros(1, dtype=cp.int32) for _ in range(3))
    with stream:
        stream.begin_capture()
        try:
            kernels.get_function("slow_write")((1,), (1,), (word, np.int32(11), np.int64(SPIN_NS)))
            kernels.get_function("read_racy")((1,), (1,), (word, seen_racy))
            kernels.get_function("slow_write")((1,), (1,), (word, np.int32(12), np.int64(SPIN_NS)))
            kernels.get_function("read_after_enter")((1,), (1,), (word, seen))
        finally:
            graph = stream.end_capture()
        for _ in range(3):
            word.fill(0)
            graph.launch(stream)
            stream.synchronize()
            # the racy reader ran during the first spin: word was still 0; the other saw the second write
            assert (int(seen_racy.get()[0]), int(seen.get()[0])) == (0, 12)


@pytest.mark.parametrize("pdl", (False, True), ids=("plain", "pdl"))
@pytest.mark.parametrize("cluster_z", (2, 3, 8))
def test_cluster_launches_share_shared_memory(kernels, plain_kernels, pdl, cluster_z):
    """Kernel(..., cluster=(1, 1, z)) launches clusters along z: each block's rank is its blockIdx.z, the cluster
    holds z blocks, and each reads its siblings' shared memory (the sum of 0..z-1), eagerly and in a CUDA graph."""
    if int(cp.cuda.Device().compute_capability[:-1]) < 9:
        pytest.skip(f"compute capability {cp.cuda.Device().compute_capability}: no thread block clusters")
    module = kernels if pdl else plain_kernels
    grid = (5, 2, cluster_z)
    want = np.array([[z, cluster_z, cluster_z * (cluster_z - 1) // 2] for z in range(cluster_z) for _ in range(10)],
                    dtype=np.int32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        out = cp.full(3 * 10 * cluster_z, -1, dtype=cp.int32)
        module.get_function("cluster_ranks")(grid, (64,), (out,), cluster=(1, 1, cluster_z))
        stream.synchronize()
        assert (out.get().reshape(-1, 3) == want).all()
        out.fill(-1)
        stream.begin_capture()
        try:
            module.get_function("cluster_ranks")(grid, (64,), (out,), cluster=(1, 1, cluster_z))
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        assert (out.get().reshape(-1, 3) == want).all()
    with pytest.raises(launch.LaunchError, match="cluster_ranks: grid .* is not a multiple of the cluster"):
        module.get_function("cluster_ranks")((5, 2, cluster_z + 1), (64,), (out,), cluster=(1, 1, cluster_z))


def test_plain_launches_keep_stream_order_without_the_call(plain_kernels):
    assert _write_then_read(plain_kernels, "read_racy", 5) == 5
    assert _write_then_read(plain_kernels, "read_after_enter", 5) == 5


@pytest.mark.parametrize("model", [("g4-12b-mini", "q4_k_m", "auto"), ("keqv-mixed", "q4_0", "batch-invariant")],
                         ids=lambda m: "-".join(m))
def test_pdl_gives_the_bits_of_plain_launches(model, monkeypatch):
    """Prefill and four graph-replayed decode steps of N = 5 sequences, once with plain launches and once with PDL
    and decode-MMQ's weight prefetch (each engine compiles and captures under its own setting): the same logits
    bitwise."""
    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.fixtures.cache import fixture_path
    from gemma_oracle.harness.suites.synthetic import sequences

    preset, variant, mode = model
    path, n = fixture_path(preset, variant), 5
    runs = {}
    from gemma_oracle.kernels._compile import PREFETCH_ENV

    for setting in ("0", "1"):  # plain launches without the weight prefetch; PDL with it
        monkeypatch.setenv(launch.ENV, setting)
        monkeypatch.setenv(PREFETCH_ENV, setting)
        engine = make_engine("cupy", path, route_mode=mode)
        prompts, forced = sequences(engine.vocab_size)
        seqs = [engine.new_sequence() for _ in range(n)]
        out = [engine.prefill(seqs[i], prompts[i]) for i in range(n)]
        out += [engine.decode(seqs, [forced[i][step] for i in range(n)]) for step in range(4)]
        runs[setting] = (launch.launch_mode(), out)
        del engine
    assert runs["0"][0] == "plain" and runs["1"][0] == "pdl"
    for k, (a, b) in enumerate(zip(runs["0"][1], runs["1"][1])):
        assert np.array_equal(a, b), f"output {k} (prefills 0-{n - 1}, then decode steps) differs between launch modes"


def _ahead_kernel(wait: bool):
    """kernels/cuda/l2_ahead.cu compiled as PDL compiles it; wait=False: without its closing wait (the bug the
    ordering test below must catch)."""
    from gemma_oracle.kernels._compile import CUDA_DIR

    source = (CUDA_DIR / "l2_ahead.cu").read_text()
    if not wait:
        tail = "    l2_ahead_ranges(p0, n0, p1, n1, p2, n2);\n    grid_dependency_enter();\n}"
        assert tail in source
        source = source.replace(tail, "    l2_ahead_ranges(p0, n0, p1, n1, p2, n2);\n}")
    return launch.Module(cp.RawModule(code=source, options=nvrtc_options(pdl=True)), pdl=True).get_function("l2_ahead")


@pytest.mark.parametrize("wait", (True, False), ids=("as-shipped", "without-its-wait"))
def test_l2_ahead_between_grids_keeps_stream_order_and_the_early_launch(kernels, wait):
    """The engine's L2 ahead launch (kernels/l2_ahead.py) sits between a matmul and the launch after it. In a graph:
    a reader without the wait, placed after it, runs inside the writer's spin and sees 0 (the ahead grid lets the
    next one launch at once: the early start PDL gives is kept), and a reader that enters through the wait sees the
    write, because the ahead grid ends only after the grid before it. The same launch without its closing wait lets
    that reader see a stale word: the control the ordering assertion must fail on."""
    _needs_pdl()
    ahead = _ahead_kernel(wait)
    weights = cp.arange(1 << 22, dtype=cp.uint8)
    args = (weights, np.int64(weights.nbytes), weights, np.int64(0), weights, np.int64(0))
    stream = cp.cuda.Stream(non_blocking=True)
    word, seen_racy, seen = (cp.zeros(1, dtype=cp.int32) for _ in range(3))
    with stream:
        stream.begin_capture()
        try:
            kernels.get_function("slow_write")((1,), (1,), (word, np.int32(31), np.int64(SPIN_NS)))
            ahead((4,), (128,), args)
            kernels.get_function("read_racy")((1,), (1,), (word, seen_racy))
            kernels.get_function("slow_write")((1,), (1,), (word, np.int32(32), np.int64(SPIN_NS)))
            ahead((4,), (128,), args)
            kernels.get_function("read_after_enter")((1,), (1,), (word, seen))
        finally:
            graph = stream.end_capture()
        for _ in range(3):
            word.fill(0)
            graph.launch(stream)
            stream.synchronize()
            observed = (int(seen_racy.get()[0]), int(seen.get()[0]))
            if wait:
                assert observed == (0, 32)
            else:
                assert observed[1] != 32, "a reader after an ahead launch without its wait saw the write: no race shown"
                return


@pytest.mark.parametrize("model", [("g4-12b-mini", "q4_k_m", "auto"), ("keqv-mixed", "q4_0", "batch-invariant")],
                         ids=lambda m: "-".join(m))
def test_l2_ahead_gives_the_same_bits(model, monkeypatch):
    """Prefill and four graph-replayed decode steps of N = 1 and 5 sequences with GEMMA_ORACLE_L2_AHEAD off and at
    8 MB a place: the same logits bitwise, and the steps with it did launch it (twice a layer and once more)."""
    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.fixtures.cache import fixture_path
    from gemma_oracle.harness.suites.synthetic import sequences
    from gemma_oracle.kernels import l2_ahead

    preset, variant, mode = model
    path = fixture_path(preset, variant)
    calls = []
    original = l2_ahead.l2_ahead
    monkeypatch.setattr(l2_ahead, "l2_ahead", lambda arrays, nbytes: (calls.append(sum(nbytes)),
                                                                       original(arrays, nbytes)))
    runs = {}
    for setting in ("0", "8"):
        monkeypatch.setenv(l2_ahead.ENV, setting)
        engine = make_engine("cupy", path, route_mode=mode)
        prompts, forced = sequences(engine.vocab_size)
        out = []
        for n in (1, 5):
            seqs = [engine.new_sequence() for _ in range(n)]
            out += [engine.prefill(seqs[i], prompts[i]) for i in range(n)]
            out += [engine.decode(seqs, [forced[i][step] for i in range(n)]) for step in range(4)]
        runs[setting] = out
        if setting == "0":
            assert calls == [], "GEMMA_ORACLE_L2_AHEAD=0 launched the ahead kernel"
        else:  # one capture a step size: 3 places a layer, one launch each (at most 3 matrices a place)
            layers = engine.config.n_layers
            assert len(calls) >= 2 * 3 * layers and all(0 < c <= 8 * l2_ahead.MB for c in calls), calls[:6]
        del engine
    for k, (a, b) in enumerate(zip(runs["0"], runs["8"])):
        assert np.array_equal(a, b), f"output {k} differs with the L2 ahead launches"
