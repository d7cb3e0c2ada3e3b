"""The user-facing API: wrap a model or layers, strip the wrappers, and the load scope.

Follows tfmot's ``prune_low_magnitude`` / ``strip_pruning`` / ``prune_scope`` conventions.
"""

import functools
import warnings

import tensorflow as tf

from tensorflow_model_optimization.python.core.sparsity.keras import pruning_callbacks
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

import uuid

from tf_gibbs import adaptive as adaptive_lib
from tf_gibbs import gibbs as gibbs_lib
from tf_gibbs import l0 as l0_lib
from tf_gibbs import wrapper as wrapper_lib
from tf_gibbs.core import allocation
from tf_gibbs._keras import check_not_keras3
from tf_gibbs._keras import is_graph_model
from tf_gibbs._keras import targets_keras3
from tf_gibbs._keras import keras
from tf_gibbs._keras import walk_layers
from tf_gibbs._keras import wrapped_layer_names
from tf_gibbs.schedule import AdaptiveSchedule
from tf_gibbs.schedule import GibbsSchedule
from tf_gibbs.schedule import L0Schedule
from tf_gibbs.schedule import check_bool
from tf_gibbs.schedule import check_number
from tf_gibbs.schedule import strip_warning


# --- model classes that make load_model import tf_gibbs -----------------------------------------
#
# tf_keras deserializes the layers of a model with its own table of layer classes, and returns
# the class *name* (a str) for a class it does not know, which then fails far away ("'str' object
# is not callable"): a model saved with tf_gibbs wrappers could not be loaded in a process that
# had not imported tf_gibbs. The model itself, though, is deserialized by module: its class is
# imported from the module recorded in the file. So the pruned model is one of these two
# classes — Keras' own Sequential and functional model, unchanged — which live in tf_gibbs:
# loading a .keras file imports tf_gibbs, which registers the wrappers before the layers are
# read. (.h5 records classes by name only: there the error names TfGibbsPruned...)


class _ChecksStepCallback:
  """``fit`` raises at once, before Keras traces the train step, when the model's wrappers
  have no step counter yet (−1) and no ``UpdatePruningStep`` is among the callbacks (the
  in-step assertion would otherwise fail deep inside Keras' traceback)."""

  def fit(self, *args, **kwargs):
    callbacks = kwargs["callbacks"] if "callbacks" in kwargs else (
        args[5] if len(args) > 5 else None)
    if isinstance(callbacks, keras.callbacks.CallbackList):
      callbacks = callbacks.callbacks
    has_step_callback = any(isinstance(c, pruning_callbacks.UpdatePruningStep)
                            for c in callbacks or [])
    if not has_step_callback:
      waiting = [layer.layer.name for layer in walk_layers(self)
                 if isinstance(layer, wrapper_lib.PruningWrapper) and layer.built
                 and int(keras.backend.get_value(layer.pruning_step)) < 0]
      if waiting:
        raise ValueError(f"{wrapper_lib.STEP_ERROR} (wrapped layers: {waiting})")
    return super().fit(*args, **kwargs)


@keras.utils.register_keras_serializable(package="tf_gibbs")
class TfGibbsPrunedSequential(_ChecksStepCallback, keras.Sequential):
  """A tf_keras ``Sequential`` model that holds tf_gibbs wrappers (behaviour unchanged; its class
  makes ``load_model`` import tf_gibbs)."""


def _functional_class():
  from tf_keras.src.engine import functional  # pylint: disable=g-import-not-at-top
  return functional.Functional


@keras.utils.register_keras_serializable(package="tf_gibbs")
class TfGibbsPrunedFunctional(_ChecksStepCallback, _functional_class()):
  """A tf_keras functional model that holds tf_gibbs wrappers (behaviour unchanged; its class
  makes ``load_model`` import tf_gibbs)."""


# The legacy .h5 format records a model's class by its plain name: known under it too, and a
# process without tf_gibbs says "Unknown layer: 'TfGibbsPrunedFunctional'".
keras.utils.get_custom_objects().update({
    "TfGibbsPrunedSequential": TfGibbsPrunedSequential,
    "TfGibbsPrunedFunctional": TfGibbsPrunedFunctional})

_PLAIN_CLASS = {TfGibbsPrunedSequential: keras.Sequential,
                TfGibbsPrunedFunctional: _functional_class()}


def _as_pruned_class(model):
  """The model, as TfGibbsPrunedSequential / TfGibbsPrunedFunctional if it is a plain Keras one."""
  if type(model) is keras.Sequential:
    model.__class__ = TfGibbsPrunedSequential
  elif type(model) is _functional_class():
    model.__class__ = TfGibbsPrunedFunctional
  return model


def _as_plain_class(model):
  """The model back as Keras' own class (a stripped model needs no tf_gibbs to load)."""
  if type(model) in _PLAIN_CLASS:
    model.__class__ = _PLAIN_CLASS[type(model)]
  return model


def _skip_predicate(skip, known=None):
  """Turns ``skip`` (None, a name, names, or a callable) into a predicate on layers."""
  if skip is None:
    return lambda layer: False
  if callable(skip):
    return lambda layer: bool(skip(layer))
  names = [skip] if isinstance(skip, str) else skip
  if not isinstance(names, (list, tuple, set, frozenset)) or not all(
      isinstance(n, str) for n in names):
    raise TypeError("`skip` must be None, a layer name, a list of layer names, or a callable "
                    f"taking a layer and returning a bool; got {skip!r}.")
  names = set(names)
  if known is not None:
    unknown = sorted(names - set(known))
    if unknown:
      raise ValueError(f"`skip` names layers that are not in the model: {unknown}. "
                       f"Layers of the model: {sorted(set(known))}.")
  return lambda layer: layer.name in names


def _check_model(model, argument):
  if not is_graph_model(model):
    raise ValueError(
        f"`{argument}` is a subclassed model ({type(model).__name__}), which cannot be cloned "
        "layer by layer. Wrap the layers inside the model instead, e.g. "
        "`self.dense = tf_gibbs.prune_gibbs(tf_keras.layers.Dense(10))` in its __init__.")
  wrapped = wrapped_layer_names(model)
  if wrapped:
    raise ValueError(f"`{argument}` already contains pruning wrappers: {wrapped}. Strip them "
                     "first (`tf_gibbs.strip_pruning`) or wrap the original model.")


def apply_wrappers(to_prune, make_wrapper, skip=None, api_name="prune", fits=None):
  """Wraps the supported layers of ``to_prune`` with ``make_wrapper(layer, index)``.

  ``to_prune`` is a Sequential or functional tf_keras model (cloned: every layer is rebuilt
  from its config with a copy of its weights, so training, stripping or shrinking the pruned
  model never changes the original), one layer, or a list of layers (wrapped as they are). ``skip`` names layers (or a predicate) to leave dense. ``fits(layer)`` returns
  None or the reason why the method cannot prune a supported layer: in a model such layers are
  left dense with a warning that names them (a single layer raises). Shared by every
  ``prune_*`` function so the methods validate and traverse models the same way.
  """
  check_not_keras3(to_prune, "to_prune")
  if isinstance(to_prune, (list, tuple)):
    if not to_prune:
      raise ValueError(f"`to_prune` is an empty list; {api_name} needs at least one layer.")
    for i, layer in enumerate(to_prune):
      check_not_keras3(layer, f"to_prune[{i}]")
      if isinstance(layer, keras.Model):
        raise TypeError(f"`to_prune[{i}]` is a model; pass models directly, not in a list.")
    skipped = _skip_predicate(skip, known=[layer.name for layer in to_prune
                                           if isinstance(layer, keras.layers.Layer)])
    return [layer if skipped(layer) else make_wrapper(layer, i)
            for i, layer in enumerate(to_prune)]

  if isinstance(to_prune, keras.Model):
    _check_model(to_prune, "to_prune")
    skipped = _skip_predicate(skip, known=[layer.name for layer in walk_layers(to_prune)])
    wrapped, copies, shared = [], [], []
    left_dense = {}  # name -> why a layer that holds weights is not wrapped

    def copy_of(layer):
      """A new layer of the same config; its weights are copied once the model is built."""
      try:
        copy = type(layer).from_config(layer.get_config())
      except Exception:  # pylint: disable=broad-except  (a layer whose config cannot rebuild it)
        shared.append(layer.name)
        return layer
      copies.append((copy, layer))
      return copy

    def clone(layer):
      if isinstance(layer, keras.Model):
        _check_model(layer, f"nested model {layer.name}")
        return keras.models.clone_model(layer, input_tensors=None, clone_function=clone)
      if wrapper_lib.prunable_weight_name(layer) is None:
        if _holds_weights(layer):
          left_dense[layer.name] = _unsupported_reason(layer)
        return copy_of(layer)
      if skipped(layer):
        left_dense[layer.name] = _SKIPPED
        return copy_of(layer)
      reason = None if fits is None else fits(layer)
      if reason is not None:
        left_dense[layer.name] = reason
        return copy_of(layer)
      wrapped.append(layer.name)
      return make_wrapper(copy_of(layer), len(wrapped) - 1)

    model = keras.models.clone_model(to_prune, input_tensors=None, clone_function=clone)
    for copy, layer in copies:  # the pruned model owns its weights: the user's never change
      copy.set_weights(layer.get_weights())
    if shared:
      warnings.warn(f"{api_name}: layers {shared} cannot be rebuilt from their config, so the "
                    "pruned model shares them (and their weights) with the original model: "
                    "training it changes them there too.", stacklevel=3)
    if not wrapped:
      considered = "; ".join(f"{name}: {why}" for name, why in left_dense.items())
      raise ValueError(
          f"{api_name} found no layer to prune in model {to_prune.name!r}: supported layers are "
          f"{wrapper_lib.supported_layer_names()}" + (" (after `skip`)" if skip else "") +
          (f". Layers considered: {considered}." if considered else
           "; the model has no layer that holds weights."))
    unwrapped = {name: why for name, why in left_dense.items() if why != _SKIPPED}
    if unwrapped:
      warnings.warn(f"{api_name}: layers {list(unwrapped)} are left dense:\n" + "\n".join(
          f"  {name}: {why}" for name, why in unwrapped.items()), stacklevel=3)
    # Kept for sparsity_report (not serialized: a loaded model's report says less).
    object.__setattr__(model, "_tf_gibbs_left_dense", dict(left_dense))
    return _as_pruned_class(model)

  if isinstance(to_prune, keras.layers.Layer):
    return to_prune if _skip_predicate(skip)(to_prune) else make_wrapper(to_prune, 0)

  raise TypeError(
      f"`to_prune` must be a Sequential or functional tf_keras model, a tf_keras layer or a list "
      f"of layers; got {type(to_prune).__name__}.")


_SKIPPED = "skipped (`skip`)"  # a layer the user left dense on purpose: named, not warned about


def _holds_weights(layer):
  """A layer with a weight matrix or kernel (≥ 2 axes): what a user may expect to be pruned."""
  return any(len(w.shape) >= 2 for w in layer.trainable_weights)


def _unsupported_reason(layer):
  name = type(layer).__name__
  inner = getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)
  if inner is not None:
    return (f"a {name} wrapper around {type(inner).__name__}: tf_gibbs does not prune inside "
            f"{name} (put the pruning wrapper inside it: {name}(tf_gibbs.prune_...(layer)))")
  return (f"{name} is not supported (tf_gibbs prunes "
          f"{', '.join(wrapper_lib.supported_layer_names())})")


def _keras3_layout(layer):
  from tf_gibbs.keras3 import wrapper as wrapper3  # pylint: disable=g-import-not-at-top
  return wrapper3.PRUNABLE[type(layer)][1]


def _keras3_weight(layer):
  from tf_gibbs.keras3 import wrapper as wrapper3  # pylint: disable=g-import-not-at-top
  return wrapper3.PRUNABLE[type(layer)][0]


def _apply_keras3(to_prune, make_wrapper, skip, api_name, fits):
  """The Keras 3 path of every prune_* function (same checks of ``skip`` as tf_keras)."""
  from tf_gibbs.keras3 import prune as prune3  # pylint: disable=g-import-not-at-top
  from tf_gibbs.keras3 import wrapper as wrapper3  # pylint: disable=g-import-not-at-top
  import keras as keras3  # pylint: disable=g-import-not-at-top
  if isinstance(to_prune, (list, tuple)):
    if not to_prune:
      raise ValueError(f"`to_prune` is an empty list; {api_name} needs at least one layer.")
    known = [layer.name for layer in to_prune if isinstance(layer, keras3.layers.Layer)]
  elif isinstance(to_prune, keras3.Model):
    known = [layer.name for layer in prune3.walk_layers(to_prune)]
  else:
    known = None
  skipped = _skip_predicate(skip, known=known)

  def wrap(layer, index):
    wrapper3.check_layer(layer)
    reason = fits(layer)
    if reason is not None:
      raise ValueError(f"{api_name} cannot prune layer {layer.name} "
                       f"({type(layer).__name__}): {reason}")
    return make_wrapper(layer, index)

  return prune3.apply_wrappers(to_prune, wrap, skipped, api_name, fits=fits)


def _warn_if_network_budget_capped(result, target_sparsity, api_name):
  """The network-wide budget keeps a group in every layer: say so when that caps it."""
  def walk(layers):
    for layer in layers:
      yield layer
      if hasattr(layer, "layers"):  # a nested model
        yield from walk(layer.layers)

  layers = result if isinstance(result, (list, tuple)) else [result]
  members = [l for l in walk(layers) if getattr(l, "allocation", None) == "network"]
  if not members or not all(l.built for l in members):
    return result  # not built yet: the shapes are unknown
  groups, sizes = zip(*[l.network_groups() for l in members])
  count, capped = allocation.python_budget(target_sparsity, groups, sizes)
  if capped:
    total = sum(g * m for g, m in zip(groups, sizes))
    warnings.warn(
        f"tf_gibbs: {api_name}(allocation='network') asks for round({target_sparsity}·{total}) "
        f"of the {total} weights of its {len(members)} layers; capped at {count} (sparsity "
        f"{count / total:.4f}) so that every layer keeps one group.", UserWarning, stacklevel=3)
  return result


def _layer_seed(seed, index):
  return None if seed is None else (seed + index) % (2**31 - 1)


def prune_gibbs(to_prune, schedule=None, hamiltonian="unstructured", test_mode="magnitude",
                skip=None, seed=None, c=None, sampler=None, mcmc_steps=None,
                allocation="per_layer", allocation_frequency=100):
  """Wraps a model or layers for Gibbs pruning (Labach & Valaee, arXiv 2006.04981).

  Each wrapped layer samples a pruning mask x ~ p(x) ∝ exp(−β H(x; w)) at every training step
  (see :class:`tf_gibbs.GibbsPruning`). Train with ``model.fit(...,
  callbacks=[tf_gibbs.UpdatePruningStep()])``, then ``tf_gibbs.strip_pruning``.

  Example::

    import tf_keras as keras, tf_gibbs
    schedule = tf_gibbs.GibbsSchedule(0.9, beta_begin=1, beta_end=1e4, begin_step=0,
                                      end_step=2000)
    pruned = tf_gibbs.prune_gibbs(model, schedule, skip=["stem", "classifier"])

  Args:
    to_prune: Sequential or functional tf_keras model (cloned; Dense, Conv1D, Conv2D and
      DepthwiseConv2D layers are wrapped, others kept), one such layer, or a list of layers.
    schedule: a :class:`tf_gibbs.GibbsSchedule`; default ``GibbsSchedule()`` (p = 0.9,
      β 1 → 1e4 over steps 0–10000). Each layer prunes min(round(p·n), n − 1) of its n
      groups (weights, kernels or filters): a layer always keeps one, with a warning naming
      it when the target had to be capped (p = 0.99 on fewer than 50 filters).
    hamiltonian: ``"unstructured"`` (weights), ``"kernel"`` (whole conv kernels live or die
      together; conv layers only) or ``"filter"`` (whole filters / Dense output units).
      Conventions: the kernel energy acts on ±1 spins, as the reference writes it, so at c = 0
      its keep probability is σ(2β(w² − Q_p)), the unstructured one's at twice the β; the
      chromatic filter sampler's colour B has n·(C_in − ⌊C_in/2⌋) spins, and its magnetization
      uses that true size (the reference code uses ⌊C_in/2⌋·n for it, which differs when C_in
      is odd).
    test_mode: ``"magnitude"`` (deterministic exact-count mask at inference) or ``"sample"``
      (stochastic inference at the current β, as the reference code's 'gibbs' mode).
    skip: layers to leave dense: a name, a list of names, or ``callable(layer) -> bool``.
    seed: None, or an integer from which each wrapped layer's seed is derived.
    c: coupling of the kernel (default 0.01) or filter (default 1.0) Hamiltonian.
    sampler: filter Hamiltonian: ``"chromatic"`` (reference MCMC, default) or ``"exact"``.
    mcmc_steps: sweeps of the chromatic sampler (default 50).
    allocation: ``"per_layer"`` (default; the paper's: every layer at the schedule's p) or
      ``"network"``: one budget, round(p·N) of the N weights of all the layers wrapped by this
      call, split between them by LAMP scores (Lee et al., ICLR 2021; see
      :mod:`tf_gibbs.core.allocation`): each layer's Gibbs marginals, annealing and exact-count
      mask then use its share. Every layer keeps at least one group. Pick ``"network"`` at high
      targets (≥ 95 %) on models whose layers differ in size or sensitivity (small first
      convolutions, a classifier); ``"per_layer"`` to reproduce the paper or to control each
      layer's sparsity.
    allocation_frequency: steps between two recomputations of the network's split (default
      100; also at ``end_step``, where it becomes final).

  Returns:
    The wrapped model, layer or list of layers.
  """
  if schedule is None:
    schedule = GibbsSchedule()
  gibbs_lib.check_gibbs_schedule(schedule)
  energy = gibbs_lib.make_hamiltonian(hamiltonian, c=c, sampler=sampler, mcmc_steps=mcmc_steps)
  gibbs_lib.check_test_mode(test_mode)
  wrapper_lib.check_seed(seed)
  gibbs_lib.check_allocation(allocation, allocation_frequency)
  group = uuid.uuid4().hex if allocation == "network" else None
  network = {"allocation": allocation, "allocation_frequency": allocation_frequency,
             "budget_group": group}

  if targets_keras3(to_prune):
    from tf_gibbs.keras3 import gibbs as gibbs3  # pylint: disable=g-import-not-at-top

    def make_wrapper3(layer, index):
      return gibbs3.GibbsPruning(layer, pruning_schedule=schedule, hamiltonian=hamiltonian,
                                 test_mode=test_mode, c=c, sampler=sampler,
                                 mcmc_steps=mcmc_steps, seed=_layer_seed(seed, index),
                                 **network)

    return _warn_if_network_budget_capped(
        _apply_keras3(to_prune, make_wrapper3, skip, "prune_gibbs",
                      lambda layer: energy.check_layout(_keras3_layout(layer))),
        schedule.target_sparsity, "prune_gibbs")

  def make_wrapper(layer, index):
    return gibbs_lib.GibbsPruning(layer, pruning_schedule=schedule, hamiltonian=hamiltonian,
                                  test_mode=test_mode, c=c, sampler=sampler,
                                  mcmc_steps=mcmc_steps, seed=_layer_seed(seed, index),
                                  **network)

  return _warn_if_network_budget_capped(
      apply_wrappers(to_prune, make_wrapper, skip=skip, api_name="prune_gibbs",
                     fits=functools.partial(gibbs_lib.layer_misfit, energy)),
      schedule.target_sparsity, "prune_gibbs")


def prune_l0(to_prune, granularity="weight", mode="deterministic", l0_strength=None,
             target_sparsity=None, schedule=None, skip=None, seed=None, allocation="per_layer",
             **gate_kwargs):
  """Wraps a model or layers with trainable L0 gates (see :class:`tf_gibbs.L0Gates`).

  Every kernel is multiplied by approximately binary gates with exact zeros (DiffPrune-style
  deterministic gates, or Louizos et al.'s hard-concrete samples); the loss gets
  λ · (expected fraction of nonzero gated weights in the model). Train with ``model.fit(...,
  callbacks=[tf_gibbs.UpdatePruningStep()])``, then ``tf_gibbs.strip_pruning``.

  Example::

    pruned = tf_gibbs.prune_l0(model, granularity="filter", target_sparsity=0.9,
                               schedule=None, skip=["stem", "classifier"])

  Args:
    to_prune: Sequential or functional tf_keras model (cloned), one layer, or a list of layers.
    granularity: ``"weight"``, ``"kernel"``, ``"filter"``, ``"unit"`` or ``"input_unit"``
      (layers the granularity does not fit are left dense with a warning).
    mode: ``"deterministic"`` or ``"stochastic"``.
    l0_strength: λ ≥ 0 (default 1.0); shorthand for ``schedule=L0Schedule(l0_strength, ...)``.
    target_sparsity: None, or a budget in [0, 1): the penalty strength is then adapted so that
      each layer ends with this fraction of exactly-zero weights (min(round(s·n), n − 1) of its
      n gates: a layer keeps at least one gate open, with a warning naming it when the budget
      had to be capped); shorthand like l0_strength.
    schedule: an :class:`tf_gibbs.L0Schedule` (steps, ramps, budget); give either it or the two
      shorthands.
    skip: layers to leave dense: a name, a list of names, or ``callable(layer) -> bool``.
    seed: None, or an integer from which each wrapped layer's seed is derived.
    allocation: ``"per_layer"`` (default: every layer ends at the budget) or ``"network"``
      (needs a budget): round(s·N) of the N weights gated by this call end at zero together,
      the budget's ranking run over all their gates and split between layers by LAMP scores
      of the gated magnitudes (Lee et al., ICLR 2021; :mod:`tf_gibbs.core.allocation`);
      every layer keeps a gate open. Pick ``"network"`` at high targets (≥ 95 %) when layers
      differ in size or sensitivity.
    **gate_kwargs: ``temperature``, ``gate_lr_multiplier``, ``initial_log_alpha`` of
      :class:`tf_gibbs.L0Gates`.

  Returns:
    The wrapped model, layer or list of layers.
  """
  if schedule is None:
    schedule = L0Schedule(1.0 if l0_strength is None else l0_strength,
                          target_sparsity=target_sparsity)
  elif l0_strength is not None or target_sparsity is not None:
    raise ValueError("Give either `schedule` or `l0_strength`/`target_sparsity` (which build "
                     "an L0Schedule), not both: set them in the L0Schedule.")
  l0_lib.check_l0_schedule(schedule)
  l0_lib.check_mode(mode)
  l0_lib.l0_core.check_granularity(granularity)
  unknown = sorted(set(gate_kwargs) - set(l0_lib.GATE_ARGUMENTS))
  if unknown:
    raise TypeError(f"prune_l0 got unexpected arguments {unknown}; accepted extra arguments: "
                    f"{list(l0_lib.GATE_ARGUMENTS)}.")
  wrapper_lib.check_seed(seed)
  l0_lib.check_network_allocation(allocation, schedule)
  gate_kwargs.update(allocation=allocation,
                     budget_group=uuid.uuid4().hex if allocation == "network" else None)
  group = l0_lib.PenaltyGroup()
  if targets_keras3(to_prune):
    from tf_gibbs.keras3 import l0 as l0_3  # pylint: disable=g-import-not-at-top

    def make_wrapper3(layer, index):
      wrapper = l0_3.L0Gates(layer, pruning_schedule=schedule, granularity=granularity,
                             mode=mode, seed=_layer_seed(seed, index), **gate_kwargs)
      wrapper.penalty_group = group
      group.members.append(wrapper)
      return wrapper

    return _warn_if_network_budget_capped(
        _apply_keras3(to_prune, make_wrapper3, skip, "prune_l0",
                      lambda layer: l0_lib.l0_core.granularity_misfit(
                          granularity, _keras3_layout(layer))),
        schedule.target_sparsity, "prune_l0")

  def make_wrapper(layer, index):
    wrapper = l0_lib.L0Gates(layer, pruning_schedule=schedule, granularity=granularity,
                             mode=mode, seed=_layer_seed(seed, index), **gate_kwargs)
    wrapper.penalty_group = group
    group.members.append(wrapper)
    return wrapper

  return _warn_if_network_budget_capped(
      apply_wrappers(to_prune, make_wrapper, skip=skip, api_name="prune_l0",
                     fits=functools.partial(l0_lib.layer_misfit, granularity)),
      schedule.target_sparsity, "prune_l0")


def prune_adaptive(to_prune, target_sparsity, loss_weight=10.0, budget="params",
                   estimate="measured", begin_step=0, end_step=10000, min_weights=1000,
                   r_lr_multiplier=0.01, exact_budget=True, skip=None):
  """Wraps a model with learned per-layer thresholds under one global sparsity budget.

  Adaptive sparsity loss (Retsinas et al., arXiv 2006.02768; see
  :class:`tf_gibbs.AdaptiveThreshold`): every wrapped layer computes with W · 1[|W| > r·std(W)]
  and the loss gets λ (D − (1 − s))², D the parameter- (or FLOP-) weighted kept fraction of all
  wrapped layers, so the training decides how much each layer keeps. Train with
  ``model.fit(..., callbacks=[tf_gibbs.UpdatePruningStep()])``; the thresholds freeze at
  ``end_step``; then ``tf_gibbs.strip_pruning``.

  Args:
    to_prune: Sequential or functional tf_keras model (cloned), one layer, or a list of layers
      (a list shares one budget; a single layer has its own).
    target_sparsity: the budget s in [0, 1): the fraction of zero weights over the wrapped layers.
    loss_weight: λ > 0 (default 10, the paper's).
    budget: ``"params"`` or ``"flops"`` (multiply-accumulates per example).
    estimate: ``"measured"`` (real zero fraction, our correction) or ``"erf"`` (the paper's).
    begin_step, end_step: thresholding starts at ``begin_step``; thresholds freeze at
      ``end_step``.
    min_weights: layers with fewer weights are left dense (default 1000, the reference code's).
    r_lr_multiplier: r learns this many times as fast as the weights (default 0.01).
    exact_budget: at ``end_step`` rescale all thresholds by one common factor so that the
      measured zero fraction is exactly s (our correction; False: as trained, as the paper).
    skip: layers to leave dense: a name, a list of names, or ``callable(layer) -> bool``.

  Returns:
    The wrapped model, layer or list of layers.
  """
  schedule = AdaptiveSchedule(target_sparsity, begin_step=begin_step, end_step=end_step)
  adaptive_lib.check_budget(budget)
  adaptive_lib.check_estimate(estimate)
  check_number(loss_weight, "loss_weight", 0.0, False)
  check_number(r_lr_multiplier, "r_lr_multiplier", 0.0, False)
  min_weights = int(check_number(min_weights, "min_weights", 0, integer=True))
  check_bool(exact_budget, "exact_budget")
  group = uuid.uuid4().hex
  if targets_keras3(to_prune):
    import math  # pylint: disable=g-import-not-at-top
    from tf_gibbs.keras3 import adaptive as adaptive3  # pylint: disable=g-import-not-at-top

    def make_wrapper3(layer, index):
      del index
      return adaptive3.AdaptiveThreshold(
          layer, pruning_schedule=schedule, loss_weight=loss_weight, budget=budget,
          estimate=estimate, r_lr_multiplier=r_lr_multiplier, budget_group=group,
          exact_budget=exact_budget)

    def fits3(layer):
      weight = getattr(layer, _keras3_weight(layer), None)
      if weight is None or math.prod(weight.shape) >= min_weights:
        return None
      return (f"they have fewer than min_weights={min_weights} weights (the adaptive sparsity "
              "loss leaves small layers dense).")

    return _apply_keras3(to_prune, make_wrapper3, skip, "prune_adaptive", fits3)

  def make_wrapper(layer, index):
    del index
    return adaptive_lib.AdaptiveThreshold(
        layer, pruning_schedule=schedule, loss_weight=loss_weight, budget=budget,
        estimate=estimate, r_lr_multiplier=r_lr_multiplier, budget_group=group,
        exact_budget=exact_budget)

  def fits(layer):
    weight = getattr(layer, wrapper_lib.prunable_weight_name(layer), None)
    if weight is None or weight.shape.num_elements() >= min_weights:
      return None
    return (f"they have fewer than min_weights={min_weights} weights (the adaptive sparsity "
            "loss leaves small layers dense).")

  return apply_wrappers(to_prune, make_wrapper, skip=skip, api_name="prune_adaptive", fits=fits)


def _stripped_copy(wrapper, pending):
  """A fresh inner layer; its weights (the deployable ones) are set once it is built."""
  inner = wrapper.layer
  config = inner.get_config()
  if getattr(wrapper, "_batch_input_shape", None) is not None and "batch_input_shape" not in config:
    config["batch_input_shape"] = wrapper._batch_input_shape  # pylint: disable=protected-access
  copy = inner.__class__.from_config(config)
  final = wrapper.final_weight().numpy()
  values = [final if v is wrapper.prunable_weights[0] else v.numpy() for v in inner.weights]
  pending.append((copy, values))
  return copy


def strip_pruning(model):
  """Returns a plain tf_keras model with every tf_gibbs wrapper replaced by its deployable layer.

  Unlike ``tfmot.sparsity.keras.strip_pruning`` (which returns the inner layers as they are), the
  deployable weight (for Gibbs pruning: the exact-count deterministic mask applied) is computed
  here, so the result is exact even if the step callback never ran past the schedule's end. The
  wrapped model is not modified; stripped layers are fresh copies, other layers are shared (as in
  tfmot). tfmot's own wrappers in the model are unwrapped the tfmot way.

  Args:
    model: a Sequential or functional model, or a single tf_gibbs wrapper.

  Returns:
    The stripped model (or layer).
  """
  if targets_keras3(model, "model"):
    from tf_gibbs.keras3 import prune as prune3  # pylint: disable=g-import-not-at-top
    return prune3.strip_pruning(model)
  if isinstance(model, wrapper_lib.PruningWrapper):
    pending = []
    if not model.built:
      raise ValueError(f"Wrapper {model.name} is not built; call it on data before stripping.")
    copy = _stripped_copy(model, pending)
    copy.build(model.layer._build_input_shape)  # pylint: disable=protected-access
    copy.set_weights(pending[0][1])
    return copy
  check_not_keras3(model, "model")
  if not isinstance(model, keras.Model):
    raise TypeError(f"`model` must be a tf_keras model or a tf_gibbs wrapper, got "
                    f"{type(model).__name__}.")
  if not is_graph_model(model):
    raise ValueError(
        f"strip_pruning cannot clone the subclassed model {type(model).__name__}. Rebuild it "
        "with plain layers and copy the weights from `tf_gibbs.strip_pruning(wrapper)` of each "
        "wrapped layer, or define it as a functional model.")

  pending, untrained, unfinished = [], [], []

  def strip(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, input_tensors=None, clone_function=strip)
    if isinstance(layer, wrapper_lib.PruningWrapper):
      if int(keras.backend.get_value(layer.pruning_step)) <= 0:
        untrained.append(layer.name)
      elif not bool(layer.schedule_finished()):
        unfinished.append(layer.name)
      return _stripped_copy(layer, pending)
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
      return layer.layer
    if isinstance(layer, keras.layers.TimeDistributed) and isinstance(
        layer.layer, pruning_wrapper.PruneLowMagnitude):
      return keras.layers.TimeDistributed(strip(layer.layer), name=layer.name)
    return layer

  stripped = _as_plain_class(
      keras.models.clone_model(model, input_tensors=None, clone_function=strip))
  for copy, values in pending:
    copy.set_weights(values)
  message = strip_warning(untrained, unfinished)
  if message:
    warnings.warn(message, stacklevel=2)
  return stripped


def stale_wrappers(model):
  """Names of the tf_gibbs wrappers in ``model`` whose kernel variable is not their deployable
  weight (before ``end_step``, or before the epoch-end write): unwrapping those as they are,
  as ``tfmot.sparsity.keras.strip_pruning`` does, would deploy unpruned kernels."""
  stale = []
  for layer in walk_layers(model) if isinstance(model, keras.Model) else [model]:
    if isinstance(layer, wrapper_lib.PruningWrapper) and layer.built:
      final = layer.final_weight()
      if not bool(tf.reduce_all(tf.equal(tf.cast(final, tf.float32),
                                         tf.cast(layer.read_weight(), tf.float32)))):
        stale.append(layer.layer.name)
  return stale


def _warn_when_tfmot_strips_early(tfmot_strip):
  """tfmot's ``strip_pruning``, with a warning when it would unwrap stale tf_gibbs wrappers."""

  @functools.wraps(tfmot_strip)
  def strip_pruning_checked(model):
    stale = stale_wrappers(model) if isinstance(model, keras.layers.Layer) else []
    if stale:
      warnings.warn(
          f"tfmot.sparsity.keras.strip_pruning: the kernels of tf_gibbs layers {stale} are not "
          "their deployable weights yet (the schedule has not reached end_step, or no epoch "
          "ended after it), so the stripped model would have unpruned kernels and other "
          "predictions. Use tf_gibbs.strip_pruning(model), which applies the current mask "
          "exactly, or train past end_step with tf_gibbs.UpdatePruningStep.", stacklevel=2)
    stripped = tfmot_strip(model)
    return _as_plain_class(stripped) if isinstance(stripped, keras.Model) else stripped

  strip_pruning_checked.tf_gibbs_checked = True
  return strip_pruning_checked


def _install_tfmot_strip_check():
  """tfmot's ``strip_pruning`` unwraps a wrapper as it is: it cannot know that a tf_gibbs
  kernel stays raw until the schedule ends. We wrap tfmot's public function (once) so that it
  warns, naming the layers, instead of silently returning unpruned kernels."""
  from tensorflow_model_optimization.python.core.api.sparsity import keras as tfmot_api  # pylint: disable=g-import-not-at-top
  from tensorflow_model_optimization.python.core.sparsity.keras import prune as tfmot_prune  # pylint: disable=g-import-not-at-top
  if getattr(tfmot_prune.strip_pruning, "tf_gibbs_checked", False):
    return
  checked = _warn_when_tfmot_strips_early(tfmot_prune.strip_pruning)
  tfmot_prune.strip_pruning = checked
  tfmot_api.strip_pruning = checked


_install_tfmot_strip_check()


def prune_scope():
  """Custom-object scope that loads models saved with tf_gibbs (and tfmot) wrappers.

  tf_gibbs classes are also registered as Keras serializables, so loading usually works without
  it; use it like tfmot's ``prune_scope`` where a loader needs explicit names::

    with tf_gibbs.prune_scope():
      model = tf_keras.models.load_model(path)
  """
  return keras.utils.custom_object_scope({
      "AdaptiveThreshold": adaptive_lib.AdaptiveThreshold,
      "GibbsPruning": gibbs_lib.GibbsPruning,
      "L0Gates": l0_lib.L0Gates,
      "PruneLowMagnitude": pruning_wrapper.PruneLowMagnitude,
      **wrapper_lib.schedule_custom_objects(),
  })
