"""The compiled parts, each optional: where one cannot be built the install goes on and its Python
counterpart runs instead, with the same results.

- storage/_smt_native.c: the state tree's update (storage/smt.py) and a block's tx_root (storage/chain.py).
- ler/_tx_native.c: the decoding of record anchors in their usual form (ler/tx.py), and SHA-256 in one
  call (ler/keys.py).
- storage/_keyfilter_native.c: the key filter's bits (storage/keyfilter.py).

The first two take libcrypto's SHA-256, as ler/_sha256.h finds it."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("storage._smt_native", ["storage/_smt_native.c"], depends=["ler/_sha256.h"], libraries=["dl"],
              extra_compile_args=["-O2"], optional=True),
    Extension("ler._tx_native", ["ler/_tx_native.c"], depends=["ler/_sha256.h"], libraries=["dl"],
              extra_compile_args=["-O2"], optional=True),
    Extension("storage._keyfilter_native", ["storage/_keyfilter_native.c"], extra_compile_args=["-O2"],
              optional=True),
])
