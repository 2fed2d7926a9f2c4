"""Fixed-size binary records of the store (documented in ``fustor/store/README.md``)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fustor.store import keys

# flags byte of a node record
IS_DIR = 1
SUSPECT = 2
KNOWN = 4
AUDIT_SKIPPED = 8

# flags, size, modified_time, created_time, last_updated_at, audit_mark
NODE = struct.Struct("<BqdddI")
# file_count, dir_count, total_size, latest_mtime
AGG = struct.Struct("<qqqd")
# two floats: tombstone (logical_ts, wall_ts), suspect (expires_at wall, recorded_mtime)
PAIR = struct.Struct("<dd")
EXPIRY = struct.Struct(">d")  # big-endian so byte order sorts like the (non-negative) number


@dataclass(slots=True)
class Node:
    """One file or directory as the store holds it; ``path`` is normalised bytes."""

    path: bytes
    is_dir: bool
    size: int = 0
    modified_time: float = 0.0
    created_time: float = 0.0
    last_updated_at: float = 0.0
    integrity_suspect: bool = False
    known_by_agent: bool = False
    audit_skipped: bool = False
    audit_mark: int = 0

    @property
    def name(self) -> str:
        return keys.display(self.path.rsplit(b"/", 1)[-1]) if self.path != keys.ROOT else ""

    @property
    def path_str(self) -> str:
        return keys.display(self.path)

    def flags(self) -> int:
        return (
            (IS_DIR if self.is_dir else 0)
            | (SUSPECT if self.integrity_suspect else 0)
            | (KNOWN if self.known_by_agent else 0)
            | (AUDIT_SKIPPED if self.audit_skipped else 0)
        )


@dataclass(slots=True)
class Stats:
    """Aggregates of a subtree: the directory itself counts in ``dir_count``."""

    file_count: int = 0
    dir_count: int = 0
    total_size: int = 0
    latest_mtime: float = 0.0

    def as_dict(self) -> dict:
        return {
            "file_count": self.file_count,
            "dir_count": self.dir_count,
            "total_size": self.total_size,
            "latest_mtime": self.latest_mtime,
        }


# byte ranges of a node record, for comparing records without decoding them
NODE_SIZE_AND_MTIME = slice(1, 17)
NODE_SIZE = slice(1, 9)
AGG_COUNTS = slice(0, 24)  # file_count, dir_count, total_size (without latest_mtime)


def pack_node(n: Node) -> bytes:
    head = NODE.pack(
        n.flags(), n.size, n.modified_time, n.created_time, n.last_updated_at, n.audit_mark
    )
    if keys.needs_path_tail(n.path):
        return head + n.path
    return head


def unpack_node(key: bytes, value: bytes) -> Node:
    f, size, mtime, ctime, lua, mark = NODE.unpack_from(value)
    path = keys.path_of(key, bytes(value[NODE.size :]))
    return Node(
        path, bool(f & IS_DIR), size, mtime, ctime, lua,
        bool(f & SUSPECT), bool(f & KNOWN), bool(f & AUDIT_SKIPPED), mark,
    )


def pack_pair(a: float, b: float, path: bytes) -> bytes:
    """A two-float state record; hashed keys carry their full path after the floats."""
    head = PAIR.pack(a, b)
    return head + path if keys.needs_path_tail(path) else head
