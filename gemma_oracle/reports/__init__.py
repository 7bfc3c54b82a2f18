"""Results as data and the reports made from them.

`records` (one dataclass per stored row), `store` (parquet run directories, written atomically), `run_meta`
(commit, device, versions), `recorder` (the pytest session's result recorder), `junit_summary` (a GPU suite's
junit XML as a table), `tables` (pandas tables, one function each), `regress` (regression rules), `plots` and
`render` (markdown and self-contained HTML). Reports never recompute a metric: they read what `oracles` and the
bench stored. Generated runs go to the git-ignored `reports/runs/` and `reports/nightly/` of the working
directory; the kept history is the repository's `reports/history/`.
"""
