"""`python -m rsground_jax.cli`: the `rsground` command (what it re-executes itself as)."""

import sys

from rsground_jax.cli.main import main

sys.exit(main())
