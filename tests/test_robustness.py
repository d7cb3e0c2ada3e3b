"""Every method under XLA, mixed precision, tf.distribute and an interrupted-and-resumed fit."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_gibbs
from helpers import check_mask
from helpers import random_data
from helpers import small_cnn
from helpers import wrappers

TARGET = 0.5
END_STEP = 6  # 64 examples, batch 16: the schedule ends in the 2nd epoch


def _gibbs(hamiltonian, **kwargs):
  def make():
    schedule = tf_gibbs.GibbsSchedule(TARGET, beta_begin=1.0, beta_end=1e4, end_step=END_STEP)
    skip = ["dense1", "logits"] if hamiltonian == "kernel" else None  # convolutions only
    return tf_gibbs.prune_gibbs(small_cnn(), schedule, hamiltonian=hamiltonian, seed=3,
                                skip=skip, **kwargs)
  return make


def _l0(granularity, mode, **kwargs):
  def make():
    schedule = tf_gibbs.L0Schedule(target_sparsity=TARGET, end_step=END_STEP, frequency=2)
    return tf_gibbs.prune_l0(small_cnn(), granularity=granularity, mode=mode, seed=3,
                             schedule=schedule,
                             skip=["dense1", "logits"] if granularity == "filter" else None,
                             **kwargs)
  return make


def _adaptive():
  return tf_gibbs.prune_adaptive(small_cnn(), TARGET, end_step=END_STEP, min_weights=10,
                                 r_lr_multiplier=1.0)


METHODS = {
    "gibbs": _gibbs("unstructured"),
    "gibbs_kernel": _gibbs("kernel"),
    "gibbs_filter": _gibbs("filter", mcmc_steps=5),
    "l0_weight": _l0("weight", "deterministic"),
    "l0_filter_stochastic": _l0("filter", "stochastic"),
    "adaptive": _adaptive,
    # One network-wide budget (issue #24): the shared allocation under XLA, mixed precision,
    # replicas and interrupted runs.
    "gibbs_network": _gibbs("unstructured", allocation="network", allocation_frequency=2),
    "l0_network": _l0("weight", "deterministic", allocation="network"),
}


def _cases(*axes, slow=lambda *case: False):
  """Every combination of ``axes`` as pytest params; those for which ``slow(*case)`` holds are
  marked slow (``pytest -m slow``): they repeat what a default case already covers."""
  combos = [()]
  for axis in axes:
    combos = [c + (v,) for c in combos for v in axis]
  return [pytest.param(*c, marks=pytest.mark.slow) if slow(*c) else pytest.param(*c)
          for c in combos]


def _compile(model, jit_compile=False):
  model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile)
  return model


def _fit(model, epochs=2, callbacks=None):
  """``callbacks``: the full list (default: just the step callback)."""
  x, y = random_data(64)
  return model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
                   callbacks=[tf_gibbs.UpdatePruningStep()] if callbacks is None else callbacks)


def _sparsity(model):
  """Zero fraction of the stripped kernels of the wrapped layers."""
  names = {w.layer.name for w in wrappers(model)}
  kernels = [l.kernel.numpy() for l in tf_gibbs.strip_pruning(model).layers if l.name in names]
  return sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels)


def _check_mask(wrapper, mask):
  check_mask(mask, isinstance(wrapper, tf_gibbs.L0Gates), wrapper.name)


def _weights(model):
  return [np.array(w) for w in model.get_weights()]


# Gibbs unstructured, L0 per weight and adaptive also train under jit_compile in their own
# test files (test_gibbs_wrapper, test_l0_wrapper, test_adaptive_wrapper).
@pytest.mark.parametrize("method", _cases(
    METHODS, slow=lambda m: m in ("gibbs", "l0_weight", "adaptive")))
def test_trains_under_xla_to_the_target(method):
  model = _compile(METHODS[method](), jit_compile=True)
  history = _fit(model)
  assert np.all(np.isfinite(history.history["loss"]))
  assert _sparsity(model) == pytest.approx(TARGET, abs=0.02)


# bfloat16 by default for one Gibbs and one L0 wrapper (float16, with its loss scaling, for all).
@pytest.mark.parametrize("method,policy", _cases(
    METHODS, ["mixed_float16", "mixed_bfloat16"],
    slow=lambda m, p: p == "mixed_bfloat16" and m not in ("gibbs", "l0_weight")))
def test_mixed_precision_keeps_the_pruning_state_in_float32(method, policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = _compile(METHODS[method]())
    history = _fit(model)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert np.all(np.isfinite(history.history["loss"]))
  for wrapper in wrappers(model):
    assert wrapper.layer.compute_dtype == policy.split("_")[1]
    own = wrapper._trainable_weights + wrapper._non_trainable_weights  # pylint: disable=protected-access
    assert own and all(v.dtype in (tf.float32, tf.int64) for v in own)
    assert all(not hasattr(v, "_variable") for v in own)  # never autocast
    _check_mask(wrapper, wrapper.mask.numpy())
  assert _sparsity(model) == pytest.approx(TARGET, abs=0.02)


@pytest.mark.parametrize("method", METHODS)
def test_two_replicas_equal_one_device_with_the_same_global_batch(method, mirrored_strategy):
  """Masks are drawn from stateless random numbers keyed by (seed, step), so both replicas use
  the same mask; gradients are averaged over the global batch, so the distributed run is the
  single-device run (up to float summation order)."""
  keras.utils.set_random_seed(0)
  single = _compile(METHODS[method]())
  _fit(single)
  keras.utils.set_random_seed(0)
  with mirrored_strategy.scope():
    distributed = _compile(METHODS[method]())
  _fit(distributed)
  for a, b in zip(_weights(single), _weights(distributed)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  for wrapper in wrappers(distributed):
    replicas = [v.numpy() for v in wrapper.mask.values]
    assert len(replicas) == 2
    np.testing.assert_array_equal(replicas[0], replicas[1])
    _check_mask(wrapper, replicas[0])  # never an average of binary masks
    steps = [int(v.numpy()) for v in wrapper.pruning_step.values]
    assert steps[0] == steps[1] == 8


class _Interrupt(keras.callbacks.Callback):

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == 1:
      raise RuntimeError("interrupted")


# The callbacks' order is the same question for every method: both orders by default for one.
@pytest.mark.parametrize("method,order", _cases(
    METHODS, ["pruning_first", "backup_first"],
    slow=lambda m, o: o == "backup_first" and m != "gibbs"))
def test_interrupted_and_resumed_fit_equals_an_uninterrupted_one(method, order, tmp_path):
  keras.utils.set_random_seed(0)
  uninterrupted = _compile(METHODS[method]())
  _fit(uninterrupted, epochs=3)

  backup = str(tmp_path / "backup")

  def callbacks(*extra):
    step, restore = tf_gibbs.UpdatePruningStep(), keras.callbacks.BackupAndRestore(backup)
    return [restore, step, *extra] if order == "backup_first" else [step, restore, *extra]

  keras.utils.set_random_seed(0)
  first = _compile(METHODS[method]())
  with pytest.raises(RuntimeError, match="interrupted"):
    _fit(first, epochs=3, callbacks=callbacks(_Interrupt()))
  keras.backend.clear_session()
  keras.utils.set_random_seed(1)  # a new process: other seeds, fresh variables
  resumed = _compile(METHODS[method]())
  _fit(resumed, epochs=3, callbacks=callbacks())
  for w_resumed, w_uninterrupted in zip(wrappers(resumed), wrappers(uninterrupted)):
    assert int(w_resumed.pruning_step) == int(w_uninterrupted.pruning_step) == 12
  for a, b in zip(_weights(uninterrupted), _weights(resumed)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


class _Net(keras.Model):
  """A subclassed model whose layers are wrapped where they are created."""

  def __init__(self, wrap):
    super().__init__()
    self.conv = wrap(keras.layers.Conv2D(8, 3, activation="relu"))
    self.flatten = keras.layers.Flatten()
    self.logits = wrap(keras.layers.Dense(10))

  def call(self, x):
    return self.logits(self.flatten(self.conv(x)))


SUBCLASS_WRAPS = {
    "gibbs": lambda l: tf_gibbs.prune_gibbs(l, tf_gibbs.GibbsSchedule(TARGET, end_step=END_STEP)),
    "l0": lambda l: tf_gibbs.prune_l0(l, schedule=tf_gibbs.L0Schedule(target_sparsity=TARGET,
                                                                      end_step=END_STEP)),
    "adaptive": lambda l: tf_gibbs.prune_adaptive(l, TARGET, end_step=END_STEP, min_weights=10),
}


@pytest.mark.parametrize("method", SUBCLASS_WRAPS)
def test_wrappers_train_inside_a_subclassed_model_and_strip_layer_by_layer(method):
  model = _compile(_Net(SUBCLASS_WRAPS[method]))  # not built before fit
  history = _fit(model)
  assert np.all(np.isfinite(history.history["loss"]))
  assert int(model.conv.pruning_step) == int(model.logits.pruning_step) == 8
  conv, logits = tf_gibbs.strip_pruning(model.conv), tf_gibbs.strip_pruning(model.logits)
  for layer in (conv, logits):
    assert (layer.kernel.numpy() == 0).sum() == round(TARGET * layer.kernel.numpy().size)
  x, _ = random_data(16)
  np.testing.assert_allclose(logits(keras.layers.Flatten()(conv(x))).numpy(),
                             model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="subclassed model.*strip_pruning\\(wrapper\\)"):
    tf_gibbs.strip_pruning(model)


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.parametrize("method", [
    "gibbs",
    pytest.param("l0_filter_stochastic", marks=pytest.mark.slow),
    pytest.param("adaptive", marks=pytest.mark.slow)])
def test_two_worker_processes_equal_one_process(method, tmp_path):
  """MultiWorkerMirroredStrategy over two local worker processes (TF_CONFIG, gRPC on
  localhost) trains like one process on the same global batch (tests/multiworker_worker.py)."""
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiworker_worker.py")
  ports = ",".join(str(p) for p in _free_ports(2))
  runs = [subprocess.Popen([sys.executable, worker, method, index, ports, str(tmp_path)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
          for index in ("single", "0", "1")]
  for run in runs:
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output.decode()[-3000:]
  single, chief, other = (np.load(tmp_path / f"{i}.npz") for i in ("single", "0", "1"))
  for key in single:
    np.testing.assert_array_equal(chief[key], other[key])  # workers agree exactly
    np.testing.assert_allclose(chief[key], single[key], rtol=1e-4, atol=1e-5)
