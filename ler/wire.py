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
import struct
import threading
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
        enc = _encoders.get(type(self)) or _encoder(type(self))
        return packb(enc(self))

    @classmethod
    def decode(cls, data: bytes, max_size: int = codec.MAX_MESSAGE_BYTES) -> Self:
        # Fast path: unpack, parse typed, and require that the typed object re-encodes to exactly `data`.
        # An object that passes the typed parse holds only canonical types, so its encoding is the
        # canonical encoding of the unpacked value: this accepts exactly what codec.decode + from_obj
        # accept, with the same result. Anything else takes that checked path, which names the problem.
        if type(data) is bytes and 0 < len(data) <= max_size:
            try:
                value = _unpackb(data, raw=False, use_list=True, strict_map_key=True, ext_hook=codec.refuse_ext)
                obj = _fast_parser(cls, "")(value)
            except Exception:  # any failure: the checked path decides and explains
                pass
            else:
                enc = _encoders.get(cls) or _encoder(cls)
                if packb(enc(obj)) == data:
                    return obj
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


def _sorted_obj(v: Any) -> Any:
    if isinstance(v, Wire):
        return (_encoders.get(type(v)) or _encoder(type(v)))(v)
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
    if not isinstance(v, str) or len(v) % 4 == 1 or not v.isascii():
        raise DecodeError(f"{where}: expected unpadded base64url")
    try:
        raw = _a2b(v.encode("ascii").translate(_URLSAFE_STRICT) + _PAD[len(v) % 4], strict_mode=True)
    except binascii.Error:  # a character outside the alphabet
        raise DecodeError(f"{where}: expected unpadded base64url") from None
    if not _b64_canonical_end(v):
        raise DecodeError(f"{where}: base64url is not in canonical form")
    if size is not None and len(raw) != size:
        raise DecodeError(f"{where}: expected {size} bytes, got {len(raw)}")
    return raw


_Parser = Callable[[Any, str], Any]
_compiled: dict[tuple[type, str], list[tuple[str, _Parser]]] = {}


def _from(cls: type, obj: Any, where: str, json_mode: str) -> Any:
    # The compiled fast parser accepts exactly the well-formed objects (a subset of what the checked
    # parser accepts, with the same result); whenever it declines, the checked parser below decides
    # and names the field at fault. Bad input costs two passes, good input one without any bookkeeping.
    fast = _fast.get((cls, json_mode)) or _fast_parser(cls, json_mode)
    try:
        return fast(obj)
    except _FALLBACK:
        pass
    return _from_checked(cls, obj, where, json_mode)


def _from_checked(cls: type, obj: Any, where: str, json_mode: str) -> Any:
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
            return _from_checked(tp, v, where, json_mode)
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


# --- compiled fast paths ---------------------------------------------------------------------------
#
# For each wire class (and JSON mode) a parser and an encoder are generated once, as Python source,
# from the field declarations. The parser does the checks of `_compile`'s parsers for exactly-typed
# values (what json.loads and msgpack produce) without building a location string per field; it raises
# `_Slow` (or lets a DecodeError/ValueError/TypeError/KeyError through) for anything else, and the
# caller then runs the checked parser, which accepts or rejects that input on its own and names the
# problem. So the fast parser never accepts what the checked one refuses, nor builds a different value.

class _Slow(Exception):
    """The fast parser declines this input: the checked parser decides."""


_FALLBACK = (_Slow, DecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError)
_fast: dict[tuple[type, str], Callable[[Any], Any]] = {}
_encoders: dict[type, Callable[[Any], dict[str, Any]]] = {}
_tls = threading.local()


def packb(value: Any) -> bytes:
    """msgpack.packb(value, use_bin_type=True), by a packer kept per thread (building one per call, as
    msgpack.packb does, costs more than packing a small message). No canonical checks: see codec.encode."""
    try:
        packer = _tls.packer
    except AttributeError:
        packer = _tls.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(value)


_unpackb = msgpack.unpackb
_a2b = binascii.a2b_base64

# base64url to the standard alphabet, for a strict decoder: "+", "/" and "=" are not base64url characters,
# so they become "!", which the strict decoder refuses like any other character outside its alphabet.
_URLSAFE_STRICT = bytes.maketrans(b"-_+/=", b"+/!!!")
_LEN_43 = {43}
_units: dict[int, Callable[[bytes], tuple[Any, ...]]] = {}


def b64url_hashes(v: list[Any]) -> tuple[bytes, ...]:
    """Decode a list of canonical unpadded base64url 32-byte values in one pass; `_Slow` unless every
    item is one (then the caller's item-by-item path decides, and explains)."""
    n = len(v)
    if not n:
        return ()
    # Every item a string of 43 characters, each followed by an "A" (six zero bits): n units of 44
    # characters, 33 bytes each once decoded. Decoded strictly after mapping base64url to the standard
    # alphabet (a character outside base64url fails); the 33rd byte of a unit holds its string's two unused
    # bits, which must be zero (canonical form). C-speed operations throughout, no regex, no loop.
    try:
        if set(map(len, v)) != _LEN_43:
            raise _Slow
        raw = _a2b(("A".join(v) + "A").encode("ascii").translate(_URLSAFE_STRICT), strict_mode=True)
    except (TypeError, UnicodeEncodeError, binascii.Error):
        raise _Slow from None
    if raw[32::33] != bytes(n):
        raise _Slow
    unpack = _units.get(n)
    if unpack is None:
        unpack = _units[n] = struct.Struct("32sx" * n).unpack
    return unpack(raw)


def _fast_b64(v: Any) -> bytes:
    """b64url_bytes without a location (any size); `_Slow` for anything it would refuse."""
    if type(v) is not str or len(v) % 4 == 1 or not v.isascii() or not _b64_canonical_end(v):
        raise _Slow
    try:
        return _a2b(v.encode("ascii").translate(_URLSAFE_STRICT) + _PAD[len(v) % 4], strict_mode=True)
    except binascii.Error:
        raise _Slow from None


_PAD = (b"", b"", b"==", b"=")
# The characters whose value has the low 4 (resp. 2) bits clear: the only ones that can end the canonical
# encoding of a length that leaves 4 (resp. 2) unused bits, i.e. a text length of 2 (resp. 3) modulo 4.
_END_4_CLEAR = frozenset("AQgw")
_END_2_CLEAR = frozenset("AEIMQUYcgkosw048")


def _b64_canonical_end(v: str) -> bool:
    """Whether base64url text (alphabet already checked, length not 1 modulo 4) has its unused low bits
    zero, i.e. is the one encoding of the bytes it decodes to (re-encoding them gives it back)."""
    r = len(v) % 4
    return r == 0 or v[-1] in (_END_4_CLEAR if r == 2 else _END_2_CLEAR)


def _fast_hex(v: Any) -> bytes:
    if type(v) is not str or len(v) % 2 or not _HEX.fullmatch(v):
        raise _Slow
    return bytes.fromhex(v)


def _fast_parser(cls: type, json_mode: str) -> Callable[[Any], Any]:
    parser = _fast.get((cls, json_mode))
    if parser is None:
        parser = _fast[(cls, json_mode)] = _generate_parser(cls, json_mode)
    return parser


class _Gen:
    """Source of one generated function: lines, and the names it refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {"_Slow": _Slow}
        self.n = 0

    def const(self, value: Any) -> str:
        self.n += 1
        name = f"_c{self.n}"
        self.ns[name] = value
        return name

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"


def _generate_parser(cls: type, json_mode: str) -> Callable[[Any], Any]:
    fields = _fields(cls)
    g = _Gen()
    out = g.lines
    out.append("def parse(obj):")
    out.append(f"    if type(obj) is not dict or len(obj) != {len(fields)}:")
    out.append("        raise _Slow")
    names: list[str] = []
    # In base64url mode the hashes of an object are decoded in one pass: its required 32-byte fields and
    # the items of its lists of bytes (which are usually hashes, but need not be).
    hashes: list[str] = []
    lists: list[str] = []
    for name, tp, meta in fields:
        v = g.var()
        names.append(v)
        out.append(f"    {v} = obj[{name!r}]")
        if json_mode == "b64" and tp is bytes and meta.get("size") == 32 and meta.get("max", DEFAULT_MAX_BYTES) >= 32:
            hashes.append(v)
            continue
        if json_mode == "b64" and typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is bytes:
            out.append(f"    if type({v}) is not list or len({v}) > {meta.get('max', DEFAULT_MAX_ITEMS)}:")
            out.append("        raise _Slow")
            lists.append(v)
            continue
        _gen_value(g, v, tp, meta, json_mode, "    ")
    if hashes or lists:
        bulk = g.const(b64url_hashes)
        joined = " + ".join([f"[{', '.join(hashes)}]"] * bool(hashes) + lists)
        targets = "".join(f"{h}, " for h in hashes)
        out.append("    try:")
        out.append(f"        _all = {bulk}({joined})")
        out.append("    except _Slow:")
        if hashes:
            out.append(f"        {targets}= {bulk}([{', '.join(hashes)}])")
        for v in lists:
            _gen_bytes_list(g, v, "        ")
        if not lists:
            out.append("        pass")
        out.append("    else:")
        if hashes:
            out.append(f"        {targets}= _all[:{len(hashes)}]")
        out.append(f"        _at = {len(hashes)}")
        for v in lists:
            out.append(f"        {v} = _all[_at:_at + len({v})]")
            out.append(f"        _at += len({v})")
    params = list(dataclasses.fields(cls))
    if all(f.init and not f.kw_only for f in params) and [f.name for f in params] == [n for n, _, _ in fields]:
        args = ", ".join(names)
    else:
        args = ", ".join(f"{n}={v}" for (n, _, _), v in zip(fields, names, strict=True))
    out.append(f"    return {g.const(cls)}({args})")
    exec("\n".join(out), g.ns)  # source generated above from the class's own declarations
    return g.ns["parse"]


def _gen_value(g: _Gen, v: str, tp: Any, meta: Any, json_mode: str, ind: str) -> None:
    """Lines that check (and convert, in place) the value in variable `v` of declared type `tp`."""
    out = g.lines
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        out.append(f"{ind}if {v} is not None:")
        _gen_value(g, v, inner, meta, json_mode, ind + "    ")
        return
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        mx = meta.get("max", DEFAULT_MAX_ITEMS)
        out.append(f"{ind}if type({v}) is not list or len({v}) > {mx}:")
        out.append(f"{ind}    raise _Slow")
        if item_tp is bytes and json_mode == "b64":
            _gen_bytes_list(g, v, ind)
            return
        if isinstance(item_tp, type) and issubclass(item_tp, Wire):
            out.append(f"{ind}{v} = tuple([{g.const(_fast_parser(item_tp, json_mode))}(x) for x in {v}])")
            return
        if item_tp is str or (item_tp is bytes and json_mode == ""):
            most = DEFAULT_MAX_STR if item_tp is str else DEFAULT_MAX_BYTES
            out.append(f"{ind}for x in {v}:")
            out.append(f"{ind}    if type(x) is not {item_tp.__name__} or len(x) > {most}:")
            out.append(f"{ind}        raise _Slow")
            out.append(f"{ind}{v} = tuple({v})")
            return
        # Anything else: the checked item parser (a DecodeError sends the whole input to the checked path).
        item = g.const(_compile(item_tp, {}, json_mode))
        out.append(f"{ind}{v} = tuple([{item}(x, '') for x in {v}])")
        return
    if isinstance(tp, type) and issubclass(tp, Wire):
        out.append(f"{ind}{v} = {g.const(_fast_parser(tp, json_mode))}({v})")
        return
    if tp is bool:
        out.append(f"{ind}if {v} is not True and {v} is not False:")
        out.append(f"{ind}    raise _Slow")
        return
    if tp is int:
        lo, hi = meta.get("lo", 0), meta.get("hi", _U64)
        out.append(f"{ind}if type({v}) is not int or not {lo} <= {v} <= {hi}:")
        out.append(f"{ind}    raise _Slow")
        return
    if tp is str:
        out.append(f"{ind}if type({v}) is not str or len({v}) > {meta.get('max', DEFAULT_MAX_STR)}:")
        out.append(f"{ind}    raise _Slow")
        return
    if tp is bytes:
        size = meta.get("size")
        mx = meta.get("max", DEFAULT_MAX_BYTES)
        if json_mode == "b64":
            out.append(f"{ind}{v} = {g.const(_fast_b64)}({v})")
        elif json_mode == "hex":
            out.append(f"{ind}{v} = {g.const(_fast_hex)}({v})")
        else:
            out.append(f"{ind}if type({v}) is not bytes:")
            out.append(f"{ind}    raise _Slow")
        cond = f"len({v}) > {mx}" if size is None else f"len({v}) != {size} or {size} > {mx}"
        out.append(f"{ind}if {cond}:")
        out.append(f"{ind}    raise _Slow")
        return
    raise TypeError(f"unsupported wire type {tp!r}")  # a programming error, not input


def _gen_bytes_list(g: _Gen, v: str, ind: str) -> None:
    """Lines decoding the base64url items (of any length) of the list in `v`, already checked a list."""
    out = g.lines
    out.append(f"{ind}try:")
    out.append(f"{ind}    {v} = {g.const(b64url_hashes)}({v})")
    out.append(f"{ind}except _Slow:")
    out.append(f"{ind}    {v} = tuple([{g.const(_fast_b64)}(x) for x in {v}])")
    out.append(f"{ind}    if any(len(x) > {DEFAULT_MAX_BYTES} for x in {v}):")
    out.append(f"{ind}        raise _Slow")


def _encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """The generated function giving a wire object's canonical msgpack map (field names sorted)."""
    enc = _encoders.get(cls)
    if enc is not None:
        return enc
    g = _Gen()
    g.lines.append("def enc(self):")
    g.lines.append(f"    return {_map_source(g, cls, 'self.')}")
    exec("\n".join(g.lines), g.ns)  # source generated above from the class's own declarations
    enc = _encoders[cls] = g.ns["enc"]
    return enc


def _map_source(g: _Gen, cls: type, prefix: str) -> str:
    """Source of a dict literal: the canonical map of `cls`'s fields, each read from `prefix` + its name."""
    g.ns["_sorted_obj"] = _sorted_obj
    items = [f"{name!r}: {_gen_encode(g, prefix + name, tp)}"
             for name, tp, _ in sorted(_fields(cls), key=lambda f: f[0].encode("utf-8"))]
    return "{" + ", ".join(items) + "}"


def field_encoder(cls: type) -> Callable[..., bytes]:
    """A function taking a wire class's fields by keyword and giving the encoding of the object they
    would make, `cls(**fields).encode()`, without making it (for a value built only to be stored)."""
    fn = _field_encoders.get(cls)
    if fn is not None:
        return fn
    g = _Gen()
    g.ns["_packb"] = packb
    g.lines.append(f"def encode_fields(*, {', '.join(name for name, _, _ in _fields(cls))}):")
    g.lines.append(f"    return _packb({_map_source(g, cls, '')})")
    exec("\n".join(g.lines), g.ns)  # source generated above from the class's own declarations
    fn = _field_encoders[cls] = g.ns["encode_fields"]
    return fn


_field_encoders: dict[type, Callable[..., bytes]] = {}


def _gen_encode(g: _Gen, expr: str, tp: Any) -> str:
    """An expression for the canonical msgpack form of `expr`, a field declared as `tp`."""
    if tp in (int, str, bytes, bool):
        return expr
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, str, bytes, bool):
            return expr
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if item in (int, str, bytes, bool):
            return expr  # msgpack packs a tuple as an array
        if isinstance(item, type) and issubclass(item, Wire):
            return f"[{g.const(_encoder(item))}(x) for x in {expr}]"
    if isinstance(tp, type) and issubclass(tp, Wire):
        return f"{g.const(_encoder(tp))}({expr})"
    # Anything else (optional wire objects, ...): the generic walk, which follows the value.
    return f"_sorted_obj({expr})"
