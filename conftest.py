"""Root conftest: this repository's tests use gemma-oracle's pytest plugin, which loads only where asked for
(it is no pytest11 entry point, so an unrelated project in the same environment never sees it)."""
pytest_plugins = ["gemma_oracle.harness.pytest_plugin"]
