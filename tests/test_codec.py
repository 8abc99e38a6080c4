"""Canonical msgpack (ler.codec) and the typed wire objects built on it (ler.wire).

The codec's contract: `decode` accepts exactly the bytes `encode` produces, and refuses everything else with
DecodeError (never another exception). Wire objects refuse unknown, missing, mistyped and out-of-bounds fields,
and in JSON accept only one spelling of a byte string.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler import codec
from ler.errors import DecodeError
from ler.wire import Wire, b32, b64url, b64url_bytes, hex_bytes, limit

INT_MIN, INT_MAX = -(2**63), 2**64 - 1

ints = st.integers(min_value=INT_MIN, max_value=INT_MAX)
scalars = st.none() | st.booleans() | ints | st.text(max_size=40) | st.binary(max_size=40)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (True == 1 and b"" == "" must not pass for one another)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def reordered(value: Any, rnd: Any) -> Any:
    """The same value with every map rebuilt in a random insertion order."""
    if isinstance(value, list):
        return [reordered(v, rnd) for v in value]
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: reordered(v, rnd) for k, v in items}
    return value


def pairs_in_order(data: bytes) -> Any:
    """Decode with the reference unpacker, keeping every map's key order as encoded."""
    return msgpack.unpackb(data, raw=False, object_pairs_hook=list, strict_map_key=False)


def keys_sorted_everywhere(obj: Any) -> bool:
    if isinstance(obj, list) and obj and all(isinstance(p, tuple) for p in obj):  # a map's pairs
        ks = [k.encode("utf-8") for k, _ in obj]
        return ks == sorted(ks) and len(set(ks)) == len(ks) and all(keys_sorted_everywhere(v) for _, v in obj)
    if isinstance(obj, list):
        return all(keys_sorted_everywhere(v) for v in obj)
    return True


def refuses(data: bytes, **kw: Any) -> str:
    """Decode must raise DecodeError (and nothing else); return its reason."""
    with pytest.raises(DecodeError) as info:
        codec.decode(data, **kw)
    return info.value.reason


# --- round trips ---------------------------------------------------------------------------------------

@given(values)
def test_round_trip(value: Any) -> None:
    data = codec.encode(value)
    back = codec.decode(data)
    assert same(back, value)
    assert codec.encode(back) == data


@given(values, st.randoms(use_true_random=False))
def test_encoding_ignores_insertion_order(value: Any, rnd: Any) -> None:
    assert codec.encode(reordered(value, rnd)) == codec.encode(value)


@given(values)
def test_map_keys_are_written_sorted_by_utf8(value: Any) -> None:
    assert keys_sorted_everywhere(pairs_in_order(codec.encode(value)))


@given(st.dictionaries(st.text(max_size=6), st.integers(0, 3), min_size=2, max_size=8))
def test_map_key_order_is_utf8_byte_order(value: dict[str, int]) -> None:
    pairs = pairs_in_order(codec.encode(value))
    assert [k for k, _ in pairs] == sorted(value, key=lambda k: k.encode("utf-8"))


def test_tuple_and_bytearray_encode_like_list_and_bytes() -> None:
    assert codec.encode((1, b"x")) == codec.encode([1, b"x"])
    assert codec.encode(bytearray(b"ab")) == codec.encode(b"ab") == codec.encode(memoryview(b"ab"))


@pytest.mark.parametrize(("value", "data"), [
    (None, b"\xc0"), (False, b"\xc2"), (True, b"\xc3"),
    (0, b"\x00"), (127, b"\x7f"), (128, b"\xcc\x80"), (255, b"\xcc\xff"), (256, b"\xcd\x01\x00"),
    (65535, b"\xcd\xff\xff"), (65536, b"\xce\x00\x01\x00\x00"), (2**32, b"\xcf\x00\x00\x00\x01\x00\x00\x00\x00"),
    (INT_MAX, b"\xcf" + b"\xff" * 8),
    (-1, b"\xff"), (-32, b"\xe0"), (-33, b"\xd0\xdf"), (-128, b"\xd0\x80"), (-129, b"\xd1\xff\x7f"),
    (INT_MIN, b"\xd3\x80" + b"\x00" * 7),
    ("", b"\xa0"), ("a", b"\xa1a"), ("a" * 31, b"\xbf" + b"a" * 31), ("a" * 32, b"\xd9\x20" + b"a" * 32),
    (b"", b"\xc4\x00"), (b"\x01", b"\xc4\x01\x01"),
    ([], b"\x90"), ({}, b"\x80"), ({"b": 1, "a": [None]}, b"\x82\xa1a\x91\xc0\xa1b\x01"),
])
def test_known_encodings(value: Any, data: bytes) -> None:
    assert codec.encode(value) == data
    assert same(codec.decode(data), value)


# --- values outside the model --------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    1.0, 0.5, float("nan"), [1, 2.5], {"a": -0.0},
    INT_MAX + 1, INT_MIN - 1, [2**70], {"a": {"b": -(2**64)}},
    {1: "a"}, {b"k": 1}, {None: 1}, {("a",): 1}, {"a": {2: 3}},
    {1, 2}, object(), complex(1, 2),
    "\ud800", ["ok", "\udfff"], {"\ud800": 1}, {"a": 1, "\ud834": 2},
])
def test_encode_refuses_values_outside_the_model(value: Any) -> None:
    with pytest.raises(DecodeError):
        codec.encode(value)


def nested(depth: int) -> Any:
    v: Any = None
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


def test_nesting_limit_on_encode_and_decode() -> None:
    ok = codec.encode(nested(codec.MAX_DEPTH))
    assert same(codec.decode(ok), nested(codec.MAX_DEPTH))
    with pytest.raises(DecodeError):
        codec.encode(nested(codec.MAX_DEPTH + 1))
    too_deep = b"\x91" * (codec.MAX_DEPTH + 1) + b"\xc0"
    refuses(too_deep)
    refuses(b"\x91" * 5000 + b"\xc0")
    refuses(b"\x91" * 200_000 + b"\xc0")
    refuses(b"\x81\xa1k" * 3000 + b"\xc0")


# --- non-canonical and malformed bytes -------------------------------------------------------------------

def wider_int_forms(v: int) -> list[bytes]:
    """Every msgpack form of v that is not the shortest one."""
    forms = []
    for tag, fmt, lo, hi in [(0xCC, ">B", 0, 2**8 - 1), (0xCD, ">H", 0, 2**16 - 1), (0xCE, ">I", 0, 2**32 - 1),
                             (0xCF, ">Q", 0, 2**64 - 1), (0xD0, ">b", -(2**7), 2**7 - 1),
                             (0xD1, ">h", -(2**15), 2**15 - 1), (0xD2, ">i", -(2**31), 2**31 - 1),
                             (0xD3, ">q", -(2**63), 2**63 - 1)]:
        if lo <= v <= hi:
            forms.append(bytes([tag]) + struct.pack(fmt, v))
    if 0 <= v <= 127 or -32 <= v < 0:
        forms.append(struct.pack(">b", v) if v < 0 else bytes([v]))
    shortest = codec.encode(v)
    return [f for f in forms if f != shortest]


@given(ints)
def test_every_non_shortest_integer_form_is_refused(v: int) -> None:
    forms = wider_int_forms(v)
    for f in forms:
        assert msgpack.unpackb(f) == v  # the reference decoder reads it...
        refuses(f)                      # ...but it is not canonical,
        refuses(b"\x91" + f)            # nor inside an array
        refuses(b"\x81\xa1k" + f)       # nor as a map value
    if -(2**31) <= v < 2**32:
        assert forms  # there is always a longer form to refuse


@pytest.mark.parametrize("data", [
    b"\xcd\x00\x01", b"\xcc\x05", b"\xd0\x05", b"\xd0\xff", b"\xd1\x00\x01", b"\xce\x00\x00\x00\x80",
    b"\xd9\x01a",                    # str8 where fixstr suffices
    b"\xda\x00\x01a",                # str16 where fixstr suffices
    b"\xdb\x00\x00\x00\x01a",        # str32
    b"\xda\x00\x21" + b"a" * 33,     # str16 where str8 suffices
    b"\xc5\x00\x01a",                # bin16 where bin8 suffices
    b"\xc6\x00\x00\x00\x01a",        # bin32
    b"\xdc\x00\x01\xc0",             # array16 where fixarray suffices
    b"\xdd\x00\x00\x00\x01\xc0",     # array32
    b"\xde\x00\x01\xa1a\xc0",        # map16 where fixmap suffices
    b"\xdf\x00\x00\x00\x01\xa1a\xc0",  # map32
])
def test_longer_forms_are_refused(data: bytes) -> None:
    msgpack.unpackb(data, raw=False)  # well-formed msgpack...
    assert "canonical" in refuses(data)


@pytest.mark.parametrize("data", [
    b"\x82\xa1b\x01\xa1a\x02",                # unsorted keys
    b"\x82\xa1b\x02\xa2ab\x01",               # "ab" sorts before "b" (bytes, not length)
    b"\x82\xa1\xc3\xa9\x01\xa1z\x02",          # "z" (0x7a) sorts before "é" (0xc3 0xa9)
    b"\x81\xa1a\x82\xa1z\x01\xa1y\x02",       # unsorted inside a nested map
    b"\x91\x82\xa1b\x01\xa1a\x02",            # unsorted inside an array
])
def test_unsorted_map_keys_are_refused(data: bytes) -> None:
    refuses(data)


def test_sorted_map_keys_are_accepted() -> None:
    assert codec.decode(b"\x82\xa2ab\x01\xa1b\x02") == {"ab": 1, "b": 2}
    assert codec.decode(b"\x82\xa1z\x02\xa2\xc3\xa9\x01") == {"z": 2, "é": 1}


@given(st.dictionaries(st.text(max_size=5), st.integers(0, 100), min_size=2, max_size=6), st.data())
def test_any_key_permutation_but_the_sorted_one_is_refused(d: dict[str, int], data: Any) -> None:
    items = sorted(d.items(), key=lambda kv: kv[0].encode("utf-8"))
    perm = data.draw(st.permutations(items))
    raw = bytes([0x80 | len(perm)]) + b"".join(codec.encode(k) + codec.encode(v) for k, v in perm)
    if perm == items:
        assert codec.decode(raw) == d
    else:
        refuses(raw)


@pytest.mark.parametrize("data", [
    b"\x82\xa1a\x01\xa1a\x02", b"\x82\xa1a\x01\xa1a\x01", b"\x83\xa1a\x01\xa1b\x02\xa1b\x02",
    b"\x91\x82\xa1k\xc0\xa1k\xc0",
])
def test_duplicate_map_keys_are_refused(data: bytes) -> None:
    refuses(data)


@pytest.mark.parametrize("data", [
    b"\xca\x3f\x80\x00\x00", b"\xcb" + struct.pack(">d", 1.0), b"\xcb" + struct.pack(">d", 0.0),
    b"\x91\xca\x00\x00\x00\x00", b"\x81\xa1a\xcb" + struct.pack(">d", 2.5),
])
def test_floats_are_refused(data: bytes) -> None:
    assert "float" in refuses(data)


@pytest.mark.parametrize("data", [
    b"\xd4\x01\x00", b"\xd5\x02\x00\x00", b"\xd6\x03" + bytes(4), b"\xd7\x04" + bytes(8), b"\xd8\x05" + bytes(16),
    b"\xc7\x01\x06\x00", b"\xc8\x00\x01\x07\x00", b"\xc9\x00\x00\x00\x01\x08\x00",
    b"\xd6\xff\x00\x00\x00\x01",           # the timestamp extension (-1)
    b"\xd7\xff" + bytes(8), b"\xc7\x0c\xff" + bytes(12),
    b"\x91\xd4\x01\x00", b"\x81\xa1a\xd4\x01\x00",
])
def test_extension_types_are_refused(data: bytes) -> None:
    refuses(data)


@pytest.mark.parametrize("data", [
    b"\x81\x01\x01", b"\x81\xc0\x01", b"\x81\xc3\x01", b"\x81\xc4\x01k\x01", b"\x81\x90\x01", b"\x81\x80\x01",
    b"\x81\xd0\xff\x01", b"\x81\xcb" + struct.pack(">d", 1.0) + b"\x01",
])
def test_non_string_map_keys_are_refused(data: bytes) -> None:
    refuses(data)


@pytest.mark.parametrize("data", [
    b"\xa1\xff", b"\xa2\xc0\x80",           # invalid byte, overlong NUL
    b"\xa3\xed\xa0\x80",                   # an encoded surrogate
    b"\xa4\xf4\x90\x80\x80",               # beyond U+10FFFF
    b"\xa1\x80", b"\xa2\xe2\x82",          # lone continuation, cut sequence
    b"\x81\xa1\xff\x01",                   # in a map key
    b"\x91\xd9\x21" + b"a" * 32 + b"\xfe",
])
def test_invalid_utf8_is_refused(data: bytes) -> None:
    refuses(data)


@pytest.mark.parametrize("data", [b"\xc1", b"\xc1\x00", b"\x91\xc1"])
def test_reserved_byte_is_refused(data: bytes) -> None:
    refuses(data)


@given(values, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(value: Any, extra: bytes) -> None:
    assert "trailing" in refuses(codec.encode(value) + extra)


@given(values)
def test_every_truncation_is_refused(value: Any) -> None:
    data = codec.encode(value)
    for n in range(len(data)):
        refuses(data[:n])


def test_empty_and_non_bytes_input() -> None:
    assert "empty" in refuses(b"")
    for bad in ["\xc0", None, 0, [0xC0], bytearray()]:
        with pytest.raises(DecodeError):
            codec.decode(bad)  # type: ignore[arg-type]
    assert codec.decode(bytearray(b"\x01")) == 1
    assert codec.decode(memoryview(b"\x01")) == 1


@given(st.binary(min_size=1, max_size=300))
def test_size_limit(data: bytes) -> None:
    value = codec.encode(data)
    assert codec.decode(value, max_size=len(value)) == data
    assert "exceeds" in refuses(value, max_size=len(value) - 1)


def test_oversize_is_refused_before_parsing() -> None:
    big = codec.encode(b"x" * 5000)
    refuses(big, max_size=4999)
    refuses(b"\xc0" + b"\x00" * (codec.MAX_MESSAGE_BYTES + 1))


def test_declared_length_beyond_input_is_refused() -> None:
    refuses(b"\xdb\xff\xff\xff\xff")        # str32 of 4 GiB, nothing follows
    refuses(b"\xdd\xff\xff\xff\xff")        # array32
    refuses(b"\xdf\xff\xff\xff\xff")        # map32
    refuses(b"\xc6\x7f\xff\xff\xff" + b"a")


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_random_bytes_decode_canonically_or_raise_decode_error(data: bytes) -> None:
    try:
        value = codec.decode(data)
    except DecodeError:
        return
    assert codec.encode(value) == data


@settings(max_examples=300)
@given(values, st.data())
def test_mutated_encodings_decode_canonically_or_raise_decode_error(value: Any, data: Any) -> None:
    raw = bytearray(codec.encode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        back = codec.decode(bytes(raw))
    except DecodeError:
        return
    assert codec.encode(back) == bytes(raw)


# --- wire objects ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Inner(Wire):
    h: bytes = b32()


@dataclass(frozen=True, slots=True)
class Sample(Wire):
    n: int = limit(lo=-5, hi=1000)
    u: int = limit()
    s: str = limit(max=10)
    b: bytes = limit(max=8)
    h: bytes = b32()
    flag: bool
    opt: int | None
    opt_inner: Inner | None
    items: tuple[str, ...] = limit(max=3)
    inner: Inner
    inners: tuple[Inner, ...] = limit(max=2)


inners = st.builds(Inner, st.binary(min_size=32, max_size=32))
samples = st.builds(
    Sample,
    n=st.integers(-5, 1000), u=st.integers(0, 2**64 - 1), s=st.text(max_size=10), b=st.binary(max_size=8),
    h=st.binary(min_size=32, max_size=32), flag=st.booleans(), opt=st.none() | st.integers(0, 2**64 - 1),
    opt_inner=st.none() | inners, items=st.lists(st.text(max_size=5), max_size=3).map(tuple), inner=inners,
    inners=st.lists(inners, max_size=2).map(tuple))

GOOD = Sample(n=1, u=2, s="hi", b=b"\x01", h=bytes(32), flag=True, opt=None, opt_inner=None, items=("a",),
              inner=Inner(b"\x11" * 32), inners=())


@given(samples)
def test_wire_round_trips(x: Sample) -> None:
    assert Sample.decode(x.encode()) == x
    assert Sample.from_obj(x.to_obj()) == x
    assert Sample.from_json(x.to_json()) == x
    assert Sample.from_json(x.to_json(b64=True), b64=True) == x


@given(samples)
def test_wire_json_bytes_forms(x: Sample) -> None:
    hexed, b64d = x.to_json(), x.to_json(b64=True)
    assert hexed["h"] == x.h.hex() and hexed["inner"]["h"] == x.inner.h.hex()
    assert b64d["h"] == base64.urlsafe_b64encode(x.h).rstrip(b"=").decode()
    assert "=" not in b64d["b"]


def obj_with(**changes: Any) -> dict[str, Any]:
    obj = GOOD.to_obj()
    obj.update(changes)
    return obj


def refused_obj(obj: Any, json_mode: str = "") -> str:
    with pytest.raises(DecodeError) as info:
        if json_mode:
            Sample.from_json(obj, b64=json_mode == "b64")
        else:
            Sample.from_obj(obj)
    return info.value.reason


def test_wire_unknown_and_missing_fields() -> None:
    assert "unknown field 'extra'" in refused_obj(obj_with(extra=1))
    for name in GOOD.to_obj():
        obj = GOOD.to_obj()
        del obj[name]
        assert f"missing field {name!r}" in refused_obj(obj)
    inner = obj_with(inner={"h": bytes(32), "x": 1})
    assert "Sample.inner" in refused_obj(inner)
    assert "missing field 'h'" in refused_obj(obj_with(inner={}))
    for not_a_map in [None, [], "x", 1, b"x"]:
        refused_obj(not_a_map)
        with pytest.raises(DecodeError):
            Sample.decode(codec.encode(not_a_map))


WRONG_TYPES: dict[str, list[Any]] = {
    "n": [True, "1", b"\x01", None, [1], {}],
    "u": [False, "1", None, -1],
    "s": [1, b"hi", None, ["hi"], True],
    "b": ["01", 1, None, [1]],
    "h": ["00" * 32, None, 0, [0] * 32],
    "flag": [1, 0, "true", None],
    "opt": ["1", True, b"", [None]],
    "opt_inner": [1, "x", {"h": b"\x00"}],
    "items": ["a", None, ("a",), [1], [b"a"], {"0": "a"}],
    "inner": [None, 1, [], {"h": "00" * 32}],
    "inners": [None, {}, [None], [1]],
}


@pytest.mark.parametrize("field", list(WRONG_TYPES))
def test_wire_wrong_types_name_the_field(field: str) -> None:
    for bad in WRONG_TYPES[field]:
        assert f"Sample.{field}" in refused_obj(obj_with(**{field: bad})), (field, bad)


def test_wire_limits() -> None:
    # exact byte size
    for size in (0, 31, 33, 64):
        assert "expected 32 bytes" in refused_obj(obj_with(h=bytes(size)))
        refused_obj(obj_with(inner={"h": bytes(size)}))
    # max bytes
    assert Sample.from_obj(obj_with(b=bytes(8))).b == bytes(8)
    assert "longer than 8 bytes" in refused_obj(obj_with(b=bytes(9)))
    # max str length (characters)
    assert Sample.from_obj(obj_with(s="é" * 10)).s == "é" * 10
    assert "longer than 10" in refused_obj(obj_with(s="x" * 11))
    # integer bounds, default [0, 2**64 - 1]
    for ok in (-5, 0, 1000):
        assert Sample.from_obj(obj_with(n=ok)).n == ok
    for bad in (-6, 1001, -(2**63), 2**64 - 1):
        assert "outside [-5, 1000]" in refused_obj(obj_with(n=bad))
    assert Sample.from_obj(obj_with(u=2**64 - 1)).u == 2**64 - 1
    assert "outside" in refused_obj(obj_with(u=-1))
    assert "outside" in refused_obj(obj_with(opt=-1))
    # tuple max
    assert len(Sample.from_obj(obj_with(items=["a", "b", "c"])).items) == 3
    assert "more than 3 items" in refused_obj(obj_with(items=["a", "b", "c", "d"]))
    assert "more than 2 items" in refused_obj(obj_with(inners=[{"h": bytes(32)}] * 3))
    # default limits apply to unannotated str items
    assert "longer than 1024" in refused_obj(obj_with(items=["x" * 1025]))


@given(st.integers(min_value=-(2**64), max_value=2**65))
def test_wire_int_bounds_property(v: int) -> None:
    if -5 <= v <= 1000:
        assert Sample.from_obj(obj_with(n=v)).n == v
    else:
        refused_obj(obj_with(n=v))


def test_wire_decode_refuses_non_canonical_bytes() -> None:
    raw = GOOD.encode()
    assert Sample.decode(raw) == GOOD
    pairs = sorted(GOOD.to_obj().items(), reverse=True)
    packed = msgpack.packb(dict(pairs), use_bin_type=True)
    assert packed != raw
    with pytest.raises(DecodeError):
        Sample.decode(packed)
    with pytest.raises(DecodeError):
        Sample.decode(raw, max_size=len(raw) - 1)


def test_wire_modes_do_not_mix() -> None:
    # msgpack mode wants bytes; JSON mode wants text
    assert "Sample.h" in refused_obj(obj_with(h=bytes(32).hex()))
    js = GOOD.to_json()
    js["h"] = bytes(32)
    assert "Sample.h" in refused_obj(js, "hex")
    # a hex document is not base64url and vice versa
    refused_obj(GOOD.to_json(), "b64")
    refused_obj(GOOD.to_json(b64=True), "hex")


def with_json(field: str, value: Any, b64: bool = False) -> dict[str, Any]:
    js = GOOD.to_json(b64=b64)
    js[field] = value
    return js


@pytest.mark.parametrize("bad", [
    "AB" * 32, "Ab" + "00" * 31, "0" * 63, "0" * 65, " " + "00" * 32, "00" * 32 + "\n", "00" * 16 + " " + "00" * 16,
    "0x" + "00" * 31, "g0" + "00" * 31, "+0" + "00" * 31, "\u0660\u0660" * 32, "00" * 31 + "0\u0000",
])
def test_hex_json_forms_are_refused(bad: str) -> None:
    refused_obj(with_json("h", bad), "hex")
    with pytest.raises(DecodeError):
        hex_bytes(bad, 32, "x")


@pytest.mark.parametrize("bad", [
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",   # padded
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",    # non-zero unused bits: not the canonical spelling
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+",    # base64, not base64url
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # length % 4 == 1
    " AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    "AAAAAAAAAAAAAAAAAAAAA AAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",     # 31 bytes
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # 33 bytes
])
def test_base64url_json_forms_are_refused(bad: str) -> None:
    assert b64url(bytes(32)) == "A" * 43
    refused_obj(with_json("h", bad, b64=True), "b64")
    with pytest.raises(DecodeError):
        b64url_bytes(bad, 32, "x")


@given(st.binary(max_size=40))
def test_hex_and_base64url_parsers_accept_exactly_one_spelling(raw: bytes) -> None:
    assert hex_bytes(raw.hex(), None, "x") == raw
    assert b64url_bytes(b64url(raw), None, "x") == raw
    if raw:
        upper = raw.hex().upper()
        if upper != raw.hex():
            with pytest.raises(DecodeError):
                hex_bytes(upper, None, "x")
        padded = base64.urlsafe_b64encode(raw).decode()
        if padded != b64url(raw):
            with pytest.raises(DecodeError):
                b64url_bytes(padded, None, "x")


@given(st.text(max_size=12))
def test_base64url_parser_never_accepts_two_spellings(text: str) -> None:
    try:
        raw = b64url_bytes(text, None, "x")
    except DecodeError:
        return
    assert b64url(raw) == text


@given(st.text(max_size=12))
def test_hex_parser_never_accepts_two_spellings(text: str) -> None:
    try:
        raw = hex_bytes(text, None, "x")
    except DecodeError:
        return
    assert raw.hex() == text


@given(st.binary(max_size=40), st.integers(0, 41))
def test_parsers_check_the_size(raw: bytes, size: int) -> None:
    if size == len(raw):
        assert hex_bytes(raw.hex(), size, "x") == raw == b64url_bytes(b64url(raw), size, "x")
    else:
        with pytest.raises(DecodeError):
            hex_bytes(raw.hex(), size, "x")
        with pytest.raises(DecodeError):
            b64url_bytes(b64url(raw), size, "x")


# --- the wire fast path equals the generic canonical encoder ---------------------------------------------

@given(st.integers(1, 2**40), st.integers(0, 2**31), st.integers(0, 2**63), st.binary(min_size=32, max_size=32),
       st.integers(0, 10_000), st.booleans())
def test_wire_encode_fast_path_is_canonical(height: int, round_: int, t: int, h: bytes, n: int, nil: bool) -> None:
    from ler.block import CertSig, CommitCertificate, Header, Vote
    from ler.smt import StateProof

    header = Header(chain="c", height=height, round=round_, time=t, prev=h, tx_count=n, tx_root=h, state_root=h,
                    history_root=h, validators_hash=h, next_validators_hash=h, proposer=h)
    vote = Vote(type=2, height=height, round=round_, block=None if nil else h, validator=h, sig=h + h)
    cert = CommitCertificate(height=height, round=round_, block=h, sigs=(CertSig(h, h + h),) * (n % 3))
    proof = StateProof(key=h, value=None if nil else h, siblings=(h,) * (n % 5), other_key=None,
                       other_value_hash=None)
    for obj in (header, vote, cert, proof):
        raw = obj.encode()
        assert raw == codec.encode(obj.to_obj())
        assert type(obj).decode(raw) == obj


def test_field_encoder_gives_the_objects_own_encoding() -> None:
    """wire.field_encoder(C)(**fields) must be C(**fields).encode() byte for byte, for every kind of field:
    scalars, optional ones absent and present, nested wire objects, optional nested ones, tuples of both."""
    import dataclasses
    import os

    from ler.state import IssuerEntry, KeyEpoch, RecordEntry, Revocation
    from ler.tx import Action, GovVote, RecordAnchor
    from ler.wire import field_encoder

    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    objects: list[Wire] = [
        RecordEntry(issuer=did, signer=os.urandom(32), holder=did, rtype="degree.bachelor",
                    commitment=os.urandom(32), standing="accredited", anchored=7, tx=os.urandom(32),
                    expires=None, revoked=None),
        RecordEntry(issuer=did, signer=os.urandom(32), holder=did, rtype="degree", commitment=os.urandom(32),
                    standing="self-asserted", anchored=2**40, tx=os.urandom(32), expires=2**63,
                    revoked=Revocation(height=9, reason="issued in error")),
        IssuerEntry(did=did, name="University", scopes=("degree", "diploma"), status="active", until=None,
                    accredited=1, changed=3, keys=(KeyEpoch(os.urandom(32), 0), KeyEpoch(os.urandom(32), 5))),
        RecordAnchor(record=os.urandom(16), issuer=did, holder=did, rtype="course", commitment=os.urandom(32),
                     expires=None),
        GovVote(action=Action("accredit", did, "College", ("course",), 12345)),
    ]
    for obj in objects:
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        assert field_encoder(type(obj))(**fields) == obj.encode(), type(obj).__name__
    with pytest.raises(TypeError):  # every field must be given
        field_encoder(Revocation)(height=1)
