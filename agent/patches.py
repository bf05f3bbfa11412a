"""The rules a patch must follow before it may touch the user's tree.

``parse_patch`` (``diffs``) is the one diff parser: validation, the apply (``bakeoff.agent.apply``)
and the GitHub Action's suggestions all read its parse, and it reads paths as ``git apply`` does.
What a patch may touch is decided by the shared rules of ``path_rules``.

The user's tree is sacred. Before a patch touches it, the patch must stay inside the repo
(no ``..``, no absolute path, no symlink leaving it, none of ``.git/`` or CI files, nothing
binary, however a path is spelled); ``bakeoff.agent.apply`` checks the rest (the base,
uncommitted changes) and applies it atomically.
"""

from __future__ import annotations

from pathlib import Path

from bakeoff.agent.diffs import FilePatch, Hunk, ParsedPatch, parse_patch
from bakeoff.agent.path_rules import patch_problems

__all__ = ["FilePatch", "Hunk", "ParsedPatch", "PatchRejected", "parse_patch", "validate_patch"]


class PatchRejected(Exception):
    """The patch (or its undo) was refused; ``reasons`` say why, one per problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


# --------------------------------------------------------------------------- validation


def validate_patch(patch: str, repo: Path, *, allow_git_config: bool = False) -> list[str]:
    """Why ``patch`` must not be applied to ``repo``; an empty list means it may.

    The diff must parse cleanly (``diffs.parse_patch``) and its paths must obey the shared path
    rules in the tree it produces (``path_rules.patch_problems``). ``allow_git_config`` is the
    explicit opt-in for ``.gitmodules``, ``.gitattributes`` and ``.lfsconfig``.
    """
    parsed = parse_patch(patch)
    return list(dict.fromkeys(parsed.problems + patch_problems(parsed, Path(repo), allow_git_config=allow_git_config)))
