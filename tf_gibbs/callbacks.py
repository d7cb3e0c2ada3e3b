"""Keras callbacks."""

import warnings

from tensorflow_model_optimization.python.core.sparsity.keras import pruning_callbacks

from tf_gibbs import gibbs as gibbs_lib


class UpdatePruningStep(pruning_callbacks.UpdatePruningStep):
  """tfmot's ``UpdatePruningStep``, plus a warning when there is nothing to update and β in logs.

  At the start of ``fit`` it sets every wrapper's step counter from −1 to 0 (the wrappers count
  training steps themselves); at each epoch end it asks each wrapper to write its deployable
  weight once its schedule is over, which makes ``tfmot.sparsity.keras.strip_pruning`` exact.
  tfmot's own callback does the same for tf_gibbs wrappers; this one also records the
  Gibbs inverse temperature as ``logs["beta"]`` (seen by ``History`` and TensorBoard) when all
  Gibbs wrappers share it.
  """

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    if not self.prunable_layers:
      warnings.warn("UpdatePruningStep: the model has no pruning wrapper; nothing to update.",
                    stacklevel=2)

  def on_epoch_end(self, batch, logs=None):
    super().on_epoch_end(batch, logs)
    if logs is None:
      return
    betas = {float(layer.beta()) for layer in self.prunable_layers
             if isinstance(layer, gibbs_lib.GibbsPruning)}
    if len(betas) == 1:
      logs["beta"] = betas.pop()
