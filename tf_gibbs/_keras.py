"""The one place the tf_keras front imports Keras: tf_keras (Keras 2), the Keras tfmot works
with (the Keras 3 front, :mod:`tf_gibbs.keras3`, imports ``keras``).

Importing tensorflow-model-optimization sets ``TF_USE_LEGACY_KERAS=1``, so ``tf.keras`` is
tf_keras in a process that imports tf_gibbs before touching ``tf.keras``; ``import keras`` stays
Keras 3. Keras 3 objects cannot be pruned by tfmot-based wrappers; :func:`check_not_keras3`
turns the deep, confusing failure into an immediate error that says what to do.
"""

import tensorflow_model_optimization as tfmot  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
import tf_keras as keras

_KERAS3_HELP = (
    "This function and the wrapper classes at the top of tf_gibbs work with Keras 2 (the "
    "`tf_keras` package, what tensorflow-model-optimization uses). For Keras 3 models use "
    "tf_gibbs.prune_gibbs / prune_l0 / prune_adaptive / strip_pruning, which dispatch on the "
    "object's Keras, or the wrappers in tf_gibbs.keras3 (shrink, pack_narrow_convs, "
    "export_tflite and sparsity_report take both Kerases).")


def is_keras3_object(obj):
  """True if ``obj`` is a Keras 3 layer or model (a class from the ``keras`` package)."""
  for cls in type(obj).__mro__:
    module = getattr(cls, "__module__", "") or ""
    if module == "keras" or module.startswith("keras."):
      return True
  return False


def import_order_hint():
  """A sentence for errors about a Keras 3 object where tf_keras was expected, when ``tf.keras``
  is Keras 3 in this process although tfmot set ``TF_USE_LEGACY_KERAS``: ``tf.keras`` was used
  before ``import tf_gibbs``. Empty otherwise."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    module = tf.keras.layers.Dense.__module__ or ""
  except AttributeError:
    return ""
  if module == "keras" or module.startswith("keras."):
    return (" In this process `tf.keras` is Keras 3, not tf_keras: it was used before "
            "`import tf_gibbs` (which, through tfmot, sets TF_USE_LEGACY_KERAS=1 for tf.keras). "
            "Import tf_gibbs before the first use of `tf.keras`, or build the model with "
            "`import tf_keras as keras`.")
  return ""


def targets_keras3(obj, argument="to_prune"):
  """True if ``obj`` (a layer, a model, or a list of them) is Keras 3, False if tf_keras.

  Raises TypeError for a list that mixes the two Kerases (one model cannot hold both).
  """
  items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
  kinds = {is_keras3_object(item) for item in items if hasattr(item, "__class__")}
  if len(kinds) > 1:
    raise TypeError(
        f"`{argument}` mixes Keras 3 objects (`import keras`) and tf_keras objects "
        "(`import tf_keras`); a model is built with one Keras. Use the same Keras for all."
        + import_order_hint())
  return kinds == {True}


def check_not_keras3(obj, argument):
  """Raises TypeError if ``obj`` is a Keras 3 object."""
  if is_keras3_object(obj):
    raise TypeError(
        f"`{argument}` is a Keras 3 object ({type(obj).__module__}.{type(obj).__name__}). "
        + _KERAS3_HELP + import_order_hint())


def is_graph_model(model):
  """True for a Sequential or functional tf_keras model (not a subclassed one)."""
  return isinstance(model, keras.Model) and (
      isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False))


def walk_layers(model):
  """Yields the layers of ``model`` and, recursively, of the models nested in it and the layers
  inside Keras layer wrappers (``TimeDistributed(prune_gibbs(Dense(...)))``'s pruning wrapper;
  not the layer inside a pruning wrapper)."""
  for layer in model.layers:
    yield from _layer_and_nested(layer)


def _layer_and_nested(layer):
  from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # pylint: disable=g-import-not-at-top
  yield layer
  if isinstance(layer, keras.Model):
    yield from walk_layers(layer)
  elif isinstance(layer, keras.layers.Wrapper) and not isinstance(
      layer, pruning_wrapper.PruneLowMagnitude):
    yield from _layer_and_nested(layer.layer)


def wrapped_layer_names(model):
  """Names of the pruning wrappers (tf_gibbs' or tfmot's) in ``model``, nested models included."""
  from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # pylint: disable=g-import-not-at-top
  return [layer.name for layer in walk_layers(model)
          if isinstance(layer, pruning_wrapper.PruneLowMagnitude)]
