"""The ack log: an append-only file of acknowledged writes not yet in the database.

A one-plan SQLite commit writes every b-tree page it touches to the WAL, a
few 4 KiB pages and two ``pwrite`` calls each: tens of microseconds, on the
path of every single create. The sqlite store instead appends a small write
(a create, a remove) here -- one ``write`` of a few hundred bytes -- answers
the caller, and folds the logged writes into the database in the background,
many per transaction, recording there the sequence number of the last one
folded. After a crash, start-up folds in what the log holds beyond it.

A ``write`` returned is in the kernel's page cache: it survives a crash of
the process (kill -9), as a WAL commit with ``synchronous = NORMAL`` does;
neither survives a power loss (``synchronous = FULL`` bypasses this log).

File layout: :data:`MAGIC`, then records, each a 16-byte header (payload
length u32, CRC-32 of sequence number and payload u32, sequence number u64,
little-endian) and the payload. A record cut short at the end of the file is
a write that failed or was interrupted and never acknowledged: it is dropped.
A bad record followed by more data is damage, and stops start-up.
"""

from __future__ import annotations

import os
import struct
import zlib

MAGIC = b"FSBACK1\n"
_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
# No record is this big: the store logs only small batches.
MAX_RECORD = 64 << 20


class AckLogDamaged(Exception):
    """The log holds a bad record that is not at its end."""


class AckLog:
    """Append-only record file; see the module docstring."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self.size = 0
        # sequence number of the last record appended (or found at open)
        self.seq = 0

    def open(self) -> list[tuple[int, bytes]]:
        """Open (creating) the log; return its records as (seq, payload), oldest first.

        A record cut short at the end is truncated away. Raises OSError, or
        AckLogDamaged for a bad header or a bad record that isn't the last.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            if not data:
                os.write(fd, MAGIC)
                data = MAGIC
            elif not data.startswith(MAGIC):
                if MAGIC.startswith(data):  # the header itself was cut short
                    os.ftruncate(fd, 0)
                    os.write(fd, MAGIC)
                    data = MAGIC
                else:
                    raise AckLogDamaged(f"{self.path} is not an ack log (unknown header)")
            records, good = _parse(data, self.path)
            if good < len(data):
                os.ftruncate(fd, good)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.size = good
        if records:
            self.seq = records[-1][0]
        return records

    def append(self, payload: bytes) -> int:
        """Write one record; returns its sequence number. Raises OSError.

        On a failed or short write the file is cut back to where it was, so a
        later record never follows a broken one.
        """
        seq = self.seq + 1
        record = _record(seq, payload)
        try:
            written = os.write(self._fd, record)
            if written != len(record):
                raise OSError(f"short write to {self.path} ({written} of {len(record)} bytes)")
        except OSError:
            os.ftruncate(self._fd, self.size)
            raise
        self.seq = seq
        self.size += len(record)
        return seq

    def truncate(self) -> None:
        """Drop every record (all are in the database). Raises OSError."""
        os.ftruncate(self._fd, len(MAGIC))
        self.size = len(MAGIC)

    def rewrite(self, records: list[tuple[int, bytes]]) -> None:
        """Keep only ``records`` (the ones not in the database yet). Raises OSError.

        They go to a new file that replaces the log in one rename: a crash
        before it leaves the old log (every record), after it the new one.
        """
        tmp = self.path + ".new"
        blob = MAGIC + b"".join(_record(seq, payload) for seq, payload in records)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            if os.write(fd, blob) != len(blob):
                raise OSError(f"short write to {tmp}")
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self.size = len(blob)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _record(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))
    return _HEADER.pack(len(payload), crc, seq) + payload


def _parse(data: bytes, path: str) -> tuple[list[tuple[int, bytes]], int]:
    """The whole records of ``data`` and the offset where they end."""
    records: list[tuple[int, bytes]] = []
    pos = len(MAGIC)
    end = len(data)
    while pos < end:
        if end - pos < _HEADER.size:
            break  # a header cut short: the last write never completed
        length, crc, seq = _HEADER.unpack_from(data, pos)
        stop = pos + _HEADER.size + length
        if length > MAX_RECORD:
            raise AckLogDamaged(f"{path}: bad record length at byte {pos}")
        if stop > end:
            break  # a payload cut short: the last write never completed
        payload = data[pos + _HEADER.size : stop]
        if zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq))) != crc:
            if stop == end:
                break  # the last record, torn
            raise AckLogDamaged(f"{path}: bad checksum in the record at byte {pos}")
        if records and seq != records[-1][0] + 1:
            raise AckLogDamaged(f"{path}: record at byte {pos} is out of sequence")
        records.append((seq, payload))
        pos = stop
    return records, pos
