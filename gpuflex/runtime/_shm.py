"""Shared memory between a client and the workers on its machine: pooled, anonymous (memfd) segments.

The side that sends a large buffer copies it into a segment of its own :class:`SegmentPool` and sends a
:class:`ShmRef`; the receiver maps the segment (``/proc/<sender pid>/fd/<fd>``), keeps the mapping in its
:class:`PeerMaps`, and hands out views of it (zero-copy). Once nothing on the receiving side refers to a view any
more, the receiver says so with a ``("released", ids)`` frame and the sender reuses the segment: its pages are
mapped on both sides already, so a transfer costs one ``memcpy`` and no page faults or zeroing. A sender that closes
a segment (its pool keeps at most ``keep_bytes`` of free ones) says ``("forget", ids)`` so the peer unmaps it.

The segments have no name in /dev/shm or anywhere else: they live as long as a process holds their descriptor or a
mapping, so nothing is left behind when a process dies, however it dies (SIGKILL included).
"""

from __future__ import annotations

import itertools
import mmap
import os
import sys
import threading
import time
import uuid
from typing import Any

import attrs

__all__ = ["SHM_MIN_BYTES", "PeerMaps", "SegmentPool", "ShmRef", "import_shm", "shm_available"]

SHM_MIN_BYTES = 1 << 20  # buffers from this size on travel through shared memory
POOL_KEEP_BYTES = 1 << 30  # free segments a pool keeps mapped for reuse, in bytes of capacity
POOL_KEEP_SECONDS = 120.0  # a free segment unused this long is closed at the pool's next use
_MIN_CAPACITY = 1 << 20


@attrs.frozen
class ShmRef:
    """A buffer of ``size`` bytes at the start of a shared-memory segment: the receiver opens ``path`` (the
    sender's descriptor of the segment, under /proc) and caches its mapping under ``segment``."""

    path: str
    size: int
    segment: str = ""


def shm_available() -> bool:
    """Anonymous shared memory (memfd) that another process can open through /proc: Linux."""
    return hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")


def _capacity(nbytes: int) -> int:
    """Segments come in powers of two (pages a buffer never touches cost nothing), so sizes that vary reuse them."""
    return max(_MIN_CAPACITY, 1 << (nbytes - 1).bit_length())


class _Segment:
    __slots__ = ("capacity", "fd", "holders", "id", "mm", "path", "used_at", "view")

    def __init__(self, segment_id: str, capacity: int) -> None:
        self.id, self.capacity = segment_id, capacity
        self.fd = os.memfd_create(f"gpuflex-{os.getpid()}")  # close-on-exec: workers started later do not get it
        try:
            os.ftruncate(self.fd, capacity)
            self.mm = mmap.mmap(self.fd, capacity, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.mm)
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
        self.holders: set[str] = set()
        self.used_at = time.monotonic()

    def close(self) -> None:
        self.view.release()
        try:
            self.mm.close()
        except BufferError:  # a view of it is still out somewhere: the mapping goes when that view does
            pass
        os.close(self.fd)


class SegmentPool:
    """The segments one process writes large buffers into. A segment is busy while anyone holds it (a job that may
    be sent again, a peer that mapped it) and is reused once all have let go. Thread-safe."""

    def __init__(self, keep_bytes: int = POOL_KEEP_BYTES, keep_seconds: float = POOL_KEEP_SECONDS) -> None:
        self.keep_bytes, self.keep_seconds = keep_bytes, keep_seconds
        self._lock = threading.Lock()
        self._segments: dict[str, _Segment] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._forgotten: dict[str, list[str]] = {}  # holder -> ids closed after it mapped them: it should unmap
        self._mapped_by: dict[str, set[str]] = {}  # segment id -> holders that were sent it
        self.created = 0  # segments made so far (tests, stats)
        self.closed = False

    def export(self, buffer: Any, holder: str) -> ShmRef:
        """Copy ``buffer`` into a free segment (made if none fits) held by ``holder``."""
        view = memoryview(buffer).cast("B")
        size = view.nbytes
        with self._lock:
            segment = self._take(size)
            segment.holders.add(holder)
            self._mapped_by.setdefault(segment.id, set()).add(holder)
        segment.view[:size] = view  # one memcpy into pages already mapped here (after the segment's first use)
        return ShmRef(segment.path, size, segment.id)

    def _take(self, size: int) -> _Segment:
        free = [s for s in self._segments.values() if not s.holders and size <= s.capacity <= 4 * max(size, 1)]
        if free:
            segment = min(free, key=lambda s: s.capacity)
        else:
            segment = _Segment(self._prefix + str(next(self._ids)), _capacity(size))
            self._segments[segment.id] = segment
            self.created += 1
        segment.used_at = time.monotonic()
        return segment

    def hold(self, segment_id: str, holder: str) -> None:
        """``holder`` (a peer it is sent to) maps the segment now: it stays busy until that holder releases it."""
        with self._lock:
            segment = self._segments.get(segment_id)
            if segment is not None:
                segment.holders.add(holder)
                self._mapped_by.setdefault(segment_id, set()).add(holder)

    def owns(self, segment_id: str) -> bool:
        return segment_id in self._segments

    def release(self, segment_ids: Any, holder: str) -> None:
        """``holder`` let go of these segments (a peer's ``released`` frame, or a job that ended)."""
        with self._lock:
            for segment_id in segment_ids:
                segment = self._segments.get(segment_id)
                if segment is not None:
                    segment.holders.discard(holder)
            self._trim()

    def release_holder(self, holder: str) -> None:
        """``holder`` is gone (a worker process exited): it holds and maps nothing any more."""
        with self._lock:
            for segment in self._segments.values():
                segment.holders.discard(holder)
            for holders in self._mapped_by.values():
                holders.discard(holder)
            self._forgotten.pop(holder, None)
            self._trim()

    def forgotten(self, holder: str) -> list[str]:
        """Segments ``holder`` mapped that this pool has closed since: send it ``("forget", ids)``."""
        if not self._forgotten:
            return []
        with self._lock:
            return self._forgotten.pop(holder, [])

    def _trim(self) -> None:
        now = time.monotonic()
        free = sorted((s for s in self._segments.values() if not s.holders), key=lambda s: s.used_at, reverse=True)
        kept = 0
        for segment in free:
            kept += segment.capacity
            if kept > self.keep_bytes or now - segment.used_at > self.keep_seconds or self.closed:
                self._close(segment)

    def _close(self, segment: _Segment) -> None:
        del self._segments[segment.id]
        for holder in self._mapped_by.pop(segment.id, ()):
            self._forgotten.setdefault(holder, []).append(segment.id)
        segment.close()

    def close(self) -> None:
        """Close every segment (peers keep their mappings until they drop them; the memory goes with the last)."""
        with self._lock:
            self.closed = True
            for segment in list(self._segments.values()):
                self._close(segment)
            self._forgotten.clear()

    def __len__(self) -> int:
        return len(self._segments)


class _Mapped:
    __slots__ = ("mm",)

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm


def _map(path: str) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class PeerMaps:
    """The other side's segments, mapped here once and kept: views of them are handed out without a copy.

    ``collect()`` returns the segments nothing here refers to any more (no view left alive) since they were last
    handed out: the caller sends them back as ``("released", ids)``. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: dict[str, _Mapped] = {}
        self._lent: set[str] = set()  # handed out, not yet reported released

    def view(self, ref: ShmRef) -> memoryview:
        with self._lock:
            mapped = self._maps.get(ref.segment)
            if mapped is None:
                mapped = self._maps[ref.segment] = _Mapped(_map(ref.path))
            self._lent.add(ref.segment)
            return memoryview(mapped.mm)[: ref.size]

    def collect(self) -> list[str]:
        if not self._lent:
            return []
        with self._lock:
            # referenced only by its _Mapped and getrefcount's argument: every view of it is gone
            free = [sid for sid in self._lent if sys.getrefcount(self._maps[sid].mm) <= 2]
            self._lent.difference_update(free)
            return free

    def forget(self, segment_ids: Any) -> None:
        """The owner closed these segments: drop the mappings (a view still alive keeps its own until it goes)."""
        with self._lock:
            for segment_id in segment_ids:
                self._maps.pop(segment_id, None)
                self._lent.discard(segment_id)

    def clear(self) -> None:
        """The peer is gone: drop every mapping (views still alive keep theirs until they go)."""
        with self._lock:
            self._maps.clear()
            self._lent.clear()

    def __len__(self) -> int:
        return len(self._maps)


def import_shm(ref: ShmRef) -> memoryview:
    """Map one segment without keeping it (a receiver with no :class:`PeerMaps`)."""
    return memoryview(_map(ref.path))[: ref.size]
