"""Fixed-size binary records of the store (documented in ``fustor/store/README.md``)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import NamedTuple

from fustor.store import keys

# flags byte of a node record
IS_DIR = 1
SUSPECT = 2
KNOWN = 4
AUDIT_SKIPPED = 8

# flags, size, modified_time, created_time, last_updated_at, audit_mark
NODE = struct.Struct("<BqdddI")
NODE_HEAD = struct.Struct("<Bqdd")  # its first four fields: what an answer shows of a node
# file_count, dir_count, total_size, latest_mtime, digest, digest_nomtime (integers mod
# DIGEST_MOD, 16 bytes little endian), last_change_at (wall), child_count
AGG = struct.Struct("<qqqd16s16sdq")
DIGEST_BYTES = 16
DIGEST_MOD = (1 << 127) - 1  # a (Mersenne) prime: see entry_digests and the store README
# what one entry's hash covers: path, NUL, type, size (the mtime enters by multiplication)
ENTRY = struct.Struct("<x?q")  # NUL (ends the path), is_dir, size
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


class Aggregate(NamedTuple):
    """The whole aggregate record of a directory (format 2)."""

    file_count: int
    dir_count: int
    total_size: int
    latest_mtime: float
    digest: int
    digest_nomtime: int
    last_change_at: float
    child_count: int

    def stats(self) -> Stats:
        return Stats(self.file_count, self.dir_count, self.total_size, self.latest_mtime)


def unpack_agg(value: bytes) -> Aggregate:
    f, d, s, m, dig, dnm, lca, cc = AGG.unpack_from(value)
    return Aggregate(f, d, s, m, int.from_bytes(dig, "little"), int.from_bytes(dnm, "little"),
                     lca, cc)


def pack_agg(path: bytes, a) -> bytes:
    """``a`` is an :class:`Aggregate` or any 8-sequence in its order."""
    f, d, s, m, dig, dnm, lca, cc = a
    head = AGG.pack(f, d, s, m, (dig % DIGEST_MOD).to_bytes(DIGEST_BYTES, "little"),
                    (dnm % DIGEST_MOD).to_bytes(DIGEST_BYTES, "little"), lca, cc)
    return head + path if keys.needs_path_tail(path) else head


def entry_hash(path: bytes, is_dir: bool, size: int) -> int:
    """``a``: BLAKE2b-128 of (path, NUL, type, size) as an integer. A directory's size is
    left out (it differs between file systems for the same content, as in ``total_size``)."""
    h = DIGEST_SEED.copy()
    h.update(path + _entry(is_dir, 0 if is_dir else size))
    return _int(h.digest(), "little")


def mtime_number(mtime: float) -> int:
    """1 + the 64 bits of the float as an integer: distinct mtimes give distinct numbers,
    none of them 0 mod DIGEST_MOD."""
    return _int(_bits(mtime), "little") + 1


def entry_digests(path: bytes, is_dir: bool, size: int, mtime: float) -> tuple[int, int]:
    """What one entry adds to its ancestors' digests (both taken mod ``DIGEST_MOD``):
    ``a * mtime_number(mtime)`` and, without the mtime, ``a`` (``a = entry_hash(...)``)."""
    h = DIGEST_SEED.copy()  # entry_hash, inlined: this runs for every row written
    h.update(path + _entry(is_dir, 0 if is_dir else size))
    a = _int(h.digest(), "little")
    return a * (_int(_bits(mtime), "little") + 1), a


# a fresh BLAKE2b-128 state: copying it is cheaper than making a new one
DIGEST_SEED = hashlib.blake2b(digest_size=16)
DOUBLE = struct.Struct("<d")
_int = int.from_bytes
_entry = ENTRY.pack
_bits = DOUBLE.pack


# byte ranges of a node record, for comparing records without decoding them
NODE_SIZE_AND_MTIME = slice(1, 17)
NODE_SIZE = slice(1, 9)
AGG_COUNTS = slice(0, 24)  # file_count, dir_count, total_size (without latest_mtime)
AGG_DIGEST = slice(32, 48)
AGG_DIGEST_NOMTIME = slice(48, 64)


def pack_node(n: Node) -> bytes:
    return pack_record(
        n.path,
        (IS_DIR if n.is_dir else 0) | (SUSPECT if n.integrity_suspect else 0)
        | (KNOWN if n.known_by_agent else 0) | (AUDIT_SKIPPED if n.audit_skipped else 0),
        n.size, n.modified_time, n.created_time, n.last_updated_at, n.audit_mark,
    )


def pack_record(path: bytes, flags: int, size: int, mtime: float, ctime: float,
                last_updated_at: float, audit_mark: int) -> bytes:
    """A node record from its fields; a path whose key is hashed follows them."""
    head = _pack_node_head(flags, size, mtime, ctime, last_updated_at, audit_mark)
    # keys.needs_path_tail, inlined (every row written): only a path this long can need it
    if len(path) > _TAIL_MIN and path.rfind(b"/") > keys.PARENT_LIMIT:
        return head + path
    return head


_pack_node_head = NODE.pack
_TAIL_MIN = keys.PARENT_LIMIT + 1


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


_BE_DOUBLE = struct.Struct(">d")
_BE_U64 = struct.Struct(">Q")
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def sortable_float(x: float) -> bytes:
    """8 bytes whose byte order is the numeric order of ``x`` (negative values included)."""
    (u,) = _BE_U64.unpack(_BE_DOUBLE.pack(x))
    return _BE_U64.pack(u ^ _ALL if u & _SIGN else u | _SIGN)


def float_of_sortable(b: bytes) -> float:
    (u,) = _BE_U64.unpack_from(b)
    return _BE_DOUBLE.unpack(_BE_U64.pack(u & ~_SIGN & _ALL if u & _SIGN else u ^ _ALL))[0]
