"""The shipped model.py, loaded by path: the one place the library reaches it (a leaf
module, so anything may import it without an import circle)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shipped_model_module():
    """The top-level model.py, loaded by path (it is self-contained and never imports
    this package; importing it by name could pick up another model.py on sys.path)."""
    name = "_bloodcells_shipped_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
