"""Which partition a plan belongs to, and a node's fair share of them.

The partition of a key is fixed for the life of a database: the number of
partitions is chosen when the database is created and never changes, and
the hash is CRC-32 of the key's UTF-8 bytes, the same in every process and
every version. Rebalancing moves partitions between nodes, never plans
between partitions.
"""

from __future__ import annotations

import math
import zlib

DEFAULT_PARTITIONS = 512
MAX_PARTITIONS = 65_536


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (0 .. partitions - 1)."""
    # surrogatepass: a key that can't be stored still hashes instead of raising
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def fair_share(partitions: int, live_nodes: int) -> int:
    """How many partitions one of ``live_nodes`` nodes should hold at most.

    Rounded up, so the shares of all live nodes cover every partition.
    """
    return math.ceil(partitions / max(live_nodes, 1))
