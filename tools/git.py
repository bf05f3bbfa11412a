"""The ``git`` tool: status, diff, log, branch and commit on the user's repository.

It is the only tool that can write to a real repository, so every write (creating a branch,
committing) is refused unless the session set ``ctx.allow_git_write``,
which a front door does only after the user approved.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.exec import cap_text
from bakeoff.tools.files import check_relative_path


class Git:
    name: ClassVar[str] = "git"
    description: ClassVar[str] = (
        "Git on the user's repository: 'status', 'diff' (working tree, or 'staged', or against 'ref'), "
        "'log', 'branch' (list, or create 'name'), 'commit' ('message', optional 'paths'). Writes "
        "need the user's approval."
    )
    time_limit_s: ClassVar[float | None] = 60.0  # git on the user's own repository: no sandbox to start

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        action: Literal["status", "diff", "log", "branch", "commit"] = Field(description="what to do")
        ref: str | None = Field(default=None, description="diff: compare the working tree against this revision")
        staged: bool = Field(default=False, description="diff: show staged changes")
        paths: list[str] = Field(default_factory=list, description="diff/commit: only these paths")
        name: str | None = Field(default=None, description="branch: name of the branch to create at HEAD")
        checkout: bool = Field(default=False, description="branch: also switch to the new branch")
        message: str | None = Field(default=None, description="commit: the commit message")
        limit: int = Field(default=20, ge=1, le=500, description="log: number of commits")

    class Result(BaseModel):
        action: str
        ok: bool = True
        branch: str | None = None  # the current branch (None when HEAD is detached)
        files: list[str] = Field(default_factory=list)  # status: changed paths; commit: committed paths
        branches: list[str] = Field(default_factory=list)
        commit: str | None = None  # the new commit's sha
        output: str = ""
        error: str | None = None

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        if ctx.workspace is None:
            raise ToolError("git needs the session's workspace (a git repository); none was given")
        if args.action in ("commit", "branch") and (args.action == "commit" or args.name):
            if not ctx.allow_git_write:
                raise ToolError(
                    f"git {args.action} writes to the user's repository and is not allowed in this run; "
                    "the result is delivered as a patch instead"
                )
        paths = [check_relative_path(p) for p in args.paths]
        return await asyncio.to_thread(self._run, args, Path(ctx.workspace), paths)

    def _run(self, args: Args, workspace: Path, paths: list[str]) -> Result:
        import git  # gitpython, imported when the tool is used

        try:
            repo = git.Repo(workspace, search_parent_directories=False)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise ToolError(f"{workspace} is not a git repository") from exc
        current = None if repo.head.is_detached else repo.active_branch.name
        result = self.Result(action=args.action, branch=current)
        try:
            if args.action == "status":
                lines = repo.git.status("--porcelain=v1", "--untracked-files=all").splitlines()
                result.files = [line[3:] for line in lines if len(line) > 3]
                result.output = "\n".join(lines)
            elif args.action == "diff":
                opts = ["--cached"] if args.staged else []
                opts += [args.ref] if args.ref else []
                result.output = cap_text(repo.git.diff(*opts, "--", *paths), 40_000)
                result.files = repo.git.diff(*opts, "--name-only", "--", *paths).splitlines()
            elif args.action == "log":
                result.output = repo.git.log(f"-{args.limit}", "--oneline", "--decorate")
            elif args.action == "branch":
                if args.name:
                    head = repo.create_head(args.name)
                    if args.checkout:
                        head.checkout()
                        result.branch = args.name
                result.branches = sorted(h.name for h in repo.heads)
            elif args.action == "commit":
                if not args.message or not args.message.strip():
                    raise ToolError("commit needs a 'message'")
                if paths:
                    repo.git.add("--", *paths)
                else:
                    repo.git.add("-A")
                staged = repo.git.diff("--cached", "--name-only").splitlines()
                if not staged:
                    result.ok, result.error = False, "nothing to commit: the working tree has no changes"
                    return result
                repo.git.commit("-m", args.message)
                result.commit = repo.head.commit.hexsha
                result.files = staged
        except git.GitCommandError as exc:
            result.ok = False
            result.error = cap_text(f"git {args.action} failed: {exc.stderr.strip() or exc}", 4000)
        return result
