"""model.py imported from a submission folder as a fresh module, as the server does
(test_model, test_distribute)."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

_count = itertools.count()


def load_shipped(folder: Path):
    """Import model.py from `folder` as a fresh module (as the server would)."""
    spec = importlib.util.spec_from_file_location(f"shipped_model_{next(_count)}", Path(folder) / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
