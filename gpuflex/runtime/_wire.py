"""Frames between a client and a worker process over a byte stream (pipes locally, an SSH channel on a pod).

A frame is ``<u64 meta length> <meta pickle> <raw buffer>...``: the meta pickle holds the message tuple and the
sizes of the raw buffers that follow, so large buffers are written without being copied into the pickle.
Buffers of a payload may instead travel through shared memory (``ShmRef``, see ``_shm``), when both ends share a
machine; then ``("released", ids)`` and ``("forget", ids)`` frames go both ways (``WireCodec.control``).

Messages (client -> worker): ``("init", spec)``, ``("call", job_id, method, payload)``, ``("cancel", job_id)``,
``("reload", spec)``, ``("stop",)``. Worker -> client: ``("ready", info)``, ``("fatal", payload)``,
``("started", job_id)``, ``("chunk", job_id, payload)``, ``("done", job_id, status, payload)`` with status ``"ok"``,
``"error"`` or ``"cancelled"``, and ``("output", stream, text)`` at any time.

Reading and writing are symmetric: ``write_frame(stream, message)`` / ``read_frame(stream) -> message`` on anyio
streams, ``write_frame_sync(file, message)`` / ``read_frame_sync(file) -> message`` on blocking files, and
``FrameParser.feed(bytes) -> [message, ...]`` for bytes that arrive in pieces. A ``WireCodec`` passed to a writer
keeps its shared-memory settings (its segment pool and its mappings of the peer's); without one, buffers travel
in the frame.
"""

from __future__ import annotations

import pickle
import struct
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

from ..backend import Payload
from ._shm import SHM_MIN_BYTES, PeerMaps, SegmentPool, ShmRef, import_shm, shm_available

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import ByteSendStream
    from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["SHM_MIN_BYTES", "FrameParser", "ShmRef", "WireCodec", "export_payload", "read_frame", "read_frame_sync",
           "shm_available", "write_frame", "write_frame_sync"]

_LEN = struct.Struct("<Q")


@attrs.frozen
class _Raw:
    index: int


def export_payload(payload: Payload, pool: SegmentPool, holder: str) -> tuple[Payload, list[str]]:
    """Copy a payload's large buffers into ``pool``'s segments now (off the event loop), held by ``holder``;
    returns the payload to send and the ids of the segments it uses."""
    ids: list[str] = []
    buffers: list[Any] = []
    for buf in payload.buffers:
        if memoryview(buf).nbytes >= SHM_MIN_BYTES:
            ref = pool.export(buf, holder)
            ids.append(ref.segment)
            buffers.append(ref)
        else:
            buffers.append(buf)
    return Payload(payload.data, tuple(buffers)), ids


@attrs.define
class WireCodec:
    """Turns messages holding payloads into frames and back. ``use_shm`` moves large buffers through shared memory
    (see :mod:`gpuflex.runtime._shm`): into ``pool`` when sending, mapped through ``maps`` when receiving. The peer
    is known to the pool as ``holder``."""

    use_shm: bool = False
    pool: SegmentPool | None = None
    maps: PeerMaps | None = None
    holder: str = "peer"
    #: release a ``PickleBuffer`` once it is copied into shared memory (a worker's results, sent once): what it
    #: viewed (perhaps an argument in the peer's segment) is no longer held by the message
    release_exported: bool = False

    def __attrs_post_init__(self) -> None:
        if self.use_shm:
            if self.pool is None:
                self.pool = SegmentPool()
            if self.maps is None:
                self.maps = PeerMaps()

    def encode(self, message: tuple[Any, ...]) -> list[Any]:
        raws: list[Any] = []

        def pack(value: Any) -> Any:
            if not isinstance(value, Payload):
                return value
            refs: list[Any] = []
            for buf in value.buffers:
                if isinstance(buf, ShmRef):  # exported ahead of time by the sender: the peer holds it now too
                    if self.pool is not None:
                        self.pool.hold(buf.segment, self.holder)
                    refs.append(buf)
                    continue
                size = memoryview(buf).nbytes
                if self.pool is not None and size >= SHM_MIN_BYTES:
                    refs.append(self.pool.export(buf, self.holder))
                    if self.release_exported and isinstance(buf, pickle.PickleBuffer):
                        buf.release()
                else:
                    refs.append(_Raw(len(raws)))
                    raws.append(buf)
            return ("__payload__", value.data, refs)

        packed = tuple(pack(v) for v in message)
        meta = pickle.dumps((packed, [memoryview(b).nbytes for b in raws]), protocol=5)
        return [_LEN.pack(len(meta)), meta, *raws]

    def control(self) -> list[tuple[Any, ...]]:
        """Messages about shared memory to send before the next frame: the peer's segments nothing here uses any
        more (``released``), and segments of this side's pool the peer should unmap (``forget``)."""
        out: list[tuple[Any, ...]] = []
        if self.maps is not None and (free := self.maps.collect()):
            out.append(("released", free))
        if self.pool is not None and (closed := self.pool.forgotten(self.holder)):
            out.append(("forget", closed))
        return out

    def on_control(self, message: tuple[Any, ...]) -> bool:
        """Apply a ``released`` or ``forget`` message from the peer; False for any other message."""
        if message[0] == "released":
            if self.pool is not None:
                self.pool.release(message[1], self.holder)
            return True
        if message[0] == "forget":
            if self.maps is not None:
                self.maps.forget(message[1])
            return True
        return False

    def decode(self, packed: tuple[Any, ...], raws: Sequence[Any]) -> tuple[Any, ...]:
        def view(ref: ShmRef) -> memoryview:
            return import_shm(ref) if self.maps is None else self.maps.view(ref)

        def unpack(value: Any) -> Any:
            if not (isinstance(value, tuple) and value and value[0] == "__payload__"):
                return value
            _, data, refs = value
            buffers = tuple(raws[r.index] if isinstance(r, _Raw) else view(r) for r in refs)
            return Payload(data, buffers)

        return tuple(unpack(v) for v in packed)


_PLAIN = WireCodec()


def _parts(frame: tuple[Any, ...] | Sequence[Any], codec: WireCodec | None) -> Sequence[Any]:
    """A message (a tuple) encoded with ``codec``; a list is taken as parts ``WireCodec.encode`` made already."""
    if isinstance(frame, tuple):
        return (codec or WireCodec()).encode(frame)
    return frame


# -- worker side: blocking file descriptors ------------------------------------------------------------------


def write_frame_sync(out: BinaryIO, message: tuple[Any, ...] | Sequence[Any], codec: WireCodec | None = None) -> None:
    """Write one message (``read_frame_sync`` reads it back) and flush. ``message`` may also be the list of parts
    ``codec.encode(message)`` returned."""
    for part in _parts(message, codec):
        out.write(part)
    out.flush()


def read_frame_sync(inp: BinaryIO) -> tuple[Any, ...] | None:
    """Read one frame; ``None`` at end of stream."""
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (length,) = _LEN.unpack(head)
    packed, sizes = pickle.loads(inp.read(length))
    raws = []
    for size in sizes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = inp.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                return None
            got += n
        raws.append(buf)
    return _PLAIN.decode(packed, raws)


# -- client side: anyio streams -------------------------------------------------------------------------------


async def write_frame(stream: ByteSendStream, message: tuple[Any, ...] | Sequence[Any],
                      codec: WireCodec | None = None) -> None:
    """Send one message (``read_frame`` reads it back). ``message`` may also be the list of parts
    ``codec.encode(message)`` returned."""
    parts = _parts(message, codec)
    if sum(memoryview(p).nbytes for p in parts) < 1 << 20:
        await stream.send(b"".join(parts))
        return
    for part in parts:
        await stream.send(part)


async def read_frame(stream: BufferedByteReceiveStream) -> tuple[Any, ...]:
    """Receive one message (raises ``anyio.IncompleteRead``/``EndOfStream`` when the stream ends first)."""
    (length,) = _LEN.unpack(await stream.receive_exactly(_LEN.size))
    packed, sizes = pickle.loads(await stream.receive_exactly(length))
    raws = [bytearray(await stream.receive_exactly(size)) if size else bytearray() for size in sizes]
    return _PLAIN.decode(packed, raws)


class FrameParser:
    """Incremental frame parser: feed bytes, get whole messages.

    With a ``preamble``, everything before it is skipped (and its first 4 KiB kept in ``skipped``): a remote
    login shell may print a banner before the worker's frames begin.
    """

    def __init__(self, preamble: bytes = b"", codec: WireCodec | None = None) -> None:
        self.codec = _PLAIN if codec is None else codec
        self._buf = bytearray()
        self._meta: tuple[tuple[Any, ...], list[int]] | None = None
        self._meta_end = 0
        self._preamble = preamble
        self.skipped = bytearray()

    @property
    def in_preamble(self) -> bool:
        """Still waiting for the preamble."""
        return bool(self._preamble)

    def _skip_to_preamble(self) -> None:
        at = self._buf.find(self._preamble)
        cut = at if at >= 0 else max(0, len(self._buf) - len(self._preamble) + 1)  # keep a partial preamble
        self.skipped += self._buf[: max(0, min(cut, 4096 - len(self.skipped)))]
        del self._buf[: cut + len(self._preamble) if at >= 0 else cut]
        if at >= 0:
            self._preamble = b""

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buf += data
        out: list[tuple[Any, ...]] = []
        if self._preamble:
            self._skip_to_preamble()
            if self._preamble:
                return out
        while True:
            if self._meta is None:
                if len(self._buf) < _LEN.size:
                    break
                (length,) = _LEN.unpack_from(self._buf)
                if len(self._buf) < _LEN.size + length:
                    break
                self._meta_end = _LEN.size + length
                self._meta = pickle.loads(memoryview(self._buf)[_LEN.size : self._meta_end])
            packed, sizes = self._meta
            total = self._meta_end + sum(sizes)
            if len(self._buf) < total:
                break
            raws, offset = [], self._meta_end
            for size in sizes:
                raws.append(self._buf[offset : offset + size])  # a bytearray copy: writable, like the other paths
                offset += size
            del self._buf[:total]
            self._meta = None
            out.append(self.codec.decode(packed, raws))
        return out
