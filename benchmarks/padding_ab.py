"""Cost of the padded selections (tf_gibbs.core.ranking.padded_size) in one process: the same
edge model Gibbs-pruned once per padding limit (values padded with +inf below it; 1 = none),
each traced with that limit, then single steps of all of them interleaved with tfmot's.

  python benchmarks/padding_ab.py [--model mobilenetv2] [--input_size 32] [--batch_size 8]
                                  [--steps 60] [--mode unstructured] [--limits 16384,4096,1]

The first-step times are in build order: later models find the clusters of the earlier ones
compiled, so only the step-time ratios compare the limits.
"""

import argparse
import sys

import overhead
from tf_gibbs.core import ranking


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="mobilenetv2")
  parser.add_argument("--input_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--mode", default="unstructured")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--limits", default="16384,4096,1",
                      help="padding limits to compare (1: no padding)")
  args = parser.parse_args(argv)
  arch = (args.model, args.input_size)
  limits = [int(v) for v in args.limits.split(",")]
  models, first = overhead.first_steps(["tfmot"], arch, args.batch_size, False)
  default = ranking._PADDED_BELOW  # pylint: disable=protected-access
  try:
    for limit in limits:
      ranking._PADDED_BELOW = limit  # pylint: disable=protected-access  (read when traced)
      built, seconds = overhead.first_steps([args.mode], arch, args.batch_size, False)
      models[f"below {limit}"], first[f"below {limit}"] = built[args.mode], seconds[args.mode]
  finally:
    ranking._PADDED_BELOW = default  # pylint: disable=protected-access
  print(f"{args.model} {args.input_size}x{args.input_size}, batch {args.batch_size}, {args.mode}, "
        "padded below each limit; first step (s, in build order): "
        + ", ".join(f"{name} {t:.1f}" for name, t in first.items()))
  names = [f"below {limit}" for limit in limits]
  print(f"{'repeat':>6} {'tfmot ms':>9}" + "".join(f"{n:>13}" for n in names)
        + "   (p20 ratios to tfmot)")
  results = []
  for repeat in range(args.repeats):
    run = overhead.measure(models, args.batch_size, args.steps)
    results.append(run)
    print(f"{repeat:>6} {1e3 * run['tfmot'][0]:>9.1f}"
          + "".join(f"{run[n][1]:>13.3f}" for n in names))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
