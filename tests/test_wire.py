"""Frames between a client and a worker: encode, parse in any chunking, shared memory, blocking pipes."""

from __future__ import annotations

import os
import pickle
import threading

import anyio
import numpy as np
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import given
from hypothesis import strategies as st

from gpuflex._envelope import decode_call, encode_call
from gpuflex.backend import Payload
from gpuflex.runtime._shm import SegmentPool
from gpuflex.runtime._wire import (
    SHM_MIN_BYTES,
    ShmRef,
    WireCodec,
    read_frame,
    read_frame_sync,
    shm_available,
    write_frame,
    write_frame_sync,
)
from gpuflex.workerpool._channel import FrameParser

needs_shm = pytest.mark.skipif(not shm_available(), reason="no memfd shared memory (Linux only)")


def _plain(value):
    """Messages compared by content: a payload's buffers may come back as bytes, bytearray or memoryview."""
    if isinstance(value, Payload):
        return ("Payload", value.data, [bytes(memoryview(b)) for b in value.buffers])
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _wire_bytes(parts) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in parts)


payloads = st.builds(
    Payload, st.binary(max_size=300), st.lists(st.binary(max_size=2000), max_size=3).map(tuple)
)
fields = st.none() | st.integers() | st.text(max_size=20) | st.booleans() | payloads | st.dictionaries(
    st.text(max_size=5), st.integers(), max_size=3
)
messages = st.tuples(st.sampled_from(["call", "done", "chunk", "ready", "stop"])).flatmap(
    lambda head: st.lists(fields, max_size=4).map(lambda rest: head + tuple(rest))
)


# -- encode -> FrameParser ---------------------------------------------------------------------------------------


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_parser_yields_the_encoded_messages_in_any_chunking(batch, data):
    codec = WireCodec()
    stream = b"".join(_wire_bytes(codec.encode(m)) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12)))
    parser = FrameParser()
    parsed = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        parsed.extend(parser.feed(stream[start:end]))
    assert [_plain(m) for m in parsed] == [_plain(m) for m in batch]
    assert parser.feed(b"") == []  # nothing left over
    assert codec.pool is None  # no shared memory unless asked for


@given(messages)
def test_parser_byte_by_byte(message):
    parser = FrameParser()
    out = []
    for byte in _wire_bytes(WireCodec().encode(message)):
        out.extend(parser.feed(bytes([byte])))
    assert [_plain(m) for m in out] == [_plain(message)]


def test_buffers_are_not_copied_into_the_meta_pickle():
    big = bytes(range(256)) * 1024
    parts = WireCodec().encode(("call", "j1", None, Payload(b"d", (big,))))
    length, meta, *raws = parts
    assert len(meta) < 1024
    assert raws == [big] and raws[0] is big


def test_a_real_call_survives_the_parser():
    array = np.arange(200_000, dtype=np.int64)
    message = ("call", "job-1", "method", encode_call("method", (array,), {"scale": 2}))
    (frame,) = FrameParser().feed(_wire_bytes(WireCodec().encode(message)))
    assert frame[:3] == ("call", "job-1", "method")
    method, (back,), kwargs = decode_call(frame[3])
    assert method == "method" and kwargs == {"scale": 2}
    np.testing.assert_array_equal(back, array)


def test_parsed_buffers_are_writable_like_the_other_paths():
    array = np.zeros(100_000, dtype=np.uint8)  # out of band, below the shared-memory threshold
    (frame,) = FrameParser().feed(_wire_bytes(WireCodec().encode(("call", "j", None, encode_call(None, (array,), {})))))
    _, (back,), _ = decode_call(frame[3])
    back += 1  # a function that updates its argument in place, as it may when called locally
    assert back.sum() == 100_000


# -- shared memory -----------------------------------------------------------------------------------------------


def _pair(**pool_options):
    """A sender and a receiver of shared-memory frames, as a client and its worker hold them."""
    sender = WireCodec(use_shm=True, pool=SegmentPool(**pool_options))
    receiver = WireCodec(use_shm=True)
    return sender, receiver, FrameParser(codec=receiver)


@needs_shm
def test_large_buffers_travel_through_shared_memory_with_no_file_in_dev_shm():
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    big = np.random.default_rng(1).integers(0, 255, SHM_MIN_BYTES + 123, dtype=np.uint8)
    small = b"s" * 1000
    sender, receiver, parser = _pair()
    parts = sender.encode(("chunk", "job", Payload(b"data", (pickle.PickleBuffer(big), small))))
    assert len(parts) == 3  # length, meta, and only the small buffer inline
    assert sum(len(memoryview(p).cast("B")) for p in parts) < big.nbytes
    (frame,) = parser.feed(_wire_bytes(parts))
    (ref,) = [r for r in pickle.loads(parts[1])[0][2][2] if isinstance(r, ShmRef)]
    assert ref.size == big.nbytes and ref.path.startswith(f"/proc/{os.getpid()}/fd/")
    payload = frame[2]
    assert bytes(payload.buffers[0]) == big.tobytes()
    assert bytes(payload.buffers[1]) == small
    assert payload.data == b"data"
    if os.path.isdir("/dev/shm"):
        assert not {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("gpuflex")}


@needs_shm
def test_shared_memory_arrays_round_trip_writable_and_the_callers_array_untouched():
    array = np.arange(SHM_MIN_BYTES // 8 * 2, dtype=np.float64)
    sender, receiver, parser = _pair()
    (frame,) = parser.feed(_wire_bytes(sender.encode(("call", "j", None, encode_call(None, (array,), {})))))
    _, (back,), _ = decode_call(frame[3])
    np.testing.assert_array_equal(back, array)
    back[0] = -1.0  # the receiver may update its argument in place; the segment is a copy of the sender's array
    assert back[0] == -1.0 and array[0] == 0.0


@needs_shm
def test_buffers_below_the_threshold_stay_in_the_pipe():
    sender, _, _ = _pair()
    parts = sender.encode(("chunk", "job", Payload(b"", (b"x" * (SHM_MIN_BYTES - 1),))))
    assert sender.pool is not None and len(sender.pool) == 0
    assert len(parts) == 3


def _send(sender, parser, array):
    (frame,) = parser.feed(_wire_bytes(sender.encode(("call", "j", None, encode_call(None, (array,), {})))))
    return decode_call(frame[3])[1][0]


@needs_shm
def test_a_segment_is_reused_once_the_receiver_released_it():
    array = np.arange(SHM_MIN_BYTES // 8 * 3, dtype=np.float64)
    sender, receiver, parser = _pair()
    back = _send(sender, parser, array)
    assert receiver.control() == []  # a view of the segment is alive here: it stays busy
    kept = _send(sender, parser, array + 1)  # so the next buffer goes to a second segment
    assert sender.pool.created == 2
    del back
    (released,) = receiver.control()
    assert released[0] == "released" and len(released[1]) == 1
    assert receiver.control() == []  # said once
    assert sender.on_control(released)
    for i in range(3):  # the released segment is reused, its pages mapped on both sides already
        back = _send(sender, parser, array * i)
        np.testing.assert_array_equal(back, array * i)
        del back
        for message in receiver.control():
            sender.on_control(message)
    np.testing.assert_array_equal(kept, array + 1)  # the segment still in use was never written over
    assert sender.pool.created == 2 and len(receiver.maps) == 2


@needs_shm
def test_closed_segments_are_forgotten_by_the_receiver():
    sender, receiver, parser = _pair(keep_bytes=0)  # keep no free segment: close each once released
    back = _send(sender, parser, np.ones(SHM_MIN_BYTES // 8))
    del back
    for message in receiver.control():
        sender.on_control(message)
    assert len(sender.pool) == 0
    (forget,) = sender.control()
    assert forget[0] == "forget"
    receiver.on_control(forget)
    assert len(receiver.maps) == 0


@needs_shm
def test_a_view_outlives_its_segment_being_closed():
    sender, receiver, parser = _pair()
    array = np.arange(SHM_MIN_BYTES // 8, dtype=np.float64)
    back = _send(sender, parser, array)
    sender.pool.close()  # the sender went away: the receiver's mapping keeps the memory until its last view goes
    receiver.on_control(("forget", [r for r in list(receiver.maps._maps)]))
    np.testing.assert_array_equal(back, array)


# -- blocking pipes (the worker side) -------------------------------------------------------------------------


def _through_pipe(batch, codec):
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as inp, os.fdopen(write_fd, "wb") as out:

        def writer():
            try:
                for message in batch:
                    write_frame_sync(out, codec.encode(message))
            finally:
                out.close()  # EOF for the reader

        thread = threading.Thread(target=writer)  # a frame may be larger than the pipe's buffer
        thread.start()
        got = []
        while (frame := read_frame_sync(inp)) is not None:
            got.append(frame)
        thread.join(timeout=30)
    return got


@given(st.lists(messages, max_size=4))
def test_sync_frames_round_trip_through_a_pipe(batch):
    assert [_plain(m) for m in _through_pipe(batch, WireCodec())] == [_plain(m) for m in batch]


def test_sync_frames_carry_large_buffers():
    blob = os.urandom(3 * (1 << 16) + 7)  # several pipe buffers' worth
    (frame,) = _through_pipe([("done", "j", "ok", Payload(b"d", (blob, b"")))], WireCodec())
    assert frame[3].data == b"d"
    assert [bytes(b) for b in frame[3].buffers] == [blob, b""]


@needs_shm
def test_sync_frames_with_shared_memory():
    blob = os.urandom(SHM_MIN_BYTES)
    codec = WireCodec(use_shm=True)
    (frame,) = _through_pipe([("done", "j", "ok", Payload(b"d", (blob,)))], codec)
    assert bytes(frame[3].buffers[0]) == blob


def test_truncated_frame_reads_as_end_of_stream():
    parts = WireCodec().encode(("done", "j", "ok", Payload(b"d", (b"x" * 5000,))))
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as inp:
        with os.fdopen(write_fd, "wb") as out:
            out.write(_wire_bytes(parts)[:-100])
        assert read_frame_sync(inp) is None


def test_empty_stream_is_end_of_stream():
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        assert read_frame_sync(inp) is None


# -- anyio streams (the client side) --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 2 << 20])  # joined into one send, and sent part by part
def test_async_frames_round_trip(size):
    message = ("done", "j", "ok", Payload(b"meta", (os.urandom(size),)))

    async def main():
        send, receive = anyio.create_memory_object_stream[bytes](100)
        async with send, receive:
            await write_frame(send, WireCodec().encode(message))
            return await read_frame(BufferedByteReceiveStream(receive))

    assert _plain(anyio.run(main)) == _plain(message)
