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


# What our agent and fusion add to the 0.8.17 protocol. Fusion lists them in its session
# reply (``extensions``); an agent uses one only when the reply names it, and a 0.8.17
# agent ignores the field, so either side keeps talking to the original unchanged.
#
# ``move``: a realtime event of ``event_type: "move"`` whose rows are directories renamed
# or moved inside the tree: ``path`` (the new place, with the directory's fresh stat) and
# ``moved_from`` (the old one). Fusion moves what it holds of the subtree in one write
# job instead of taking a delete and one row per file; a push reply lists under
# ``moves_unresolved`` the new paths whose old directory it did not hold, which the agent
# then walks and sends as rows.
MOVE_EXTENSION = "move"
EXTENSIONS = (MOVE_EXTENSION,)
