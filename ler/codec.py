"""Canonical msgpack: the one byte encoding of everything that is hashed or signed.

Rules (docs/PROTOCOL.md, "Encoding"):
- values are nil, bool, integers in [-2**63, 2**64), UTF-8 strings, byte strings (msgpack bin),
  arrays, and maps whose keys are strings;
- map keys appear in ascending order of their UTF-8 bytes, with no duplicates;
- every value uses msgpack's shortest form (which is what the reference packer emits);
- no floats, no extension types, no trailing bytes.

`decode` accepts exactly the bytes `encode` produces: it decodes, re-encodes, and refuses the input
if the two byte strings differ. That one comparison rejects every non-canonical form (unsorted keys,
long integer forms, str where bin is due, ...) without a hand-written checker per case.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ler.errors import DecodeError

#: Default ceiling for any one decoded message (a block, a batch). Callers pass smaller limits.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 32

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def _canonical(value: Any, depth: int = 0) -> Any:
    """Return `value` with maps rebuilt in sorted key order, checking every type on the way."""
    # Fast paths for the exact built-in types (what decoding yields and most callers build); anything
    # else (bool, None, subclasses, floats, ...) takes the general checks below.
    if depth > MAX_DEPTH:
        raise DecodeError("nesting deeper than %d levels" % MAX_DEPTH)
    t = type(value)
    if t is bytes or t is str:
        return value
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise DecodeError(f"integer {value} is outside the 64-bit range")
        return value
    if t is list or t is tuple:
        d = depth + 1
        if d > MAX_DEPTH:
            return [_canonical(v, d) for v in value]  # raises on the first item
        return [v if type(v) is bytes or type(v) is str else _canonical(v, d) for v in value]
    if t is dict:
        for k in value:
            if type(k) is not str or not k.isascii():
                break
        else:
            # ASCII keys (field names): their str order is the order of their UTF-8 bytes.
            d = depth + 1
            return {k: _canonical(value[k], d) for k in sorted(value)}
    return _canonical_general(value, depth)


def _canonical_general(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise DecodeError("nesting deeper than %d levels" % MAX_DEPTH)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise DecodeError(f"integer {value} is outside the 64-bit range")
        return value
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [_canonical(v, depth + 1) for v in value]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise DecodeError(f"map key {k!r} is not a string")
        ordered = sorted(value, key=lambda k: k.encode("utf-8"))
        return {k: _canonical(value[k], depth + 1) for k in ordered}
    if isinstance(value, float):
        raise DecodeError("floats are not allowed in canonical encoding")
    raise DecodeError(f"type {type(value).__name__} cannot be encoded")


def encode(value: Any) -> bytes:
    """Encode `value` canonically. Raises DecodeError for values outside the canonical model."""
    try:
        return msgpack.packb(_canonical(value), use_bin_type=True)
    except UnicodeEncodeError:
        # A str holding a lone surrogate (JSON's "\ud800" parses to one) has no UTF-8 form.
        raise DecodeError("a string is not valid Unicode (lone surrogate)") from None


def decode(data: bytes, max_size: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode canonical msgpack bytes; raise DecodeError saying what is wrong with anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("expected bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    if not data:
        raise DecodeError("empty message")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=refuse_ext,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the message") from None
    except UnicodeDecodeError:
        raise DecodeError("a string is not valid UTF-8") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed msgpack: {str(exc) or type(exc).__name__}") from None
    except RecursionError:
        raise DecodeError("nesting too deep") from None
    try:
        again = encode(value)
    except DecodeError as exc:
        raise DecodeError(f"not canonical: {exc}") from None
    if again != data:
        raise DecodeError("not canonical: re-encoding gives different bytes "
                          "(unsorted or duplicate map keys, or a non-shortest form)")
    return value


def refuse_ext(code: int, data: bytes) -> Any:
    """msgpack's ext_hook for canonical decoding: extension types are refused."""
    raise DecodeError(f"msgpack extension type {code} is not allowed")
