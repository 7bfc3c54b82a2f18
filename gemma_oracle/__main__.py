"""`python -m gemma_oracle` is the `gemma-oracle` command."""
from gemma_oracle.harness.cli import main

raise SystemExit(main())
