"""Loaded by a node's Python when this folder is on PYTHONPATH (tests/test_network.py): its wall clock
(time.time, time.time_ns) runs LER_TEST_SKEW_S seconds off, as a machine's clock set wrong does."""

import os
import time

_offset = float(os.environ.get("LER_TEST_SKEW_S", "0"))
if _offset:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _offset
    time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
