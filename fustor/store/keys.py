"""Path normalisation and the key layout of the ``nodes`` database.

A node's key is ``dir_prefix(parent) + name``, where ``dir_prefix(d)`` is ``d + b"\\0"``.
So the direct children of a directory are one contiguous, name-sorted key range,
and listing them never touches grandchildren. The root's key is ``b"/"``.

LMDB keys are limited to 511 bytes. Names are limited to 255 bytes (the Linux
NAME_MAX), and a parent longer than ``PARENT_LIMIT`` bytes is written as its
first ``PARENT_LIMIT`` bytes, ``\\x01`` and a 32-hex-digit BLAKE2b digest of the
whole parent. Such keys cannot be turned back into a path, so their records
carry the full path after the fixed fields (see ``needs_path_tail``). The
longest key is 190 + 1 + 32 + 1 + 255 = 479 bytes, which leaves room for the
8-byte prefix of the suspect expiry index.
"""

from __future__ import annotations

import hashlib

from fustor.errors import PathError

ROOT = b"/"
SEP = b"\0"
PARENT_LIMIT = 190
NAME_MAX = 255
PATH_MAX = 4096


def normalise(path: str | bytes) -> bytes:
    """Return the canonical byte form of ``path``: leading ``/``, no ``//``, ``.`` or trailing ``/``.

    ``str`` paths are encoded with ``surrogateescape`` so names that are not
    UTF-8 round-trip exactly. ``..``, NUL, names over 255 bytes and paths over
    4096 bytes raise :class:`PathError`.
    """
    if isinstance(path, str):
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise PathError(f"path {path!r} holds a character that cannot be stored") from None
    elif isinstance(path, bytes):
        raw = path
    else:
        raise PathError(f"path must be a string, got {type(path).__name__}")
    if len(raw) > PATH_MAX:
        raise PathError(f"path is {len(raw)} bytes long; the limit is {PATH_MAX}")
    if b"\0" in raw:
        raise PathError(f"path {display(raw)!r} contains a NUL byte")
    if raw == ROOT or canonical(raw):  # what agents send
        return raw
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    for p in parts:
        if p == b"..":
            raise PathError(f"path {display(raw)!r} contains '..'")
        if len(p) > NAME_MAX:
            raise PathError(
                f"name {display(p[:40])!r}... is {len(p)} bytes long; the limit is {NAME_MAX}"
            )
    return b"/" + b"/".join(parts)


def canonical(raw: bytes) -> bool:
    """True when ``raw`` (NUL-free, at most ``PATH_MAX`` bytes) is a normalised path other
    than the root that needs no per-name check: it is at most 256 bytes (so no name
    exceeds ``NAME_MAX``), and no name is empty, ``.`` or ``..`` (names may start with a
    dot). False says nothing about validity: :func:`normalise` then checks name by name."""
    return (raw[:1] == b"/" and raw[-1:] != b"/" and len(raw) <= NAME_MAX + 1
            and b"//" not in raw
            and (b"/." not in raw or (b"/./" not in raw and b"/../" not in raw
                                      and not raw.endswith((b"/.", b"/..")))))


def display(path: bytes) -> str:
    """The path as a ``str`` (undecodable bytes become lone surrogates, as ``os.fsdecode`` does)."""
    return path.decode("utf-8", "surrogateescape")


def parent_of(path: bytes) -> bytes:
    i = path.rfind(b"/")
    return path[:i] or ROOT


def dir_prefix(directory: bytes) -> bytes:
    """Key prefix shared by every direct child of ``directory``."""
    if len(directory) > PARENT_LIMIT:
        digest = hashlib.blake2b(directory, digest_size=16).hexdigest().encode()
        return directory[:PARENT_LIMIT] + b"\x01" + digest + SEP
    return directory + SEP


def node_key(path: bytes) -> bytes:
    """Key of the node at normalised ``path``."""
    if path == ROOT:
        return ROOT
    i = path.rfind(b"/")
    if i == 0:
        return b"/\0" + path[1:]
    if i <= PARENT_LIMIT:
        return path[:i] + SEP + path[i + 1 :]
    return dir_prefix(path[:i]) + path[i + 1 :]


def needs_path_tail(path: bytes) -> bool:
    """True when the key of ``path`` is hashed, so its record must carry the full path."""
    return path.rfind(b"/") > PARENT_LIMIT


def path_of(key: bytes, tail: bytes = b"") -> bytes:
    """Inverse of :func:`node_key`; ``tail`` is the full path stored in hashed records."""
    if key == ROOT:
        return ROOT
    i = key.index(SEP)
    if i > PARENT_LIMIT:
        return tail
    if i == 1:
        return b"/" + key[2:]
    return key[:i] + b"/" + key[i + 1 :]


def name_of_key(key: bytes) -> bytes:
    if key == ROOT:
        return b""
    return key[key.index(SEP) + 1 :]


def subtree_ranges(directory: bytes) -> list[tuple[bytes, bool]]:
    """Key prefixes that together hold every strict descendant of ``directory``.

    Each item is ``(prefix, must_filter)``; when ``must_filter`` is true the range
    also holds unrelated keys and each record's real path must be checked against
    ``directory + b"/"``. The root's range is every key (the root key included).
    """
    if directory == ROOT:
        return [(b"", False)]
    if len(directory) < PARENT_LIMIT:
        return [(directory + SEP, False), (directory + b"/", False)]
    return [(directory[:PARENT_LIMIT], True)]


def depth(path: bytes) -> int:
    return 0 if path == ROOT else path.count(b"/")
