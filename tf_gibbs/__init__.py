"""tf_gibbs: train-time pruning for Keras models (Gibbs pruning, L0 gates, adaptive sparsity).

``prune_gibbs``, ``prune_l0``, ``prune_adaptive`` and ``strip_pruning`` take Keras 3 objects
(``import keras``; TensorFlow, JAX or PyTorch backend: wrappers in :mod:`tf_gibbs.keras3`) and
tf_keras objects (Keras 2, with tensorflow-model-optimization: the wrappers below).
"""

from tf_gibbs import core
from tf_gibbs.adaptive import AdaptiveThreshold
from tf_gibbs.callbacks import UpdatePruningStep
from tf_gibbs.export import export_tflite
from tf_gibbs.export import run_tflite
from tf_gibbs.gibbs import GibbsPruning
from tf_gibbs.l0 import L0Gates
from tf_gibbs.prune import prune_adaptive
from tf_gibbs.packing import pack_narrow_convs
from tf_gibbs.prune import prune_gibbs
from tf_gibbs.prune import prune_l0
from tf_gibbs.prune import prune_scope
from tf_gibbs.prune import strip_pruning
from tf_gibbs.report import sparsity_report
from tf_gibbs.schedule import AdaptiveSchedule
from tf_gibbs.schedule import GibbsSchedule
from tf_gibbs.schedule import L0Schedule
from tf_gibbs.shrinking import shrink
from tf_gibbs.wrapper import PruningWrapper

from tf_gibbs import keras3  # registers the Keras 3 wrappers for keras.models.load_model

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSchedule",
    "AdaptiveThreshold",
    "GibbsPruning",
    "GibbsSchedule",
    "L0Gates",
    "L0Schedule",
    "PruningWrapper",
    "UpdatePruningStep",
    "core",
    "export_tflite",
    "pack_narrow_convs",
    "prune_adaptive",
    "prune_gibbs",
    "prune_l0",
    "prune_scope",
    "run_tflite",
    "shrink",
    "sparsity_report",
    "strip_pruning",
]
