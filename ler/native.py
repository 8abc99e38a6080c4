"""The optional compiled parts (setup.py lists them): each is used where the install could build it,
unless its setting (an environment variable) is 1, which asks for the Python code it stands in for."""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(module: str, setting: str) -> ModuleType | None:
    """The extension `module` ("package.name"), or None where it was not built or `setting` is "1"."""
    if os.environ.get(setting) == "1":
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
