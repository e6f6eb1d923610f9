"""Messages across Ray, on both sides: one pickled ``bytes`` per message, plus the payload's buffers out of band.

Ray serializes ``bytes`` on a fast path and anything else (a tuple, an attrs ``Payload``) through pickle, at a
cost of a few hundred microseconds per argument here; so a message travels as one ``bytes`` (the message with its
payload's pickle stream inside) and, only when the payload has large buffers, a list of ``PickleBuffer``s that
Ray moves out of band (through its object store when large). Buffers arrive read-only (mapped from the object
store) and become writable copies, so arrays decoded from them can be written to, as on every other backend.
"""

from __future__ import annotations

import pickle
from typing import Any

from gpuflex.backend import Payload

__all__ = ["Wire", "pack", "unpack"]

Wire = Any  # bytes, or (bytes, [PickleBuffer, ...]) when the payload has buffers
_PAYLOAD_AT = {"call": 3, "chunk": 2, "done": 3, "fatal": 1}


def pack(message: tuple[Any, ...]) -> Wire:
    """``message`` (a worker protocol message, possibly holding a ``Payload``) as what crosses Ray."""
    at = _PAYLOAD_AT.get(message[0], len(message))
    payload = message[at] if at < len(message) else None
    if not isinstance(payload, Payload):
        return pickle.dumps(message, protocol=5)
    flat = (*message[:at], payload.data, *message[at + 1:])
    meta = pickle.dumps(flat, protocol=5)
    if not payload.buffers:
        return meta
    return meta, [pickle.PickleBuffer(b) for b in payload.buffers]


def unpack(wire: Wire) -> tuple[Any, ...]:
    """The message ``pack`` made, its payload rebuilt (with writable buffers)."""
    buffers: list[Any]
    if isinstance(wire, bytes | bytearray):
        meta, buffers = wire, []
    else:
        meta, buffers = wire
    message: tuple[Any, ...] = pickle.loads(meta)
    at = _PAYLOAD_AT.get(message[0], len(message))
    if at >= len(message) or not isinstance(message[at], bytes | bytearray):
        return message
    own = tuple(bytearray(b) if memoryview(b).readonly else b for b in buffers)
    return (*message[:at], Payload(bytes(message[at]), own), *message[at + 1:])
