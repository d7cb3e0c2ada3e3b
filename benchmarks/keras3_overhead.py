"""Keras 3 rows of benchmarks/overhead.py: step time of each method on ResNet-20 divided by the
same unpruned Keras 3 model's, on one backend (one process per backend).

  KERAS_BACKEND=jax python benchmarks/keras3_overhead.py [--batch_sizes 128,16] [--steps N]
  python benchmarks/overhead.py --keras3_backends tensorflow,jax,torch   # all, one process each
  KERAS_BACKEND=jax python benchmarks/keras3_overhead.py --model mobilenetv2 --input_size 32 \
      --batch_sizes 8 --steps 40                                  # an edge model (issue #25)

``--model mobilenetv2`` / ``efficientnetb0``: ``keras.applications`` (``weights=None``, 10
classes, ``--input_size``), every Conv2D, DepthwiseConv2D and Dense wrapped; the script then
also prints each model's time to the end of its first step (build, wrap, compile, first
``train_on_batch``; models built in turn) over the dense model's.

Every model is the same ResNet-20 (CIFAR-shaped random data) built with Keras 3, the pruned ones
wrapping every conv and projection except the stem (not the classifier), compiled the way Keras
compiles by default (``jit_compile="auto"``: XLA on JAX; on TensorFlow XLA only with a GPU,
so a graph without XLA on these CPU machines; eager on PyTorch), and
trained with ``train_on_batch``, single steps interleaved (``overhead.measure``); the figure is
the ratio of the 20th percentiles of the step times to the dense model's (medians too).
Methods: Gibbs unstructured, kernel, filter (chromatic) at p = 0.9 with β ramping; L0 gates per
weight in budget mode (0.9); the adaptive loss at a 0.9 budget. Goal (issue #21): every method
≤ 1.15× the dense step at batch 128 on TensorFlow and JAX.
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_gibbs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, HERE)
from models import resnet  # noqa: E402  pylint: disable=g-import-not-at-top
from overhead import EDGE_MODELS  # noqa: E402  pylint: disable=g-import-not-at-top
from overhead import SKIP  # noqa: E402  pylint: disable=g-import-not-at-top
from overhead import batch  # noqa: E402  pylint: disable=g-import-not-at-top
from overhead import measure  # noqa: E402  pylint: disable=g-import-not-at-top

STEPS = 10000


def model_makers(depth, modes=None, model="resnet20", input_size=32):
  """Functions that build the dense model and the pruned ones named in ``modes`` (default:
  all), in that order."""
  if model.startswith("resnet"):
    dense = lambda: resnet(depth, keras=keras)
    skip = list(SKIP)
  elif model in EDGE_MODELS:
    application = getattr(keras.applications, EDGE_MODELS[model])
    dense = lambda: application(input_shape=(input_size, input_size, 3), weights=None,
                                classes=10, classifier_activation=None)  # logits
    skip = None  # every Conv2D, DepthwiseConv2D and Dense
  else:
    raise ValueError(f"Unknown `model` {model!r}; accepted: resnet20, "
                     f"{', '.join(EDGE_MODELS)}.")
  gibbs = lambda hamiltonian, **kw: tf_gibbs.prune_gibbs(
      dense(), tf_gibbs.GibbsSchedule.reference(hamiltonian, 0, STEPS), hamiltonian=hamiltonian,
      skip=skip, seed=0, **kw)
  makers = {
      "dense": dense,
      "gibbs_unstructured": lambda: gibbs("unstructured"),
      "gibbs_kernel": lambda: gibbs("kernel"),
      "gibbs_filter_chromatic": lambda: gibbs("filter"),
      "l0": lambda: tf_gibbs.prune_l0(dense(), schedule=tf_gibbs.L0Schedule(
          1.0, target_sparsity=0.9, end_step=STEPS), skip=skip, seed=0),
      "adaptive": lambda: tf_gibbs.prune_adaptive(dense(), 0.9, end_step=STEPS, skip=skip),
  }
  unknown = sorted(set(modes or ()) - set(makers))
  if unknown:
    raise ValueError(f"Unknown modes {unknown}; accepted values: {sorted(makers)}.")
  return {name: make for name, make in makers.items()
          if not modes or name == "dense" or name in modes}


def _compiled(model):
  model.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def first_steps(makers, batch_size):
  """Each model built, wrapped, compiled and through its first ``train_on_batch``, in turn:
  (models, seconds each took)."""
  models, seconds = {}, {}
  for name, make in makers.items():
    start = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "left dense": BatchNormalization and the like
      model = _compiled(make())
    x, y = batch(model, batch_size)
    model.train_on_batch(x, y)
    seconds[name] = time.perf_counter() - start
    models[name] = model
  return models, seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="128,16")
  parser.add_argument("--steps", type=int, default=0,
                      help="timed steps per model (default: 60 at batch < 64, else 20)")
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--modes", default="",
                      help="comma-separated subset of the methods (default: all)")
  parser.add_argument("--model", default="resnet20",
                      help="resnet20 (default), mobilenetv2 or efficientnetb0")
  parser.add_argument("--input_size", type=int, default=32,
                      help="input height and width of an edge model")
  args = parser.parse_args(argv)
  keras.utils.set_random_seed(0)
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  makers = model_makers(args.depth, [m for m in args.modes.split(",") if m],
                        args.model, args.input_size)
  backend = keras.backend.backend()
  name = f"ResNet-{args.depth}" if args.model.startswith("resnet") else (
      f"{EDGE_MODELS[args.model]} {args.input_size}x{args.input_size}")
  models, seconds = first_steps(makers, batch_sizes[0])
  if not args.model.startswith("resnet"):
    print(f"\nKeras {keras.__version__}, backend {backend}: {name}, time to the end of the "
          f"first step at batch {batch_sizes[0]} (models built in turn)")
    print(f"{'method':<24} {'seconds':>8} {'ratio':>7}")
    for method, value in seconds.items():
      print(f"{method:<24} {value:>8.1f} {value / seconds['dense']:>7.2f}", flush=True)
  print(f"\nKeras {keras.__version__}, backend {backend}: {name}, "
        f"jit_compile='auto'; step time / the dense Keras 3 model's")
  print(f"{'method':<24} {'batch':>5} {'p20 ms':>8} {'p20 ratio':>10} {'median ms':>10} "
        f"{'median ratio':>13}")
  rows = {}
  for name, value in seconds.items():
    rows[(backend, name, "first_step")] = value / seconds["dense"]
  for batch_size in batch_sizes:
    steps = args.steps or (60 if batch_size < 64 else 20)
    run = measure(models, batch_size, steps, baseline="dense")
    for name, (low, low_ratio, mid, mid_ratio) in run.items():
      rows[(backend, name, batch_size)] = low_ratio
      print(f"{name:<24} {batch_size:>5} {1e3 * low:>8.1f} {low_ratio:>10.3f} "
            f"{1e3 * mid:>10.1f} {mid_ratio:>13.3f}", flush=True)
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
