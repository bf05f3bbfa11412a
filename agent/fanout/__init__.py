"""The fan-out: n candidate edits developed at once in their own sandboxes, every one tested,
the vote's fastest correct one chosen. ``pipeline.fan_out`` shows the steps in order."""
