"""Frames between a client and a worker process over a byte stream (pipes locally, an SSH channel on a pod).

A frame is ``<u64 meta length> <meta pickle> <raw buffer>...``: the meta pickle holds the message tuple and the
sizes of the raw buffers that follow, so large buffers are written without being copied into the pickle.
Buffers of a payload may instead travel through shared memory (``ShmRef``), when both ends share a machine.

Messages (client -> worker): ``("init", spec)``, ``("call", job_id, method, payload)``, ``("cancel", job_id)``,
``("reload", spec)``, ``("stop",)``. Worker -> client: ``("ready", info)``, ``("fatal", payload)``,
``("started", job_id)``, ``("chunk", job_id, payload)``, ``("done", job_id, status, payload)`` with status ``"ok"``,
``"error"`` or ``"cancelled"``, and ``("output", stream, text)`` at any time.

Reading and writing are symmetric: ``write_frame(stream, message)`` / ``read_frame(stream) -> message`` on anyio
streams, ``write_frame_sync(file, message)`` / ``read_frame_sync(file) -> message`` on blocking files, and
``FrameParser.feed(bytes) -> [message, ...]`` for bytes that arrive in pieces. A ``WireCodec`` passed to a writer
keeps its shared-memory settings (and the names of the files it exported); without one, buffers travel in the frame.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

from ..backend import Payload

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import ByteSendStream
    from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["FrameParser", "ShmRef", "WireCodec", "read_frame", "read_frame_sync", "write_frame", "write_frame_sync"]

_LEN = struct.Struct("<Q")
SHM_DIR = "/dev/shm"
SHM_MIN_BYTES = 1 << 20


@attrs.frozen
class ShmRef:
    """A buffer placed in a shared-memory file. The receiver maps it and unlinks the name, unless the sender
    keeps ``owned`` files to unlink itself (a call that may be sent again if its first worker dies)."""

    path: str
    size: int
    owned: bool = False


@attrs.frozen
class _Raw:
    index: int


def shm_available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def export_shm(buffer: Any, *, owned: bool = False) -> ShmRef:
    view = memoryview(buffer).cast("B")
    path = os.path.join(SHM_DIR, f"gpuflex-{uuid.uuid4().hex}")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        written = 0
        while written < view.nbytes:
            written += os.write(fd, view[written:])
    finally:
        os.close(fd)
    return ShmRef(path, view.nbytes, owned)


def import_shm(ref: ShmRef) -> memoryview:
    """Map a shared-memory buffer copy-on-write (reads are zero-copy; writes stay private) and unlink it."""
    fd = os.open(ref.path, os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, ref.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        if not ref.owned:
            os.unlink(ref.path)
    return memoryview(mapped)


def export_payload(payload: Payload) -> tuple[Payload, list[ShmRef]]:
    """Move a payload's large buffers into shared memory now (off the event loop), owned by the sender."""
    refs: list[ShmRef] = []
    buffers: list[Any] = []
    for buf in payload.buffers:
        if memoryview(buf).nbytes >= SHM_MIN_BYTES:
            refs.append(export_shm(buf, owned=True))
            buffers.append(refs[-1])
        else:
            buffers.append(buf)
    return Payload(payload.data, tuple(buffers)), refs


def discard_shm(refs: Sequence[ShmRef]) -> None:
    """Remove shared-memory files a receiver never mapped (it died first)."""
    for ref in refs:
        try:
            os.unlink(ref.path)
        except FileNotFoundError:
            pass


@attrs.define
class WireCodec:
    """Turns messages holding payloads into frames and back. ``use_shm`` moves large buffers via /dev/shm."""

    use_shm: bool = False
    exported: list[ShmRef] = attrs.field(factory=list)

    def encode(self, message: tuple[Any, ...]) -> list[Any]:
        raws: list[Any] = []
        shm: list[ShmRef] = []

        def pack(value: Any) -> Any:
            if not isinstance(value, Payload):
                return value
            refs: list[Any] = []
            for buf in value.buffers:
                if isinstance(buf, ShmRef):  # exported ahead of time by the sender
                    refs.append(buf)
                    continue
                size = memoryview(buf).nbytes
                if self.use_shm and size >= SHM_MIN_BYTES:
                    ref = export_shm(buf)
                    shm.append(ref)
                    refs.append(ref)
                else:
                    refs.append(_Raw(len(raws)))
                    raws.append(buf)
            return ("__payload__", value.data, refs)

        packed = tuple(pack(v) for v in message)
        self.exported.extend(shm)
        meta = pickle.dumps((packed, [memoryview(b).nbytes for b in raws]), protocol=5)
        return [_LEN.pack(len(meta)), meta, *raws]

    @staticmethod
    def decode(packed: tuple[Any, ...], raws: Sequence[Any]) -> tuple[Any, ...]:
        def unpack(value: Any) -> Any:
            if not (isinstance(value, tuple) and value and value[0] == "__payload__"):
                return value
            _, data, refs = value
            buffers = tuple(raws[r.index] if isinstance(r, _Raw) else import_shm(r) for r in refs)
            return Payload(data, buffers)

        return tuple(unpack(v) for v in packed)


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
    return WireCodec.decode(packed, raws)


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
    return WireCodec.decode(packed, raws)


class FrameParser:
    """Incremental frame parser: feed bytes, get whole messages.

    With a ``preamble``, everything before it is skipped (and its first 4 KiB kept in ``skipped``): a remote
    login shell may print a banner before the worker's frames begin.
    """

    def __init__(self, preamble: bytes = b"") -> None:
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
            out.append(WireCodec.decode(packed, raws))
        return out
