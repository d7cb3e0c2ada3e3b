"""Training-step time of Gibbs-pruned ResNet-20 divided by tfmot's prune_low_magnitude.

  python benchmarks/overhead.py [--batch_sizes 128,16] [--steps N] [--repeats R] [--xla off|on|both]
                                [--modes ...] [--models mobilenetv2,efficientnetb0 --input_sizes 32,96]

Edge models (issue #25): ``--models mobilenetv2,efficientnetb0`` times ``tf_keras.applications``
models (weights=None, 10 classes) at each of ``--input_sizes`` instead of ResNet, every Conv2D,
DepthwiseConv2D and Dense wrapped (what ``prune_low_magnitude`` of the whole model wraps), with
a dense (unpruned) row. Each configuration first prints the time to the end of the first step
(building, wrapping, compiling, Keras' tracing, the first step), models built in turn in this
process, as a ratio to tfmot's; then the interleaved step times below.

Both models are the same ResNet-20 (CIFAR-shaped random data), with the same layers wrapped
(every conv and projection except the stem; not the classifier), trained in one process on the
same batches with ``train_on_batch``, single steps interleaved; the figure is the ratio of the
20th percentiles of the step times (the median ratio is printed too; see ``measure``).
tfmot uses ConstantSparsity(0.9) with its default mask update every 100 steps; Gibbs samples a
new mask at every step. L0 gates (modes ``l0`` = per weight, ``l0_filter``, ...): deterministic
gates in budget mode (target 0.9), the most expensive L0 configuration (penalty, controller and
the budget's ranking). Adaptive sparsity loss (mode ``adaptive``): ``prune_adaptive`` at a 0.9
budget. ``wrapper``: the shared wrapper base with an identity step (the floor of every method);
``--keras3_backends tensorflow,jax,torch`` adds the Keras 3 rows (each method over the dense
Keras 3 model, ``benchmarks/keras3_overhead.py``; ``--modes none`` for those alone).
A suffix ``@noxla`` (``l0@noxla``) traces a model with the nested XLA clusters off. Every model is timed without and with ``jit_compile=True`` (``--xla both``, the default; tfmot
is compiled the same way as the others). Targets: Gibbs unstructured ≤ 1.10 (issue #2), kernel and filter ≤ 1.25 (issue #3),
L0 ≤ 1.15 (issue #4), adaptive ≤ 1.10 (issue #5), at batch 128 and at batch 16. Then prints the cost of one mask sample against the
kernel size (3×3, 5×5, 7×7) for every Hamiltonian.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # noqa: E402

import tf_gibbs  # noqa: E402
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from models import resnet  # noqa: E402  pylint: disable=g-import-not-at-top

SKIP = ("stem", "classifier")
EDGE_MODELS = {"mobilenetv2": "MobileNetV2", "efficientnetb0": "EfficientNetB0"}


def base_model(arch):
  """A fresh model of ``arch`` = (name, input size): ``resnet<depth>`` (CIFAR ResNet, 32×32)
  or an edge model of ``tf_keras.applications`` (``mobilenetv2``, ``efficientnetb0``;
  weights=None, 10 classes)."""
  name, size = arch
  if name.startswith("resnet"):
    return resnet(int(name[len("resnet"):]), input_shape=(size, size, 3))
  application = getattr(keras.applications, EDGE_MODELS[name])
  # Logits (the loss is from_logits=True), as the ResNet's classifier gives.
  return application(input_shape=(size, size, 3), weights=None, classes=10,
                     classifier_activation=None)


def prunable(arch):
  """The layers every method wraps: ResNet's convolutions and projections except the stem (not
  the classifier); every Conv2D, DepthwiseConv2D and Dense of an edge model (what tfmot's
  ``prune_low_magnitude`` of the whole model prunes)."""
  if arch[0].startswith("resnet"):
    return lambda layer: (isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
                          and layer.name not in SKIP)
  return lambda layer: isinstance(
      layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))


def _skip(arch):
  wrapped = prunable(arch)
  return lambda layer: not wrapped(layer)


def tfmot_model(arch):
  schedule = tfmot.sparsity.keras.ConstantSparsity(0.9, begin_step=0)
  wrapped = prunable(arch)

  def wrap(layer):
    return tfmot.sparsity.keras.prune_low_magnitude(layer, schedule) if wrapped(layer) else layer

  return keras.models.clone_model(base_model(arch), clone_function=wrap)


def gibbs_model(arch, hamiltonian="unstructured", sampler=None):
  schedule = tf_gibbs.GibbsSchedule.reference(hamiltonian, begin_step=0, end_step=10_000)
  return tf_gibbs.prune_gibbs(base_model(arch), schedule, hamiltonian=hamiltonian,
                              sampler=sampler, skip=_skip(arch))


def l0_model(arch, granularity="weight", mode="deterministic"):
  schedule = tf_gibbs.L0Schedule(target_sparsity=0.9, begin_step=0, end_step=10_000)
  return tf_gibbs.prune_l0(base_model(arch), granularity=granularity, mode=mode,
                           schedule=schedule, skip=_skip(arch))


def adaptive_model(arch):
  return tf_gibbs.prune_adaptive(base_model(arch), 0.9, end_step=10_000, skip=_skip(arch))


class IdentityWrapper(tf_gibbs.PruningWrapper):
  """The shared wrapper base with an identity training weight: what every method pays before
  its own work (step counter, step check, NaN/Inf check, the wrapped call)."""

  def training_weight(self, weight, step):
    return weight

  def deterministic_weight(self, weight, step):
    return weight


def wrapper_model(arch):
  from tf_gibbs import prune as prune_lib  # pylint: disable=g-import-not-at-top
  schedule = tf_gibbs.GibbsSchedule(end_step=10_000)
  return prune_lib.apply_wrappers(base_model(arch),
                                  lambda layer, i: IdentityWrapper(layer, schedule),
                                  skip=_skip(arch), api_name="wrapper")


def without_nested_xla(model):
  """Makes ``model`` trace its steps with tf_gibbs' nested XLA clusters turned off (their ops
  run one by one, as they do on several replicas), to measure what the clusters save."""
  from tf_gibbs.core import xla as xla_lib  # pylint: disable=g-import-not-at-top
  train_on_batch = model.train_on_batch

  def patched(*args, **kwargs):
    allowed = xla_lib.nested_xla_allowed
    xla_lib.nested_xla_allowed = lambda: False
    try:
      return train_on_batch(*args, **kwargs)
    finally:
      xla_lib.nested_xla_allowed = allowed

  model.train_on_batch = patched
  return model


def make_model(name, arch):
  """``unstructured``, ``kernel``, ``filter_chromatic``, ... (Gibbs), ``l0[_granularity]``,
  ``adaptive``, ``wrapper`` (the base alone), ``tfmot`` or ``dense`` (unpruned); a suffix ``@noxla`` turns the nested XLA
  clusters off."""
  name, _, suffix = name.partition("@")
  if suffix:
    return without_nested_xla(make_model(name, arch))
  if name == "dense":
    return base_model(arch)
  if name == "tfmot":
    return tfmot_model(arch)
  if name == "wrapper":
    return wrapper_model(arch)
  family, _, option = name.partition("_")
  if family == "adaptive":
    return adaptive_model(arch)
  if family == "l0":
    return l0_model(arch, option or "weight")
  return gibbs_model(arch, family, option or None)


def sampler_cost(sizes=(3, 5, 7), channels=64, repeats=20):
  """Milliseconds per training-mask sample of one (k, k, 64, 64) conv kernel, per Hamiltonian."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf_gibbs.core import gibbs as gibbs_core  # pylint: disable=g-import-not-at-top
  energies = {"unstructured": gibbs_core.UnstructuredHamiltonian(),
              "kernel": gibbs_core.KernelHamiltonian(),
              "filter_exact": gibbs_core.FilterHamiltonian(sampler="exact"),
              "filter_chromatic": gibbs_core.FilterHamiltonian(sampler="chromatic")}
  rows = {}
  for size in sizes:
    weights = tf.random.normal([size * size, channels, channels], stddev=0.05)
    for name, energy in energies.items():
      sample = tf.function(lambda w, e=energy: e.sample_mask(w, 0.9, 100.0, [1, 2])[0])
      sample(weights)
      start = time.perf_counter()
      for _ in range(repeats):
        sample(weights).numpy()
      rows[(name, size)] = 1e3 * (time.perf_counter() - start) / repeats
  return rows


def _prepare(model, xla):
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=xla)
  for layer in model.layers:
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):  # what UpdatePruningStep does
      layer.pruning_step.assign(0)
  return model


def batch(model, batch_size):
  """A fixed random batch for ``model``'s input shape (10 classes)."""
  rng = np.random.RandomState(0)
  x = rng.rand(batch_size, *model.input_shape[1:]).astype("float32")
  return x, rng.randint(0, 10, batch_size)


def first_steps(names, arch, batch_size, xla):
  """Builds, compiles and trains one step of each model in ``names``, in turn, in this process.

  Returns (models, seconds from the start of building each model to the end of its first
  step: the wrapping, Keras' tracing and every compilation the first step needs)."""
  models, seconds = {}, {}
  x = y = None
  for name in names:
    start = time.perf_counter()
    model = _prepare(make_model(name, arch), xla)
    if x is None:
      x, y = batch(model, batch_size)
    model.train_on_batch(x, y)
    seconds[name] = time.perf_counter() - start
    models[name] = model
  return models, seconds


def measure(models, batch_size, steps, warmup=3, baseline="tfmot", percentile=20):
  """Per-step times of every model, interleaved one step at a time (A B, then B A, ...).

  The machine's speed drifts and jumps between steps (on the 2-core machine here single steps
  of the same model vary by ±30 %), so single steps of the models are interleaved and each
  model is summarized by a low percentile of its step times (the least disturbed steps) and by
  its median; the ratios to ``baseline`` of both are reported.
  """
  names = list(models)
  x, y = batch(models[names[0]], batch_size)
  for name in names:
    for _ in range(warmup):
      models[name].train_on_batch(x, y)
  times = {name: [] for name in names}
  for i in range(steps):
    for name in (names if i % 2 == 0 else names[::-1]):
      start = time.perf_counter()
      models[name].train_on_batch(x, y)
      times[name].append(time.perf_counter() - start)
  low = {n: float(np.percentile(t, percentile)) for n, t in times.items()}
  mid = {n: float(np.median(t)) for n, t in times.items()}
  return {n: (low[n], low[n] / low[baseline], mid[n], mid[n] / mid[baseline]) for n in names}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="128,16")
  parser.add_argument("--steps", type=int, default=0,
                      help="timed steps per model (default: 120 at batch < 64, else 40)")
  parser.add_argument("--repeats", type=int, default=1,
                      help="repeat the interleaved measurement this many times per batch size "
                      "and report the median of the repeats' ratios (and their range): the "
                      "machine's speed drifts between blocks of steps, a single block's ratio "
                      "moves by about ±0.05 at batch 16")
  parser.add_argument("--depth", type=int, default=20, help="ResNet depth (without --models)")
  parser.add_argument("--models", default="",
                      help="edge models instead of ResNet: mobilenetv2,efficientnetb0 "
                      "(tf_keras.applications, weights=None, 10 classes; resnet20 also works); "
                      "every Conv2D, DepthwiseConv2D and Dense is wrapped, as tfmot's "
                      "prune_low_magnitude of the whole model does, and a dense row is added")
  parser.add_argument("--input_sizes", default="32",
                      help="square input sizes of --models, e.g. 32,96")
  parser.add_argument("--xla", default="both", choices=("off", "on", "both"),
                      help="compile with jit_compile=False, True, or time both (default)")
  parser.add_argument("--modes",
                      default="unstructured,kernel,filter_chromatic,filter_exact,l0,l0_filter,adaptive",
                      help="Gibbs Hamiltonians (and filter samplers), L0 gates "
                      "(l0_<granularity>), adaptive, wrapper (the shared base alone), to time "
                      "against tfmot; append @noxla to run tf_gibbs' nested XLA clusters as "
                      "plain ops")
  parser.add_argument("--keras3_backends", default="",
                      help="also time the Keras 3 rows (benchmarks/keras3_overhead.py) on these "
                      "backends, e.g. tensorflow,jax,torch, one process each ('' to skip)")
  parser.add_argument("--sampler_sizes", default="3,5,7",
                      help="kernel sizes for the sampler-cost table ('' to skip it)")
  args = parser.parse_args(argv)

  results = {}
  for backend in [b for b in args.keras3_backends.split(",") if b]:
    import subprocess  # pylint: disable=g-import-not-at-top
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.pop("TF_USE_LEGACY_KERAS", None)
    subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "keras3_overhead.py"),
                    "--batch_sizes", args.batch_sizes, "--depth", str(args.depth)]
                   + (["--steps", str(args.steps)] if args.steps else []), env=env, check=True)
  if args.keras3_backends and args.modes == "none":
    return results
  if args.models:
    archs = [(m, int(size)) for m in args.models.split(",")
             for size in args.input_sizes.split(",")]
  else:
    archs = [(f"resnet{args.depth}", 32)]
  labels = {"tfmot": "tfmot", "dense": "dense"}
  for name in args.modes.split(","):
    labels[name] = name if name.startswith(("l0", "adaptive", "wrapper")) else f"gibbs_{name}"
  names = ["tfmot"] + (["dense"] if args.models else []) + args.modes.split(",")
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  for arch in archs:
    # ResNet alone keeps the keys (method, batch[, "xla"]); with --models they start with arch.
    prefix = (f"{arch[0]}@{arch[1]}",) if args.models else ()
    title = (f"ResNet-{args.depth}, CIFAR-shaped input" if not args.models else
             f"{arch[0]} ({'tf_keras.applications, ' if arch[0] in EDGE_MODELS else ''}"
             f"{arch[1]}x{arch[1]}x3 input, 10 classes)")
    for xla in {"off": [False], "on": [True], "both": [False, True]}[args.xla]:
      keras.utils.set_random_seed(0)
      built, first = first_steps(names, arch, batch_sizes[0], xla)
      models = {labels[name]: model for name, model in built.items()}
      print(f"\n{title}, jit_compile={xla} (tfmot too)")
      print(f"time to the end of the first step (build, wrap, compile, trace, first step at "
            f"batch {batch_sizes[0]}; models built in turn in this process)")
      print(f"{'method':<22} {'seconds':>8} {'ratio':>7}")
      for name in names:
        ratio = first[name] / first["tfmot"]
        results[prefix + (labels[name], "first") + (("xla",) if xla else ())] = ratio
        print(f"{labels[name]:<22} {first[name]:>8.1f} {ratio:>7.2f}")
      print(f"step times of {args.steps or '120 (batch < 64) / 40'} interleaved steps per model "
            f"and batch size{f', in {args.repeats} repeats (medians of their figures)' if args.repeats > 1 else ''}")
      print(f"{'method':<22} {'batch':>5} {'p20 ms':>8} {'p20 ratio':>10} {'median ms':>10} "
            f"{'median ratio':>13}")
      for batch_size in batch_sizes:
        steps = args.steps if args.steps else (40 if batch_size >= 64 else 120)
        runs = [measure(models, batch_size, steps) for _ in range(max(args.repeats, 1))]
        for name in models:
          low, low_ratio, mid, mid_ratio = (float(np.median([run[name][i] for run in runs]))
                                            for i in range(4))
          results[prefix + (name, batch_size) + (("xla",) if xla else ())] = low_ratio
          results[prefix + (name, batch_size, "ms") + (("xla",) if xla else ())] = 1e3 * low
          spread = ""
          if len(runs) > 1:
            ratios = sorted(run[name][1] for run in runs)
            spread = f"   p20 ratios of the {len(runs)} repeats: " + " ".join(
                f"{r:.3f}" for r in ratios)
          print(f"{name:<22} {batch_size:>5} {1e3 * low:>8.1f} {low_ratio:>10.3f} "
                f"{1e3 * mid:>10.1f} {mid_ratio:>13.3f}{spread}")
      del models, built
  if args.xla == "both":
    print("\nXLA speed-up (p20 step time without XLA / with XLA)")
    for key in [k for k in results if k[-1] == "ms"]:
      print(f"{' '.join(map(str, key[:-2])):<30} {key[-2]:>5} "
            f"{results[key] / results[key + ('xla',)]:>8.2f}")
  if args.sampler_sizes:
    sizes = [int(k) for k in args.sampler_sizes.split(",")]
    costs = sampler_cost(sizes)
    print("\nsampler cost, ms per mask of a (k, k, 64, 64) kernel (eager call of a tf.function)")
    print(f"{'hamiltonian':<18}" + "".join(f"{f'{k}x{k}':>9}" for k in sizes))
    for name in ("unstructured", "kernel", "filter_exact", "filter_chromatic"):
      print(f"{name:<18}" + "".join(f"{costs[(name, k)]:>9.2f}" for k in sizes))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
