"""The shared wrapper base of every tf_gibbs method.

:class:`PruningWrapper` subclasses tfmot's ``PruneLowMagnitude`` so that
``tfmot.sparsity.keras.strip_pruning``, ``UpdatePruningStep`` and ``PruningSummaries`` accept it,
but replaces its mechanics:

* tfmot masks by writing ``weight * mask`` into the variable on every call. We keep the variable
  raw during training (pruned weights keep their values and can come back) and run the inner layer
  on an *effective weight* tensor computed inside the forward graph.
* A method (Gibbs, L0 gates, adaptive thresholds) only implements two hooks:
  :meth:`training_weight` (the effective weight in a training step) and
  :meth:`deterministic_weight` (the final, deployable weight). The base owns the step counter,
  the tfmot bookkeeping (``pruning_vars``, ``pruning_step``, ``pruning_obj``), the call of the
  inner layer, serialization and the final write that makes tfmot's stripping correct.

The step counter is tfmot's: int64, −1 until ``UpdatePruningStep`` sets it to 0 at the start of
``fit``, incremented by every training call (the first training step runs at step 1).
"""

import numbers
import random
import warnings
import weakref

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import (
    pruning_schedule as tfmot_schedule)
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tf_keras.src.mixed_precision import autocast_variable

from tf_gibbs._keras import check_not_keras3
from tf_gibbs._keras import keras
from tf_gibbs.core import adaptive as adaptive_core
from tf_gibbs.core import allocation
from tf_gibbs.schedule import TF_MATH

# Layer class -> name of the weight attribute that is pruned. Exact classes only: subclasses such
# as Conv2DTranspose or SeparableConv2D lay their kernels out differently.
PRUNABLE_WEIGHTS = {
    keras.layers.Dense: "kernel",
    keras.layers.Conv1D: "kernel",
    keras.layers.Conv2D: "kernel",
    keras.layers.DepthwiseConv2D: "depthwise_kernel",
}

_ONLY_FIRST = tf.VariableAggregation.ONLY_FIRST_REPLICA
STEP_ERROR = (
    "tf_gibbs wrappers count training steps: add `tf_gibbs.UpdatePruningStep()` (or "
    "`tfmot.sparsity.keras.UpdatePruningStep()`) to the callbacks of `fit`, or set "
    "`pruning_step` to 0 before a custom training loop.")


def supported_layer_names():
  return sorted(cls.__name__ for cls in PRUNABLE_WEIGHTS)


def prunable_weight_name(layer):
  """The attribute name of ``layer``'s prunable weight, or None if the layer is not supported."""
  return PRUNABLE_WEIGHTS.get(type(layer))


def check_layer(layer, argument="layer"):
  """Validates one layer for wrapping; returns its prunable weight's attribute name."""
  check_not_keras3(layer, argument)
  if not isinstance(layer, keras.layers.Layer):
    raise TypeError(f"`{argument}` must be a tf_keras layer, got {type(layer).__name__}.")
  if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
    raise ValueError(
        f"`{argument}` ({layer.name}) is already wrapped by {type(layer).__name__}; a layer can "
        "carry one pruning wrapper. Strip it first (`tf_gibbs.strip_pruning`).")
  name = prunable_weight_name(layer)
  if name is None:
    raise ValueError(
        f"`{argument}` ({layer.name}, {type(layer).__name__}) is not a supported layer; "
        f"supported layers: {supported_layer_names()}.")
  return name


def check_seed(seed):
  if seed is None:
    return random.randrange(2**31 - 1)
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or \
      not 0 <= seed < 2**31:
    raise ValueError(f"`seed` must be None or an integer in [0, 2**31) (a Python or NumPy "
                     f"integer), got {seed!r}.")
  return int(seed)


def _connected_layers(start):
  """Every layer reachable from ``start`` through Keras nodes (its whole functional graph)."""
  seen, stack = {id(start): start}, [start]
  while stack:
    layer = stack.pop()
    neighbours = [n.outbound_layer for n in getattr(layer, "_outbound_nodes", [])]
    for node in getattr(layer, "_inbound_nodes", []):
      inbound = node.inbound_layers
      neighbours.extend(inbound if isinstance(inbound, (list, tuple)) else [inbound])
    for other in neighbours:
      if id(other) not in seen:
        seen[id(other)] = other
        stack.append(other)
  return list(seen.values())


def schedule_custom_objects():
  """Schedules that wrapper configs may name, for ``deserialize_keras_object``."""
  from tf_gibbs import schedule  # pylint: disable=g-import-not-at-top
  return {
      "AdaptiveSchedule": schedule.AdaptiveSchedule,
      "GibbsSchedule": schedule.GibbsSchedule,
      "L0Schedule": schedule.L0Schedule,
      "ConstantSparsity": tfmot_schedule.ConstantSparsity,
      "PolynomialDecay": tfmot_schedule.PolynomialDecay,
  }


def exclude_from_weight_decay(optimizer, variables):
  """Adds ``variables`` to a Keras optimizer's weight-decay exclusions, keeping the user's.

  Thresholds and gate parameters are not weights: decaying them (AdamW, SGD with
  ``weight_decay``) would pull every r and log α towards 0, which the reference codes exclude.
  Keras' own ``exclude_from_weight_decay`` replaces the list and refuses a built optimizer,
  so the keys are appended directly. Optimizers without weight decay are left alone; a
  ``LossScaleOptimizer`` passes them to its inner optimizer.
  """
  inner = getattr(optimizer, "inner_optimizer", None)
  if inner is not None:
    optimizer = inner
  if optimizer is None or not hasattr(optimizer, "_use_weight_decay"):
    return
  keys = list(getattr(optimizer, "_exclude_from_weight_decay", None) or [])
  for variable in variables:
    key = optimizer._var_key(variable)  # pylint: disable=protected-access
    if key not in keys:
      keys.append(key)
  optimizer._exclude_from_weight_decay = keys  # pylint: disable=protected-access


# Traced graph -> {(wrapper id, replica id): ((wrapper, replica), effective weight)}: the one
# training step of each wrapper in a graph (the objects are kept so their ids stay unique).
_STEP_TENSORS = weakref.WeakKeyDictionary()


def cap_note(layer_name, groups):
  """None, or the note for a layer whose target (``groups`` = (n, what, p), from a wrapper's
  ``target_groups``) asks for all n groups: both fronts' wrappers say it in these words."""
  from tf_gibbs.core import ranking  # pylint: disable=g-import-not-at-top
  if groups is None:
    return None
  n, what, target = groups
  count, capped = ranking.python_pruned_count(n, target)
  if not capped:
    return None
  return (f"layer {layer_name!r}: target_sparsity {target:g} would prune all {n} "
          f"{what}; capped at {count} of {n} (sparsity {count / n:.4f}) so that the layer "
          "keeps one and is not pruned away")


def nan_message(layer_name, variable):
  """The training-time NaN/Inf error of both fronts, naming the layer and the variable."""
  return (f"tf_gibbs: layer {layer_name!r} has a NaN or Inf weight in variable {variable!r}; "
          "pruning cannot use it (check the learning rate, the loss, or the loaded weights)")


def nonfinite_error(layer_name, variable, what):
  """The ValueError of both fronts when stripping, reporting or writing meets NaN/Inf."""
  return ValueError(
      f"Layer {layer_name!r} has NaN or Inf weights in variable {variable!r}: {what} would "
      "produce NaN kernels. Fix or reload the weights (check the learning rate and the data of "
      "the last steps).")


class _FinalWeightWriter:
  """Stands in for tfmot's ``pruning_obj``: ``UpdatePruningStep`` calls ``weight_mask_op()``
  at every epoch end. We use that moment to write the deployable weight into the variable once
  the schedule is over, so that tfmot's ``strip_pruning`` (which just unwraps) is exact."""

  def __init__(self, wrapper):
    self._wrapper = wrapper

  def weight_mask_op(self):
    # NaN from the last batch would otherwise be written into the kernel, and tfmot's
    # strip_pruning would ship it: fit stops here with an error naming the layer instead.
    if tf.executing_eagerly():
      self._wrapper.check_finite("the epoch-end write (and tfmot's strip_pruning)")
    return self._wrapper.write_final_weight()


class PruningWrapper(pruning_wrapper.PruneLowMagnitude):
  """Base wrapper: step counter, tfmot bookkeeping, effective-weight forward pass.

  Subclasses implement :meth:`training_weight` and :meth:`deterministic_weight`, may override
  :meth:`inference_weight` and :meth:`build_method_variables`, and add their own constructor
  arguments to :meth:`get_config`. Variables they create with ``add_weight(trainable=True)`` are
  trained by ``model.fit`` (tfmot's wrapper would hide them). The hooks run without autograph
  (it cost a third of the first step): branch on tensors with ``tf.cond``, not ``if``.

  Args:
    layer: a tf_keras Dense, Conv1D, Conv2D or DepthwiseConv2D layer (not yet wrapped).
    pruning_schedule: a tfmot ``PruningSchedule``.
    seed: integer seed of the layer's stateless random stream; None draws one from Python's
      ``random`` (reproducible under ``keras.utils.set_random_seed``) and stores it in the config.
  """

  def __init__(self, layer, pruning_schedule, seed=None, **kwargs):
    weight_name = check_layer(layer)
    if not isinstance(pruning_schedule, tfmot_schedule.PruningSchedule):
      raise TypeError("`pruning_schedule` must be a tfmot PruningSchedule (for example "
                      f"tf_gibbs.GibbsSchedule), got {type(pruning_schedule).__name__}.")
    seed = check_seed(seed)
    super().__init__(layer, pruning_schedule=pruning_schedule, **kwargs)
    self.seed = seed
    self.weight_name = weight_name
    # The wrapper runs ``layer.call``, which skips the inner layer's activity regularizer:
    # the wrapper applies it to the same output instead.
    # (Keras' Wrapper reports the inner layer's regularizer but does not apply it.)
    if layer.activity_regularizer is not None:
      self._activity_regularizer = layer.activity_regularizer
    # Tensors a budget group's members share in the step being traced (the adaptive loss's
    # end_step scale, a network-wide allocation), held by the group's first member.
    self._per_graph = adaptive_core.PerGraph()

  # --- hooks for the methods -------------------------------------------------------------------

  def build_method_variables(self, weight):
    """Creates the method's own variables (gates, thresholds, ...). Called once from build."""
    del weight

  def training_weight(self, weight, step):
    """The effective weight of one training step (a tensor of ``weight``'s shape)."""
    raise NotImplementedError

  def deterministic_weight(self, weight, step):
    """The deployable weight: what stripping writes and what inference uses by default."""
    raise NotImplementedError

  def inference_weight(self, weight, step):
    return self.deterministic_weight(weight, step)

  def target_groups(self):
    """(number of groups, their name, largest per-layer target) that the method's per-layer
    target counts, e.g. (32, "filters", 0.99); None for a method without one."""
    return None

  def budget_members(self):
    """The wrappers of this layer's network-wide ``budget_group`` (same class, same group) in
    its model, by name; itself when it has no group. The members find each other through the
    model's graph (no list is stored on a layer: Keras would track and save it)."""
    if getattr(self, "budget_group", None) is None:
      return [self]
    members = [layer for layer in _connected_layers(self)
               if type(layer) is type(self) and layer.budget_group == self.budget_group]
    return sorted(members, key=lambda layer: layer.name)

  def build_allocation(self):
    """The state of a network-wide budget's member (``allocation="network"``): its share
    ``allocated_sparsity``, the target until the first allocation."""
    self.allocated_sparsity = self.add_weight(
        "allocated_sparsity", shape=[], dtype=tf.float32, trainable=False,
        initializer=keras.initializers.Constant(self.pruning_schedule.target_sparsity),
        aggregation=_ONLY_FIRST)

  def network_groups(self):
    """(groups, weights per group) that a network-wide budget counts in this kernel."""
    raise NotImplementedError

  def budget_energies(self):
    """The 1-D energies of this kernel's groups that a network-wide budget ranks by LAMP."""
    raise NotImplementedError

  def network_share(self, refresh):
    """This layer's share of its network-wide budget: recomputed where ``refresh`` (a bool
    tensor) holds, by :func:`tf_gibbs.core.allocation.shares` over every member's
    :meth:`budget_energies`, built once per traced step and shared through the group's first
    member; the stored ``allocated_sparsity`` elsewhere."""
    members = self.budget_members()

    def compute():
      return allocation.shares([m.budget_energies() for m in members],
                               [m.network_groups()[1] for m in members],
                               self.pruning_schedule.target_sparsity, TF_MATH)

    shared = members[0]._per_graph.get(  # pylint: disable=protected-access
        ("allocation",) + tuple(id(m) for m in members),
        lambda: tf.cond(refresh, compute, lambda: tf.zeros([len(members)])))
    return tf.where(refresh, shared[members.index(self)], self.allocated_sparsity)

  # --- the per-layer cap: no layer is pruned away ----------------------------------------------

  def capped_target(self):
    """None, or why this layer prunes fewer groups than its target asks: a per-layer target
    prunes min(round(p·n), n − 1) of its n groups (:func:`tf_gibbs.core.ranking.pruned_count`),
    so a layer always keeps at least one weight, kernel, filter or unit."""
    return cap_note(self.layer.name, self.target_groups() if self.built else None)

  # --- Keras ------------------------------------------------------------------------------------

  def add_weight(self, *args, **kwargs):
    """Keras' ``add_weight``, but the wrapper's own variables (masks, gates, thresholds) are
    never autocast: under a ``mixed_float16``/``mixed_bfloat16`` policy they stay float32 when
    read in ``call``, so the pruning maths runs in float32 (the inner layer's are unaffected)."""
    kwargs.setdefault("experimental_autocast", False)
    return super().add_weight(*args, **kwargs)

  def build(self, input_shape):
    keras.layers.Wrapper.build(self, input_shape)
    weight = getattr(self.layer, self.weight_name)
    dtype = getattr(weight, "_variable", weight).dtype  # an AutoCastVariable's own dtype
    if dtype != tf.float32:
      raise TypeError(
          f"Layer {self.layer.name!r} has {dtype.name} weights; tf_gibbs prunes float32 "
          "variables only (its masks, quantiles and samplers run in float32). Build the model "
          "with float32 (keras.backend.set_floatx('float32')); for half precision use a "
          "mixed_float16 / mixed_bfloat16 policy, whose variables stay float32.")
    # Plain attributes (no Keras tracking): the inner layer owns the weight; tracking it here
    # would list it twice in the wrapper's weights.
    object.__setattr__(self, "prunable_weights", [weight])
    mask = self.add_weight("mask", shape=weight.shape, initializer="ones", dtype=tf.float32,
                           trainable=False, aggregation=_ONLY_FIRST)
    threshold = self.add_weight("threshold", shape=[], initializer="zeros", dtype=tf.float32,
                                trainable=False, aggregation=_ONLY_FIRST)
    object.__setattr__(self, "pruning_vars", [(weight, mask, threshold)])
    self.pruning_step = self.add_weight(
        "pruning_step", shape=[], dtype=tf.int64,
        # −1: "no step callback yet" (tfmot's convention); 0 when UpdatePruningStep met this
        # wrapper before it was built (a subclassed model builds inside the first train step).
        initializer=keras.initializers.Constant(getattr(self, "_initial_pruning_step", -1)),
        trainable=False, aggregation=_ONLY_FIRST)
    self.pruning_obj = _FinalWeightWriter(self)
    self.build_method_variables(weight)
    self.built = True
    # Built inside the first training step (a subclassed model): the step callback left the
    # optimizer here so that the method's own variables escape its weight decay.
    optimizer = getattr(self, "_weight_decay_optimizer", None)
    if optimizer is not None:
      exclude_from_weight_decay(optimizer, self._trainable_weights)
    capped = self.capped_target()
    if capped is not None:
      warnings.warn(f"tf_gibbs: {capped}.", UserWarning, stacklevel=2)

  @property
  def mask(self):
    """Last mask used (the sampled one in training; the final one after the schedule ends)."""
    return self.pruning_vars[0][1]

  @property
  def threshold(self):
    return self.pruning_vars[0][2]

  def _inferring_output_signature(self):
    """Whether this call is tf_keras' shape inference: building a functional model calls each
    layer once in a throwaway graph named ``<layer>_scratch_graph`` only to learn its output's
    shape and dtype (``base_layer._infer_output_signature``, ``compute_output_shape``)."""
    graph = tf.compat.v1.get_default_graph()
    return (isinstance(graph, tf.__internal__.FuncGraph)
            and graph.name == f"{self.name}_scratch_graph")

  # Not converted by autograph: the wrapper's code branches with tf.cond / smart_cond only, and
  # autograph's rewriting of every function it reaches was a third of the traced first step
  # (MobileNetV2: first step 1.29 -> 0.91x tfmot's for Gibbs, 2.0 -> 1.7x for L0 and adaptive).
  # The inner layer is a built-in Keras layer (PRUNABLE_WEIGHTS), which needs no conversion.
  @tf.autograph.experimental.do_not_convert
  def call(self, inputs, training=None):
    if training is None:
      training = keras.backend.learning_phase()
    weight = self.read_weight()
    if self._inferring_output_signature():
      # The mask changes no shape or dtype, and its ops there are thrown away: tracing them
      # cost ~70 ms per Gibbs layer (3.6 s of wrapping MobileNetV2, benchmarks/step_profile.py).
      return self.call_layer_with(inputs, weight)

    def train():
      # A wrapper called several times in one traced step (a shared layer, a Siamese model)
      # advances its step once and uses one effective weight, hence one mask: the later calls
      # reuse the first call's tensor of the same graph and replica. (Called eagerly, each call
      # is a step of its own: eager calls cannot tell one step from the next.)
      key = self._step_key()
      if key is not None and key[1] in _STEP_TENSORS.get(key[0], {}):
        return _STEP_TENSORS[key[0]][key[1]][1]
      effective = new_step()
      if key is not None:
        _STEP_TENSORS.setdefault(key[0], {})[key[1]] = (
            (self, tf.distribute.get_replica_context()), effective)
      return effective

    def new_step():
      step = self.pruning_step.assign_add(1)
      # One Assert op (assert_greater_equal builds nine per layer, run at every step).
      check = tf.debugging.Assert(step >= 1, [STEP_ERROR])
      # A NaN or Inf weight, threshold, gate or controller state would silently corrupt
      # quantiles, energies, masks and stripped kernels. Checked on stop_gradient copies:
      # CheckNumerics' gradient is a second CheckNumerics, of the gradient, which would cost
      # as much again and report a gradient under this message.
      finite = [tf.debugging.check_numerics(tf.stop_gradient(weight), self._nan_message(
          self.weight_name))]
      finite += [tf.debugging.check_numerics(tf.stop_gradient(tf.convert_to_tensor(v)),
                                             self._nan_message(name))
                 for name, v in self.guarded_state()]
      with tf.control_dependencies([check] + finite):
        return self.training_weight(tf.identity(weight), tf.identity(step))

    def infer():
      return self.inference_weight(weight, tf.identity(self.pruning_step))

    effective = tf.__internal__.smart_cond.smart_cond(training, train, infer)
    return self.call_layer_with(inputs, effective)

  def _nan_message(self, variable):
    return nan_message(self.layer.name, variable)

  def guarded_state(self):
    """(short name, variable) of every float variable besides the pruned weight whose NaN or
    Inf would corrupt training or stripping: the inner layer's others (bias), the method's own
    trainable variables (r, gate parameters) and its controller state. Not the masks, which
    are recomputed from these."""
    prunable = self.prunable_weights[0].name
    found = [v for v in self.layer.weights if v.name != prunable and v.dtype.is_floating]
    found += list(self._trainable_weights) + list(self.method_state())
    return [(v.name.split("/")[-1].split(":")[0], v) for v in found]

  def method_state(self):
    """Non-trainable float state of the method that the NaN guard checks (e.g. controllers)."""
    return []

  def check_finite(self, what):
    """Raises ValueError naming the layer and variable if the weight or state holds NaN/Inf."""
    for name, variable in [(self.weight_name, self.prunable_weights[0])] + self.guarded_state():
      if not bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(variable)))):
        raise nonfinite_error(self.layer.name, name, what)

  def _step_key(self):
    """(graph, (wrapper, replica)) of the traced step being built; None when eager."""
    if tf.executing_eagerly():
      return None
    return (tf.compat.v1.get_default_graph(),
            (id(self), id(tf.distribute.get_replica_context())))

  def call_layer_with(self, inputs, effective_weight):
    """Runs the inner layer with ``effective_weight`` in place of its prunable variable."""
    layer = self.layer
    variable = getattr(layer, self.weight_name)
    effective_weight = tf.cast(effective_weight, layer.compute_dtype)
    if inputs.dtype.is_floating and inputs.dtype != layer.compute_dtype:
      inputs = tf.cast(inputs, layer.compute_dtype)
    # object.__setattr__ bypasses Keras' attribute tracking, which would otherwise drop the
    # variable from the layer's weight list and re-append it (changing the weight order).
    object.__setattr__(layer, self.weight_name, effective_weight)
    try:
      return layer.call(inputs)
    finally:
      object.__setattr__(layer, self.weight_name, variable)

  def read_weight(self):
    """The prunable variable's value in its own (float32) dtype."""
    weight = self.prunable_weights[0]
    if isinstance(weight, autocast_variable.AutoCastVariable):
      weight = weight._variable  # pylint: disable=protected-access  (float32, not the cast)
    return tf.convert_to_tensor(weight)

  def schedule_finished(self, step=None):
    """Bool tensor: the schedule has reached its end step (tfmot's ``end_step`` = −1: never)."""
    step = self.pruning_step if step is None else step
    end_step = getattr(self.pruning_schedule, "end_step", -1)
    if end_step is None or end_step < 0:
      return tf.constant(False)
    return tf.greater_equal(tf.cast(step, tf.int64), end_step)

  def final_weight(self):
    """The deployable weight at the current step, as a tensor (used by ``strip_pruning``).

    Raises:
      ValueError: the weight holds NaN or Inf (eagerly; no mask of NaNs is ever returned).
    """
    weight = self.read_weight()
    if tf.executing_eagerly():
      self.check_finite("stripping")
    return self.deterministic_weight(weight, tf.identity(self.pruning_step))

  def write_final_weight(self):
    """Once the schedule is over, writes the deployable weight into the variable.

    Methods whose deterministic weight is ``weight * binary_mask`` are idempotent under this
    write, so the wrapped model's inference output is unchanged and the bare inner layer alone
    reproduces it (what tfmot's ``strip_pruning`` returns). Methods whose final weight is not
    idempotent must override this.
    """
    weight = self.prunable_weights[0]
    current = self.read_weight()
    final = tf.where(self.schedule_finished(), self.final_weight(), current)
    return weight.assign(tf.cast(final, weight.dtype))

  def get_config(self):
    config = keras.layers.Wrapper.get_config(self)
    config["pruning_schedule"] = self.pruning_schedule.get_config()
    config["seed"] = self.seed
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    objects = dict(schedule_custom_objects())
    objects.update(custom_objects or {})
    config["pruning_schedule"] = keras.utils.deserialize_keras_object(
        config["pruning_schedule"], custom_objects=objects)
    config["layer"] = keras.layers.deserialize(config["layer"], custom_objects=custom_objects)
    return cls(**config)

  @property
  def trainable_weights(self):
    own = self._trainable_weights if self.trainable else []
    return self.layer.trainable_weights + own

  @property
  def non_trainable_weights(self):
    frozen = [] if self.trainable else self._trainable_weights
    return self.layer.non_trainable_weights + frozen + self._non_trainable_weights

  def get_weights(self):
    return keras.layers.Layer.get_weights(self)

  def set_weights(self, weights):
    keras.layers.Layer.set_weights(self, weights)
