"""tf_gibbs on Keras 3 (``import keras``) — the TensorFlow, JAX and PyTorch backends.

Use the public API (``tf_gibbs.prune_gibbs`` etc.), which dispatches here for Keras 3 objects.
The wrappers are registered Keras 3 serializables: ``keras.models.load_model`` restores them
(with their step, masks, gates and thresholds) once ``tf_gibbs`` is imported.
"""

from tf_gibbs.keras3.adaptive import AdaptiveThreshold
from tf_gibbs.keras3.gibbs import GibbsPruning
from tf_gibbs.keras3.l0 import L0Gates
from tf_gibbs.keras3.layers import SpatialBias
from tf_gibbs.keras3.wrapper import PruningWrapper

__all__ = ["AdaptiveThreshold", "GibbsPruning", "L0Gates", "PruningWrapper", "SpatialBias"]
