"""The compiled parts, each optional: where one cannot be built the install goes on and its Python
counterpart runs instead, with the same results.

- storage/_smt_native.c: the state tree's update (storage/smt.py).
- ler/_tx_native.c: the decoding of record anchors in their usual form (ler/tx.py).
- storage/_keyfilter_native.c: the key filter's bits (storage/keyfilter.py)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("storage._smt_native", ["storage/_smt_native.c"], libraries=["dl"], extra_compile_args=["-O2"],
              optional=True),
    Extension("ler._tx_native", ["ler/_tx_native.c"], extra_compile_args=["-O2"], optional=True),
    Extension("storage._keyfilter_native", ["storage/_keyfilter_native.c"], extra_compile_args=["-O2"],
              optional=True),
])
