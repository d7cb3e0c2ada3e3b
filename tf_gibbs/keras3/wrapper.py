"""The Keras 3 base wrapper: step counter, masks, and the effective-weight forward pass.

Backend-neutral (``keras.ops`` only, like Keras' own layers): runs on the TensorFlow, JAX and
PyTorch backends, eagerly, in ``fit`` and under ``jit_compile``. No callback is needed: each
wrapper counts its own training steps (``training=True`` calls) in ``pruning_step``, and the
mask of step t is a pure function of (layer seed, t), so a resumed run draws the same masks and
every replica the same mask.
"""

import importlib
import random
import warnings

import keras
from keras import ops
import numpy as np

from tf_gibbs import wrapper as wrapper_front
from tf_gibbs.core import adaptive as adaptive_core
from tf_gibbs.core import allocation
from tf_gibbs.schedule import AdaptiveSchedule
from tf_gibbs.schedule import GibbsSchedule
from tf_gibbs.schedule import KERAS_MATH
from tf_gibbs.schedule import L0Schedule
from tf_gibbs.schedule import check_number

# Exact classes only (Conv2DTranspose, SeparableConv2D lay their kernels out differently):
# class -> (attribute the layer's ``call`` reads the kernel from, kernel layout).
PRUNABLE = {
    keras.layers.Dense: ("_kernel", "dense"),
    keras.layers.Conv1D: ("_kernel", "conv"),
    keras.layers.Conv2D: ("_kernel", "conv"),
    keras.layers.DepthwiseConv2D: ("kernel", "depthwise"),
}

TRAINING_BACKENDS = ("tensorflow", "jax", "torch")
SCHEDULES = {cls.__name__: cls for cls in (GibbsSchedule, L0Schedule, AdaptiveSchedule)}


def supported_layer_names():
  return sorted(cls.__name__ for cls in PRUNABLE)


def check_backend():
  """Raises if the Keras 3 backend cannot train (numpy, openvino)."""
  backend = keras.backend.backend()
  if backend not in TRAINING_BACKENDS:
    raise ValueError(
        f"tf_gibbs prunes during training, and the Keras backend {backend!r} runs inference "
        f"only. Set KERAS_BACKEND to one of {list(TRAINING_BACKENDS)} before importing keras.")


def check_layer(layer, argument="layer"):
  """Validates one Keras 3 layer for wrapping; returns (kernel attribute, layout)."""
  if not isinstance(layer, keras.layers.Layer):
    raise TypeError(f"`{argument}` must be a Keras 3 layer, got {type(layer).__name__}.")
  if isinstance(layer, PruningWrapper):
    raise ValueError(
        f"`{argument}` ({layer.name}) is already wrapped by {type(layer).__name__}; a layer can "
        "carry one pruning wrapper. Strip it first (`tf_gibbs.strip_pruning`).")
  if type(layer) not in PRUNABLE:
    raise ValueError(
        f"`{argument}` ({layer.name}, {type(layer).__name__}) is not a supported layer; "
        f"supported layers: {supported_layer_names()}.")
  return PRUNABLE[type(layer)]


def check_seed(seed):
  if seed is None:
    return random.randrange(2**31 - 1)
  return int(check_number(seed, "seed", 0, True, 2**31, False, integer=True))


def schedule_from_config(config):
  """A schedule from its ``get_config()`` dict ({"class_name", "config"}) or the schedule."""
  if isinstance(config, tuple(SCHEDULES.values())):
    return config
  if not isinstance(config, dict) or config.get("class_name") not in SCHEDULES:
    raise TypeError(f"`pruning_schedule` must be one of {sorted(SCHEDULES)} or its config, got "
                    f"{config!r}.")
  return SCHEDULES[config["class_name"]](**config["config"])


class BudgetGroup:
  """A network-wide budget's wrappers, found once through the model's graph, and the tensors
  its members share in the step being traced (the adaptive loss's end_step scale, the network
  allocation of Gibbs and L0): held by each wrapper, used through the group's first member."""

  def __init__(self):
    self.members = []
    self.tf_scales = adaptive_core.PerGraph()
    self.jax_scales = {}  # key -> (trace state, scale) of the trace being built


def jax_trace_state():
  """The JAX trace being built now (compared with ==), or None where JAX has no such API."""
  for module in ("jax.extend.core", "jax.core"):
    try:
      state = getattr(importlib.import_module(module), "get_opaque_trace_state", None)
    except ImportError:
      continue
    if state is not None:
      return state(convention="tf_gibbs")
  return None


def once_per_trace(group, key, build):
  """``build()``, shared by the calls with the same ``key`` in one traced step: once per
  TensorFlow graph and replica (as on the tf_keras front), once per JAX trace (``group`` holds
  them). Where ops run eagerly (PyTorch, eager TensorFlow or JAX) every call builds its own: a
  cond there runs only the branch taken."""
  backend = keras.backend.backend()
  if backend == "tensorflow":
    return group.tf_scales.get(key, build)
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    state = jax_trace_state()
    cached = group.jax_scales.get(key)
    # A tracer belongs to one trace; a concrete array (no jit, no grad) is never shared.
    if state is not None and cached is not None and cached[0] == state and isinstance(
        cached[1], jax.core.Tracer):
      return cached[1]
    scale = build()
    if state is not None:
      group.jax_scales[key] = (state, scale)
    return scale
  return build()


def connected_layers(start):
  """Every layer reachable from ``start`` through Keras 3 nodes (its whole functional graph)."""
  seen, stack = {id(start): start}, [start]
  while stack:
    layer = stack.pop()
    neighbours = [node.operation for node in getattr(layer, "_outbound_nodes", [])]
    for node in getattr(layer, "_inbound_nodes", []):
      neighbours.extend(parent.operation for parent in node.parent_nodes)
    for other in neighbours:
      if other is not None and id(other) not in seen:
        seen[id(other)] = other
        stack.append(other)
  return list(seen.values())


def exclude_from_weight_decay(optimizer, model):
  """Keeps the wrappers' own trainable variables (L0 gate parameters, adaptive thresholds r)
  out of ``optimizer``'s weight decay, as the reference codes do; the user's exclusions stay.

  Keras 3's ``optimizer.exclude_from_weight_decay`` refuses a built optimizer and replaces
  the earlier list; this adds to the set it reads when the train step is traced, so call it
  before the first ``fit`` step (``tf_gibbs.UpdatePruningStep`` does, at ``on_train_begin``).
  """
  if optimizer is None or not getattr(optimizer, "weight_decay", None):
    return
  wrappers = [layer for layer in getattr(model, "_flatten_layers", lambda: [])()
              if isinstance(layer, PruningWrapper)]
  own = [v for w in wrappers for v in w._trainable_variables]  # pylint: disable=protected-access
  excluded = set(getattr(optimizer, "_exclude_from_weight_decay", set()))
  excluded.update(optimizer._var_key(v) for v in own)  # pylint: disable=protected-access
  optimizer._exclude_from_weight_decay = excluded  # pylint: disable=protected-access
  optimizer._exclude_from_weight_decay_cache = {}  # pylint: disable=protected-access


def run_if_finite(named, layer_name, fn):
  """``fn()``, after a check that stops training when any of ``named`` [(variable name, tensor)]
  holds NaN or Inf, with :func:`tf_gibbs.wrapper.nan_message` naming the layer and variable.

  Keras has no in-graph assertion, so each backend raises its own way: TensorFlow with
  ``CheckNumerics`` ops that every op of ``fn`` waits for (InvalidArgumentError, also in a
  compiled step, before any state is written); JAX with a host callback that runs only when a
  value is not finite (under ``jit`` the runtime's error carries the message, and the step's
  new state is never returned); PyTorch with a Python check (eager, as Keras trains it).
  """
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    checks = [tf.debugging.check_numerics(tf.stop_gradient(t), wrapper_front.nan_message(
        layer_name, name)) for name, t in named]
    with tf.control_dependencies(checks):
      return fn()
  finite = ops.stack([ops.all(ops.isfinite(ops.stop_gradient(t))) for _, t in named])
  names = [name for name, _ in named]

  def report(flags):
    bad = [name for name, ok in zip(names, flags) if not ok]
    raise FloatingPointError(wrapper_front.nan_message(layer_name, bad[0]))

  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    jax.lax.cond(ops.all(finite), lambda flags: None,
                 lambda flags: jax.debug.callback(report, flags), finite)
  elif not bool(ops.convert_to_numpy(ops.all(finite))):
    report(ops.convert_to_numpy(finite))
  return fn()


def _autocast(dtype):
  """Keras' autocast scope: float variables read inside it are cast to ``dtype`` (None: read
  as stored). Keras has no public API for it (3.0–3.15 keep it in ``keras.src.backend``)."""
  from keras.src.backend import AutocastScope  # pylint: disable=g-import-not-at-top
  return AutocastScope(dtype)


class PruningWrapper(keras.layers.Wrapper):
  """Base of the Keras 3 wrappers (:class:`GibbsPruning`, :class:`L0Gates`,
  :class:`AdaptiveThreshold` in :mod:`tf_gibbs.keras3`).

  Subclasses implement :meth:`training_weight` and :meth:`deterministic_weight`, may override
  :meth:`inference_weight` and :meth:`build_method_variables`, and add their arguments to
  :meth:`get_config`.

  Variables: ``mask`` (last mask used), ``threshold``, ``pruning_step`` (int32: training steps
  taken; the first training step is step 1, as on tf_keras with ``UpdatePruningStep``).

  Args:
    layer: a Keras 3 Dense, Conv1D, Conv2D or DepthwiseConv2D layer.
    pruning_schedule: the method's schedule (or its config dict).
    seed: integer seed of the layer's random stream; None draws one and stores it in the config.
  """

  def __init__(self, layer, pruning_schedule, seed=None, **kwargs):
    check_backend()
    self.weight_name, self.layout = check_layer(layer)
    super().__init__(layer, **kwargs)
    self.pruning_schedule = schedule_from_config(pruning_schedule)
    self.seed = check_seed(seed)
    # The wrapper runs ``layer.call``, which skips the inner layer's activity regularizer
    # (Keras applies it in ``__call__``): the wrapper applies it to the same output instead.
    self.activity_regularizer = layer.activity_regularizer
    self._group = BudgetGroup()  # a plain holder: Keras' saver walks lists of layers

  def budget_members(self):
    """The wrappers of this layer's network-wide ``budget_group`` (same class, same group) in
    its model, by name; itself when it has no group."""
    if getattr(self, "budget_group", None) is None:
      return [self]
    if len(self._group.members) < 2:
      members = [layer for layer in connected_layers(self)
                 if type(layer) is type(self) and layer.budget_group == self.budget_group]
      self._group.members = sorted(members, key=lambda layer: layer.name)
    return self._group.members

  def build_allocation(self):
    """The state of a network-wide budget's member (``allocation="network"``): its share
    ``allocated_sparsity``, the target until the first allocation."""
    self.allocated_sparsity = self.add_state(
        "allocated_sparsity", (),
        initializer=keras.initializers.Constant(self.pruning_schedule.target_sparsity))

  def network_groups(self):
    """(groups, weights per group) that a network-wide budget counts in this kernel."""
    raise NotImplementedError

  def budget_energies(self):
    """The 1-D energies of this kernel's groups that a network-wide budget ranks by LAMP."""
    raise NotImplementedError

  def network_share(self, refresh):
    """This layer's share of its network-wide budget: recomputed where ``refresh`` holds, by
    :func:`tf_gibbs.core.allocation.shares` over every member's :meth:`budget_energies`,
    built once per traced step (:func:`once_per_trace`) and shared; the stored
    ``allocated_sparsity`` elsewhere."""
    members = self.budget_members()

    def compute():
      return allocation.shares([m.budget_energies() for m in members],
                               [m.network_groups()[1] for m in members],
                               self.pruning_schedule.target_sparsity, KERAS_MATH)

    shared = once_per_trace(
        members[0]._group, ("allocation",) + tuple(id(m) for m in members),  # pylint: disable=protected-access
        lambda: ops.cond(refresh, compute, lambda: ops.zeros((len(members),))))
    return ops.where(refresh, shared[members.index(self)],
                     self.read_state(self.allocated_sparsity))

  # --- hooks ------------------------------------------------------------------------------------

  def build_method_variables(self, weight):
    del weight

  def training_weight(self, weight, step):
    raise NotImplementedError

  def deterministic_weight(self, weight, step):
    raise NotImplementedError

  def inference_weight(self, weight, step):
    return self.deterministic_weight(weight, step)

  def target_groups(self):
    return None

  def method_state(self):
    """Non-trainable float state of the method that the NaN guard checks (e.g. controllers)."""
    return []

  def guarded_state(self):
    """(name, variable) of every float variable besides the kernel whose NaN or Inf would
    corrupt training or stripping: the inner layer's others (bias), the method's trainable
    variables (r, gate parameters) and its controller state; not the masks (recomputed)."""
    kernel = self.kernel_variable
    found = [v for v in self.layer.weights if v is not kernel and "float" in v.dtype]
    found += list(self._trainable_variables) + list(self.method_state())
    return [(v.name, v) for v in found]

  def check_finite(self, what):
    """Raises ValueError naming the layer and variable if the kernel or state holds NaN/Inf."""
    kernel = self.kernel_variable
    for name, variable in [(kernel.name, kernel)] + self.guarded_state():
      if not np.all(np.isfinite(ops.convert_to_numpy(variable.value))):
        raise wrapper_front.nonfinite_error(self.layer.name, name, what)

  def capped_target(self):
    """None, or why this layer prunes fewer groups than its target (min(round(p·n), n − 1))."""
    return wrapper_front.cap_note(self.layer.name,
                                  self.target_groups() if self.built else None)

  # --- Keras ------------------------------------------------------------------------------------

  @property
  def kernel_variable(self):
    return getattr(self.layer, self.weight_name)

  def build(self, input_shape):
    super().build(input_shape)
    weight = self.kernel_variable
    if weight.dtype != "float32":
      raise TypeError(
          f"Layer {self.layer.name!r} has {weight.dtype} weights; tf_gibbs prunes float32 "
          "variables only. Build the model in float32; for half precision use a mixed "
          "precision policy (keras.mixed_precision.set_dtype_policy('mixed_float16')), whose "
          "variables stay float32.")
    self.mask = self.add_state("mask", weight.shape, initializer="ones")
    self.threshold = self.add_state("threshold", ())
    self.pruning_step = self.add_state("pruning_step", (), dtype="int32")
    self.build_method_variables(weight)
    self.built = True
    capped = self.capped_target()
    if capped is not None:
      warnings.warn(f"tf_gibbs: {capped}.", UserWarning, stacklevel=2)

  def add_state(self, name, shape, dtype="float32", initializer="zeros"):
    """A non-trainable variable of the method's state (mask, step, controller, ...): never
    autocast, and taken from the first replica, never averaged (every replica computes the same
    value from the same (seed, step))."""
    return self.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer,
                           trainable=False, autocast=False, aggregation="only_first_replica")

  def read_state(self, variable):
    """A state variable's current value, as a tensor that a later ``assign`` in the same step
    leaves alone. On PyTorch ``assign`` writes in place, and torch.compile's autograd refuses a
    backward pass through a saved tensor that was written since: there the value is copied."""
    value = ops.convert_to_tensor(variable.value)
    return ops.copy(value) if keras.backend.backend() == "torch" else value

  def read_weight(self):
    """The kernel's value in float32: under a mixed precision policy Keras would read it cast to
    float16/bfloat16 inside ``call``; energies, gates and thresholds are computed in float32."""
    with _autocast(None):
      return ops.convert_to_tensor(self.kernel_variable.value)

  def call(self, inputs, training=None):
    weight = self.read_weight()
    if training:
      step = ops.convert_to_tensor(self.pruning_step.value) + 1
      self.pruning_step.assign(step)
      named = [(self.kernel_variable.name, weight)] + [
          (name, ops.convert_to_tensor(v.value)) for name, v in self.guarded_state()]
      effective = run_if_finite(named, self.layer.name,
                                lambda: self.training_weight(weight, step))
    else:
      effective = self.inference_weight(weight, ops.convert_to_tensor(self.pruning_step.value))
    return self.call_layer_with(inputs, effective)

  def call_layer_with(self, inputs, effective_weight):
    """Runs the inner layer's own ``call`` with ``effective_weight`` as its kernel."""
    layer = self.layer
    effective_weight = ops.cast(effective_weight, layer.compute_dtype)
    inputs = ops.convert_to_tensor(inputs)
    if "float" in str(inputs.dtype) and keras.backend.standardize_dtype(
        inputs.dtype) != layer.compute_dtype:
      inputs = ops.cast(inputs, layer.compute_dtype)
    variable = layer.__dict__[self.weight_name]
    # object.__setattr__: no tracking (Keras would re-register the tensor as a weight).
    object.__setattr__(layer, self.weight_name, effective_weight)
    try:
      # The scope that ``layer.__call__`` would open: its bias is read in its compute dtype.
      mixed = layer.compute_dtype != layer.variable_dtype
      with _autocast(layer.compute_dtype if mixed else None):
        return layer.call(inputs)
    finally:
      object.__setattr__(layer, self.weight_name, variable)

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def schedule_finished(self, step=None):
    step = ops.convert_to_tensor(self.pruning_step.value) if step is None else step
    return step >= self.pruning_schedule.end_step

  def final_weight(self):
    """The deployable weight at the current step (what stripping writes), as a tensor."""
    return self.deterministic_weight(self.read_weight(),
                                     ops.convert_to_tensor(self.pruning_step.value))

  def get_config(self):
    config = super().get_config()
    config["pruning_schedule"] = self.pruning_schedule.get_config()
    config["seed"] = self.seed
    return config
