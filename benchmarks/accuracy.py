"""Accuracy of Gibbs pruning against tfmot's PolynomialDecay on the digits CNN.

  python benchmarks/accuracy.py [--sparsities 0.9,0.95,0.98,0.99] [--seeds 0,1,2,3,4] [--epochs 30]

Setup (issue #2): scikit-learn's digits (offline), the quickstart's CNN
(Conv32-Conv64-Dense128-Dense10, every layer pruned), Adam 1e-3, batch 32, the same epochs for
every method, trained from scratch. tfmot: ``prune_low_magnitude`` with
``PolynomialDecay(0 → s)``; Gibbs: ``prune_gibbs`` with a geometric β ramp and, optionally, the
same cubic sparsity ramp. Both ramps end at ``--ramp_fraction`` of training. Accuracy is that of
the stripped model on the held-out 20 %, checked to have exactly the target sparsity.
Prints a table of mean ± std over seeds.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

import tf_gibbs  # noqa: E402
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from quickstart import accuracy  # noqa: E402  pylint: disable=g-import-not-at-top
from quickstart import compile_model  # noqa: E402  pylint: disable=g-import-not-at-top
from quickstart import digits_cnn  # noqa: E402  pylint: disable=g-import-not-at-top
from quickstart import load_digits  # noqa: E402  pylint: disable=g-import-not-at-top


def measured_sparsity(model):
  """Fraction of exact zeros over the kernels of the stripped model's Conv2D and Dense layers."""
  kernels = [l.kernel.numpy() for l in model.layers
             if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
  return sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)


def train(method, sparsity, seed, data, args):
  """Trains one model from scratch; returns (test accuracy, measured sparsity)."""
  x_train, x_test, y_train, y_test = data
  steps = int(np.ceil(len(x_train) / args.batch_size)) * args.epochs
  ramp_end = max(1, int(args.ramp_fraction * steps))
  keras.utils.set_random_seed(seed)
  model = digits_cnn(args.weight_decay)
  callbacks = []
  if method == "tfmot":
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0,
                                                    end_step=ramp_end,
                                                    frequency=args.tfmot_frequency)
    model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
  elif method == "gibbs":
    schedule = tf_gibbs.GibbsSchedule(
        sparsity, beta_begin=args.beta_begin, beta_end=args.beta_end, begin_step=0,
        end_step=ramp_end, initial_sparsity=0.0 if args.gibbs_sparsity_ramp else None)
    model = tf_gibbs.prune_gibbs(model, schedule, seed=seed)
    callbacks = [tf_gibbs.UpdatePruningStep()]
  compile_model(model)
  model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
            callbacks=callbacks)
  if method == "tfmot":
    model = tfmot.sparsity.keras.strip_pruning(model)
  elif method == "gibbs":
    model = tf_gibbs.strip_pruning(model)
  return accuracy(model, x_test, y_test), measured_sparsity(model)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sparsities", default="0.9,0.95,0.98,0.99")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--methods", default="dense,tfmot,gibbs")
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--ramp_fraction", type=float, default=2 / 3,
                      help="both sparsity/β ramps end at this fraction of training")
  parser.add_argument("--tfmot_frequency", type=int, default=10)
  parser.add_argument("--weight_decay", type=float, default=0.0,
                      help="L2 on every kernel, for every method (the Gibbs recipe uses 1e-4)")
  parser.add_argument("--beta_begin", type=float, default=1.0)
  parser.add_argument("--beta_end", type=float, default=1e6)
  parser.add_argument("--gibbs_sparsity_ramp", type=int, default=1,
                      help="1: Gibbs also ramps p from 0 (cubic, like tfmot); 0: p fixed")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  methods = args.methods.split(",")
  data = load_digits(0)
  print(f"digits CNN, {args.epochs} epochs, batch {args.batch_size}, L2 {args.weight_decay:g}, "
        f"seeds {seeds}; "
        f"ramps end at {args.ramp_fraction:.2f} of training; Gibbs β {args.beta_begin:g} → "
        f"{args.beta_end:g}, sparsity ramp {bool(args.gibbs_sparsity_ramp)}; tfmot frequency "
        f"{args.tfmot_frequency}")
  print(f"{'method':<8} {'target':>7} {'measured':>9} {'accuracy mean ± std':>22} {'runs':>5}")
  results = {}
  start = time.time()
  for sparsity in [0.0] + [float(s) for s in args.sparsities.split(",")]:
    for method in methods:
      if (method == "dense") != (sparsity == 0.0):
        continue
      runs = [train(method, sparsity, seed, data, args) for seed in seeds]
      accs = np.array([a for a, _ in runs])
      measured = float(np.mean([m for _, m in runs]))
      results[(method, sparsity)] = (float(accs.mean()), float(accs.std()), measured)
      print(f"{method:<8} {sparsity:>7.2f} {measured:>9.4f} "
            f"{100 * accs.mean():>13.2f} ± {100 * accs.std():.2f} %   {len(runs):>3}", flush=True)
  print(f"total {time.time() - start:.0f} s")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
