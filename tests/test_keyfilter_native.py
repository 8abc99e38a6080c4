"""The key filter's bits in C (storage/_keyfilter_native.c) against the Python code they stand in for:
the same bits set for the same keys, segment by segment, and the same answers, so that a filter filled
by one is read alike by the other. tests/test_keyfilter.py runs on whichever the install built."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from storage import keyfilter
from storage.keyfilter import KeyFilter
from tests.native_build import assert_keeps_no_memory, expect_built, run_under_asan

native = keyfilter._native
needs_native = pytest.mark.skipif(native is None, reason="the compiled key filter is not built")


class _InPython:
    """Within it, every KeyFilter works in Python."""

    def __enter__(self) -> None:
        keyfilter._native = None

    def __exit__(self, *exc: object) -> None:
        keyfilter._native = native


def filled(keys: list[bytes], batches: list[int], in_python: bool) -> KeyFilter:
    f = KeyFilter(capacity=64)
    assert f.fill([])
    at = 0
    for n in batches:
        if in_python:
            with _InPython():
                f.add_many(keys[at:at + n])
        else:
            f.add_many(iter(keys[at:at + n]) if n % 2 else keys[at:at + n])  # lists and other iterables
        at += n
    return f


def answers(f: KeyFilter, keys: list[bytes], in_python: bool) -> list[bool]:
    if in_python:
        with _InPython():
            return [f.may_hold(k) for k in keys]
    return [f.may_hold(k) for k in keys]


@expect_built("LER_FILTER_IN_PYTHON", "the key filter runs")
def test_the_compiled_filter_is_built_and_used() -> None:
    assert native is not None, "storage/_keyfilter_native.c was not built, though a C compiler is here"


def test_it_can_be_turned_off() -> None:
    code = "import storage.keyfilter as k; print(k._native is None)"
    env = dict(os.environ, LER_FILTER_IN_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@needs_native
def test_the_same_bits_in_every_segment_as_the_filter_grows() -> None:
    rng = random.Random(3)
    keys = [rng.randbytes(rng.randrange(1, 60)) for _ in range(30_000)]
    batches = [1, 63, 1, 64, 200, 1000, 5000, 7, 13_000, 1, 10_663]  # across the doublings, from 64 keys
    assert sum(batches) == len(keys)
    c, py = filled(keys, batches, False), filled(keys, batches, True)
    assert len(c._segments) == len(py._segments) > 5
    assert [(bytes(b), m, cap) for b, m, cap in c._segments] == [(bytes(b), m, cap) for b, m, cap in py._segments]
    assert c._count == py._count
    others = [rng.randbytes(32) for _ in range(20_000)]
    for f in (c, py):  # either filter, read by either code
        assert answers(f, keys, False) == answers(f, keys, True) == [True] * len(keys)
        assert answers(f, others, False) == answers(f, others, True)


@needs_native
def test_other_hashable_keys_take_the_same_bits() -> None:
    keys: list = [b"", "text", 7, -1, -(2**63), 2**64 + 5, (1, b"x"), None, 3.5]
    c, py = filled(keys, [len(keys)], False), filled(keys, [len(keys)], True)
    assert bytes(c._segments[0][0]) == bytes(py._segments[0][0])
    assert answers(c, keys, False) == [True] * len(keys)


@needs_native
def test_arguments_out_of_shape_raise_and_touch_nothing() -> None:
    assert native is not None
    bits = bytearray(8)
    with pytest.raises(TypeError):
        native.add(bytes(8), 63, [b"k"])  # not writable
    with pytest.raises(ValueError):
        native.add(bits, 64, [b"k"])  # bit 64 is past 8 bytes
    with pytest.raises(OverflowError):
        native.add(bits, -1, [b"k"])
    with pytest.raises(TypeError):
        native.add(bits, 63, [b"k", [b"unhashable"]])
    with pytest.raises(TypeError):
        native.add(bits, 63, (b"k",))
    with pytest.raises(TypeError):
        native.may_hold([(bits,)], b"k")
    with pytest.raises(ValueError):
        native.may_hold([(bits, 1 << 20, 4)], b"k")
    with pytest.raises(TypeError):
        native.may_hold([(bits, 63, 4)], {})
    assert native.may_hold([], b"k") is False


@needs_native
def test_the_c_filter_keeps_no_memory_it_made() -> None:
    f = KeyFilter(capacity=1 << 17)  # room for every round's keys: the filter does not grow meanwhile
    assert f.fill([])
    keys = [os.urandom(32) for _ in range(1000)]
    others = [os.urandom(32) for _ in range(1000)]

    def rounds(n: int) -> None:
        for _ in range(n):
            f.add_many(keys)
            for k in keys + others:  # held, and (nearly all) not
                f.may_hold(k)
            with pytest.raises(TypeError):
                f.add_many([b"a", {}])

    assert_keeps_no_memory(rounds, 50)


@needs_native
def test_the_c_filter_under_the_address_sanitizer(tmp_path: Path) -> None:
    """These comparisons and tests/test_keyfilter.py, run again with the C file built with AddressSanitizer."""
    source = Path(keyfilter.__file__).with_name("_keyfilter_native.c")
    here = Path(__file__)
    for test_file in (here, here.with_name("test_keyfilter.py")):
        run_under_asan(tmp_path, "storage._keyfilter_native", "storage.keyfilter", source, str(test_file),
                       "not sanitizer and not turned_off and not memory")
