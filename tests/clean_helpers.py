"""What the cleaning tests share (test_clean, test_cleaning, test_embeddings): the real PBC
pairs known to be re-captures, and the clean command run in-process."""

from __future__ import annotations

import pytest

from bloodcells import clean as CLI


# Pairs in pbc96_dev.npz (train + val) that the default descriptor puts at cosine >= 0.995.
# Each was inspected side by side: the same cells photographed twice with the field shifted
# by tens of pixels (SOURCE.md: near-duplicates were not searched for). They are real
# near-duplicates, so the cleaner is right to drop the second copy.
KNOWN_REAL_PAIRS = {
    ("eosinophil/EO_217076.jpg", "eosinophil/EO_548865.jpg"),
    ("erythroblast/ERB_20087.jpg", "erythroblast/ERB_476900.jpg"),
    ("erythroblast/ERB_271613.jpg", "erythroblast/ERB_454654.jpg"),
    ("erythroblast/ERB_288825.jpg", "erythroblast/ERB_231898.jpg"),
    ("erythroblast/ERB_952688.jpg", "erythroblast/ERB_633119.jpg"),
    ("erythroblast/ERB_984537.jpg", "erythroblast/ERB_287222.jpg"),
    ("ig/MMY_675168.jpg", "ig/MY_89581.jpg"),
    ("neutrophil/NEUTROPHIL_501624.jpg", "neutrophil/NEUTROPHIL_971896.jpg"),
}


def run(argv):
    """Run the CLI in-process; returns its exit status."""
    with pytest.raises(SystemExit) as exc:
        CLI.main([str(a) for a in argv])
    return exc.value.code
