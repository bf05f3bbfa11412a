"""Which paths a change may touch: the rules every check shares (``validate_patch``, a
candidate's edits, the GitHub Action's delivery).

A path is compared as a file system or a reader might see it, not byte for byte: each
component is normalised (NFKC, case-folded, marks dropped, look-alike letters and dots mapped to
ASCII, NTFS's trailing dots and spaces, stream suffixes and 8.3 short names undone), so ``.GIT``,
``.g\u0456t`` (a Cyrillic i), ``\uff0e\uff0e`` (fullwidth dots) and ``git~1`` read as what they
imitate. Characters that no honest path holds (controls, zero-width and bidirectional marks,
other invisible ones) are refused outright. Refused: anything leaving the repository, ``.git``,
and the CI and repository configuration of GitHub, GitLab, CircleCI, Travis, Jenkins and a few
more; ``.gitmodules``, ``.gitattributes`` and ``.lfsconfig`` only with an explicit opt-in.

``patch_problems`` applies them to every path of a parsed patch, and follows symlinks in the
tree the patch produces: the repository on disk with the patch's files laid over it, resolved
one component at a time as the kernel does (``a -> .`` then ``b -> a/a/../..`` leaves it).
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from bakeoff.agent.diffs import SYMLINK_MODE, FilePatch, ParsedPatch

# Letters and dots that look like ASCII ones (from Unicode's confusables), after case folding.
_LOOKALIKES = str.maketrans({
    "а": "a", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "ӏ": "l", "о": "o", "р": "p",
    "ԛ": "q", "ѕ": "s", "ԝ": "w", "х": "x", "у": "y", "ү": "y", "ԍ": "g", "ɡ": "g", "ı": "i", "ȷ": "j",
    "ɩ": "i", "ɪ": "i", "ᴄ": "c", "ᴏ": "o", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ꜱ": "s", "ʟ": "l",
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c",
    "γ": "y", "ϳ": "j", "օ": "o", "ս": "u", "հ": "h", "ո": "n",
    "·": ".", "‧": ".", "∙": ".", "⋅": ".", "・": ".", "。": ".", "܁": ".", "܂": ".", "ꓸ": ".",
    "٠": ".", "۰": ".", "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "−": "-", "﹣": "-",
})
# Invisible (default-ignorable) characters outside the categories refused below.
_INVISIBLE = set("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0\ufffd") | {chr(c) for c in range(0x180B, 0x1810)} | {
    chr(c) for c in range(0xFE00, 0xFE10)} | {chr(c) for c in range(0xE0100, 0xE01F0)}
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

# Components (normalised) that are CI or repository configuration wherever they sit.
_CI_DIRS = {".github", ".gitlab", ".circleci", ".ci", ".buildkite", ".azure-pipelines"}
_CI_FILE_PREFIXES = (".gitlab-ci", ".travis.", "jenkinsfile", "azure-pipelines.", ".drone.", "bitbucket-pipelines.",
                     "codeowners")
GIT_CONFIG_FILES = (".gitmodules", ".gitattributes", ".lfsconfig")
# NTFS short names git itself refuses (is_ntfs_dotgitmodules and friends).
_HASHED_SHORT_NAMES = {"gi7eba": ".gitmodules", "gi7d29": ".gitattributes"}


def refused_character(text: str) -> str | None:
    """The first character no path may hold, as ``U+XXXX``; None when there is none."""
    for c in text:
        if c in _INVISIBLE or unicodedata.category(c) in _REFUSED_CATEGORIES:
            return f"U+{ord(c):04X}"
    return None


def shown(text: str, limit: int = 200) -> str:
    """``text`` safe to put in a message: escaped where it holds a refused character, and cut."""
    text = ascii(text) if refused_character(text) else text
    return text if len(text) <= limit else text[:limit] + "…"


def skeleton(component: str) -> str:
    """What a component reads as: NFKC, case-folded, marks dropped, look-alikes mapped to ASCII."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", component).casefold())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn").translate(_LOOKALIKES)
    return unicodedata.normalize("NFKC", text)


def _as_windows_sees(key: str) -> str:
    """NTFS drops trailing dots and spaces and reads ``name:stream`` as ``name``."""
    return key.split(":", 1)[0].rstrip(". ")


def _short_name_of(key: str) -> str | None:
    """The protected name an 8.3 short name (``git~1``, ``gitmod~1``) may stand for."""
    m = re.fullmatch(r"([a-z0-9]{1,6})~[1-9][0-9]*", key)
    if not m:
        return None
    if m[1] in _HASHED_SHORT_NAMES:
        return _HASHED_SHORT_NAMES[m[1]]
    names = [".git", *sorted(_CI_DIRS), *GIT_CONFIG_FILES, *_CI_FILE_PREFIXES]
    return next((n for n in names if n.lstrip(".").startswith(m[1])), None)


def component_key(component: str) -> str:
    """The name a component stands for, as compared with the protected names."""
    key = _as_windows_sees(skeleton(component))
    return _short_name_of(key) or key


def _protection(key: str, allow_git_config: bool) -> str | None:
    if key == ".git":
        return "touches .git/"
    if key in _CI_DIRS or key.startswith(_CI_FILE_PREFIXES):
        return "touches a CI file"
    if key in GIT_CONFIG_FILES and not allow_git_config:
        return f"touches repository configuration ({key}; allowed only when explicitly enabled)"
    return None


def path_problems(path: str, *, allow_git_config: bool = False) -> list[str]:
    """Why a change may not touch ``path`` (relative to the repository, ``/``-separated); empty
    when it may. Pure: looks at the text only (symlinks are ``tree``'s job)."""
    bad = refused_character(path)
    if bad:
        return [f"path holds a control, invisible or bidirectional character ({bad}): {shown(path)}"]
    if path.startswith("/"):
        return [f"absolute path: {shown(path)}"]
    if "\\" in path:
        return [f"path holds a backslash (a separator on Windows): {shown(path)}"]
    parts = path.split("/")
    if any(p in ("", ".") for p in parts):
        return [f"path has an empty or '.' component: {shown(path)}"]
    keys = [component_key(p) for p in parts]
    if any(skeleton(p) in ("..", ".") or k in ("", ".", "..") for p, k in zip(parts, keys)):
        return [f"path leaves the repository: {shown(path)}"]
    reasons = [f"{why}: {shown(path)}" for why in
               dict.fromkeys(_protection(k, allow_git_config) for k in keys) if why]
    return reasons


# --------------------------------------------------------------------------- the tree a patch produces

_MODES = ("100644", "100755", SYMLINK_MODE)  # what a patch may leave: files, executables, symlinks
_MAX_HOPS = 40  # as the kernel's ELOOP
_MAX_TARGET = 4096  # PATH_MAX


class _Unresolvable(ValueError):
    """A symlink chain that loops, or a target no path may hold."""


class PatchedTree:
    """The repository as a patch leaves it, for following symlinks: the disk, with the patch's
    files laid over it (``laid``: path -> its symlink target after the patch, None for no symlink).
    Nothing beneath a laid path is read from disk, and nothing outside the repository ever is."""

    def __init__(self, repo: Path, laid: dict[str, str | None] | None = None) -> None:
        self.root = os.path.realpath(repo)
        self.laid = {} if laid is None else laid

    def link(self, rel: str) -> str | None:
        """The target of the symlink at ``rel``, whose parents are directories; None for none."""
        if rel in self.laid:
            return self.laid[rel]
        parts = rel.split("/")
        if any("/".join(parts[:k]) in self.laid for k in range(1, len(parts))):
            return None  # beneath a path the patch replaced: what the disk holds there is gone
        try:
            full = os.path.join(self.root, rel)
            return os.readlink(full) if stat.S_ISLNK(os.lstat(full).st_mode) else None
        except (OSError, ValueError):
            return None

    def resolve(self, rel: str) -> str | None:
        """Where ``rel`` leads, relative to the root ("" is the root); None when it leaves the
        repository. A missing component is taken for a directory that may appear later."""
        todo, done, hops = rel.split("/")[::-1], [], 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    return None
                done.pop()
                continue
            target = self.link("/".join([*done, part]))
            if target is None:
                done.append(part)
                continue
            hops += 1
            if hops > _MAX_HOPS:
                raise _Unresolvable("its symlinks loop")
            if target.startswith("/"):
                return None
            todo.extend(target.split("/")[::-1])
        return "/".join(done)

    def lay(self, f: FilePatch) -> str | None:
        """Lay one file of the patch over the tree; returns the path of the symlink it leaves
        (created or changed), None when it leaves none."""
        before = self.link(f.old_path) if f.old_path else None
        if f.old_path and (f.new_path is None or (f.old_path != f.new_path and not f.copied)):
            self.laid[f.old_path] = None
        if f.new_path is None:
            return None
        mode = f.mode_after
        if before is not None and f.old_path == f.new_path and mode and mode != SYMLINK_MODE and (
                f.old_mode or f.index_mode) != SYMLINK_MODE:
            raise _Unresolvable(f"{shown(f.new_path)} is a symlink, but the patch edits it as a file")
        if not (mode == SYMLINK_MODE if mode else before is not None):
            self.laid[f.new_path] = None
            return None
        old = before if before is not None else self._small_file(f.old_path) if f.old_path else ""
        self.laid[f.new_path] = _patched_text(old, f)
        return f.new_path

    def _small_file(self, rel: str) -> str:
        """A regular file's text, when a mode change makes it a symlink with that target."""
        full = os.path.join(self.root, rel)
        try:
            info = os.lstat(full)
        except OSError:
            return ""  # nothing there: git apply will say so
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_TARGET:
            raise _Unresolvable(f"{shown(rel)} would become a symlink whose target is not a short text")
        try:
            with open(full, "rb") as fh:
                return fh.read().decode("utf-8", "replace")
        except OSError:
            raise _Unresolvable(f"{shown(rel)} would become a symlink, and cannot be read") from None


def _patched_text(old: str, f: FilePatch) -> str:
    """``old`` with the hunks of ``f`` applied (a symlink's target is its one line)."""
    lines, out, pos = (old.split("\n") if old else []), [], 0
    for h in f.hunks:
        start = h.old_start - 1 if h.old_len else h.old_start
        out += lines[pos:start] + h.new_text
        pos = start + h.old_len
    text = "\n".join(out + lines[pos:])
    ends_line = bool(f.hunks) and bool(f.hunks[-1].lines) and not f.hunks[-1].lines[-1].startswith("\\")
    return text + "\n" if ends_line else text


def _disk_links(root: str) -> Iterator[str]:
    """Every symlink in the working tree (``.git`` left out), relative to ``root``."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel)))
        except OSError:
            continue  # unreadable: nothing of it can be written by git either
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                yield path
            elif entry.is_dir(follow_symlinks=False) and path != ".git":
                stack.append(path)


def _link_problems(tree: PatchedTree, path: str) -> list[str]:
    """Why the symlink the patch leaves at ``path`` may not be there."""
    target = tree.laid[path] or ""
    if not target or refused_character(target) or len(target) > _MAX_TARGET:
        return [f"new symlink {shown(path)} has an unusable target: {shown(target)}"]
    try:
        lands = tree.resolve(path)
    except _Unresolvable as err:
        return [f"new symlink {shown(path)} cannot be followed: {err}"]
    if lands is None:
        return [f"new symlink {shown(path)} points outside the repository: {shown(target)}"]
    return [f"new symlink {shown(path)} leads to a protected path ({why})" for why in _problems_at(lands)]


def _problems_at(resolved: str | None) -> list[str]:
    """The rules' verdict on where a symlink lands (None: outside the repository)."""
    if resolved is None:
        return ["outside the repository"]
    return path_problems(resolved) if resolved else []


def _parent_problems(tree: PatchedTree, path: str, *, created: bool = False) -> list[str]:
    """``git apply`` writes no path beneath a symlink; one leaving the repository is worse."""
    parts = path.split("/")
    for k in range(1, len(parts)):
        prefix = "/".join(parts[:k])
        if tree.link(prefix) is None:
            continue
        if created:
            return [f"path goes through a symlink the patch creates: {shown(prefix)}"]
        try:
            leaves = tree.resolve(prefix) is None
        except _Unresolvable:
            leaves = True
        return [f"path goes through {'a symlink leaving the repository' if leaves else 'a symlink'}: {shown(prefix)}"]
    return []


def _moved_links(before: PatchedTree, after: PatchedTree) -> list[str]:
    """Symlinks already in the tree that the patch makes lead out of it (or into ``.git`` or CI
    files); those that already did are not the patch's doing."""
    problems = []
    for path in _disk_links(before.root):
        if path in after.laid:
            continue
        try:
            then, now = _problems_at(before.resolve(path)), _problems_at(after.resolve(path))
        except _Unresolvable:
            continue
        if now and not then:
            where = now[0] if now[0].startswith("outside") else f"to a protected path ({now[0]})"
            problems.append(f"symlink {shown(path)} would lead {where} once the patch is applied")
    return problems


def patch_problems(parsed: ParsedPatch, repo: Path, *, allow_git_config: bool = False) -> list[str]:
    """Why the paths of ``parsed`` may not be written in ``repo``; empty when they may.

    Every path obeys ``path_problems``; none lies beneath a symlink; every symlink the patch
    leaves (created, changed, renamed, or a file made one) resolves, in the tree the patch
    produces, to a path inside the repository that obeys the same rules; and no symlink already
    there is made to lead out of it.
    """
    reasons = [r for f in parsed.files for p in f.paths for r in path_problems(p, allow_git_config=allow_git_config)]
    reasons += [f"binary patch: {shown(f.new_path or f.old_path or '')}" for f in parsed.files if f.binary]
    reasons += [f"file mode {mode} (a submodule, or not a file) for {shown(f.new_path or f.old_path or '')}"
                for f in parsed.files for mode in (f.old_mode, f.new_mode, f.index_mode) if mode and mode not in _MODES]
    before = PatchedTree(repo)
    reasons += [r for p in parsed.paths for r in _parent_problems(before, p)] if not reasons else []
    if reasons or parsed.problems:
        return list(dict.fromkeys(reasons))
    after = PatchedTree(repo)
    links: list[str] = []
    for f in parsed.files:
        try:
            left = after.lay(f)
        except _Unresolvable as err:
            reasons.append(str(err))
            continue
        links += [left] if left else []
    reasons += [r for p in parsed.paths for r in _parent_problems(after, p, created=True)]
    reasons += [r for path in dict.fromkeys(links) for r in _link_problems(after, path)]
    if not reasons and (links or any(before.link(p) is not None for p in parsed.paths)):
        reasons += _moved_links(before, after)
    return list(dict.fromkeys(reasons))
