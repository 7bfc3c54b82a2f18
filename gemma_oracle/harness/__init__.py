"""What runs the engines and oracles: fixtures, real models, the suites, the bench, the pytest plugin, the CLI.

Sub-packages by concern: `fixtures/` (synthetic Gemma 4 GGUFs and the 12B-shaped stand-ins, and their cache),
`real/` (the real-model catalog, Hub downloads, verification, resolving `--go-model`), `suites/` (the golden
suites as data: synthetic presets and real models), `perf/` (the bench, device clocks and bandwidth, roofline,
per-op profile and the GPU tuning tools) and `pytest_plugin/` (markers, options, skips, xdist grouping; loaded
only on request). On top: `gpu_pinning` (one GPU per process, for the plugin, the bench and the nightly),
`nightly` (the main job) and `cli` (the `gemma-oracle` command). Imports flow downward: fixtures and real use
only engine and kernels; suites add oracles; perf and the top modules use everything below them.
"""
