"""bakeoff: plan a coding task as a graph of parallel tool calls, fan out candidate edits in
sandboxes, test and time every one, and ship the fastest one execution says is correct.

The package's rooms map from the repository's top-level folders: ``bakeoff.agent`` (agent/),
``bakeoff.tools`` (tools/), ``bakeoff.sandboxes`` (sandboxes/), ``bakeoff.prompts``
(prompts/) and the bundled examples ``bakeoff.examples`` (examples/).
"""


def __getattr__(name: str) -> str:
    # Read from the installed metadata only when asked: `bakeoff --help` must not pay for it.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("bakeoff")
        except PackageNotFoundError:  # a checkout that was never installed
            return "0.0.0+unknown"
    raise AttributeError(name)
