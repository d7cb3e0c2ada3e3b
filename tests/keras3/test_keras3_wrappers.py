"""The Keras 3 wrappers on the current backend: prune inside fit without a callback, strip to
exact sparsity with equal predictions, save/load/resume, and bad input."""

import math
import warnings

import keras
import numpy as np
import pytest

import tf_gibbs
from tf_gibbs.core import ranking
from tf_gibbs.keras3 import prune as prune3

from conftest import to_numpy

STEPS = 8  # 2 epochs of 4 batches
END = 6


def small_model():
  inputs = keras.Input((6, 6, 2))
  x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
  x = keras.layers.DepthwiseConv2D(2, name="depthwise")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  outputs = keras.layers.Dense(3, name="dense")(x)
  return keras.Model(inputs, outputs, name="small")


def data(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.normal(size=(n, 3)).astype(
      "float32")


METHODS = {
    "gibbs-unstructured": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.5, end_step=END), seed=3),
    "gibbs-kernel": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.5, end_step=END), hamiltonian="kernel", skip="dense",
        seed=3),
    "gibbs-filter-chromatic": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.5, beta_begin=0.01, beta_end=1, end_step=END),
        hamiltonian="filter", mcmc_steps=5, seed=3),
    "gibbs-filter-exact": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.5, end_step=END), hamiltonian="filter", sampler="exact",
        seed=3),
    "gibbs-unstructured-network": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.8, end_step=END), seed=3, allocation="network",
        allocation_frequency=2),
    "gibbs-filter-network": lambda m: tf_gibbs.prune_gibbs(
        m, tf_gibbs.GibbsSchedule(0.8, end_step=END), hamiltonian="filter", sampler="exact",
        seed=3, allocation="network"),
    "l0-weight-network": lambda m: tf_gibbs.prune_l0(
        m, schedule=tf_gibbs.L0Schedule(1.0, target_sparsity=0.8, end_step=END, frequency=2),
        seed=3, allocation="network"),
    "l0-weight-budget": lambda m: tf_gibbs.prune_l0(
        m, schedule=tf_gibbs.L0Schedule(1.0, target_sparsity=0.5, end_step=END, frequency=2),
        seed=3),
    "l0-stochastic-filter": lambda m: tf_gibbs.prune_l0(
        m, granularity="filter", mode="stochastic", skip="dense",
        schedule=tf_gibbs.L0Schedule(1.0, target_sparsity=0.5, end_step=END), seed=3),
    "adaptive": lambda m: tf_gibbs.prune_adaptive(m, 0.6, begin_step=0, end_step=END,
                                                  min_weights=50),
}


def _wrappers(model):
  return [layer for layer in prune3.walk_layers(model)
          if isinstance(layer, tf_gibbs.keras3.PruningWrapper)]


def _fit(model, epochs=2, x=None, y=None, **kwargs):
  if x is None:
    x, y = data()
  model.compile(keras.optimizers.Adam(1e-2), "mse", **kwargs)
  return model.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0)


def _group_count(wrapper):
  """(groups the method's per-layer target counts, pruned groups expected)."""
  if isinstance(wrapper, tf_gibbs.keras3.GibbsPruning):
    n = wrapper.target_groups()[0]
  else:
    n = math.prod(wrapper.gate_parameter.shape)
  return n, ranking.python_pruned_count(n, 0.5)[0]


def _zero_groups(kernel, wrapper):
  view = np.reshape(kernel, wrapper._view)  # pylint: disable=protected-access
  if getattr(wrapper, "hamiltonian", None) == "unstructured" or getattr(
      wrapper, "granularity", None) == "weight":
    return int((view == 0).sum())
  if getattr(wrapper, "hamiltonian", None) == "kernel":
    return int(np.all(view == 0, axis=0).sum())
  return int(np.all(view == 0, axis=(0, 1)).sum())


def _check_exact_strip(pruned, method, wrappers):
  """strip_pruning gives the wrapped model's predictions and exactly the target zeros."""
  x, _ = data(16, seed=1)
  stripped = tf_gibbs.strip_pruning(pruned)
  assert not _wrappers(stripped)
  np.testing.assert_allclose(to_numpy(stripped.predict(x, verbose=0)),
                             to_numpy(pruned.predict(x, verbose=0)), atol=1e-6)
  kernels = {layer.name: layer.get_weights()[0] for layer in stripped.layers if layer.weights}
  if method.endswith("-network"):  # one budget over all wrapped layers, split by LAMP
    pruned_weights = total = 0
    for wrapper in wrappers:
      view = wrapper._view  # pylint: disable=protected-access
      kind = getattr(wrapper, "hamiltonian", None) or getattr(wrapper, "granularity", None)
      groups = {"unstructured": math.prod(view), "weight": math.prod(view),
                "filter": view[2]}[kind]
      share = float(to_numpy(wrapper.allocated_sparsity.value))
      zero = _zero_groups(kernels[wrapper.layer.name], wrapper)
      assert zero == round(share * groups) < groups, wrapper.name  # its share; keeps a group
      pruned_weights += zero * math.prod(view) // groups
      total += math.prod(view)
    if groups == math.prod(view):  # single weights
      assert pruned_weights == round(0.8 * total)  # the network's count, exactly
    else:
      assert pruned_weights <= round(0.8 * total)
  elif method == "adaptive":
    budget = [kernels[w.layer.name] for w in wrappers]  # the layers under the budget
    total = sum(k.size for k in budget)
    zero = sum(int((k == 0).sum()) for k in budget)
    assert 0.6 <= zero / total < 0.6 + 3 / total  # the global budget, exactly up to ties
  else:
    for wrapper in wrappers:
      n, expected = _group_count(wrapper)
      assert _zero_groups(kernels[wrapper.layer.name], wrapper) == expected, wrapper.name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prune_fit_strip_is_exact_and_leaves_the_user_model_alone(method):
  model = small_model()
  before = [w.copy() for w in model.get_weights()]
  pruned = METHODS[method](model)
  assert isinstance(pruned, keras.Model)
  wrappers = _wrappers(pruned)
  assert wrappers and all(isinstance(w, tf_gibbs.keras3.PruningWrapper) for w in wrappers)
  _fit(pruned)  # no callback
  assert [int(to_numpy(w.pruning_step.value)) for w in wrappers] == [STEPS] * len(wrappers)
  _check_exact_strip(pruned, method, wrappers)
  for old, new in zip(before, model.get_weights()):  # the user's model never changes
    np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("method", ["gibbs-unstructured", "gibbs-unstructured-network",
                                    "l0-weight-budget", "l0-weight-network", "adaptive"])
def test_save_load_resume_equals_an_uninterrupted_fit(method, tmp_path):
  x, y = data()
  keras.utils.set_random_seed(5)
  straight = METHODS[method](small_model())
  _fit(straight, epochs=2, x=x, y=y)
  keras.utils.set_random_seed(5)
  first = METHODS[method](small_model())
  _fit(first, epochs=1, x=x, y=y)
  first.save(tmp_path / "half.keras")
  resumed = keras.models.load_model(tmp_path / "half.keras")  # no custom_objects
  assert [type(w) for w in _wrappers(resumed)] == [type(w) for w in _wrappers(first)]
  resumed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
  for a, b in zip(straight.weights, resumed.weights):
    assert a.path.split("/")[-1] == b.path.split("/")[-1]
    np.testing.assert_allclose(to_numpy(a.value), to_numpy(b.value), rtol=1e-5, atol=1e-6,
                               err_msg=a.path)
  x_test, _ = data(8, seed=2)
  np.testing.assert_allclose(to_numpy(resumed.predict(x_test, verbose=0)),
                             to_numpy(straight.predict(x_test, verbose=0)), atol=1e-5)


def test_adaptive_group_scale_is_built_once_per_traced_step_and_stays_exact(monkeypatch):
  """The exact-budget scale at end_step reads every member's weights: a traced step holds one
  copy of it, whichever member runs first (here not the first by name), not one per member
  (N² ops in all); eager steps (PyTorch) build it only at end_step. The count stays exact."""
  inputs = keras.Input((6, 6, 2))
  x = keras.layers.Conv2D(6, 3, activation="relu", name="z_conv")(inputs)
  x = keras.layers.Conv2D(6, 2, activation="relu", name="m_conv")(x)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(12, activation="relu", name="b_dense")(x)
  outputs = keras.layers.Dense(3, name="a_dense")(x)
  pruned = tf_gibbs.prune_adaptive(keras.Model(inputs, outputs), 0.6, begin_step=0,
                                   end_step=END, min_weights=30)
  wrappers = _wrappers(pruned)
  assert len(wrappers) == 4
  builds, calls = [], []
  cls = tf_gibbs.keras3.AdaptiveThreshold
  build, training_weight = cls._common_scale, cls.training_weight  # pylint: disable=protected-access

  def counted_build(self, members):
    builds.append(self.layer.name)
    return build(self, members)

  def counted_call(self, weight, step):
    calls.append(self.layer.name)
    return training_weight(self, weight, step)

  monkeypatch.setattr(cls, "_common_scale", counted_build)
  monkeypatch.setattr(cls, "training_weight", counted_call)
  _fit(pruned)
  if keras.backend.backend() == "torch":
    assert calls.count("z_conv") == STEPS  # eager steps
    assert sorted(builds) == sorted(w.layer.name for w in wrappers)  # at end_step, each once
  else:
    traces = calls.count("z_conv")  # the first member called (its call is traced once a trace)
    assert 1 <= traces < STEPS
    assert builds == ["z_conv"] * traces  # once per trace, by the first member called
  stripped = tf_gibbs.strip_pruning(pruned)
  kernels = [stripped.get_layer(w.layer.name).get_weights()[0] for w in wrappers]
  total, zero = sum(k.size for k in kernels), sum(int((k == 0).sum()) for k in kernels)
  assert 0.6 <= zero / total < 0.6 + 3 / total


class _StopOnce(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.stopped = False

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == 1 and not self.stopped:
      self.stopped = True
      raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_the_masks_exactly(tmp_path):
  x, y = data()
  keras.utils.set_random_seed(5)
  straight = METHODS["gibbs-kernel"](small_model())
  _fit(straight, epochs=2, x=x, y=y)
  keras.utils.set_random_seed(5)
  model = METHODS["gibbs-kernel"](small_model())
  model.compile(keras.optimizers.Adam(1e-2), "mse")
  backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
  stop = _StopOnce()
  with pytest.raises(RuntimeError, match="interrupted"):
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[backup, stop])
  keras.utils.set_random_seed(5)
  model = METHODS["gibbs-kernel"](small_model())
  model.compile(keras.optimizers.Adam(1e-2), "mse")
  model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[backup, stop])
  for a, b in zip(straight.weights, model.weights):
    np.testing.assert_allclose(to_numpy(a.value), to_numpy(b.value), rtol=1e-5, atol=1e-6,
                               err_msg=a.path)


def test_mask_of_a_step_is_a_function_of_seed_and_step():
  x, _ = data(4)
  layers = [tf_gibbs.prune_gibbs(keras.layers.Dense(5), tf_gibbs.GibbsSchedule(0.5), seed=9)
            for _ in range(2)]
  flat = x.reshape(4, -1)
  for layer in layers:
    layer.build(flat.shape)
    layer.layer.set_weights([np.linspace(-1, 1, 72 * 5).reshape(72, 5).astype("float32"),
                             np.zeros(5, "float32")])
  masks = []
  for layer in layers:
    layer(flat, training=True)
    masks.append(to_numpy(layer.mask.value))
  np.testing.assert_array_equal(masks[0], masks[1])
  layers[0](flat, training=True)  # step 2
  assert not np.array_equal(to_numpy(layers[0].mask.value), masks[0])
  assert int(to_numpy(layers[0].pruning_step.value)) == 2
  layers[0](flat, training=False)  # inference does not count
  assert int(to_numpy(layers[0].pruning_step.value)) == 2


@pytest.mark.parametrize("hamiltonian,c,sampler,sweeps,shape", [
    ("kernel", 0.01, None, None, (9, 4, 6)),
    ("filter", 1.0, "chromatic", 7, (9, 4, 6)), ("filter", 1.0, "exact", None, (9, 4, 6)),
    ("unstructured", None, None, None, (9, 48, 40))])  # ≥ 2**14 weights: radix select
def test_fused_tensorflow_sampler_draws_the_neutral_codes_masks(hamiltonian, c, sampler, sweeps,
                                                                shape):
  """On TensorFlow the wrappers run the neutral structured samplers, and the unstructured one
  on large kernels, as one XLA cluster: the masks of the neutral code run op by op (the
  unstructured sigmoid may differ by an ulp inside XLA: a mask bit in 10⁴ may flip)."""
  if keras.backend.backend() != "tensorflow":
    pytest.skip("backend-specific: the sampler is fused only on the TensorFlow backend")
  from tf_gibbs.keras3 import gibbs as gibbs3  # pylint: disable=g-import-not-at-top
  fused = gibbs3._sampler("tensorflow", hamiltonian, c, sampler, sweeps, True)
  assert hasattr(fused, "xla_cluster")
  assert not hasattr(gibbs3._sampler("tensorflow", "unstructured", None, None, None, False),
                     "xla_cluster")  # small kernels: tf.sort beats XLA's sort and launch on CPU
  weights = keras.ops.convert_to_tensor(
      np.random.default_rng(5).normal(size=shape).astype("float32"))
  for step, beta, sparsity in [(1, 0.05, 0.3), (7, 3.0, 0.5), (40, 1e4, 0.5)]:
    args = (weights, keras.ops.convert_to_tensor(sparsity, "float64"),
            keras.ops.convert_to_tensor(beta, "float32"), keras.ops.convert_to_tensor(11, "int32"),
            keras.ops.convert_to_tensor(step, "int32"))
    mask, threshold = fused(*args)
    want_mask, want_threshold = gibbs3._sample_view(
        *args, hamiltonian=hamiltonian, c=c, sampler=sampler, sweeps=sweeps)
    if hamiltonian == "unstructured":
      assert np.mean(to_numpy(mask) != to_numpy(want_mask)) <= 1e-4
    else:
      np.testing.assert_array_equal(to_numpy(mask), to_numpy(want_mask))
    np.testing.assert_allclose(to_numpy(threshold), to_numpy(want_threshold), rtol=1e-6)
    assert 0 < to_numpy(mask).mean() < 1


def test_update_pruning_step_callback_is_harmless_and_excludes_weight_decay():
  x, y = data()
  pruned = METHODS["adaptive"](small_model())
  optimizer = keras.optimizers.AdamW(1e-2, weight_decay=0.5)
  pruned.compile(optimizer, "mse")
  r_before = {w.name: w.clipped_r() for w in _wrappers(pruned)}
  pruned.fit(x, y, epochs=1, batch_size=8, verbose=0,
             callbacks=[tf_gibbs.UpdatePruningStep()])
  wrappers = _wrappers(pruned)
  assert [int(to_numpy(w.pruning_step.value)) for w in wrappers] == [4] * len(wrappers)
  excluded = optimizer._exclude_from_weight_decay  # pylint: disable=protected-access
  assert all(optimizer._var_key(w.r_parameter) in excluded for w in wrappers)  # pylint: disable=protected-access
  assert r_before  # r exists for every wrapped layer


def test_compiled_fit_and_default_compile():
  x, y = data()
  backend = keras.backend.backend()
  for jit in (["auto", True] if backend in ("tensorflow", "jax") else ["auto"]):
    pruned = METHODS["gibbs-filter-chromatic"](small_model())
    _fit(pruned, jit_compile=jit, x=x, y=y)
    stripped = tf_gibbs.strip_pruning(pruned)
    kernel = stripped.get_layer("conv").get_weights()[0]
    assert int(np.all(kernel == 0, axis=(0, 1, 2)).sum()) == 3


@pytest.mark.slow  # torch.compile builds C++ kernels: minutes per model on a 2-core CPU
@pytest.mark.parametrize("method", ["l0-weight-budget", "adaptive", "gibbs-unstructured"])
def test_torch_compile_fit_counts_steps_and_strips_exactly(method):
  """jit_compile=True on PyTorch is torch.compile, whose autograd refuses a backward pass through
  a tensor written in place since it was saved: the wrappers read their state as copies there.
  Run with KERAS_BACKEND=torch pytest -m slow tests/keras3."""
  if keras.backend.backend() != "torch":
    pytest.skip("backend-specific: torch.compile (jit_compile on TF and JAX is tested above)")
  pruned = METHODS[method](small_model())
  _fit(pruned, jit_compile=True)
  wrappers = _wrappers(pruned)
  assert [int(to_numpy(w.pruning_step.value)) for w in wrappers] == [STEPS] * len(wrappers)
  _check_exact_strip(pruned, method, wrappers)


def test_subclassed_model_with_wrapped_layers_counts_steps():

  class Net(keras.Model):

    def __init__(self):
      super().__init__()
      self.hidden = tf_gibbs.prune_l0(keras.layers.Dense(8), target_sparsity=0.5)
      self.out = keras.layers.Dense(3)

    def call(self, inputs, training=None):  # as for Dropout: pass `training` on
      return self.out(self.hidden(keras.ops.reshape(inputs, (-1, 72)), training=training))

  net = Net()
  _fit(net, epochs=1)
  assert int(to_numpy(net.hidden.pruning_step.value)) == 4
  assert isinstance(tf_gibbs.strip_pruning(net.hidden), keras.layers.Dense)


def test_bad_input_is_refused_with_clear_errors(monkeypatch):
  import tf_keras  # pylint: disable=g-import-not-at-top
  with pytest.raises(TypeError, match="mixes Keras 3 objects"):
    tf_gibbs.prune_gibbs([keras.layers.Dense(2), tf_keras.layers.Dense(2)])
  with pytest.raises(ValueError, match="not a supported layer"):
    tf_gibbs.prune_gibbs(keras.layers.Conv2DTranspose(2, 3))
  with pytest.raises(TypeError, match="GibbsSchedule"):
    tf_gibbs.prune_gibbs(keras.layers.Dense(2), tf_gibbs.L0Schedule())
  with pytest.raises(ValueError, match="hamiltonian='kernel' does not fit|kernel Hamiltonian"):
    tf_gibbs.prune_gibbs(keras.layers.Dense(2), hamiltonian="kernel")
  with pytest.raises(ValueError, match="already wrapped"):
    tf_gibbs.prune_gibbs(tf_gibbs.prune_gibbs(keras.layers.Dense(2)))
  with pytest.raises(ValueError, match=r"`skip` names layers that are not in the model"):
    tf_gibbs.prune_gibbs(small_model(), skip=["nope"])
  with pytest.raises(ValueError, match="found no layer to prune"):
    tf_gibbs.prune_adaptive(small_model(), 0.5, min_weights=10**6)
  monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
  with pytest.raises(ValueError, match="KERAS_BACKEND"):
    tf_gibbs.prune_gibbs(keras.layers.Dense(2))


# Each variable with NaN or Inf (one isfinite check covers both; both values appear below, and
# the tf_keras suite crosses them with every method).
@pytest.mark.parametrize("method,variable,value", [
    ("gibbs-unstructured", "kernel", np.nan), ("gibbs-filter-chromatic", "bias", np.inf),
    ("l0-weight-budget", "gate_parameter", np.nan),
    ("l0-weight-budget", "log_penalty_factor", np.inf), ("adaptive", "r", np.inf)])
def test_nan_or_inf_in_weights_or_state_stops_fit_and_strip_naming_layer_and_variable(
    method, variable, value):
  model = METHODS[method](small_model())
  model.build((None, 6, 6, 2))
  wrapper = _wrappers(model)[0]
  state = wrapper.kernel_variable if variable == "kernel" else dict(
      (v.name, v) for v in wrapper.weights)[variable]
  poisoned = np.array(to_numpy(state.value))
  poisoned.flat[0] = value
  state.assign(poisoned)
  pattern = f"layer '{wrapper.layer.name}' has a NaN or Inf weight in variable '{variable}'"
  with pytest.raises(ValueError, match=f"'{wrapper.layer.name}'.*NaN or Inf.*'{variable}'"):
    tf_gibbs.strip_pruning(model)
  # After an error in its first step, Keras' JAX fit leaves the variables unset: fit last.
  with pytest.raises(Exception, match=pattern):  # the backend's runtime error carries it
    _fit(model, epochs=1)


def test_cap_warning_names_the_layer():
  inputs = keras.Input((4,))
  model = keras.Model(inputs, keras.layers.Dense(2, name="tiny")(inputs))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.99), hamiltonian="filter")
  assert any("'tiny'" in str(w.message) and "capped" in str(w.message) for w in caught)


def test_strip_before_training_says_plainly_that_nothing_was_pruned_yet():
  pruned = METHODS["gibbs-unstructured"](small_model())
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tf_gibbs.strip_pruning(pruned)
  messages = [str(w.message) for w in caught if "strip_pruning" in str(w.message)]
  assert len(messages) == 1, messages
  assert "nothing has been pruned yet" in messages[0]
  assert "has not reached its end step" not in messages[0]


def test_strip_of_a_layer_and_of_an_unfinished_schedule_warns():
  pruned = METHODS["gibbs-unstructured"](small_model())
  _fit(pruned, epochs=1)  # 4 of 6 steps
  with pytest.warns(UserWarning, match="has not reached its end step"):
    tf_gibbs.strip_pruning(pruned)


def test_network_shares_reach_the_logs_through_the_step_callback():
  pruned = METHODS["l0-weight-network"](small_model())
  x, y = data()
  pruned.compile(keras.optimizers.Adam(1e-2), "mse")
  history = pruned.fit(x, y, epochs=2, batch_size=8, verbose=0,
                       callbacks=[tf_gibbs.UpdatePruningStep()])
  wrappers = _wrappers(pruned)
  shares = [float(to_numpy(w.allocated_sparsity.value)) for w in wrappers]
  assert [history.history[f"allocated_sparsity_{w.layer.name}"][-1] for w in wrappers] == shares
  assert len(set(shares)) > 1


def test_network_budget_says_when_keeping_a_group_per_layer_caps_it():
  # small_model: conv 108 weights (6 filters of 18), depthwise 24 (6 of 4), dense 162 (3 units
  # of 54): 294 weights, of which 18 + 4 + 54 stay.
  with pytest.warns(UserWarning, match=r"capped at 218 \(sparsity 0\.7415\)"):
    tf_gibbs.prune_gibbs(small_model(), tf_gibbs.GibbsSchedule(0.95, end_step=END),
                         hamiltonian="filter", allocation="network")
