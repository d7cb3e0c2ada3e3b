"""The paper-recipe examples run end to end offline on tfds' mock data, and their flags parse."""

import os
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tf_keras as keras

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import cifar10_resnet  # noqa: E402  pylint: disable=g-import-not-at-top
import mnist_lenet  # noqa: E402  pylint: disable=g-import-not-at-top
import recipes  # noqa: E402  pylint: disable=g-import-not-at-top


def _scalar_tags(log_dir):
  """Every scalar tag (TF2 summaries are stored as tensors) under ``log_dir``, by subfolder."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  tags = {}
  for sub in sorted(os.listdir(log_dir)):
    path = os.path.join(log_dir, sub)
    if os.path.isdir(path):
      acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
      acc.Reload()
      tags[sub] = set(acc.Tags()["tensors"])
  return tags


def test_cifar10_flags_default_to_the_reference_recipe():
  fv = recipes.parse_flags(cifar10_resnet.FLAGS, ["prog"], "")
  recipe = recipes.recipe_from_flags(fv, "cifar10", skip=("stem", "classifier"))
  assert (fv.epochs, fv.batch_size, fv.learning_rate, fv.weight_decay) == (200, 128, 1e-3, 1e-4)
  assert recipe.lr_boundaries == pytest.approx((80, 120, 160))
  assert recipe.ramp_fraction * recipe.epochs == pytest.approx(128)
  assert (recipe.method, recipe.structure, recipe.sparsity) == ("gibbs", "unstructured", 0.9)
  assert recipe.log_dir == os.path.join("runs", "cifar10", "gibbs_0.9")
  fv = recipes.parse_flags(cifar10_resnet.FLAGS, [
      "prog", "--method=l0", "--granularity=filter", "--sparsity=0.5", "--epochs=10",
      "--depth=56", "--log_dir=/tmp/x", "--c=0.5"], "")
  recipe = recipes.recipe_from_flags(fv, "cifar10")
  assert (recipe.method, recipe.structure, fv.depth) == ("l0", "filter", "56")
  assert recipe.lr_boundaries == pytest.approx((4, 6, 8))
  assert recipe.options.c == 0.5 and recipe.out_dir == "/tmp/x"
  # Parsing again starts from the defaults.
  fv = recipes.parse_flags(cifar10_resnet.FLAGS, ["prog", "--method=dense"], "")
  assert fv.granularity == "weight" and fv.epochs == 200


def test_mnist_flags_default_to_the_l0_papers_setup():
  fv = recipes.parse_flags(mnist_lenet.FLAGS, ["prog"], "")
  assert (fv.model, fv.epochs, fv.batch_size, fv.learning_rate) == ("lenet5", 200, 100, 1e-3)
  assert recipes.recipe_from_flags(fv, "mnist").lr_boundaries == ()


@pytest.mark.parametrize("module", [cifar10_resnet, mnist_lenet])
def test_bad_flags_are_refused(module, capsys):
  with pytest.raises(flags.IllegalFlagValueError, match="method"):
    recipes.parse_flags(module.FLAGS, ["prog", "--method=magnitude"], "")
  with pytest.raises(flags.IllegalFlagValueError, match="hamiltonian"):
    recipes.parse_flags(module.FLAGS, ["prog", "--hamiltonian=ising"], "")
  with pytest.raises(ValueError, match="--sparsity must be in"):
    recipes.parse_flags(module.FLAGS, ["prog", "--sparsity=1.0"], "")
  with pytest.raises(flags.IllegalFlagValueError, match="epochs"):
    recipes.parse_flags(module.FLAGS, ["prog", "--epochs=0"], "")
  with pytest.raises(flags.UnrecognizedFlagError):
    recipes.parse_flags(module.FLAGS, ["prog", "--sparsty=0.5"], "")
  assert module.main(["prog", "--help"]) is None
  assert "--method" in capsys.readouterr().out


def test_mnist_refuses_the_kernel_energy_on_an_mlp():
  with pytest.raises(ValueError, match="needs convolutions"):
    mnist_lenet.main(["prog", "--model=lenet300", "--hamiltonian=kernel"])


def test_variant_names_round_trip_and_bad_names_are_refused():
  for name in ("tfmot", "gibbs", "gibbs_kernel", "gibbs_filter", "l0", "l0_filter", "adaptive"):
    assert recipes.variant(*recipes.parse_variant(name)) == name
  for name in ("gibbs_unit", "magnitude", "adaptive_filter", "l0_ising"):
    with pytest.raises(ValueError, match="Unknown"):
      recipes.parse_variant(name)


def test_skip_leaves_layers_dense_for_every_method():
  def model():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    h = keras.layers.Conv2D(40, 3, name="body")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="classifier")(h))

  for method in ("tfmot", "gibbs", "l0", "adaptive"):
    wrapped, callbacks = recipes.prune(model(), method, 0.5, 10, skip=("stem", "classifier"))
    assert recipes.pruned_layer_names(wrapped) == {"body"}, method
    assert callbacks


@pytest.mark.slow  # ~70 s (ResNet-20 with every wrapper); the MNIST example runs by default
def test_cifar10_example_runs_on_mock_data(tmp_path):
  log_dir = str(tmp_path / "logs")
  with tfds.testing.mock_data(num_examples=16):
    result = cifar10_resnet.main([
        "prog", "--method=gibbs", "--hamiltonian=filter", "--sparsity=0.5", "--epochs=1",
        "--batch_size=8", "--verbose=0", f"--log_dir={log_dir}"])
  # Every pruned layer (not the stem or the classifier) keeps exactly half of its filters.
  assert result["pruned_layer_sparsity"] == pytest.approx(0.5, abs=1e-6)
  layers = {l["name"]: l for l in result["report"]["layers"]}
  assert layers["stem"]["zeros"] == 0 and layers["classifier"]["zeros"] == 0
  assert layers["s2b0_proj"]["zero_filters"] == 32
  # Structured: shrunk before export; LiteRT agrees with Keras.
  assert result["deployed_params"] < 0.9 * result["params"]
  assert result["max_litert_diff"] < 1e-4
  assert 0.0 <= result["accuracy"] <= 1.0
  assert os.path.exists(os.path.join(log_dir, "gibbs_filter.tflite"))
  assert os.path.exists(os.path.join(log_dir, "sparsity.png"))
  tags = _scalar_tags(log_dir)
  assert {"epoch_loss", "epoch_accuracy", "epoch_beta", "epoch_learning_rate"} <= tags["train"]
  assert "gibbs_pruning_s1b0_proj/mask:0/sparsity" in tags["metrics"]
  assert "gibbs_pruning_s1b0_proj/threshold:0/threshold" in tags["metrics"]


def test_mnist5k_is_real_mnist_offline_in_a_fixed_stratified_split():
  x_train, x_test, y_train, y_test = recipes.load_mnist5k(0)
  assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
  assert x_train.dtype == np.float32 and x_train.min() == 0.0 and x_train.max() == 1.0
  np.testing.assert_array_equal(np.bincount(y_train), [400] * 10)  # 500 a digit, stratified
  np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)
  again = recipes.load_mnist5k(0)
  np.testing.assert_array_equal(again[1], x_test)  # the same split every time
  assert not np.array_equal(recipes.load_mnist5k(1)[3], y_test)


def test_mnist_example_runs_offline_on_mnist5k(tmp_path):
  result = mnist_lenet.main([
      "prog", "--data=mnist5k", "--model=lenet300", "--method=gibbs", "--sparsity=0.9",
      "--allocation=network", "--epochs=2", "--batch_size=128", "--verbose=0",
      f"--log_dir={tmp_path / 'logs'}"])
  assert result["sparsity"] == pytest.approx(0.9, abs=1e-6)  # one budget, its exact count
  assert result["accuracy"] > 0.5  # 1,000 real test digits: chance is 0.1
  assert result["max_litert_diff"] < 1e-4
  tags = _scalar_tags(str(tmp_path / "logs"))["train"]
  assert sum(tag.startswith("epoch_allocated_sparsity_") for tag in tags) == 3  # each layer


def test_mnist_example_runs_on_mock_data(tmp_path):
  log_dir = str(tmp_path / "logs")
  with tfds.testing.mock_data(num_examples=16):
    result = mnist_lenet.main([
        "prog", "--model=lenet5", "--method=adaptive", "--sparsity=0.8", "--epochs=1",
        "--batch_size=8", "--verbose=0", f"--log_dir={log_dir}"])
  # conv1 (500 weights) is below min_weights and stays dense; the budget holds over the rest.
  assert result["pruned_layer_sparsity"] == pytest.approx(0.8, abs=0.005)
  assert result["max_litert_diff"] < 1e-4
  tags = _scalar_tags(log_dir)
  assert {"epoch_r_fc1", "epoch_sparsity_fc1", "epoch_loss"} <= tags["train"]
  assert np.isfinite(result["step_ms"])
  with tfds.testing.mock_data(num_examples=16):
    result = mnist_lenet.main([
        "prog", "--model=lenet300", "--method=tfmot", "--sparsity=0.9", "--epochs=2",
        "--batch_size=8", "--verbose=0", f"--log_dir={tmp_path / 'tfmot'}"])
  assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)  # the ramp ends on an update step
