"""Keras callbacks."""

import warnings

import tensorflow as tf

from tensorflow_model_optimization.python.core.sparsity.keras import pruning_callbacks
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tf_gibbs import adaptive as adaptive_lib
from tf_gibbs import gibbs as gibbs_lib
from tf_gibbs import wrapper as wrapper_lib
from tf_gibbs._keras import is_keras3_object
from tf_gibbs._keras import keras
from tf_gibbs._keras import walk_layers


class UpdatePruningStep(pruning_callbacks.UpdatePruningStep):
  """tfmot's ``UpdatePruningStep``, plus a warning when there is nothing to update and β in logs.

  It also excludes the wrappers' own trainable variables (adaptive thresholds r, L0 gate
  parameters log α) from the optimizer's weight decay (AdamW, ``weight_decay=``), as the
  reference codes do; tfmot's callback does not, so use this one with such an optimizer.

  At the start of ``fit`` it sets every wrapper's step counter from −1 to 0 (the wrappers count
  training steps themselves); at each epoch end it asks each wrapper to write its deployable
  weight once its schedule is over, which makes ``tfmot.sparsity.keras.strip_pruning`` exact.
  tfmot's own callback does the same for tf_gibbs wrappers; this one also records the
  Gibbs inverse temperature as ``logs["beta"]`` (seen by ``History`` and TensorBoard) when all
  Gibbs wrappers share it, and each adaptive-threshold layer's r and zero fraction as
  ``logs["r_<layer>"]`` and ``logs["sparsity_<layer>"]``, and under a network-wide budget
  (``allocation="network"``, Gibbs and L0, both Kerases) each layer's share of it as
  ``logs["allocated_sparsity_<layer>"]`` (read once per epoch, so they cost no step time; put
  this callback before ``TensorBoard`` in the list to log them there).
  """

  def set_model(self, model):
    self._keras3 = is_keras3_object(model)
    super().set_model(model)

  def on_train_begin(self, logs=None):
    if getattr(self, "_keras3", False):
      # Keras 3 wrappers count their own steps: the callback has nothing to update there; it
      # only keeps their thresholds and gate parameters out of the optimizer's weight decay.
      from tf_gibbs.keras3 import wrapper as wrapper3  # pylint: disable=g-import-not-at-top
      wrapper3.exclude_from_weight_decay(getattr(self.model, "optimizer", None), self.model)
      return
    # tfmot's collect_prunable_layers does not look inside TimeDistributed and other wrappers.
    self.prunable_layers = [layer for layer in walk_layers(self.model)
                            if isinstance(layer, pruning_wrapper.PruneLowMagnitude)]
    if not self.prunable_layers:
      warnings.warn("UpdatePruningStep: the model has no pruning wrapper; nothing to update.",
                    stacklevel=2)
      return
    # A newly created model's steps go from −1 to 0; a restored one keeps its steps. Wrappers
    # not built yet (in a subclassed model they are built inside the first training step) are
    # told to start at 0 (tfmot's callback reads the step of the first wrapper and fails there).
    optimizer = getattr(self.model, "optimizer", None)
    for layer in self.prunable_layers:
      if not layer.built:
        layer._initial_pruning_step = 0  # pylint: disable=protected-access
        layer._weight_decay_optimizer = optimizer  # pylint: disable=protected-access
      elif isinstance(layer, wrapper_lib.PruningWrapper):
        # Thresholds and gate parameters are not weights: no weight decay on them.
        wrapper_lib.exclude_from_weight_decay(optimizer, layer._trainable_weights)  # pylint: disable=protected-access
    built = [layer for layer in self.prunable_layers if layer.built]
    if built and int(keras.backend.get_value(built[0].pruning_step)) == -1:
      keras.backend.batch_set_value([(layer.pruning_step, 0) for layer in built])

  def on_train_batch_begin(self, batch, logs=None):
    if not getattr(self, "_keras3", False):
      super().on_train_batch_begin(batch, logs)

  def on_epoch_end(self, batch, logs=None):
    if getattr(self, "_keras3", False):
      if logs is not None:
        _log_allocations(walk_layers(self.model), logs)
      return
    super().on_epoch_end(batch, logs)
    if logs is None:
      return
    _log_allocations(self.prunable_layers, logs)
    betas = {float(layer.beta()) for layer in self.prunable_layers
             if isinstance(layer, gibbs_lib.GibbsPruning)}
    if len(betas) == 1:
      logs["beta"] = betas.pop()
    for layer in self.prunable_layers:
      if isinstance(layer, adaptive_lib.AdaptiveThreshold):
        logs[f"r_{layer.layer.name}"] = layer.clipped_r()
        logs[f"sparsity_{layer.layer.name}"] = 1.0 - float(tf.reduce_mean(layer.mask))


def _log_allocations(layers, logs):
  """logs["allocated_sparsity_<layer>"]: each layer's share of a network-wide budget."""
  for layer in layers:
    if getattr(layer, "allocation", None) == "network" and hasattr(layer, "allocated_sparsity"):
      logs[f"allocated_sparsity_{layer.layer.name}"] = float(layer.allocated_sparsity.numpy())
