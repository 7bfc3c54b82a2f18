"""GPU time of a piece of work as a decode step sees it: `reps` calls captured into one CUDA graph (with a private
memory pool, as CupyEngine's step graphs are), the graph replayed `repeats` times between CUDA events, median per
call. Capturing removes the Python launch cost (~10-30 us per CuPy launch), which would otherwise dominate any
kernel shorter than that and is absent from the engine's graph replays."""
from __future__ import annotations

import statistics


def graph_time_ms(body, *, reps: int = 20, repeats: int = 7, capture: bool = True, stream=None) -> tuple[float, float]:
    """(median ms per call, max - min over repeats) of body(i) for i = 0..reps-1. capture=False times plain
    calls instead (for a body that itself launches a graph: pass the stream it launches on, so that the events
    are recorded on that stream)."""
    import cupy as cp

    stream = stream or cp.cuda.Stream()
    pool = cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc), stream:
        body(0)  # compile and warm outside the capture
        stream.synchronize()
        if capture:
            stream.begin_capture()
            try:
                for i in range(reps):
                    body(i)
            finally:
                graph = stream.end_capture()

            def launch():
                graph.launch(stream)
        else:
            def launch():
                for i in range(reps):
                    body(i)
        launch()
        stream.synchronize()
        times = []
        for _ in range(repeats):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            launch()
            stop.record(stream)
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / reps)
    return statistics.median(times), max(times) - min(times)
