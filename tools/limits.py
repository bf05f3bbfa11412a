"""The parts the tools build their time limits (``Tool.time_limit_s``) from.

Each tool declares its own limit next to what it does; these are the pieces they share.
"""

from __future__ import annotations

# The first call that touches a run's sandbox waits for it to start (a copy of the repository,
# a container): every tool that works in a sandbox allows for that on top of its own work.
SANDBOX_START_S = 60.0

# The most a command's own ``timeout`` argument may ask for (run, build, test, each run of profile).
LONGEST_COMMAND_S = 3600
