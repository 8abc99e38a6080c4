"""Typed wire objects: frozen dataclasses that convert, strictly, to and from canonical msgpack and JSON.

A wire class declares its fields with types (int, str, bytes, bool, `X | None`, `tuple[X, ...]`, another
wire class) and optional limits in the field metadata (`size` for exact byte length, `max` for the
largest length of a str, bytes or tuple, `lo`/`hi` for integers). Decoding refuses unknown fields,
missing fields, wrong types and values out of bounds, naming the field. On the wire a map's keys are the
field names. In JSON, bytes are lowercase hex (or unpadded base64url where a document says so); everything else
is as in msgpack.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Self

import msgpack

from ler import codec
from ler.errors import DecodeError

DEFAULT_MAX_STR = 1024
DEFAULT_MAX_BYTES = 1024
DEFAULT_MAX_ITEMS = 1024
_U64 = 2**64 - 1
_HEX = re.compile(r"[0-9a-f]*")
_B64 = re.compile(r"[A-Za-z0-9_-]*")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b32(**kw: Any) -> Any:
    """A 32-byte field (hashes, public keys)."""
    return dataclasses.field(metadata={"size": 32}, **kw)


def b64(**kw: Any) -> Any:
    """A 64-byte field (signatures)."""
    return dataclasses.field(metadata={"size": 64}, **kw)


def limit(**meta: Any) -> Any:
    """A field with explicit limits, e.g. `limit(max=200)` or `limit(lo=0, hi=100)`."""
    default = meta.pop("default", dataclasses.MISSING)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(metadata=meta, default=default)


def hex_bytes(v: Any, size: int | None, where: str) -> bytes:
    """Parse lowercase hex of whole bytes (of exactly `size` bytes, if given); DecodeError otherwise."""
    if not isinstance(v, str) or len(v) % 2 or not _HEX.fullmatch(v):
        raise DecodeError(f"{where}: expected lowercase hex")
    raw = bytes.fromhex(v)
    if size is not None and len(raw) != size:
        raise DecodeError(f"{where}: expected {size} bytes, got {len(raw)}")
    return raw


class Wire:
    """Mixin for wire dataclasses. Subclasses must be `@dataclass(frozen=True, slots=True)`."""

    __slots__ = ()
    _hints_cache: ClassVar[dict[type, list[tuple[str, Any, Any]]]] = {}

    # --- msgpack ---------------------------------------------------------------------------------
    def to_obj(self) -> dict[str, Any]:
        return {name: _to_obj(getattr(self, name)) for name, _, _ in _fields(type(self))}

    @classmethod
    def from_obj(cls, obj: Any, where: str = "") -> Self:
        return _from(cls, obj, where or cls.__name__, json_mode="")

    def encode(self) -> bytes:
        # Wire objects hold only canonical types, so the generic checker is skipped: maps are built
        # with their (ASCII) field names already sorted, which is all canonical order needs.
        return msgpack.packb(_sorted_obj(self), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes, max_size: int = codec.MAX_MESSAGE_BYTES) -> Self:
        return cls.from_obj(codec.decode(data, max_size))

    # --- JSON ------------------------------------------------------------------------------------
    # Bytes are lowercase hex by default; `b64=True` uses unpadded base64url instead (proof bundles,
    # where size matters). A reader must be told which, as each document type fixes one.
    def to_json(self, b64: bool = False) -> dict[str, Any]:
        return {name: _to_json(getattr(self, name), b64) for name, _, _ in _fields(type(self))}

    @classmethod
    def from_json(cls, obj: Any, where: str = "", b64: bool = False) -> Self:
        return _from(cls, obj, where or cls.__name__, json_mode="b64" if b64 else "hex")


def _fields(cls: type) -> list[tuple[str, Any, Any]]:
    cached = Wire._hints_cache.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = [(f.name, hints[f.name], f.metadata) for f in dataclasses.fields(cls)]
        Wire._hints_cache[cls] = cached
    return cached


_sorted_names: dict[type, list[str]] = {}


def _sorted_obj(v: Any) -> Any:
    if isinstance(v, Wire):
        cls = type(v)
        names = _sorted_names.get(cls)
        if names is None:
            names = _sorted_names[cls] = sorted(n for n, _, _ in _fields(cls))
        return {n: _sorted_obj(getattr(v, n)) for n in names}
    if isinstance(v, tuple):
        return [_sorted_obj(x) for x in v]
    return v


def _to_obj(v: Any) -> Any:
    if isinstance(v, Wire):
        return v.to_obj()
    if isinstance(v, tuple):
        return [_to_obj(x) for x in v]
    return v


def _to_json(v: Any, b64: bool) -> Any:
    if isinstance(v, Wire):
        return v.to_json(b64)
    if isinstance(v, tuple):
        return [_to_json(x, b64) for x in v]
    if isinstance(v, bytes):
        return b64url(v) if b64 else v.hex()
    return v


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_bytes(v: Any, size: int | None, where: str) -> bytes:
    """Parse canonical unpadded base64url (of exactly `size` bytes, if given); DecodeError otherwise."""
    if not isinstance(v, str) or len(v) % 4 == 1 or not _B64.fullmatch(v):
        raise DecodeError(f"{where}: expected unpadded base64url")
    text = v.encode("ascii")
    raw = binascii.a2b_base64(text.translate(_FROM_URLSAFE) + b"=" * (-len(text) % 4))
    if binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != text:
        raise DecodeError(f"{where}: base64url is not in canonical form")
    if size is not None and len(raw) != size:
        raise DecodeError(f"{where}: expected {size} bytes, got {len(raw)}")
    return raw


_Parser = Callable[[Any, str], Any]
_compiled: dict[tuple[type, str], list[tuple[str, _Parser]]] = {}


def _from(cls: type, obj: Any, where: str, json_mode: str) -> Any:
    if not isinstance(obj, dict):
        raise DecodeError(f"{where}: expected a map, got {_kind(obj)}")
    parsers = _compiled.get((cls, json_mode))
    if parsers is None:
        parsers = [(name, _compile(tp, meta, json_mode)) for name, tp, meta in _fields(cls)]
        _compiled[(cls, json_mode)] = parsers
    if len(obj) != len(parsers) or any(name not in obj for name, _ in parsers):
        names = {n for n, _ in parsers}
        unknown = [k for k in obj if k not in names]
        if unknown:
            raise DecodeError(f"{where}: unknown field {sorted(map(str, unknown))[0]!r}")
        missing = [n for n, _ in parsers if n not in obj]
        raise DecodeError(f"{where}: missing field {missing[0]!r}")
    values = {name: parse(obj[name], f"{where}.{name}") for name, parse in parsers}
    try:
        return cls(**values)
    except DecodeError:
        raise
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"{where}: {exc}") from None


def _compile(tp: Any, meta: Any, json_mode: str) -> _Parser:
    """A parser for one field type: checks the value and converts it (hex/base64url in JSON modes)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = _compile(next(a for a in typing.get_args(tp) if a is not type(None)), meta, json_mode)

        def optional(v: Any, where: str) -> Any:
            return None if v is None else inner(v, where)
        return optional
    if origin is tuple:
        item = _compile(typing.get_args(tp)[0], {}, json_mode)
        mx = meta.get("max", DEFAULT_MAX_ITEMS)

        def array(v: Any, where: str) -> Any:
            if not isinstance(v, list):
                raise DecodeError(f"{where}: expected an array, got {_kind(v)}")
            if len(v) > mx:
                raise DecodeError(f"{where}: more than {mx} items")
            return tuple([item(x, f"{where}[{i}]") for i, x in enumerate(v)])
        return array
    if isinstance(tp, type) and issubclass(tp, Wire):
        def nested(v: Any, where: str) -> Any:
            return _from(tp, v, where, json_mode)
        return nested
    if tp is bool:
        def boolean(v: Any, where: str) -> Any:
            if not isinstance(v, bool):
                raise DecodeError(f"{where}: expected true or false, got {_kind(v)}")
            return v
        return boolean
    if tp is int:
        lo, hi = meta.get("lo", 0), meta.get("hi", _U64)

        def integer(v: Any, where: str) -> Any:
            if type(v) is not int:
                raise DecodeError(f"{where}: expected an integer, got {_kind(v)}")
            if not lo <= v <= hi:
                raise DecodeError(f"{where}: {v} is outside [{lo}, {hi}]")
            return v
        return integer
    if tp is str:
        mx = meta.get("max", DEFAULT_MAX_STR)

        def string(v: Any, where: str) -> Any:
            if not isinstance(v, str):
                raise DecodeError(f"{where}: expected a string, got {_kind(v)}")
            if len(v) > mx:
                raise DecodeError(f"{where}: longer than {mx} characters")
            return v
        return string
    if tp is bytes:
        size = meta.get("size")
        mx = meta.get("max", DEFAULT_MAX_BYTES)

        def raw_bytes(v: Any, where: str) -> Any:
            if json_mode == "hex":
                v = hex_bytes(v, None, where)
            elif json_mode == "b64":
                v = b64url_bytes(v, None, where)
            elif not isinstance(v, bytes):
                raise DecodeError(f"{where}: expected bytes, got {_kind(v)}")
            if size is not None and len(v) != size:
                raise DecodeError(f"{where}: expected {size} bytes, got {len(v)}")
            if len(v) > mx:
                raise DecodeError(f"{where}: longer than {mx} bytes")
            return v
        return raw_bytes
    raise TypeError(f"unsupported wire type {tp!r}")  # a programming error, not input


def _kind(v: Any) -> str:
    if v is None:
        return "nil"
    return {dict: "a map", list: "an array", str: "a string", bytes: "bytes", bool: "a boolean",
            int: "an integer", float: "a float"}.get(type(v), type(v).__name__)
