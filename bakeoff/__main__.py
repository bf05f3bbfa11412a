"""``python -m bakeoff``: the same command as the ``bakeoff`` console script."""

from bakeoff.agent.cli.main import main

main()
