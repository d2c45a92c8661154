"""Tiny handmade submission zips for the evaluation tests (ingestion, local_eval, evaluate,
compare): a numpy-only model.py that predicts the class written in a pixel, broken ones
(crashing, sleeping, returning the wrong shape...), images on which the pixel model
predicts what a test wants, and local_eval.py run in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np

from conftest import REPO


# Predicts the class written in pixel (0, 0, red) as 30 * class + 5 (or in another
# channel, settings "channel"): tests control the predictions exactly. Reads its threshold from a file next to itself (never the cwd).
PIXEL_MODEL = '''
import os, json
import numpy as np
HERE = os.path.dirname(os.path.abspath(__file__))

class Model:
    def __init__(self):
        with open(os.path.join(HERE, "settings.json")) as fh:
            settings = json.load(fh)
        self.step, self.channel = settings["step"], settings.get("channel", 0)
        print("MODEL CWD", os.getcwd())
        print("MODEL HERE", HERE)

    def predict(self, X):
        return (np.asarray(X)[:, 0, 0, self.channel] // self.step).clip(0, 7).astype(np.int64)

    def predict_proba(self, X):
        p = np.full((len(X), 8), 0.02, np.float32)
        p[np.arange(len(X)), self.predict(X)] = 0.86
        return p
'''


BROKEN_MODELS = {
    "crash": "class Model:\n    def predict(self, X):\n        raise RuntimeError('weights went missing')\n",
    "crash_init": "class Model:\n    def __init__(self):\n        raise ImportError('no module named keras_cv')\n",
    "sleep": "import time\nclass Model:\n    def __init__(self):\n        time.sleep(60)\n"
             "    def predict(self, X):\n        return X[:, 0, 0, 0] * 0\n",
    "sleep_predict": "import time\nclass Model:\n    def predict(self, X):\n        time.sleep(60)\n",
    "wrong_shape": "import numpy as np\nclass Model:\n    def predict(self, X):\n"
                   "        return np.zeros((len(X), 8))\n",
    "too_few": "import numpy as np\nclass Model:\n    def predict(self, X):\n"
               "        return np.zeros(len(X) - 1, dtype=int)\n",
    "out_of_range": "import numpy as np\nclass Model:\n    def predict(self, X):\n"
                    "        return np.full(len(X), 9)\n",
    "ragged": "class Model:\n    def predict(self, X):\n        return [[1], [2, 3]] + [0] * (len(X) - 2)\n",
    "cwd_relative": "class Model:\n    def __init__(self):\n        open('settings.json').read()\n"
                    "    def predict(self, X):\n        return X[:, 0, 0, 0] * 0\n",
    "imports_project": "import bloodcells\nclass Model:\n    def predict(self, X):\n"
                       "        return X[:, 0, 0, 0] * 0\n",
}


def make_zip(path, model_source: str, extra: dict | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.py", model_source)
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return path


def encoded_images(predictions, seed=0):
    """Images on which the pixel model predicts exactly `predictions`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(predictions), 96, 96, 3)).astype(np.uint8)
    images[:, 0, 0, 0] = 30 * np.asarray(predictions) + 5
    return images


def run_local_eval(tmp_path, *args, env=None, wait=True):
    """local_eval.py in a process of its own (a run the test can SIGKILL; env e.g. TMPDIR)."""
    common = ["--eval-dir", tmp_path / "eval", "--leaderboard-file", tmp_path / "leaderboard.csv",
              "--cache-dir", tmp_path / "cache"]
    command = [sys.executable, str(REPO / "local_eval.py"), *map(str, args), *map(str, common)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", **(env or {})}
    if not wait:
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
