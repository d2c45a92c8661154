"""bloodcells: clean a contaminated blood-cell training set, train a shift-robust
classifier, and ship a competition submission that is checked before upload.

One job per module, in the order a training set goes through them: ARCHITECTURE.md.
"""

from .cli import quiet_tensorflow_startup

# before anything imports TensorFlow: its start-up lines would precede the kit's own
quiet_tensorflow_startup()

CLASS_NAMES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocytes",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 96
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)

__version__ = "0.1.0"
