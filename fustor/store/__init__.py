"""The on-disk tree of one source: an LMDB environment per tree (see README.md here)."""

from fustor.errors import StoreBusyError
from fustor.store.env import FORMAT_VERSION, Store, apply_changes
from fustor.store.keys import normalise
from fustor.store.records import Node, Stats
from fustor.store.search import Found, Query, Searcher, decode_after, encode_after
from fustor.store.tree import TreeReader, TreeWriter

__all__ = [
    "FORMAT_VERSION", "Found", "Node", "Query", "Searcher", "Stats", "Store", "StoreBusyError",
    "TreeReader", "TreeWriter", "apply_changes", "decode_after", "encode_after", "normalise",
]
