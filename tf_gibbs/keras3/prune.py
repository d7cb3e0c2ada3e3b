"""The Keras 3 side of the public API: wrap a model or layers, strip the wrappers.

``tf_gibbs.prune_gibbs`` / ``prune_l0`` / ``prune_adaptive`` / ``strip_pruning`` dispatch here
when given Keras 3 objects (:func:`tf_gibbs.prune` checks the arguments first, so both Kerases
validate alike). The user's model is never modified: the pruned and the stripped models own
fresh copies of every layer, with copies of its weights.
"""

import warnings

import keras

from tf_gibbs.keras3 import wrapper as wrapper_lib
from tf_gibbs.schedule import strip_warning

_SKIPPED = "skipped (`skip`)"


def _holds_weights(layer):
  return bool(layer.weights)


def _unsupported_reason(layer):
  name = type(layer).__name__
  inner = getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)
  if inner is not None:
    return (f"a {name} wrapper around {type(inner).__name__}: tf_gibbs does not prune inside "
            f"{name}")
  return (f"{name} is not supported (tf_gibbs prunes "
          f"{', '.join(wrapper_lib.supported_layer_names())})")


def is_graph_model(model):
  return isinstance(model, keras.Sequential) or type(model) in (keras.Model,) or (
      isinstance(model, keras.Model) and getattr(model, "_is_graph_network", False)) or (
          type(model).__name__ == "Functional")


def _check_model(model, argument):
  if not is_graph_model(model):
    raise ValueError(
        f"`{argument}` is a subclassed model ({type(model).__name__}), which cannot be cloned "
        "layer by layer. Wrap the layers inside the model instead, e.g. "
        "`self.dense = tf_gibbs.prune_gibbs(keras.layers.Dense(10))` in its __init__.")
  wrapped = [layer.name for layer in walk_layers(model)
             if isinstance(layer, wrapper_lib.PruningWrapper)]
  if wrapped:
    raise ValueError(f"`{argument}` already contains pruning wrappers: {wrapped}. Strip them "
                     "first (`tf_gibbs.strip_pruning`) or wrap the original model.")


def walk_layers(model):
  """The layers of ``model`` and, recursively, of its nested models."""
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from walk_layers(layer)


def _copy(layer, copies):
  """A fresh layer of the same config; its weights are copied once the clone is built."""
  copy = type(layer).from_config(layer.get_config())
  copies.append((copy, layer))
  return copy


def _set_copied_weights(copies):
  for copy, layer in copies:
    target = copy.layer if isinstance(copy, wrapper_lib.PruningWrapper) and not isinstance(
        layer, wrapper_lib.PruningWrapper) else copy
    target.set_weights(layer.get_weights())


def _clone(model, clone_function):
  return keras.models.clone_model(model, clone_function=clone_function)


def apply_wrappers(to_prune, make_wrapper, skip_predicate, api_name, fits=None):
  """Wraps the supported layers of a Keras 3 model, layer or list with ``make_wrapper``."""
  wrapper_lib.check_backend()
  if isinstance(to_prune, (list, tuple)):
    for i, layer in enumerate(to_prune):
      if isinstance(layer, keras.Model):
        raise TypeError(f"`to_prune[{i}]` is a model; pass models directly, not in a list.")
    return [layer if skip_predicate(layer) else make_wrapper(layer, i)
            for i, layer in enumerate(to_prune)]
  if isinstance(to_prune, keras.Model):
    _check_model(to_prune, "to_prune")
    wrapped, copies, left_dense = [], [], {}

    def clone(layer):
      if isinstance(layer, keras.Model):
        _check_model(layer, f"nested model {layer.name}")
        return _clone(layer, clone)
      if type(layer) not in wrapper_lib.PRUNABLE:
        if _holds_weights(layer):
          left_dense[layer.name] = _unsupported_reason(layer)
        return _copy(layer, copies)
      if skip_predicate(layer):
        left_dense[layer.name] = _SKIPPED
        return _copy(layer, copies)
      reason = None if fits is None else fits(layer)
      if reason is not None:
        left_dense[layer.name] = reason
        return _copy(layer, copies)
      wrapped.append(layer.name)
      return make_wrapper(_copy(layer, copies), len(wrapped) - 1)

    model = _clone(to_prune, clone)
    _set_copied_weights(copies)
    if not wrapped:
      considered = "; ".join(f"{name}: {why}" for name, why in left_dense.items())
      raise ValueError(
          f"{api_name} found no layer to prune in model {to_prune.name!r}: supported layers are "
          f"{wrapper_lib.supported_layer_names()}" +
          (f". Layers considered: {considered}." if considered else
           "; the model has no layer that holds weights."))
    unwrapped = {name: why for name, why in left_dense.items() if why != _SKIPPED}
    if unwrapped:
      warnings.warn(f"{api_name}: layers {list(unwrapped)} are left dense:\n" + "\n".join(
          f"  {name}: {why}" for name, why in unwrapped.items()), stacklevel=3)
    return model
  if isinstance(to_prune, keras.layers.Layer):
    return to_prune if skip_predicate(to_prune) else make_wrapper(to_prune, 0)
  raise TypeError(
      f"`to_prune` must be a Sequential or functional Keras model, a layer or a list of "
      f"layers; got {type(to_prune).__name__}.")


def _stripped_layer(wrapper):
  """A fresh, built copy of the wrapper's inner layer holding the deployable weights."""
  inner = wrapper.layer
  wrapper.check_finite("stripping")
  copy = type(inner).from_config(inner.get_config())
  final = keras.ops.convert_to_numpy(wrapper.final_weight())
  values = [final if v is wrapper.kernel_variable else keras.ops.convert_to_numpy(v.value)
            for v in inner.weights]
  return copy, values


def strip_pruning(model):
  """A plain Keras 3 model (or layer) with every tf_gibbs wrapper replaced by its deployable
  layer; other layers are copied. The wrapped model is not modified."""
  if isinstance(model, wrapper_lib.PruningWrapper):
    if not model.built:
      raise ValueError(f"Wrapper {model.name} is not built; call it on data before stripping.")
    copy, values = _stripped_layer(model)
    copy.build(model.layer._build_shapes_dict and next(iter(  # pylint: disable=protected-access
        model.layer._build_shapes_dict.values())))  # pylint: disable=protected-access
    copy.set_weights(values)
    return copy
  if not isinstance(model, keras.Model):
    raise TypeError(f"`model` must be a Keras model or a tf_gibbs wrapper, got "
                    f"{type(model).__name__}.")
  if not is_graph_model(model):
    raise ValueError(
        f"strip_pruning cannot clone the subclassed model {type(model).__name__}. Rebuild it "
        "with plain layers and copy the weights from `tf_gibbs.strip_pruning(wrapper)` of each "
        "wrapped layer, or define it as a functional model.")
  pending, copies, untrained, unfinished = [], [], [], []

  def strip(layer):
    if isinstance(layer, keras.Model):
      return _clone(layer, strip)
    if isinstance(layer, wrapper_lib.PruningWrapper):
      if int(keras.ops.convert_to_numpy(layer.pruning_step.value)) <= 0:
        untrained.append(layer.name)
      elif not bool(keras.ops.convert_to_numpy(layer.schedule_finished())):
        unfinished.append(layer.name)
      copy, values = _stripped_layer(layer)
      pending.append((copy, values))
      return copy
    return _copy(layer, copies)

  stripped = _clone(model, strip)
  _set_copied_weights(copies)
  for copy, values in pending:
    copy.set_weights(values)
  message = strip_warning(untrained, unfinished)
  if message:
    warnings.warn(message, stacklevel=3)
  return stripped
