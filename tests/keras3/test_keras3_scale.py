"""Keras 3 at scale, on the current backend: two replicas equal one device with the same global
batch (TensorFlow: tf.distribute.MirroredStrategy over two logical CPUs; JAX:
keras.distribution.DataParallel over two host devices), and mixed precision keeps the pruning
state in float32 with no overflow at β = 1e8."""

import keras
import numpy as np
import pytest

import tf_gibbs

from conftest import to_numpy
from helpers import check_mask
from test_keras3_wrappers import END
from test_keras3_wrappers import METHODS
from test_keras3_wrappers import STEPS
from test_keras3_wrappers import _group_count
from test_keras3_wrappers import _wrappers
from test_keras3_wrappers import _zero_groups
from test_keras3_wrappers import data
from test_keras3_wrappers import small_model

# One of each sampler family: Gibbs energies (unstructured; filter with the chromatic MCMC),
# L0 gates (deterministic budget; stochastic filter gates) and the adaptive threshold.
DISTRIBUTED = ["gibbs-unstructured", "gibbs-filter-chromatic", "l0-weight-budget",
               "l0-stochastic-filter", "adaptive"]


@pytest.fixture
def two_devices(request):
  """A context manager factory that places a model on two replicas."""
  backend = keras.backend.backend()
  if backend == "tensorflow":  # the process's one strategy (tests/conftest.py)
    return request.getfixturevalue("mirrored_strategy").scope
  if backend == "jax":
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) >= 2, "tests/conftest.py sets XLA_FLAGS for two host devices"
    return keras.distribution.DataParallel(devices=devices[:2]).scope
  pytest.skip("backend-specific: Keras 3 distributes on TensorFlow and JAX; on PyTorch it "
              "trains on one device (no keras.distribution backend)")


def _fit(model):
  x, y = data()
  model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
  model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
  return model


def _check_mask(wrapper, mask):
  check_mask(mask, isinstance(wrapper, tf_gibbs.keras3.L0Gates), wrapper.name)


def _replicas(variable):
  """The per-device copies of a variable's value."""
  value = variable.value
  if hasattr(value, "values"):  # tf.distribute: one variable per replica
    return [v.numpy() for v in value.values]
  if hasattr(value, "addressable_shards"):  # JAX: a replicated array, one buffer per device
    return [np.asarray(shard.data) for shard in value.addressable_shards]
  return [to_numpy(value)]


@pytest.mark.parametrize("method", DISTRIBUTED)
def test_two_replicas_equal_one_device_with_the_same_global_batch(method, two_devices):
  """Masks are pure functions of (seed, step), so both replicas draw the same mask; gradients
  are averaged over the global batch, so two replicas reproduce one device (up to summation
  order), and the masks, gates and thresholds are never averaged."""
  keras.utils.set_random_seed(0)
  single = _fit(METHODS[method](small_model()))
  keras.utils.set_random_seed(0)
  with two_devices():
    distributed = _fit(METHODS[method](small_model()))
  for a, b in zip(single.weights, distributed.weights):
    np.testing.assert_allclose(to_numpy(b.value), to_numpy(a.value), rtol=1e-4, atol=1e-5,
                               err_msg=a.path)
  for wrapper in _wrappers(distributed):
    masks = _replicas(wrapper.mask)
    assert len(masks) == 2
    np.testing.assert_array_equal(masks[0], masks[1])
    _check_mask(wrapper, masks[0])  # never an average of binary masks
    assert [int(s) for s in _replicas(wrapper.pruning_step)] == [STEPS, STEPS]


MIXED = {
    "gibbs-unstructured": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.5, beta_begin=1.0, beta_end=1e8, end_step=END), seed=3),
    "gibbs-filter-chromatic": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.5, beta_begin=0.01, beta_end=1e8, end_step=END),
        hamiltonian="filter", mcmc_steps=5, seed=3),
    "l0-weight-budget": METHODS["l0-weight-budget"],
    "adaptive": METHODS["adaptive"],
}


# bfloat16 (no loss scaling) by default for one Gibbs sampler and the L0 gates; float16 for all.
@pytest.mark.parametrize("method,policy", [
    pytest.param(m, p, marks=[pytest.mark.slow] if p == "mixed_bfloat16" and m in (
        "gibbs-filter-chromatic", "adaptive") else [])
    for m in sorted(MIXED) for p in ("mixed_float16", "mixed_bfloat16")])
def test_mixed_precision_keeps_the_pruning_state_in_float32(method, policy):
  keras.config.set_dtype_policy(policy)
  try:
    pruned = MIXED[method](small_model())
    read = []  # the dtype of every kernel the method's maths receives
    for wrapper in _wrappers(pruned):
      for hook in ("training_weight", "inference_weight"):
        original = getattr(wrapper, hook)
        setattr(wrapper, hook, lambda weight, step, f=original: (
            read.append(keras.backend.standardize_dtype(weight.dtype)), f(weight, step))[1])
    x, y = data()
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    history = pruned.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
  finally:
    keras.config.set_dtype_policy("float32")
  assert np.all(np.isfinite(history.history["loss"]))
  assert read and set(read) == {"float32"}  # never the autocast float16/bfloat16 copy
  wrappers = _wrappers(pruned)
  for wrapper in wrappers:
    assert wrapper.layer.compute_dtype == policy.split("_")[1]
    inner = {id(v) for v in wrapper.layer.weights}
    own = [v for v in wrapper.weights if id(v) not in inner]
    assert own and all(v.dtype in ("float32", "int32") for v in own), [
        (v.path, v.dtype) for v in own]
    assert wrapper.kernel_variable.dtype == "float32"
    for v in own:
      assert np.all(np.isfinite(to_numpy(v.value))), v.path  # no overflow at β = 1e8
    _check_mask(wrapper, to_numpy(wrapper.mask.value))
    assert int(to_numpy(wrapper.pruning_step.value)) == STEPS
  stripped = tf_gibbs.strip_pruning(pruned)
  kernels = {layer.name: layer.get_weights()[0] for layer in stripped.layers if layer.weights}
  if method == "adaptive":
    total = sum(kernels[w.layer.name].size for w in wrappers)
    zero = sum(int((kernels[w.layer.name] == 0).sum()) for w in wrappers)
    assert 0.6 <= zero / total < 0.6 + 3 / total
  else:
    for wrapper in wrappers:
      assert _zero_groups(kernels[wrapper.layer.name], wrapper) == _group_count(wrapper)[1]
