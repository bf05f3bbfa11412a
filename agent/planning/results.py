"""How a tool's result reads as text: whole (``result_text``), or cut to what a model should
see (``summarize_result``), keeping the head and the tail of each long field."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

RESULT_LIMIT = 2000  # characters of one result a model sees


def plain(value: Any) -> Any:
    """A pydantic result as JSON-ready data; anything else as it is."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _shorten(value: Any, share: int) -> Any:
    """Cut long strings inside a structure so each field keeps some of its text."""
    if isinstance(value, str) and len(value) > share:
        keep = max(20, share - 40)
        return value[: keep * 2 // 3] + f"[... {len(value) - keep} characters cut ...]" + value[-(keep // 3) :]
    if isinstance(value, dict):
        return {k: _shorten(v, share) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, share) for v in value[:50]] + ([f"[... {len(value) - 50} more items ...]"] if len(value) > 50 else [])
    return value


def result_text(result: Any) -> str:
    """The whole result as text (what ``result_chars`` measures)."""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()  # pydantic's serializer: several times faster than json
    data = plain(result)
    if isinstance(data, (dict, list)):
        return json.dumps(data, ensure_ascii=False, default=str)
    return str(data)


def summarize_result(result: Any, limit: int = RESULT_LIMIT) -> str:
    """A result as a model should see it: whole when short, otherwise cut with a marker
    (``[... N characters cut ...]``) keeping the head and the tail of each long field."""
    summary = getattr(result, "summary", None)
    if isinstance(result, BaseModel) and callable(summary):
        try:
            text = summary(limit)
        except TypeError:  # a summary() that takes no limit
            text = summary()
        if isinstance(text, str):
            result = text
    text = result_text(result)
    if len(text) <= limit:
        return text
    data = plain(result)
    if isinstance(data, (dict, list)):
        fields = max(1, len(data))
        text = json.dumps(_shorten(data, max(80, limit // fields)), ensure_ascii=False, default=str)
        if len(text) <= limit:
            return text
    head, tail = limit * 2 // 3, limit // 3
    return text[:head] + f"\n[... {len(text) - head - tail} characters cut ...]\n" + text[-tail:]
