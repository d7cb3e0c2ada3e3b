"""Physical removal of pruned filters: a stripped model becomes a smaller dense model.

Zeros in a dense kernel change neither the size nor the speed of a model. :func:`shrink` removes
the output channels (filters of Conv1D/2D/3D, units of Dense, channels of DepthwiseConv2D) that
carry no information and the matching input channels of every consumer.

Which channels go. A channel is *constant* when its value does not depend on the model's input:
a filter whose weights on every non-constant input channel are zero outputs act(b + c), c the
contribution of constant input channels, everywhere; BatchNormalization, activations, pooling,
dropout and elementwise merges of constant channels stay constant. Only activations known to be
element-wise (relu, relu6, sigmoid, tanh, swish/silu, gelu, elu, selu, softplus, hard_sigmoid,
leaky relu, linear, ...; matched by identity) pass channels through; any other activation
(softmax, l2-normalize, a custom function) keeps every channel of its layer, and the report
says why. A constant channel is not a
zero channel (a zero filter followed by BatchNormalization outputs β − γμ/σ), so removing it
alone would change the outputs. Instead, its contribution to each consumer is folded in:

    y = act(W_K * x_K + b + W_R * c_R)

(K kept, R removed input channels). For Dense layers, 'valid' or 1×1 convolutions W_R * c_R is a
constant vector, added to the bias. For a 'same' (or causal) k×k convolution it differs near the
borders, where zero padding meets the constants. Two exact ways to keep that:

* ``borders="map"`` (default): its value at the centre goes into the bias and the rest, a map
  that is zero except near the borders, is added by a :class:`SpatialBias` layer. The map moves
  past BatchNormalization (scaled by γ/√(σ²+ε)) and Add, so TFLite still folds the
  BatchNormalization into the convolution: one addition per such convolution, and
  H·W·C extra (mostly zero) parameters.
* ``borders="channel"`` (and wherever the input size is not static): one removed constant
  channel j (the largest |c_j|) stays and carries the others, W'_j = Σ_{i ∈ R ∪ {j}} c_i W_i / c_j,
  exact at every position (the padding hides the same taps of every channel). Fewest
  parameters, but an odd channel count (9 instead of 8) costs a whole SIMD tile on CPUs.

The outputs therefore match the original model up to float rounding.

Channels that must stay. Layers that map channel i to channel i (BatchNormalization, pooling,
Add, ...) keep the same channels on their inputs and outputs, Concatenate and Flatten map kept
channels to kept positions, and the model's inputs and outputs keep every channel: a constant
channel tied to a non-constant one (a zero filter whose residual partner is not zero) stays.
Layers tf_gibbs does not know (and shared layers) keep all channels of their inputs and outputs;
the report returned with the model says which, and why.
"""

import functools

import numpy as np
import tensorflow as tf

from tf_gibbs import _keras
from tf_gibbs._keras import keras

L = keras.layers  # tf_keras; code that serves both Kerases takes its layers from `front.layers`

# Layers whose output channel i is a function of input channel i alone (channels last).
_CHANNELWISE_NAMES = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "PReLU",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "BatchNormalization")
_MERGE_NAMES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
_PRODUCER_NAMES = ("Conv1D", "Conv2D", "Conv3D", "Dense")
# Activations known to act on each element alone, so channel i of act(z) depends on z_i only.
# Matched by identity (a user function that happens to be called "relu" is not trusted);
# anything else (softmax, tf.nn.softmax = softmax_v2, l2-normalize, a lambda) mixes or may mix
# channels: its layer keeps all channels, and the report says why.
_ELEMENTWISE_ACTIVATION_NAMES = (
    "linear", "relu", "relu6", "sigmoid", "tanh", "swish", "silu", "gelu", "elu", "selu",
    "softplus", "softsign", "hard_sigmoid", "hard_silu", "hard_swish", "exponential",
    "leaky_relu", "mish", "log_sigmoid", "exp", "abs", "square", "negative")


class Front:
  """What the deployment code needs of one Keras (tf_keras, or Keras 3 on any backend): its
  layer classes, how to flatten outputs and read values, and the layers shrink adds. Every
  equation and every graph rule of shrink, pack_narrow_convs and the report is written once,
  against this; a Keras 3 model and a tf_keras model go through the same code."""

  def __init__(self, module, keras3):
    self.keras = module
    self.layers = module.layers
    self.keras3 = keras3
    names = lambda ns: tuple(getattr(module.layers, n) for n in ns if hasattr(module.layers, n))
    self.channelwise = names(_CHANNELWISE_NAMES)
    self.merges = names(_MERGE_NAMES)
    self.producers = names(_PRODUCER_NAMES)
    modules = [module.activations, tf.nn, tf.math] + ([module.ops] if keras3 else [])
    self.elementwise = {getattr(m, n) for m in modules for n in _ELEMENTWISE_ACTIVATION_NAMES
                        if callable(getattr(m, n, None))}

  def flatten(self, structure):
    return (self.keras.tree.flatten if self.keras3 else tf.nest.flatten)(structure)

  def numpy(self, value):
    return np.asarray(self.keras.ops.convert_to_numpy(value) if self.keras3 else value)

  def spatial_bias(self, *args, **kwargs):
    if self.keras3:
      from tf_gibbs.keras3.layers import SpatialBias as SpatialBias3  # pylint: disable=g-import-not-at-top
      return SpatialBias3(*args, **kwargs)
    return SpatialBias(*args, **kwargs)

  def mixes_channels(self, activation):
    """True unless ``activation`` is one of the known element-wise activations."""
    return activation is not None and activation not in self.elementwise

  def wrapper_class(self):
    """This Keras' tf_gibbs pruning wrapper base class."""
    if self.keras3:
      from tf_gibbs.keras3.wrapper import PruningWrapper as PruningWrapper3  # pylint: disable=g-import-not-at-top
      return PruningWrapper3
    from tf_gibbs.wrapper import PruningWrapper  # pylint: disable=g-import-not-at-top
    return PruningWrapper

  def walk_layers(self, model):
    """The layers of ``model`` and of the models nested in it."""
    if self.keras3:
      from tf_gibbs.keras3 import prune as prune3  # pylint: disable=g-import-not-at-top
      return prune3.walk_layers(model)
    return _keras.walk_layers(model)

  def is_graph_model(self, model):
    """True for a Sequential or functional model (not a subclassed one)."""
    if self.keras3:
      from tf_gibbs.keras3 import prune as prune3  # pylint: disable=g-import-not-at-top
      return prune3.is_graph_model(model)
    return _keras.is_graph_model(model)

  def wrapped_layer_names(self, model):
    """Names of the pruning wrappers in ``model`` (tf_keras: tfmot's too)."""
    if self.keras3:
      wrapper = self.wrapper_class()
      return [layer.name for layer in self.walk_layers(model) if isinstance(layer, wrapper)]
    return _keras.wrapped_layer_names(model)


def channel_axis_only(axis, rank):
  """True if a BatchNormalization ``axis`` (tf_keras: a list; Keras 3: an int) is the last
  (channel) axis of a rank-``rank`` tensor, and only that."""
  axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
  return [a % rank for a in axes] == [rank - 1]


@functools.lru_cache(maxsize=None)
def _front(keras3):
  if keras3:
    import keras as keras3_module  # pylint: disable=g-import-not-at-top
    return Front(keras3_module, True)
  return Front(keras, False)


def front_of(model):
  """The :class:`Front` of ``model``'s Keras."""
  return _front(_keras.is_keras3_object(model))


def _activation_name(activation):
  return getattr(activation, "__name__", None) or type(activation).__name__


def _mixing_reason(activation):
  return (f"activation {_activation_name(activation)!r} is not known to be element-wise "
          "(it may mix channels): its output channels are kept")
BORDERS = ("channel", "map")


@keras.utils.register_keras_serializable(package="tf_gibbs")
class SpatialBias(keras.layers.Layer):
  """Adds a fixed map: y = x + B, B of shape ``x.shape[1:]`` (a non-trainable weight).

  Written by :func:`shrink` with ``borders="map"`` where removed constant channels reach a
  'same'-padded convolution: their contribution W_R * c_R differs near the image borders.
  Exact in inference; a map moved past BatchNormalization (scaled by its inference-time γ/σ)
  is only approximately right if the shrunk model is fine-tuned with BatchNormalization in
  training mode.
  """

  def __init__(self, bias_shape, **kwargs):
    super().__init__(**kwargs)
    self.bias_shape = tuple(int(d) for d in bias_shape)

  def build(self, input_shape):
    self.bias = self.add_weight("bias", shape=self.bias_shape, initializer="zeros",
                                trainable=False)
    super().build(input_shape)

  def call(self, inputs):
    return inputs + tf.cast(self.bias, inputs.dtype)

  def get_config(self):
    return {**super().get_config(), "bias_shape": list(self.bias_shape)}


def _uniform(values):
  """Per channel: is ``values`` (1, ..., C) the same everywhere? Returns (bool[C], value[C])."""
  flat = values.reshape(-1, values.shape[-1])
  spread = flat.max(axis=0) - flat.min(axis=0)
  scale = np.maximum(1.0, np.abs(flat).max(axis=0))
  return spread <= 1e-6 * scale, flat[0]


def _kind(layer, node_count, front, in_shapes, out_shapes):
  """How shrink treats ``layer``: (kind, reason it is left as it is or None)."""
  L = front.layers  # pylint: disable=invalid-name
  if node_count > 1:
    return "fixed", "shared layer (called more than once)"
  t = type(layer)
  if t is L.InputLayer:
    return "input", None
  if getattr(layer, "data_format", "channels_last") != "channels_last":
    return "fixed", "channels_first data format"
  if t in front.producers:
    if getattr(layer, "groups", 1) != 1:
      return "fixed", "grouped convolution"
    return "producer", None
  if t is L.DepthwiseConv2D:
    return "depthwise", None
  if t in front.channelwise:
    if t is L.BatchNormalization and not channel_axis_only(layer.axis, len(in_shapes[0])):
      return "fixed", f"BatchNormalization over axis {layer.axis}, not the channel axis"
    if t is L.Activation and front.mixes_channels(layer.activation):
      return "fixed", _mixing_reason(layer.activation)
    return "channelwise", None
  if t in front.merges:
    return "channelwise", None
  if t is L.Concatenate:
    rank = len(out_shapes[0])
    return ("concat", None) if layer.axis in (-1, rank - 1) else ("channelwise", None)
  if t is L.Flatten:
    return "flatten", None
  if t is L.Reshape:
    in_shape, target = tuple(in_shapes[0][1:]), tuple(layer.target_shape)
    if None not in in_shape and target and target[-1] == in_shape[-1]:
      return "channelwise", None
    if None not in in_shape and len(target) == 1:
      return "flatten", None
    return "fixed", "Reshape that mixes the channel axis with others"
  return "fixed", f"{t.__name__} is not a layer shrink knows how to slice"


class _CallSpec:
  """How a node called its layer: the positional and keyword arguments with their Keras
  tensors replaced by given values (nested tensors in kwargs, e.g. MultiHeadAttention's
  ``value``, and constant arguments, e.g. of a TF-op layer, included)."""

  def __init__(self, node, keras3):
    self._node = node
    self._keras3 = keras3

  def __call__(self, layer, inputs, **extra):
    """Calls ``layer`` with ``inputs``, in the order of the node's Keras inputs."""
    node = self._node
    if self._keras3:  # keras.src.ops.node.Node
      import keras as keras3  # pylint: disable=g-import-not-at-top
      if not isinstance(layer, keras3.layers.Layer):  # an op (keras.ops.*) takes no `training`
        extra = {}
      args, kwargs = node.arguments.fill_in(
          {id(t): value for t, value in zip(node.input_tensors, inputs)})
      return layer(*args, **{**kwargs, **extra})
    if not node._keras_inputs_ids_and_indices:  # pylint: disable=protected-access
      return layer(*node.call_args, **{**node.call_kwargs, **extra})
    values = {}
    for (tensor_id, _), value in zip(node._keras_inputs_ids_and_indices, inputs):  # pylint: disable=protected-access
      values.setdefault(tensor_id, []).append(value)
    args, kwargs = node.map_arguments(values)
    return layer(*args, **{**kwargs, **extra})


def _key(keras_tensor):
  history = keras_tensor._keras_history  # pylint: disable=protected-access
  return (history[0].name, history.node_index, history.tensor_index)


def _static_shape(keras_tensor):
  return tuple(None if d is None else int(d) for d in tuple(keras_tensor.shape))


class _Graph:
  """The functional graph of a model as nodes in an order where inputs come first, read from
  Keras' own nodes (not the config), so nested tensor arguments and constants are kept; the
  same for tf_keras and Keras 3 (``front`` says which).

  A node is (layer config, layer, node index, [input keys], call spec); a key is (layer name,
  node index, output index), node indices as in ``layer._inbound_nodes``; ``shapes`` maps every
  key to its static shape (batch axis first), ``out_keys`` each (layer name, node index) to
  its output keys."""

  def __init__(self, model, front):
    self.model = model
    self.front = front
    self.nodes = []
    self.node_counts = {}
    self.shapes = {}
    self.out_keys = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
      for node in model._nodes_by_depth[depth]:  # pylint: disable=protected-access
        layer = node.operation if front.keras3 else node.layer
        self.node_counts[layer.name] = self.node_counts.get(layer.name, 0) + 1
        index = layer._inbound_nodes.index(node)  # pylint: disable=protected-access
        if front.keras3:
          inputs = [] if node.is_input else [_key(t) for t in node.input_tensors]
          outputs = node.outputs
        else:
          inputs = [] if node.is_input else [_key(t) for t in node.keras_inputs]
          outputs = tf.nest.flatten(node.outputs)
        self.out_keys[(layer.name, index)] = [(layer.name, index, t)
                                              for t in range(len(outputs))]
        for key, out in zip(self.out_keys[(layer.name, index)], outputs):
          self.shapes[key] = _static_shape(out)
        config = {"name": layer.name, "config": layer.get_config()}
        self.nodes.append((config, layer, index, inputs, _CallSpec(node, front.keras3)))
    self.inputs = [_key(t) for t in model.inputs]
    self.outputs = [_key(t) for t in model.outputs]

  def in_shapes(self, inputs):
    return [self.shapes[k] for k in inputs]

  def out_shapes(self, name, index):
    return [self.shapes[k] for k in self.out_keys[(name, index)]]


def graph_of(model, caller):
  """The :class:`_Graph` of a stripped, built Sequential or functional ``model`` (tf_keras or
  Keras 3); TypeError or ValueError (naming ``caller``) for anything else."""
  front = front_of(model)
  kind = "Keras 3" if front.keras3 else "tf_keras"
  if not isinstance(model, front.keras.Model):
    raise TypeError(f"`model` must be a Sequential or functional model (tf_keras or Keras 3), "
                    f"got {type(model).__name__}.")
  if not front.is_graph_model(model):
    raise ValueError(f"{caller} needs a Sequential or functional model; `model` is the "
                     f"subclassed {kind} model {type(model).__name__}. Define it as a "
                     "functional model (the layers and weights can be reused).")
  if not model.built or not model.inputs:
    raise ValueError(f"`model` is not built: give the Sequential model an Input (or call "
                     f"`model.build(input_shape)`) before calling {caller}.")
  wrapped = front.wrapped_layer_names(model)
  if wrapped:
    raise ValueError(f"`model` still holds pruning wrappers {wrapped}: strip it first with "
                     "`tf_gibbs.strip_pruning(model)`.")
  if isinstance(model, front.keras.Sequential):
    model = front.keras.Model(model.inputs, model.outputs, name=model.name)
  return _Graph(model, front)


def _dtype_name(dtype):
  """A dtype's name (Keras 3 layers may hold a DTypePolicy or a backend dtype)."""
  if dtype is None:
    return None
  return getattr(dtype, "name", None) if not isinstance(dtype, str) else dtype


def _probe(shape, cmask, cval):
  """A batch-1 input whose constant channels hold their constants and the others zero."""
  return np.broadcast_to(np.where(cmask, cval, 0.0), (1,) + shape).astype(np.float32)


def shrink(model, borders="map"):
  """Builds a smaller dense model without the constant (e.g. pruned) channels of ``model``.

  Args:
    model: a stripped Sequential or functional model, tf_keras or Keras 3 on any backend (no
      pruning wrappers), for example ``tf_gibbs.strip_pruning(pruned)`` of a filter-, unit- or
      kernel-pruned model. The shrunk model is of the same Keras.
    borders: how constants removed before a 'same' convolution stay exact near the image
      borders: ``"map"`` (a :class:`SpatialBias` after the convolution; fastest) or
      ``"channel"`` (one constant channel kept; fewest parameters). See the module docstring.

  Returns:
    ``(shrunk_model, report)``. ``shrunk_model`` is a new functional model with fresh layers
    (layer names kept) whose outputs equal ``model``'s up to float rounding. ``report`` is a
    dict: ``"layers"`` maps each Conv/Dense/DepthwiseConv2D layer to its output channels
    ``before`` and ``after`` and the constant channels it had to ``keep``; ``"left_as_is"``
    maps layers shrink could not slice to the reason; ``"carrier"`` maps each 'same'
    convolution that needed one constant input channel to carry the removed ones to that
    channel; ``"spatial_bias"`` names the :class:`SpatialBias` layers added;
    ``"params_before"`` / ``"params_after"`` count all weights.

  Raises:
    TypeError: ``model`` is not a Keras model.
    ValueError: ``model`` is subclassed, not built, or still holds pruning wrappers.
  """
  if borders not in BORDERS:
    raise ValueError(f"`borders` must be one of {BORDERS}, got {borders!r}.")
  graph = graph_of(model, "shrink")
  analysis = _analyze(graph, borders)
  return _rebuild(graph, analysis)


def _analyze(graph, borders):
  """Constant channels of every tensor, then which channels every tensor keeps."""
  shapes, cmask, cval = {}, {}, {}
  kinds, left_as_is = {}, {}
  links = []        # (in_key, out_key, in_index[], out_index[]): keep[out] == keep[in]
  rng = np.random.RandomState(0)
  values = {}       # a real forward pass (batch 1), for the shapes
  forced = set()
  front = graph.front
  for c, layer, i, inputs, spec in graph.nodes:
    kind, reason = _kind(layer, graph.node_counts[c["name"]], front, graph.in_shapes(inputs),
                         graph.out_shapes(c["name"], i))
    kinds[c["name"]] = kind
    if reason:
      left_as_is[c["name"]] = reason
    if kind == "input":
      shape = tuple(16 if d is None else d for d in graph.shapes[(c["name"], 0, 0)][1:])
      dtype = tf.as_dtype(_dtype_name(layer.dtype) or "float32")
      if dtype.is_integer or dtype.is_bool:  # token ids: valid indices for any vocabulary
        values[(c["name"], 0, 0)] = rng.randint(0, 2, (1,) + shape).astype(dtype.as_numpy_dtype)
      else:
        values[(c["name"], 0, 0)] = rng.randn(1, *shape).astype(dtype.as_numpy_dtype)
      outs = [values[(c["name"], 0, 0)]]
    else:
      outs = [front.numpy(o) for o in front.flatten(
          spec(layer, [values[k] for k in inputs], training=False))]
    out_keys = [(c["name"], i, t) for t in range(len(outs))]
    for key, out in zip(out_keys, outs):
      values[key] = out
      shapes[key] = out.shape[1:]
      cmask[key] = np.zeros(out.shape[-1], bool)
      cval[key] = np.zeros(out.shape[-1])
    if kind in ("input", "fixed"):
      forced.update(inputs + out_keys)
      continue
    out_key = out_keys[0]
    probes = [_probe(shapes[k], cmask[k], cval[k]) for k in inputs]
    uniform, value = _uniform(front.numpy(spec(layer, probes, training=False)))
    if kind == "producer":
      kernel = layer.kernel.numpy()
      in_key = inputs[0]
      varying_in = ~cmask[in_key]
      reaches = np.abs(kernel[..., varying_in, :]).reshape(-1, kernel.shape[-1]).max(
          axis=0, initial=0.0) > 0
      const = ~reaches & uniform
    elif kind == "depthwise":
      kernel = layer.depthwise_kernel.numpy()
      multiplier = kernel.shape[-1]
      dead = np.abs(kernel).reshape(-1, *kernel.shape[-2:]).max(axis=0) == 0  # (C, m)
      const = (dead | cmask[inputs[0]][:, None]).reshape(-1) & uniform
      channels = np.arange(kernel.shape[-2])
      links.append((inputs[0], out_key, np.repeat(channels, multiplier),
                    np.arange(channels.size * multiplier)))
    elif kind == "channelwise":
      const = np.logical_and.reduce([cmask[k] for k in inputs]) & uniform
      for k in inputs:
        links.append((k, out_key, np.arange(cmask[k].size), np.arange(cmask[k].size)))
    elif kind == "concat":
      const = np.concatenate([cmask[k] for k in inputs])
      value = np.concatenate([cval[k] for k in inputs])
      offset = 0
      for k in inputs:
        n = cmask[k].size
        links.append((k, out_key, np.arange(n), offset + np.arange(n)))
        offset += n
    elif kind == "flatten":
      n = cmask[inputs[0]].size
      repeats = int(np.prod(shapes[inputs[0]][:-1]))
      const = np.tile(cmask[inputs[0]], repeats)
      value = np.tile(cval[inputs[0]], repeats)
      links.append((inputs[0], out_key, np.tile(np.arange(n), repeats),
                    np.arange(n * repeats)))
    if kind in ("producer", "depthwise") and front.mixes_channels(layer.activation):
      const[:] = False  # e.g. softmax(z)_j depends on every z
      left_as_is[c["name"]] = _mixing_reason(layer.activation)
    cmask[out_key] = const
    cval[out_key] = np.where(const, value, 0.0)
  forced.update(graph.outputs)

  keep = {key: ~m for key, m in cmask.items()}
  for key in forced:
    keep[key][:] = True
  producers = [(layer, inputs[0]) for c, layer, i, inputs, _ in graph.nodes
               if kinds[c["name"]] == "producer"]
  carriers = {}
  static = all(None not in tuple(t.shape)[1:] for t in graph.model.inputs)
  while True:
    _propagate(keep, links)
    added = False
    for key, kept in keep.items():  # never rebuild a layer with zero channels: one stays
      if kept.size and not kept.any():
        kept[0] = True
        added = True
    if added:
      continue
    for layer, in_key in producers:
      if borders == "map" and static:
        continue
      if _carrier(layer, keep[in_key], cmask[in_key], cval[in_key], front) == -1:
        removed = np.flatnonzero(~keep[in_key])
        chosen = removed[np.argmax(np.abs(cval[in_key][removed]))]
        keep[in_key][chosen] = True
        carriers[layer.name] = int(chosen)
        added = True
    if not added:
      break
  folds = {layer.name: _carrier(layer, keep[in_key], cmask[in_key], cval[in_key], front)
           for layer, in_key in producers}
  return {"shapes": shapes, "cmask": cmask, "cval": cval, "keep": keep, "kinds": kinds,
          "left_as_is": left_as_is, "carriers": carriers, "folds": folds}


def _propagate(keep, links):
  """Grows the kept sets until every link holds: keep[out][o] == keep[in][i] for linked o, i."""
  changed = True
  while changed:
    changed = False
    for in_key, out_key, ins, outs in links:
      merged = keep[in_key][ins] | keep[out_key][outs]
      if not (np.array_equal(merged, keep[out_key][outs])
              and np.array_equal(merged, keep[in_key][ins])):
        changed = True
        keep[out_key][outs] = merged
        np.logical_or.at(keep[in_key], ins, merged)


def _removed_contribution(layer, keep, cval):
  """V = Σ_{i removed} c_i W[..., i, :]: what the removed (constant) input channels add per tap."""
  kernel = layer.kernel.numpy()
  removed = ~keep
  return np.tensordot(kernel[..., removed, :], cval[removed], axes=([-2], [0]))


def _carrier(layer, keep, cmask, cval, front):
  """For a producer: None if the removed inputs fold into the bias; else the kept constant
  input channel that carries them (-1 if there is none yet)."""
  if not _border_dependent(layer, front) or not np.any(_removed_contribution(layer, keep, cval)):
    return None
  candidates = np.flatnonzero(keep & cmask & (cval != 0))
  if not candidates.size:
    return -1
  return int(candidates[np.argmax(np.abs(cval[candidates]))])


def _border_dependent(layer, front):
  """True for convolutions whose zero padding makes constant inputs vary near the borders."""
  if isinstance(layer, front.layers.Dense) or layer.padding == "valid":
    return False
  return any(k > 1 for k in layer.kernel_size)


def _rebuild(graph, a):
  front = graph.front
  L = front.layers  # pylint: disable=invalid-name
  keep, cval = a["keep"], a["cval"]
  tensors, weights_to_set, new_layers = {}, [], {}
  pending = {}  # tensor key -> (border map still to add to it, layer it comes from)
  consumers = {}
  for k in [k for node in graph.nodes for k in node[3]] + graph.outputs:
    consumers[k] = consumers.get(k, 0) + 1

  def materialize(key):
    border_map, origin = pending.pop(key)
    bias_layer = front.spatial_bias(border_map.shape, name=f"{origin}_border")
    weights_to_set.append((bias_layer, [border_map.astype(np.float32)]))
    tensors[key] = bias_layer(tensors[key])
    report["spatial_bias"].append(bias_layer.name)

  report = {"layers": {}, "left_as_is": dict(a["left_as_is"]), "carrier": dict(a["carriers"]),
            "spatial_bias": [],
            "params_before": int(graph.model.count_params())}
  for c, layer, i, inputs, spec in graph.nodes:
    name, kind = c["name"], a["kinds"][c["name"]]
    cfg = dict(c["config"])
    if "activation" in cfg and callable(getattr(layer, "activation", None)):
      # The function itself: a lambda or tf.nn.log_softmax does not survive its config.
      cfg["activation"] = layer.activation
    if kind == "input":
      new = L.InputLayer.from_config(cfg)
      tensors[(name, 0, 0)] = new.output
      continue
    out_keys = [k for k in keep if k[0] == name and k[1] == i]
    out_key = (name, i, 0)
    weights = [w.numpy() for w in layer.weights]
    border_map = None
    if kind == "producer":
      k_in, k_out = keep[inputs[0]], keep[out_key]
      kernel = weights[0].copy()
      bias = weights[1] if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
      carrier = a["folds"][name]
      contribution = _removed_contribution(layer, k_in, cval[inputs[0]])
      if carrier is None:
        bias = bias + contribution.reshape(-1, kernel.shape[-1]).sum(axis=0)
      elif carrier >= 0:
        kernel[..., carrier, :] += contribution / cval[inputs[0]][carrier]
      else:  # borders="map": the value at the centre goes into the bias, the rest (zero
        # except near the borders) into a SpatialBias.
        full_map = _border_map(layer, cfg, kernel, ~k_in, cval[inputs[0]],
                               a["shapes"][inputs[0]], front)
        centre = full_map[tuple(d // 2 for d in full_map.shape[:-1])]
        bias = bias + centre
        border_map = (full_map - centre)[..., k_out]
        cfg["activation"] = "linear"  # the map goes in before the activation
      kernel, bias = kernel[..., k_in, :][..., k_out], bias[k_out].astype(np.float32)
      use_bias = layer.use_bias or bool(np.any(bias != 0))
      key = "units" if isinstance(layer, L.Dense) else "filters"
      cfg.update({key: int(k_out.sum()), "use_bias": use_bias})
      new_weights = [kernel] + ([bias] if use_bias else [])
      report["layers"][name] = _channel_entry(k_out, a["cmask"][out_key])
    elif kind == "depthwise":
      k_in = keep[inputs[0]]
      kernel = weights[0][:, :, k_in, :]
      new_weights = [kernel] + ([weights[1].reshape(k_in.size, -1)[k_in].reshape(-1)]
                                if layer.use_bias else [])
      report["layers"][name] = _channel_entry(keep[out_key], a["cmask"][out_key])
    elif kind in ("channelwise", "concat", "flatten"):
      channels = cval[inputs[0]].size
      k_in = keep[inputs[0]]
      new_weights = [w[..., k_in] if w.shape and w.shape[-1] == channels else w
                     for w in weights]
      if isinstance(layer, L.Reshape):
        target = list(cfg["target_shape"])
        target[-1] = int(keep[out_key].sum())
        cfg["target_shape"] = tuple(target)
    else:  # fixed
      new_weights = weights
    deferred = []
    for k in inputs:  # border maps move past BatchNormalization and Add (both affine)
      if k in pending and consumers[k] == 1 and (
          type(layer) is L.Add or (type(layer) is L.BatchNormalization and len(inputs) == 1)):
        deferred.append(pending.pop(k))
      elif k in pending:
        materialize(k)
    args = [tensors[k] for k in inputs]
    if name in new_layers:  # a shared layer's later call
      new = new_layers[name]
    else:
      new = new_layers[name] = type(layer).from_config(cfg)
      if new_weights:
        weights_to_set.append((new, new_weights))
    outputs = spec(new, args)
    for key, out in zip(out_keys, front.flatten(outputs)):
      tensors[key] = out
    if deferred:
      border_map = sum(m for m, _ in deferred)
      if type(layer) is L.BatchNormalization:
        border_map = border_map * _batchnorm_scale(layer, keep[inputs[0]])
      pending[out_key] = (border_map, deferred[0][1])
    elif kind == "producer" and border_map is not None:
      pending[out_key] = (border_map, name)
      if layer.activation is not front.keras.activations.linear:
        materialize(out_key)
        tensors[out_key] = L.Activation(layer.activation, name=f"{name}_activation")(
            tensors[out_key])
  for key in list(pending):
    materialize(key)
  shrunk = front.keras.Model([tensors[k] for k in graph.inputs],
                             [tensors[k] for k in graph.outputs],
                             name=graph.model.name)
  for new, values in weights_to_set:
    new.set_weights(values)
  report["params_after"] = int(shrunk.count_params())
  for name, entry in report["layers"].items():
    if entry["kept_constant"]:
      report["left_as_is"].setdefault(
          name, f"{entry['kept_constant']} constant channel(s) kept: tied to channels that are "
                "not constant (a residual Add, a Concatenate, the model output or a layer left "
                "as is), or carrying removed constants into a 'same' convolution (see "
                "'carrier')")
  return shrunk, report


def _batchnorm_scale(layer, keep):
  """dy/dx of BatchNormalization in inference: γ / √(σ² + ε) on the kept channels."""
  gamma = layer.gamma.numpy()[keep] if layer.scale else 1.0
  return gamma / np.sqrt(layer.moving_variance.numpy()[keep] + layer.epsilon)


def _border_map(layer, cfg, kernel, removed, cval, input_shape, front):
  """W_R * c_R at every output position: the removed constants through the zero-padded conv."""
  linear = type(layer).from_config({**cfg, "activation": "linear", "use_bias": False,
                                    "name": layer.name + "_border_probe"})
  probe = _probe(input_shape, removed, cval)
  linear.build(probe.shape)
  linear.set_weights([kernel])
  return front.numpy(linear(probe))[0]


def _channel_entry(keep, cmask):
  return {"before": int(keep.size), "after": int(keep.sum()),
          "kept_constant": int((keep & cmask).sum())}

