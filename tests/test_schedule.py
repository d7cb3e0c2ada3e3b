"""GibbsSchedule: the β ramp, the sparsity, tfmot's protocol, serialization and validation."""

import math

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule

from tf_gibbs import GibbsSchedule


def test_is_a_tfmot_pruning_schedule():
  assert isinstance(GibbsSchedule(), pruning_schedule.PruningSchedule)


def test_beta_is_geometric_between_begin_and_end_and_constant_outside():
  s = GibbsSchedule(0.9, beta_begin=1.0, beta_end=1e4, begin_step=100, end_step=500)
  for step, expected in [(0, 1.0), (100, 1.0), (200, 10.0), (300, 100.0), (400, 1e3),
                         (500, 1e4), (10_000, 1e4)]:
    np.testing.assert_allclose(float(s.beta(step)), expected, rtol=1e-5)


def test_beta_filter_preset_range():
  s = GibbsSchedule(0.5, beta_begin=10**-2.5, beta_end=1.0, begin_step=0, end_step=10)
  np.testing.assert_allclose(float(s.beta(5)), 10**-1.25, rtol=1e-5)


def test_call_returns_should_prune_and_constant_target():
  s = GibbsSchedule(0.8, begin_step=10, end_step=20)
  for step, prune in [(0, False), (9, False), (10, True), (15, True), (1000, True)]:
    should_prune, sparsity = s(tf.constant(step, tf.int64))
    assert bool(should_prune) is prune
    np.testing.assert_allclose(float(sparsity), 0.8, rtol=1e-6)


def test_sparsity_ramp_is_polynomial():
  s = GibbsSchedule(0.9, begin_step=0, end_step=100, initial_sparsity=0.5, power=3)
  for step in (0, 25, 50, 100, 200):
    t = min(step / 100, 1.0)
    np.testing.assert_allclose(float(s.sparsity(step)), 0.9 + (0.5 - 0.9) * (1 - t) ** 3,
                               rtol=1e-6)


def test_equal_begin_and_end_is_a_step_function():
  s = GibbsSchedule(0.9, beta_begin=2.0, beta_end=8.0, begin_step=5, end_step=5)
  assert math.isclose(float(s.beta(4)), 2.0, rel_tol=1e-6)
  assert math.isclose(float(s.beta(5)), 8.0, rel_tol=1e-6)


def test_works_in_xla_graph():
  s = GibbsSchedule(0.9, beta_begin=1.0, beta_end=100.0, begin_step=0, end_step=10)
  fn = tf.function(lambda step: (s.beta(step),) + tuple(s(step)), jit_compile=True)
  beta, should_prune, sparsity = fn(tf.constant(5, tf.int64))
  np.testing.assert_allclose(float(beta), 10.0, rtol=1e-5)
  assert bool(should_prune) and math.isclose(float(sparsity), 0.9, rel_tol=1e-6)


def test_config_round_trip():
  s = GibbsSchedule(0.95, beta_begin=0.5, beta_end=2e3, begin_step=3, end_step=77,
                    initial_sparsity=0.5, power=2)
  config = s.get_config()
  assert config["class_name"] == "GibbsSchedule"
  restored = GibbsSchedule.from_config(config["config"])
  assert restored.get_config() == config
  for step in (0, 40, 100):
    assert float(restored.beta(step)) == float(s.beta(step))


@pytest.mark.parametrize("kwargs,argument", [
    (dict(target_sparsity=1.0), "target_sparsity"),
    (dict(target_sparsity=-0.1), "target_sparsity"),
    (dict(target_sparsity=float("nan")), "target_sparsity"),
    (dict(beta_begin=0.0), "beta_begin"),
    (dict(beta_begin=-1.0), "beta_begin"),
    (dict(beta_end=0.0), "beta_end"),
    (dict(beta_end=float("inf")), "beta_end"),
    (dict(begin_step=-1), "begin_step"),
    (dict(begin_step=10, end_step=5), "end_step"),
    (dict(initial_sparsity=1.5), "initial_sparsity"),
    (dict(power=0), "power"),
])
def test_bad_values_raise_value_error_naming_the_argument(kwargs, argument):
  with pytest.raises(ValueError, match=f"`{argument}`"):
    GibbsSchedule(**kwargs)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(target_sparsity="0.9"), "target_sparsity"),
    (dict(target_sparsity=True), "target_sparsity"),
    (dict(begin_step=1.5), "begin_step"),
    (dict(end_step="100"), "end_step"),
])
def test_bad_types_raise_type_error_naming_the_argument(kwargs, argument):
  with pytest.raises(TypeError, match=f"`{argument}`"):
    GibbsSchedule(**kwargs)


@pytest.mark.parametrize("hamiltonian,begin,end", [("unstructured", 1.0, 1e4),
                                                   ("kernel", 1.0, 1e4),
                                                   ("filter", 10**-2.5, 1.0)])
def test_reference_presets(hamiltonian, begin, end):
  s = GibbsSchedule.reference(hamiltonian, begin_step=0, end_step=100, target_sparsity=0.8)
  assert s.target_sparsity == 0.8
  np.testing.assert_allclose([float(s.beta(0)), float(s.beta(100))], [begin, end], rtol=1e-6)
  with pytest.raises(ValueError, match="hamiltonian='ising'"):
    GibbsSchedule.reference("ising", 0, 1)
