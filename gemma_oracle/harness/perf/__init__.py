"""Performance: `bench` (decode t/s per model x route mode x N, `gemma-oracle bench`), `devices` (the CPU and
GPU clocks, bandwidth probes and bytes a step reads), `roofline`, `op_profile` (a step's time per op),
`multi_gpu` (one bench process per GPU), and the GPU tools run as `python -m gemma_oracle.harness.perf.NAME`:
`gpu_timing`, `mode_bench`, `route_tuning`, `ple_measure`, `ncu_target`, `step_kernels`, `mmq_memcheck`.
"""
