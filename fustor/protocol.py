"""JSON on the wire between agent and fusion, with names that are not UTF-8.

File names that are not UTF-8 are carried as ``str`` with lone surrogates
(``os.fsdecode``). orjson refuses those, so they travel as standard JSON
``\\udcXX`` escapes; both ends decode them back to the same bytes.
"""

from __future__ import annotations

import json

import orjson


def dumps(obj, *, indent: bool = False) -> bytes:
    """JSON bytes of ``obj``; lone surrogates become ``\\udcXX`` escapes."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else None)
    except TypeError:
        return json.dumps(obj, ensure_ascii=True, indent=2 if indent else None).encode()


def loads(raw: bytes):
    """Parse JSON, accepting ``\\udcXX`` escapes of names that are not UTF-8."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
