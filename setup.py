"""The one compiled part: storage/_smt_native.c, the state tree's update (storage/smt.py). It is optional:
where it cannot be built the install goes on and the tree runs in Python, with the same results."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("storage._smt_native", ["storage/_smt_native.c"], libraries=["dl"],
                             extra_compile_args=["-O2"], optional=True)])
