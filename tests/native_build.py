"""What the tests of the compiled parts (storage/_smt_native.c, storage/_keyfilter_native.c,
ler/_tx_native.c) share: whether this machine can build them, a check that they keep no memory, and a
run of a test file against a copy built with AddressSanitizer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def can_compile() -> bool:
    """Whether this machine has what the install needs to build the extensions: a C compiler and
    Python's headers."""
    include = sysconfig.get_paths().get("include")
    return shutil.which("cc") is not None and include is not None and Path(include, "Python.h").exists()


def expect_built(setting: str, what: str) -> pytest.MarkDecorator:
    """For a test that the install built a compiled part and the code uses it: skipped where it cannot be
    built, or where `setting` (LER_..._IN_PYTHON) is 1 and the Python code is asked for instead."""
    if not can_compile():
        return pytest.mark.skipif(True, reason=f"no C compiler or no Python headers here: {what} in Python")
    return pytest.mark.skipif(os.environ.get(setting) == "1", reason=f"{setting}=1: {what} in Python")


def assert_keeps_no_memory(rounds: Callable[[int], None], n: int = 200) -> None:
    """That `rounds(n)` (n repetitions of calls into an extension, on good input and on bad) leaves the
    interpreter's traced memory where it was: every object the C code makes is returned or released.
    A leak of one 32-byte object per round would be over 6 KB at 200 rounds."""
    import gc
    import tracemalloc

    rounds(20)  # caches and free lists settle
    gc.collect()
    tracemalloc.start()
    try:
        rounds(5)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        rounds(n)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096, f"{grown} bytes more after {n} rounds"


def run_under_asan(tmp_path: Path, module: str, user: str, source: Path, test_file: str, keyword: str,
                   link: tuple[str, ...] = ()) -> None:
    """Run the tests of `test_file` selected by `keyword` with the extension `module` ("package.name"),
    which the module `user` keeps as its `_native`, built from `source` with AddressSanitizer and the
    interpreter's own allocator off, so that a read or write out of bounds, or of a freed object, stops
    the run. Skips where gcc has no sanitizer runtime."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc here")
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not Path(libasan).is_absolute() or not Path(libasan).exists():
        pytest.skip("gcc has no AddressSanitizer runtime here")
    include = sysconfig.get_paths()["include"]
    package, name = module.rsplit(".", 1)
    so = tmp_path / (name + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    subprocess.run(["gcc", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-shared", "-fPIC",
                    f"-I{include}", str(source), "-o", str(so), *link], check=True)
    runner = tmp_path / "run.py"
    # The sanitized copy is loaded under the module's own name before anything imports the package's
    # code, so that the code under test picks it up as it would the installed one.
    runner.write_text(f"""
import importlib, importlib.util, sys
sys.path.insert(0, {str(ROOT)!r})  # as `python -m pytest` from the project's folder has it
import {package}
spec = importlib.util.spec_from_file_location({module!r}, {str(so)!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules[{module!r}] = mod
{package}.{name} = mod
import pytest
code = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist", {test_file!r}, "-k", {keyword!r}])
if importlib.import_module({user!r})._native is not mod:
    sys.exit("the code under test did not use the sanitized build")
sys.exit(code)
""")
    env = dict(os.environ, LD_PRELOAD=libasan, PYTHONMALLOC="malloc", ASAN_OPTIONS="detect_leaks=0")
    out = subprocess.run([sys.executable, str(runner)], env=env, capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "ERROR: AddressSanitizer" not in out.stderr and " passed" in out.stdout, out.stdout[-2000:]
