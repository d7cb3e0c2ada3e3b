"""Kernel-wise and filter-wise Gibbs pruning in Keras: whole groups zero at the exact fraction."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras as keras

import tf_gibbs
from helpers import compile_model
from helpers import random_data
from helpers import small_cnn


def _train(hamiltonian, sparsity=0.5, jit_compile=False, **kwargs):
  schedule = tf_gibbs.GibbsSchedule(sparsity, beta_begin=1.0, beta_end=1e4, end_step=6)
  with pytest.warns(UserWarning, match="left dense") if hamiltonian == "kernel" else _nothing():
    model = tf_gibbs.prune_gibbs(small_cnn(), schedule, hamiltonian=hamiltonian, **kwargs)
  compile_model(model, jit_compile=jit_compile)
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=2, callbacks=[tf_gibbs.UpdatePruningStep()], verbose=0)
  return model, x


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *args):
    return False


def _zero_groups(kernel, hamiltonian):
  """Number of all-zero groups and the number of groups."""
  if hamiltonian == "kernel":  # (kh, kw, C, F): a group is one (C, F) slice
    groups = kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1])
  else:  # filter: last axis
    groups = kernel.reshape(-1, kernel.shape[-1])
  zero = np.all(groups == 0, axis=0)
  return int(zero.sum()), zero.size, groups


@pytest.mark.parametrize("hamiltonian,kwargs", [
    ("kernel", {}), ("filter", {"sampler": "exact"}), ("filter", {"mcmc_steps": 5})])
def test_whole_groups_are_zero_at_the_exact_fraction(hamiltonian, kwargs):
  model, x = _train(hamiltonian, **kwargs)
  wrapped = [l for l in model.layers if isinstance(l, tf_gibbs.GibbsPruning)]
  assert {l.hamiltonian for l in wrapped} == {hamiltonian}
  if hamiltonian == "kernel":
    assert {l.layer.name for l in wrapped} == {"conv1", "conv2"}  # Dense layers stay dense
  for strip in (tf_gibbs.strip_pruning, tfmot.sparsity.keras.strip_pruning):  # one training
    stripped = strip(model)
    for layer in stripped.layers:
      if layer.name in {l.layer.name for l in wrapped}:
        kernel = layer.kernel.numpy()
        zero, total, groups = _zero_groups(kernel, hamiltonian)
        assert zero == round(0.5 * total), (strip.__module__, layer.name)
        assert (kernel == 0).sum() == zero * groups.shape[0]  # kept groups have no zeros
    np.testing.assert_allclose(stripped.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_filter_hamiltonian_on_dense_prunes_output_units_and_trains_under_xla():
  model, _ = _train("filter", jit_compile=True)
  dense = next(l for l in model.layers if isinstance(l, tf_gibbs.GibbsPruning)
               and l.layer.name == "dense1")
  kernel = dense.layer.kernel.numpy()
  assert np.all(kernel == 0, axis=0).sum() == 8  # 16 units, half pruned


def test_filter_training_mask_at_zero_coupling_and_large_beta_follows_the_fields():
  layer = tf_gibbs.prune_gibbs(keras.layers.Conv2D(6, 3), tf_gibbs.GibbsSchedule(
      0.5, beta_begin=1e6, beta_end=1e6), hamiltonian="filter", c=0.0, sampler="exact")
  layer.build((None, 5, 5, 4))
  layer.pruning_step.assign(0)
  layer(np.ones((1, 5, 5, 4), "float32"), training=True)
  mask = layer.mask.numpy().reshape(-1, 6)
  # c = 0 and β → ∞: the spins are independent and keep iff w² > Q_p (Q_p over filter means)
  w2 = layer.layer.kernel.numpy().reshape(-1, 6) ** 2
  q = np.quantile(w2.mean(0), 0.5)
  np.testing.assert_array_equal(mask, (w2 > q).astype(np.float32))


@pytest.mark.parametrize("filename", ["model.keras", "model.h5"])
def test_structured_config_survives_save_and_load(tmp_path, filename):
  model, x = _train("filter", sampler="chromatic", mcmc_steps=7, c=0.5)
  path = str(tmp_path / filename)
  model.save(path)
  loaded = keras.models.load_model(path)
  for a, b in zip(model.layers, loaded.layers):
    if isinstance(a, tf_gibbs.GibbsPruning):
      assert b.get_config() == a.get_config()
      assert (b.hamiltonian, b._energy.sampler, b._energy.mcmc_steps, b._energy.c) == (
          "filter", "chromatic", 7, 0.5)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("call,error,pattern", [
    (lambda: tf_gibbs.prune_gibbs(keras.layers.Dense(4), hamiltonian="kernel"), ValueError,
     "kernel.*Dense"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), hamiltonian="kernel", c=-1.0), ValueError,
     "`c`"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), hamiltonian="filter", mcmc_steps=0), ValueError,
     "`mcmc_steps`"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), hamiltonian="filter", sampler="metropolis"),
     ValueError, "sampler='metropolis'.*exact.*chromatic"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), hamiltonian="kernel", sampler="exact"),
     ValueError, "takes no argument \\['sampler'\\]"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), c=0.5), ValueError,
     "'unstructured' takes no argument \\['c'\\]"),
])
def test_structured_bad_input(call, error, pattern):
  with pytest.raises(error, match=pattern):
    call()
