"""``python -m coordinator.cli``: the ``secagg`` command (the demo starts its silo processes this way)."""

from coordinator.cli import main

main()
