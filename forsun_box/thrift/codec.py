"""Thrift binary-protocol framing for asyncio: find, decode and encode whole messages.

The unframed binary protocol has no length prefix, so a reader cannot know
where a message ends without walking it. :func:`decode_message` first tries
the C decoder (``fastbinary``) on the buffered bytes; only when that fails
does :func:`message_length` walk the structure to tell "incomplete, wait for
more bytes" from "garbage, close the connection". Every declared length is
checked against bounds before anything is allocated, so a peer declaring a
4 GiB string costs nothing.

Used by the server (:mod:`forsun_box.api.thrift.server`) and the ``thrift``
action's asyncio client.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
from dataclasses import dataclass
from typing import Any

from thrift.protocol import fastbinary
from thrift.Thrift import TApplicationException, TMessageType, TType

CALL = TMessageType.CALL
REPLY = TMessageType.REPLY
EXCEPTION = TMessageType.EXCEPTION
ONEWAY = TMessageType.ONEWAY

VERSION_1 = 0x80010000
VERSION_MASK = 0xFFFF0000
MAX_NAME_LENGTH = 1024
MAX_DEPTH = 64

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_FIXED = {
    TType.BOOL: 1,
    TType.BYTE: 1,
    TType.I16: 2,
    TType.I32: 4,
    TType.I64: 8,
    TType.DOUBLE: 8,
}
_VARIABLE = {TType.STRING, TType.STRUCT, TType.MAP, TType.SET, TType.LIST}


Buffer = bytes | bytearray | memoryview


class NeedMore(Exception):
    """The buffer holds only the beginning of a message."""


class ProtocolError(Exception):
    """The bytes are not a Thrift binary-protocol message (or exceed a bound)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one message may declare."""

    max_message_bytes: int = 16 << 20
    max_string_bytes: int = 16 << 20
    max_container_items: int = 1 << 20


@dataclass(slots=True)
class Header:
    """A message's name, type, sequence id, and where its body starts."""

    name: str
    mtype: int
    seqid: int
    body_start: int


def read_header(buf: Buffer, limits: Limits, start: int = 0) -> Header:
    """Parse a message header at ``buf[start:]`` (strict or old non-strict form).

    ``body_start`` is an offset into ``buf`` (not relative to ``start``).
    """
    n = len(buf)
    if n < start + 4:
        raise NeedMore
    (first,) = _I32.unpack_from(buf, start)
    if first < 0:
        if first & VERSION_MASK != VERSION_1:
            raise ProtocolError("bad protocol version")
        mtype = first & 0xFF
        if n < start + 8:
            raise NeedMore
        (name_len,) = _I32.unpack_from(buf, start + 4)
        pos = start + 8
    else:
        mtype = -1
        name_len = first
        pos = start + 4
    if name_len < 0 or name_len > MAX_NAME_LENGTH:
        raise ProtocolError("bad method name length")
    end = pos + name_len
    if first >= 0:
        end += 1  # the old form puts the type byte after the name
    if n < end + 4:
        raise NeedMore
    raw = buf[pos : pos + name_len]
    if type(raw) is not bytes:
        raw = bytes(raw)
    name = _NAMES.get(raw)
    if name is None:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("method name is not UTF-8") from None
    if first >= 0:
        mtype = buf[end - 1]
    (seqid,) = _I32.unpack_from(buf, end)
    if mtype not in (CALL, REPLY, EXCEPTION, ONEWAY):
        raise ProtocolError(f"bad message type {mtype}")
    return Header(name, mtype, seqid, end + 4)


def _skip(buf: Buffer, pos: int, ttype: int, limits: Limits, depth: int) -> int:
    """The offset just past one value of ``ttype`` starting at ``pos``."""
    n = len(buf)
    size = _FIXED.get(ttype)
    if size is not None:
        pos += size
        if pos > n:
            raise NeedMore
        return pos
    if ttype == TType.STRING:
        if pos + 4 > n:
            raise NeedMore
        (length,) = _I32.unpack_from(buf, pos)
        if length < 0 or length > limits.max_string_bytes:
            raise ProtocolError("bad string length")
        pos += 4 + length
        if pos > n:
            raise NeedMore
        return pos
    if depth > MAX_DEPTH:
        raise ProtocolError("nesting too deep")
    if ttype == TType.STRUCT:
        return skip_struct(buf, pos, limits, depth + 1)
    if ttype == TType.MAP:
        if pos + 6 > n:
            raise NeedMore
        ktype, vtype = buf[pos], buf[pos + 1]
        (count,) = _I32.unpack_from(buf, pos + 2)
        pos += 6
        types: tuple[int, ...] = (ktype, vtype)
    elif ttype in (TType.SET, TType.LIST):
        if pos + 5 > n:
            raise NeedMore
        etype = buf[pos]
        (count,) = _I32.unpack_from(buf, pos + 1)
        pos += 5
        types = (etype,)
    else:
        raise ProtocolError(f"unknown type {ttype}")
    if count < 0 or count > limits.max_container_items:
        raise ProtocolError("bad container size")
    for t in types:
        if t not in _FIXED and t not in _VARIABLE:
            raise ProtocolError(f"unknown element type {t}")
    if all(t in _FIXED for t in types):
        pos += count * sum(_FIXED[t] for t in types)
        if pos > n:
            raise NeedMore
        return pos
    for _ in range(count):
        for t in types:
            pos = _skip(buf, pos, t, limits, depth + 1)
    return pos


def skip_struct(buf: Buffer, pos: int, limits: Limits, depth: int = 0) -> int:
    """The offset just past the struct starting at ``pos``.

    Raises :class:`NeedMore` if the buffer ends first, :class:`ProtocolError`
    on anything that isn't a well-formed struct within ``limits``.
    """
    n = len(buf)
    while True:
        if pos >= n:
            raise NeedMore
        ftype = buf[pos]
        if ftype == TType.STOP:
            return pos + 1
        if pos + 3 > n:
            raise NeedMore
        pos = _skip(buf, pos + 3, ftype, limits, depth)


def message_length(buf: Buffer, limits: Limits, start: int = 0) -> tuple[Header, int]:
    """The header of the message at ``buf[start:]`` and the offset just past it
    (its total length when ``start`` is 0)."""
    header = read_header(buf, limits, start)
    end = skip_struct(buf, header.body_start, limits)
    if end - start > limits.max_message_bytes:
        raise ProtocolError("message too large")
    return header, end


class _Refill:
    """The transport side of the C decoder's reading interface over one bytes buffer."""

    __slots__ = ("cstringio_buf",)

    def __init__(self) -> None:
        self.cstringio_buf: io.BytesIO = io.BytesIO()

    def cstringio_refill(self, partialread: bytes, reqlen: int) -> bytes:
        # The whole message is already in the buffer: running out means it is cut short.
        raise EOFError


class _DecodeProtocol:
    """What ``fastbinary.decode_binary`` reads from a protocol: its transport and bounds.

    Built per :class:`Limits` and reused: the accelerated protocol and memory
    buffer the thrift library would otherwise construct for every message
    cost more than the decoding itself.
    """

    __slots__ = ("container_length_limit", "string_length_limit", "trans")

    def __init__(self, limits: Limits) -> None:
        self.trans = _Refill()
        self.string_length_limit = limits.max_string_bytes
        self.container_length_limit = limits.max_container_items


_DECODERS: dict[Limits, _DecodeProtocol] = {}
_LAST_DECODER: list[Any] = [None, None]  # the (limits, protocol) of the last decode


def decode_body(data: bytes, start: int, cls: Any, limits: Limits) -> tuple[Any, int]:
    """Decode a struct of class ``cls`` at ``data[start:]``; returns (object, end offset).

    Raises :class:`NeedMore` when the bytes stop early and
    :class:`ProtocolError` when they can't be a ``cls``.
    """
    last = _LAST_DECODER
    if last[0] is limits:  # (hashing the frozen dataclass per message costs more)
        proto = last[1]
    else:
        proto = _DECODERS.get(limits)
        if proto is None:
            proto = _DECODERS[limits] = _DecodeProtocol(limits)
        last[:] = (limits, proto)
    buf = io.BytesIO(data)
    buf.seek(start)
    # Single-threaded use (the event loop): the shared transport just points at this buffer.
    proto.trans.cstringio_buf = buf
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = [cls, cls.thrift_spec]
    try:
        obj = fastbinary.decode_binary(None, proto, spec)
    except Exception:
        # fastbinary reports a short buffer in several ways (EOFError, or a
        # TypeError when it ends inside a container header): let the
        # structure walk decide between "wait for more" and "garbage".
        skip_struct(data, start, limits)
        raise ProtocolError(f"cannot decode {cls.__name__}") from None
    return obj, buf.tell()


_SPECS: dict[Any, list[Any]] = {}
# method names seen in headers, so a known name costs no decoding
_NAMES: dict[bytes, str] = {}
_HEADS: dict[tuple[str, int], bytes] = {}


def known_names(names: Any) -> None:
    """Let :func:`read_header` map these method names without decoding them."""
    for name in names:
        _NAMES[name.encode("utf-8")] = name


def message_head(name: str, mtype: int) -> bytes:
    """A strict message header up to (not including) its sequence id."""
    head = _HEADS.get((name, mtype))
    if head is None:
        encoded = name.encode("utf-8")
        head = _I32.pack((VERSION_1 - (1 << 32)) | mtype) + _I32.pack(len(encoded)) + encoded
        if len(_HEADS) < 4096:  # names come from the peer: bound what is kept
            _HEADS[(name, mtype)] = head
    return head


def encode_message(name: str, mtype: int, seqid: int, body: Any) -> bytes:
    """One message: strict header plus ``body`` (a generated struct, or a
    :class:`TApplicationException`)."""
    head = message_head(name, mtype) + _I32.pack(seqid)
    if isinstance(body, TApplicationException):
        return head + _encode_app_exception(body)
    cls = body.__class__
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = [cls, cls.thrift_spec]
    return head + fastbinary.encode_binary(body, spec)


_STOP = b"\x00"
# result class -> (header of its field 0, the struct class and spec of that field's
# value) when ``success`` is a struct; None otherwise
_STRUCT_SUCCESS: dict[Any, tuple[bytes, type, list[Any]] | None] = {}


def _struct_success(result_cls: Any) -> tuple[bytes, type, list[Any]] | None:
    spec = result_cls.thrift_spec
    field = spec[0] if spec else None
    if field is None or field[0] != 0 or field[1] != TType.STRUCT:
        return None
    value_cls = field[3][0]
    return bytes((TType.STRUCT, 0, 0)), value_cls, [value_cls, value_cls.thrift_spec]


def encode_reply(name: str, seqid: int, result_cls: Any, success: Any) -> bytes:
    """The REPLY message whose body is ``result_cls(success=success)``.

    Same bytes as :func:`encode_message` of that struct; when ``success`` is
    a struct (the plan answers) its field header and the result's STOP are
    written around the value's own encoding, without building the result.
    """
    if result_cls in _STRUCT_SUCCESS:
        framing = _STRUCT_SUCCESS[result_cls]
    else:
        framing = _STRUCT_SUCCESS[result_cls] = _struct_success(result_cls)
    head = message_head(name, REPLY) + _I32.pack(seqid)
    if framing is not None and success.__class__ is framing[1]:
        return head + framing[0] + fastbinary.encode_binary(success, framing[2]) + _STOP
    body = result_cls()
    body.success = success
    cls = body.__class__
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = [cls, cls.thrift_spec]
    return head + fastbinary.encode_binary(body, spec)


_APP_EXC_SPEC = (
    None,
    (1, TType.STRING, "message", "UTF8", None),
    (2, TType.I32, "type", None, None),
)


class _AppExc:
    thrift_spec = _APP_EXC_SPEC

    def __init__(self, message: str | None = None, type: int | None = None) -> None:
        self.message = message
        self.type = type


def _encode_app_exception(exc: TApplicationException) -> bytes:
    return bytes(
        fastbinary.encode_binary(_AppExc(exc.message or "", exc.type), [_AppExc, _APP_EXC_SPEC])
    )


def decode_app_exception(
    data: bytes, start: int, limits: Limits
) -> tuple[TApplicationException, int]:
    """Decode the TApplicationException body of an EXCEPTION reply."""
    obj, end = decode_body(data, start, _AppExc, limits)
    return TApplicationException(obj.type or 0, obj.message), end


def set_no_delay(transport: Any) -> None:
    """TCP_NODELAY on a transport's (or stream writer's) socket.

    A Thrift call is a small message answered by another: Nagle's algorithm
    would hold each back waiting for the peer's ack.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
