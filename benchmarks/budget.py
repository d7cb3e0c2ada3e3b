"""Target against measured sparsity of the adaptive sparsity loss, per density estimate.

  python benchmarks/budget.py [--targets 0.5,0.8,0.9,0.95] [--seeds 0] [--epochs 30]

The digits CNN of the quickstart (offline), ``prune_adaptive`` with the default
``budget="params"`` and ``min_weights=1000`` (conv1, 288 weights, stays dense), Adam 1e-3,
batch 32, thresholds frozen at 2/3 of training. Rows:

* ``erf`` — the paper's Gaussian estimate 1 − erf(r/√2), thresholds as trained;
* ``measured`` — our estimate (the real kept fraction, with the erf gradient), as trained;
* ``measured+exact`` — the default: the measured estimate plus the freeze-step correction that
  rescales every threshold by one common factor to hit the budget exactly.

"measured" is the parameter-weighted fraction of exact zeros in the stripped kernels of the
layers that count toward the budget. Target of issue #5: |measured − target| ≤ 0.005 at every
target for the default. r learns ``--r_lr_multiplier`` times as fast as the weights (default 3:
the paper's 1/100 suits its 200 CIFAR epochs, not 900 steps).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tf_gibbs  # noqa: E402
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from quickstart import accuracy  # noqa: E402  pylint: disable=g-import-not-at-top
from quickstart import compile_model  # noqa: E402  pylint: disable=g-import-not-at-top
from quickstart import digits_cnn  # noqa: E402  pylint: disable=g-import-not-at-top
from quickstart import load_digits  # noqa: E402  pylint: disable=g-import-not-at-top
import recipes  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = {"erf": ("erf", False), "measured": ("measured", False),
            "measured+exact": ("measured", True)}


def train(variant, target, seed, data, args):
  x_train, x_test, y_train, y_test = data
  steps = int(np.ceil(len(x_train) / args.batch_size)) * args.epochs
  estimate, exact = VARIANTS[variant]
  keras.utils.set_random_seed(seed)
  model = tf_gibbs.prune_adaptive(digits_cnn(), target, estimate=estimate, exact_budget=exact,
                                  end_step=max(1, int(args.ramp_fraction * steps)),
                                  r_lr_multiplier=args.r_lr_multiplier)
  compile_model(model)
  model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep()])
  stripped = tf_gibbs.strip_pruning(model)
  # Parameter-weighted zero fraction over the kernels of the wrapped layers.
  measured = recipes.zero_fraction(stripped, recipes.pruned_layer_names(model))
  return measured, accuracy(stripped, x_test, y_test)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--targets", default="0.5,0.8,0.9,0.95")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--ramp_fraction", type=float, default=2 / 3,
                      help="the thresholds freeze at this fraction of training")
  parser.add_argument("--r_lr_multiplier", type=float, default=3.0)
  args = parser.parse_args(argv)
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings("ignore", message=".*are left dense.*")
  data = load_digits(0)
  seeds = [int(s) for s in args.seeds.split(",")]
  print(f"digits CNN, {args.epochs} epochs, batch {args.batch_size}, seeds {seeds}, "
        f"r_lr_multiplier {args.r_lr_multiplier:g}, freeze at {args.ramp_fraction:.2f}")
  print(f"{'estimate':<16} {'target':>7} {'measured':>9} {'error':>8} {'accuracy':>9}")
  results = {}
  start = time.time()
  for target in (float(t) for t in args.targets.split(",")):
    for variant in args.variants.split(","):
      runs = [train(variant, target, seed, data, args) for seed in seeds]
      measured = float(np.mean([m for m, _ in runs]))
      acc = float(np.mean([a for _, a in runs]))
      results[(variant, target)] = (measured, acc)
      print(f"{variant:<16} {target:>7.2f} {measured:>9.4f} {measured - target:>+8.4f} "
            f"{100 * acc:>8.2f}%", flush=True)
  print(f"total {time.time() - start:.0f} s")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
