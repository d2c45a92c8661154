"""bloodcells: clean a contaminated blood-cell training set, train a shift-robust
classifier, and ship a competition submission that is checked before upload.

One job per module: data (load and validate), synth (demo data), clean, augment,
models, train, shift (test-time corruptions), report (figures), leaderboard, stats
(intervals, paired tests, server-score fit), compare (two evaluations on the same images).
"""

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
