"""The ``sqlite`` store driver, split by job:

- :mod:`.schema`: the numbered migrations and the columns they make;
- :mod:`.rows`: plans and runs as rows, by named column; a batch as rows;
- :mod:`.transaction`: a batch's rows applied in one transaction;
- :mod:`.queries`: the reads, as SQL;
- :mod:`.acklog`: the ack log file; :mod:`.overlay`: its writes laid over reads;
- :mod:`.opening`: what is checked and set when a database opens;
- :mod:`.thread`: the connection and the one thread the store owns for it;
- :mod:`.store`: :class:`SqliteStore`, the driver itself.
"""

from __future__ import annotations

from forsun_box.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from forsun_box.store.sqlite.store import SqliteStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore"]
