"""The benchmark scripts run (tiny settings; their figures are not asserted here)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import accuracy  # noqa: E402  pylint: disable=g-import-not-at-top
import budget  # noqa: E402  pylint: disable=g-import-not-at-top
import deploy  # noqa: E402  pylint: disable=g-import-not-at-top
import overhead  # noqa: E402  pylint: disable=g-import-not-at-top


def test_accuracy_benchmark_runs_and_reaches_the_target_sparsity():
  results = accuracy.main(["--epochs", "1", "--seeds", "0", "--sparsities", "0.9",
                           "--methods", "dense,tfmot,gibbs,l0,adaptive"])
  assert set(results) == {("dense", 0.0), ("tfmot", 0.9), ("gibbs", 0.9), ("l0", 0.9),
                          ("adaptive", 0.9)}
  for (method, target), (acc, _, measured) in results.items():
    assert 0.0 <= acc <= 1.0
    assert abs(measured - target) < 1e-3, (method, measured)


def test_overhead_benchmark_runs():
  results = overhead.main(["--batch_sizes", "4", "--steps", "2", "--sampler_sizes", "3",
                           "--modes", "unstructured,l0,adaptive", "--xla", "both",
                           "--depth", "8"])
  for xla in ((), ("xla",)):
    assert results[("tfmot", 4) + xla] == 1.0
    for name in ("gibbs_unstructured", "l0", "adaptive"):
      assert results[(name, 4) + xla] > 0 and results[(name, 4, "ms") + xla] > 0


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


def test_deploy_benchmark_runs_and_shrunk_models_match():
  results = deploy.main(["--steps", "4", "--runs", "20"])
  assert results["filter"]["parity"] < 1e-4
  assert 0.3 < results["filter"]["kept_mac_fraction"] < 0.8
  assert results["unstructured"]["parity"] < 1e-4
  assert abs(results["unstructured"]["sparsity"] - 0.9) < 0.01
