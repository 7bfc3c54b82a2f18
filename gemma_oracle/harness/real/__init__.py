"""Real models: `catalog` (catalog.toml as frozen records), `hub_download` (one Hub file, resumable, verified
before it is installed), `verification` (sha256 records), `files` (a local copy of a catalog entry: find,
fetch, state), `models` (a `--go-model` name or path resolved to a file, with the reason to skip when absent)
and `errors` (the typed errors of all of these, each naming the fixture and what to run).
"""
