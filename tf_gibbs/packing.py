"""Packing narrow convolutions into full SIMD tiles, for CPU inference after :func:`shrink`.

XNNPACK (LiteRT's CPU delegate) computes a convolution's output channels in tiles: 16 wide with
AVX-512, 8 with AVX2 or NEON. A convolution with 8 filters on AVX-512 takes as long as one with
16 (measured in ``benchmarks/deploy.py``), so after shrinking, the narrowest layers gain nothing.
:func:`pack_narrow_convs` rewrites such a stride-1 'same' Conv2D with F filters into one that
computes s = tile // F neighbouring output columns at once:

    y[h, s·u + t, f] = Σ_{i,j,c} K[i, j, c, f] · x[h + i − p_h, s·u + t + j − p_w, c]
                     = Σ_{i,j',c} P[i, j', c, t·F + f] · x[h + i − p_h, s·u + j' − p_w, c],

    P[:, t : t + k_w, :, t·F : (t + 1)·F] = K   (t = 0…s − 1, zeros elsewhere),

a (k_h, k_w + s − 1) kernel with strides (1, s) and s·F filters, followed by a Reshape from
(H, W/s, s·F) to (H, W, F) (the same memory). TensorFlow's 'same' padding of the packed
convolution is k_w − 1 columns in total, split as for the original, so the outputs are equal up
to float rounding. It costs (k_w + s − 1)/k_w times the multiply-accumulates (4/3 for 3×3 and
s = 2) and saves the idle half of every tile: one 3×3 convolution 32×32×16 → 8 measured 46.7
against 32.4 µs packed (LiteRT, XNNPACK, 1 thread, AVX-512). A BatchNormalization and an
activation that follow the convolution (each its only consumer) are folded into the packed
convolution so that TFLite still fuses them. On CPUs whose tile is 8 there is nothing to gain
for F = 8: the tile is an argument, not a guess.
"""

import numpy as np

from tf_gibbs import shrinking
_FOLDABLE_ACTIVATIONS = ("relu", "relu6", "elu", "selu", "tanh", "sigmoid", "swish", "gelu",
                         "linear")


def _packing_factor(layer, node_count, tile, front, input_shape):
  """s = the most columns (≤ tile // filters) that divide the width, if ``layer`` is an unshared
  channels-last, ungrouped, stride-1, undilated 'same' Conv2D of static width; else 0."""
  if type(layer) is not front.layers.Conv2D or node_count != 1:
    return 0
  if layer.data_format != "channels_last" or layer.groups != 1 or layer.padding != "same":
    return 0
  if tuple(layer.strides) != (1, 1) or tuple(layer.dilation_rate) != (1, 1):
    return 0
  width = input_shape[2]
  if width is None or 2 * layer.filters > tile:
    return 0
  factor = tile // layer.filters
  while factor >= 2 and width % factor:
    factor -= 1
  return factor


def _activation_name(layer, front):
  """The activation a layer applies element-wise, if it is one we fold (else None)."""
  L = front.layers  # pylint: disable=invalid-name
  if type(layer) is L.ReLU:
    cfg = layer.get_config()
    if cfg.get("negative_slope", 0) == 0 and cfg.get("threshold", 0) == 0:
      if cfg.get("max_value") is None:
        return "relu"
      if float(cfg["max_value"]) == 6.0:
        return "relu6"
    return None
  if type(layer) is L.Activation:
    name = front.keras.activations.serialize(layer.activation)
    name = name if isinstance(name, str) else None
    return name if name in _FOLDABLE_ACTIVATIONS else None
  return None


def pack_narrow_convs(model, tile=16):
  """Rewrites every stride-1 'same' Conv2D with at most ``tile // 2`` filters so that it fills
  ``tile``-wide output-channel tiles (see the module docstring for the equations).

  Args:
    model: a Sequential or functional model without pruning wrappers (tf_keras, or Keras 3 on
      any backend), typically the output of :func:`tf_gibbs.shrink`.
    tile: the inference CPU's output-channel tile: 16 for XNNPACK on AVX-512, 8 on AVX2 and
      ARM NEON (where only convolutions with at most 4 filters gain).

  Returns:
    ``(packed_model, report)``: a new functional model (layer names kept; folded
    BatchNormalization and activation layers are gone, each packed convolution is followed by
    a Reshape named ``<conv>_unpack``) whose outputs equal ``model``'s up to float rounding,
    and ``{"packed": {conv name: {"factor": s, "folded": [layer names]}}}``.

  Raises:
    TypeError: ``model`` is not a Keras model, or ``tile`` is not an int.
    ValueError: ``tile`` < 2, or ``model`` is subclassed, not built or still wrapped.
  """
  if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
    raise TypeError(f"`tile` must be an int (16 for AVX-512, 8 for AVX2 / NEON), got {tile!r}.")
  if tile < 2:
    raise ValueError(f"`tile` must be >= 2, got {tile}.")
  graph = shrinking.graph_of(model, "pack_narrow_convs")
  front = graph.front
  L = front.layers  # pylint: disable=invalid-name
  by_input = {}
  for node in graph.nodes:
    for key in node[3]:
      by_input.setdefault(key, []).append(node)

  def sole_consumer(key):
    users = by_input.get(key, [])
    if len(users) != 1 or key in graph.outputs or graph.node_counts[users[0][0]["name"]] != 1:
      return None
    return users[0]

  plans, folded_away = {}, set()
  for c, layer, _, inputs, _ in graph.nodes:
    factor = 0 if not inputs else _packing_factor(
        layer, graph.node_counts[c["name"]], tile, front, graph.shapes[inputs[0]])
    if factor < 2:
      continue
    chain, key = [], (c["name"], 0, 0)
    activation = layer.get_config()["activation"]
    nxt = sole_consumer(key)
    if (nxt is not None and type(nxt[1]) is L.BatchNormalization and activation == "linear"
        and shrinking.channel_axis_only(nxt[1].axis, 4)):
      chain.append(nxt)
      key = (nxt[0]["name"], 0, 0)
      nxt = sole_consumer(key)
    follower_activation = _activation_name(nxt[1], front) if nxt is not None else None
    if activation == "linear" and follower_activation:
      chain.append(nxt)
      activation = follower_activation
      key = (nxt[0]["name"], 0, 0)
    plans[c["name"]] = (factor, chain, activation, key)
    folded_away.update(link[0]["name"] for link in chain)

  tensors, new_layers, weights_to_set = {}, {}, []
  report = {"packed": {}}
  for c, layer, i, inputs, spec in graph.nodes:
    name = c["name"]
    if name in folded_away:
      continue
    if type(layer) is L.InputLayer:
      tensors[(name, 0, 0)] = L.InputLayer.from_config(c["config"]).output
      continue
    args = [tensors[k] for k in inputs]
    if name in plans:
      factor, chain, activation, last_key = plans[name]
      kernel, bias = _folded(layer, [link[1] for link in chain], L)
      kh, kw, c_in, filters = kernel.shape
      packed_kernel = np.zeros((kh, kw + factor - 1, c_in, factor * filters), np.float32)
      for t in range(factor):
        packed_kernel[:, t:t + kw, :, t * filters:(t + 1) * filters] = kernel
      cfg = dict(layer.get_config())
      cfg.update({"filters": factor * filters, "kernel_size": (kh, kw + factor - 1),
                  "strides": (1, factor), "activation": activation, "use_bias": True})
      conv = L.Conv2D.from_config(cfg)
      weights_to_set.append((conv, [packed_kernel, np.tile(bias, factor).astype(np.float32)]))
      height, width = graph.shapes[(name, 0, 0)][1:3]
      out = L.Reshape((height, width, filters), name=f"{name}_unpack")(conv(args[0]))
      tensors[last_key] = out
      report["packed"][name] = {"factor": factor, "folded": [link[0]["name"] for link in chain]}
      continue
    if name in new_layers:
      new = new_layers[name]
    else:
      new = new_layers[name] = type(layer).from_config(layer.get_config())
      if layer.weights:
        weights_to_set.append((new, [w.numpy() for w in layer.weights]))
    for t, out in enumerate(front.flatten(spec(new, args))):
      tensors[(name, i, t)] = out
  packed = front.keras.Model([tensors[k] for k in graph.inputs],
                             [tensors[k] for k in graph.outputs], name=graph.model.name)
  for new, values in weights_to_set:
    new.set_weights(values)
  return packed, report


def _folded(conv, followers, L):  # pylint: disable=invalid-name
  """Kernel and bias of ``conv`` with a following BatchNormalization (inference) folded in."""
  kernel = conv.kernel.numpy().astype(np.float64)
  bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
  for layer in followers:
    if type(layer) is L.BatchNormalization:
      gamma = layer.gamma.numpy() if layer.scale else 1.0
      beta = layer.beta.numpy() if layer.center else 0.0
      scale = gamma / np.sqrt(layer.moving_variance.numpy().astype(np.float64) + layer.epsilon)
      kernel = kernel * scale
      bias = (bias - layer.moving_mean.numpy()) * scale + beta
  return kernel.astype(np.float32), bias.astype(np.float32)
