"""Network-wide budgets (allocation="network", issue #24) on the tf_keras front: one target over
all wrapped layers, split by LAMP scores; exact global count, a group kept in every layer,
strips, save/load and resume."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras as keras

import tf_gibbs
from helpers import check_strip
from helpers import compile_model
from helpers import random_data
from helpers import reload
from helpers import small_cnn
from helpers import wrappers
from tf_gibbs.core import allocation
from tf_gibbs.schedule import TF_MATH



def _scaled_cnn():
  """small_cnn with layers of very different scales: a per-layer split would not notice them,
  a network-wide magnitude ranking that is not scale-free would empty the small ones."""
  model = small_cnn()
  for layer, scale in zip([l for l in model.layers if hasattr(l, "kernel")],
                          [30.0, 1.0, 0.01, 3.0]):
    layer.kernel.assign(layer.kernel * scale)
  return model


def _fit(model, epochs=3, x=None, y=None):
  if x is None:
    x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[tf_gibbs.UpdatePruningStep()],
            verbose=0, shuffle=False)
  return x, y


def _pruned(hamiltonian, target, end_step=8, frequency=3, model=None):
  schedule = tf_gibbs.GibbsSchedule(target, beta_begin=1.0, beta_end=1e6, begin_step=0,
                                    end_step=end_step)
  return compile_model(tf_gibbs.prune_gibbs(
      model or _scaled_cnn(), schedule, hamiltonian=hamiltonian, seed=3, allocation="network",
      allocation_frequency=frequency))


def _zero_groups(kernel, view, hamiltonian):
  """(zero groups, groups) of a kernel in its [n, C, F] view."""
  zero = np.reshape(kernel, view) == 0
  axes = allocation.group_axes(hamiltonian)
  groups = zero.all(axis=axes) if axes else zero
  return int(groups.sum()), groups.size


def _expected_counts(model, hamiltonian, target):
  """The allocation recomputed from the wrappers' final weights (what end_step froze)."""
  own = wrappers(model, tf_gibbs.GibbsPruning)
  shares = allocation.network_sparsities(
      [np.reshape(w.read_weight().numpy(), w._view) for w in own], hamiltonian, target,
      TF_MATH)
  return own, shares.numpy()


@pytest.mark.parametrize("hamiltonian", ["unstructured", "kernel", "filter"])
def test_network_budget_prunes_the_exact_global_count_and_keeps_every_layer(hamiltonian):
  target = 0.9
  model = _pruned(hamiltonian, target, end_step=8)
  x, _ = _fit(model, epochs=2)  # 8 steps: end_step is the last, the allocation is final there
  own, shares = _expected_counts(model, hamiltonian, target)
  np.testing.assert_allclose([float(w.allocated_sparsity) for w in own], shares, rtol=1e-6)
  for strip in (tf_gibbs.strip_pruning, tfmot.sparsity.keras.strip_pruning):
    stripped, _ = check_strip(model, strip, x, tf_gibbs.GibbsPruning)
    kernels = {l.name: l.kernel.numpy() for l in stripped.layers if hasattr(l, "kernel")}
    pruned_weights, total = 0, 0
    for w, share in zip(own, shares):
      zero, groups = _zero_groups(kernels[w.layer.name], w._view, hamiltonian)
      assert zero == round(share * groups), w.layer.name  # the layer's share, exactly
      assert zero < groups, w.layer.name  # every layer keeps a group
      pruned_weights += zero * (kernels[w.layer.name].size // groups)
      total += kernels[w.layer.name].size
    if hamiltonian == "unstructured":
      assert pruned_weights == round(target * total)  # the network's count, exactly
    else:
      assert pruned_weights <= round(target * total)
  # Different layers carry different shares of the one budget.
  assert max(shares) - min(shares) > 0.1


def test_extreme_budget_keeps_a_group_in_every_layer_and_says_it_was_capped():
  # 2532 weights; one filter or unit kept per layer: 9 + 36 + 128 + 16 = 189 of them.
  with pytest.warns(UserWarning, match=r"capped at 2343 \(sparsity 0\.9254\) so that every "
                    r"layer keeps one group"):
    model = _pruned("filter", 0.999)
  x, _ = _fit(model)
  stripped = tf_gibbs.strip_pruning(model)
  layers = {l.name: l for l in stripped.layers}
  for w in wrappers(model, tf_gibbs.GibbsPruning):
    zero, groups = _zero_groups(layers[w.layer.name].kernel.numpy(), w._view, "filter")
    assert zero == groups - 1, w.layer.name  # the cap: N minus one filter per layer
  np.testing.assert_allclose(stripped.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-5, atol=1e-6)


def test_allocation_follows_the_schedule_and_its_frequency():
  """Recomputed at steps 1, 4, 7 (frequency 3) and at end_step 8; never after. Before the
  ramp ends each layer prunes its share times s(t)/s_T."""
  model = _pruned("unstructured", 0.8, end_step=8, frequency=3)
  own = wrappers(model, tf_gibbs.GibbsPruning)
  x, y = random_data(16)
  seen = []
  for step in range(1, 11):
    before = [float(w.allocated_sparsity) for w in own]
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[tf_gibbs.UpdatePruningStep()],
              verbose=0)
    after = [float(w.allocated_sparsity) for w in own]
    if after != before:
      seen.append(step)
    should_prune, sparsity = own[0].sparsity(step)
    expected = after[0] * float(own[0].pruning_schedule.sparsity(step)) / 0.8
    assert float(sparsity) == pytest.approx(min(expected, after[0]), rel=1e-6)
  refreshed = [step for step in range(12) if bool(own[0]._refresh(step))]  # pylint: disable=protected-access
  assert refreshed == [1, 4, 7, 8]
  assert 1 in seen and set(seen) <= set(refreshed)
  assert int(own[0].pruning_step) == 10


@pytest.mark.parametrize("filename", ["model.keras", "model.h5", "saved_model"])
def test_network_budget_survives_save_load_and_resumes_exactly(tmp_path, filename):
  model = _pruned("unstructured", 0.9, end_step=12, frequency=2)
  x, y = _fit(model, epochs=1)  # 4 steps, in the middle of the schedule
  loaded, pairs = reload(model, str(tmp_path / filename), x, tf_gibbs.GibbsPruning)
  for original, restored in pairs:
    assert float(restored.allocated_sparsity) == float(original.allocated_sparsity)
    assert restored.budget_group == original.budget_group
  for m in (model, loaded):
    _fit(m, epochs=2, x=x, y=y)  # past end_step: the final allocation is made after loading
  for original, restored in pairs:
    assert float(restored.allocated_sparsity) == float(original.allocated_sparsity)
    if filename != "saved_model":  # tf_keras' SavedModel loader does not restore Adam's state
      np.testing.assert_array_equal(restored.mask.numpy(), original.mask.numpy())


def test_bad_allocation_arguments_are_named():
  with pytest.raises(ValueError, match="allocation"):
    tf_gibbs.prune_gibbs(small_cnn(), allocation="global")
  with pytest.raises(ValueError, match="allocation_frequency"):
    tf_gibbs.prune_gibbs(small_cnn(), allocation="network", allocation_frequency=0)


# --- L0 gates: the budget's ranking over all gates of the model -----------------------------------

L0_AXES = {"weight": (), "kernel": (0,), "filter": (0, 1)}


def _l0(granularity, target, end_step=12, frequency=3, model=None):
  schedule = tf_gibbs.L0Schedule(1.0, target_sparsity=target, end_step=end_step,
                                 frequency=frequency)
  return compile_model(tf_gibbs.prune_l0(model or _scaled_cnn(), granularity=granularity,
                                         schedule=schedule, seed=3, allocation="network"))


@pytest.mark.parametrize("granularity", ["weight", "kernel"])
def test_l0_network_budget_prunes_the_exact_global_count(granularity):
  target = 0.9
  model = _l0(granularity, target)
  x, _ = _fit(model, epochs=4)  # 16 steps: past end_step 12, the gates are frozen
  own = wrappers(model, tf_gibbs.L0Gates)
  shares = [float(w.allocated_sparsity) for w in own]
  for strip in (tf_gibbs.strip_pruning, tfmot.sparsity.keras.strip_pruning):
    stripped, _ = check_strip(model, strip, x, tf_gibbs.L0Gates)
    kernels = {l.name: l.kernel.numpy() for l in stripped.layers if hasattr(l, "kernel")}
    pruned_weights = total = 0
    for w, share in zip(own, shares):
      zero = np.reshape(kernels[w.layer.name], w._view) == 0
      axes = L0_AXES[granularity]
      groups = zero.all(axis=axes) if axes else zero
      assert int(groups.sum()) == round(share * groups.size) < groups.size, w.layer.name
      pruned_weights += int(groups.sum()) * (zero.size // groups.size)
      total += zero.size
    if granularity == "weight":
      assert pruned_weights == round(target * total)  # the network's count, exactly
    else:
      assert pruned_weights <= round(target * total)
  assert max(shares) - min(shares) > 0.1  # the layers carry different shares


def test_l0_network_budget_survives_save_load_and_needs_a_budget(tmp_path):
  model = _l0("weight", 0.8, end_step=16, frequency=2)
  x, y = _fit(model, epochs=1)
  loaded, pairs = reload(model, str(tmp_path / "model.keras"), x, tf_gibbs.L0Gates)
  for m in (model, loaded):
    _fit(m, epochs=4, x=x, y=y)  # past end_step
  for original, restored in pairs:
    assert float(restored.allocated_sparsity) == float(original.allocated_sparsity)
    np.testing.assert_array_equal(restored.mask.numpy(), original.mask.numpy())
  with pytest.raises(ValueError, match="target_sparsity"):
    tf_gibbs.prune_l0(small_cnn(), allocation="network")


def test_each_layers_share_reaches_the_logs_and_the_report():
  model = _pruned("unstructured", 0.9, end_step=8)
  x, y = random_data(64)
  history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                      callbacks=[tf_gibbs.UpdatePruningStep()])
  lines = []
  report = tf_gibbs.sparsity_report(model, print_fn=lines.append)
  rows = {row["name"]: row for row in report["layers"]}
  for w in wrappers(model, tf_gibbs.GibbsPruning):
    logged = history.history[f"allocated_sparsity_{w.layer.name}"]
    assert len(logged) == 2 and logged[-1] == float(w.allocated_sparsity)
    share = f"share {float(w.allocated_sparsity):.4f} of the network-wide budget"
    assert share in rows[w.layer.name]["note"]
    assert any(line.startswith(f"  {w.layer.name}: {share}") for line in lines)
    assert rows[w.layer.name]["sparsity"] == pytest.approx(float(w.allocated_sparsity))
