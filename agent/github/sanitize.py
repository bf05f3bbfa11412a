"""What the Action may post: no secrets, no pings, no beacons, no more than GitHub takes.

Text written by a model or taken from a pull request goes into comments, reviews and commit
messages. ``sanitize`` redacts secrets everywhere (code blocks included: a key in a suggestion is
still a key), and outside code blocks defuses what Markdown would act on: @mentions however
spelled (``@``, fullwidth ``＠``, small ``﹫``, ``&#64;`` and the other character references),
images (which the reader's browser fetches: a beacon), and raw HTML.

Inside fenced code blocks nothing is defused, so a suggestion stays byte for byte the code it
proposes (``@decorator`` included): GitHub neither pings nor fetches there. Code blocks are
recognised only where GitHub surely reads them as such: fences at the start of a line in text
without lists, quotes, HTML blocks or indented fences (those could make GitHub close a block
earlier than a simple reading would); anywhere else, everything is defused. ``fenced`` writes
blocks no line of their content can close.
"""

from __future__ import annotations

import os
import re

COMMENT_LIMIT = 60_000  # GitHub rejects bodies over 65,536 characters; leave room for the footer

_SECRET_PATTERNS = [
    re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub tokens
    re.compile(r"github_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}"),  # OpenAI / Anthropic style keys
    re.compile(r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}"),  # AWS access key ids
    # AWS secret access keys: 40 characters of base64 with upper and lower case and a digit.
    re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9])"
               r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    re.compile(r"AIza[0-9A-Za-z_\-]{30,}"),  # Google API keys
    re.compile(r"ya29\.[0-9A-Za-z_\-]{20,}"),  # Google OAuth access tokens
    re.compile(r"xox[baprs]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/]+"),
    re.compile(r"(?:hf_|api_org_)[A-Za-z0-9]{30,}"),  # Hugging Face tokens
    re.compile(r"glpat-[A-Za-z0-9_\-]{20,}"),  # GitLab
    re.compile(r"npm_[A-Za-z0-9]{36}"),
    re.compile(r"pypi-[A-Za-z0-9_\-]{50,}"),
    re.compile(r"(?:sk|rk)_live_[A-Za-z0-9]{20,}"),  # Stripe
    re.compile(r"eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"),  # JWTs
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
]
_SECRET_ENV_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE)", re.IGNORECASE)

# An at sign, however it is spelled, gets a zero-width space after it: readable, never a ping.
_AT = re.compile(r"@|＠|﹫|&(?:#0*64|#[xX]0*40|#0*65312|#[xX]0*[fF][fF]20|#0*65131|#[xX]0*[fF][eE]6[bB]|commat);?")
_IMAGE = re.compile(r"!(?=\[)")
_TAG = re.compile(r"<(?=[A-Za-z/?]|!(?!--))")  # an HTML comment cannot load anything; a tag can

# CommonMark line endings, and the block starts that make a simple reading of fences unsafe.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_OPENING = re.compile(r"( {0,3})(`{3,}|~{3,})(.*)")
_CONTAINER_OR_HTML = re.compile(r" {0,3}(?:[-+*](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)|>|<)")
_ONE_LINE_COMMENT = re.compile(r" {0,3}<!--.*?-->[ \t]*")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (long enough to matter)."""
    env = os.environ if environ is None else environ
    return sorted({v for k, v in env.items() if _SECRET_ENV_NAME.search(k) and len(v) >= 8}, key=len, reverse=True)


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """``text`` with the values of secret-looking variables and anything shaped like a key redacted."""
    for value in secret_values(environ):
        text = text.replace(value, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


def defuse(text: str) -> str:
    """Markdown text that pings no one, loads no image and holds no raw HTML tag."""
    text = _AT.sub(lambda m: m[0] + "\u200b", text)
    text = _IMAGE.sub("!\u200b", text)
    return _TAG.sub("&lt;", text)


def _in_code(lines: list[str]) -> list[bool]:
    """For each line, whether GitHub surely renders it inside a fenced code block; all False when
    the text has anything that could make GitHub read its fences otherwise."""
    inside: list[bool] = []
    fence = ""
    for line in lines:
        body = line.rstrip("\r\n")
        if fence:
            closes = re.fullmatch(r" {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*", body)
            fence = "" if closes else fence
            inside.append(not closes)
            continue
        opening = _OPENING.fullmatch(body)
        if opening and not (opening[2][0] == "`" and "`" in opening[3]):
            if opening[1]:
                return [False] * len(lines)  # an indented fence: it may sit in a list item
            fence = opening[2]
        elif _CONTAINER_OR_HTML.match(body) and not _ONE_LINE_COMMENT.fullmatch(body):
            return [False] * len(lines)
        inside.append(False)
    return inside


def sanitize(text: str, *, limit: int = COMMENT_LIMIT, environ: dict[str, str] | None = None) -> str:
    """Make text safe to post: no secrets, no pings, no images or HTML outside code blocks, no
    more than ``limit`` characters."""
    lines = _LINE.findall(redact(text, environ))
    text = "".join(line if code else defuse(line) for line, code in zip(lines, _in_code(lines)))
    if len(text) > limit:
        marker = "\n\n… (cut: the full report is in the workflow run's artifacts)"
        text = text[: limit - len(marker)] + marker
    return text


def fenced(content: str, info: str = "") -> str:
    """``content`` as a fenced code block whose fence no line of it can close: one backtick longer
    than the longest run of backticks it holds."""
    longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{content}\n{fence}"
