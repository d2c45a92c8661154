"""Training under tf.distribute: the strategy named by train.strategy, which process is
the chief (the only one that writes), BatchNorm over the global batch, and the
workarounds Keras 3 needs under MultiWorkerMirroredStrategy."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import NUM_CLASSES
from .cli import UserError


def make_strategy(kind: str, tpu: str = ""):
    """The tf.distribute strategy named by train.strategy (`tpu`: train.tpu, the TPU's
    address). "multiworker" reads the cluster from the standard TF_CONFIG variable (no
    TF_CONFIG: one worker) and must be created before TensorFlow does anything else in
    the process."""
    import tensorflow as tf

    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multiworker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"config: train.strategy: 'multiworker' ({' '.join(str(exc).split())[:160]}); expected "
                            f"a valid TF_CONFIG and a strategy created before any other TensorFlow work") from None
    if kind == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            raise UserError(f"config: train.strategy: 'tpu' but no TPU found ({' '.join(str(exc).split())[:120]}); "
                            f"expected a TPU runtime, or strategy 'default'") from None
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster (the
    chief is task "chief", or worker 0 when the cluster has no "chief")."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster or resolver.task_type in (None, "chief"):
        return True
    return resolver.task_type == "worker" and int(resolver.task_id or 0) == 0 and "chief" not in cluster


def worker_scratch(out: Path, resume: bool):
    """A temporary run folder for a non-chief worker: it computes everything the chief
    does (the collectives need it) but writes only here; resuming copies the chief's
    checkpoint and best weights in (the run folder must be readable by every worker).
    Deleted when the returned TemporaryDirectory is cleaned up or collected."""
    scratch = tempfile.TemporaryDirectory(prefix="bloodcells-worker-")
    if resume:
        for name in ("checkpoint.npz", "best.npz"):
            if (out / name).is_file():
                shutil.copy2(out / name, Path(scratch.name) / name)
    return scratch


def precision_policy(mixed_precision: bool, strategy) -> str:
    """Keras's dtype policy: float32, or mixed float16 (GPU, CPU), or mixed bfloat16 on
    a TPU (TPUs compute in bfloat16; float16 there is unsupported or emulated)."""
    import tensorflow as tf

    if not mixed_precision:
        return "float32"
    return "mixed_bfloat16" if isinstance(strategy, tf.distribute.TPUStrategy) else "mixed_float16"


def strategy_summary(strategy) -> dict:
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return {"kind": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync),
            "workers": sum(len(v) for v in cluster.values()) if cluster else 1, "chief": is_chief(strategy)}


def synchronize_batchnorm(model, strategy) -> int:
    """With several replicas, BatchNormalization uses the global batch's statistics
    (all-reduced) instead of each replica's share: the network then trains as on one
    device with the same global batch. Only how training computes the statistics
    changes; the exported weights and the shipped network are the same. Returns the
    number of layers switched."""
    import keras

    if strategy.num_replicas_in_sync <= 1:
        return 0
    switched = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            switched += 1
        stack.extend(getattr(layer, "layers", []))
    return switched


def uncapture_multiworker_strategy(model, strategy) -> None:
    """Keras 3's `fit` under MultiWorkerMirroredStrategy fails in its symbolic build
    (it reduces a data batch over the workers: keras-team/keras#20585). A model that has
    not captured the strategy skips that build and takes the strategy from the enclosing
    scope, which is why the run calls `fit` inside `strategy.scope()`. Keras then
    averages each step's logs over the replicas along axis 0, which fails on scalars:
    the step returns them with shape (1,), and the mean over the workers is a scalar
    again. Evaluation runs each worker on the whole set (`predict`)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    model._distribute_strategy = None
    model._bloodcells_predict_per_worker = True
    step = model.train_step

    def train_step(data):
        return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    model.train_step = train_step


def predict(model, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Probabilities for every image. Under MultiWorkerMirroredStrategy Keras's predict
    would shard the images over the workers and return each only its share, so there
    each worker runs the whole set itself (all workers then decide alike)."""
    import tensorflow as tf

    if not getattr(model, "_bloodcells_predict_per_worker", False):
        return model.predict(images, batch_size=batch_size, verbose=0)
    if not hasattr(model, "_bloodcells_local_predict"):
        model._bloodcells_local_predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    parts = [model._bloodcells_local_predict(tf.constant(images[i:i + batch_size]))
             for i in range(0, len(images), batch_size)]
    return np.concatenate([np.asarray(p) for p in parts]) if parts else np.zeros((0, NUM_CLASSES), np.float32)
