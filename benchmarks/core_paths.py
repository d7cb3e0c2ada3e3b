"""Does the tf_keras front's TensorFlow fast path pay? The same computations, timed in one
process on the TensorFlow backend: tf_gibbs.core (radix select, nested XLA clusters, custom
gradients) against tf_gibbs.core.neutral (keras.ops: sort, selects, stop-gradient algebra).

  python benchmarks/core_paths.py [--repeats 30] [--size 3] [--channels 64]

Each computation runs as a tf.function (the way the tf_keras wrappers call it inside a training
step), calls of the two paths interleaved; the figure is the ratio of the 20th percentiles of
the call times (neutral / TensorFlow: above 1 means the fast path pays). The tests check both
paths give the same results on the same inputs (tests/keras3/test_neutral_core.py).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_gibbs.core import gibbs as gibbs_tf  # noqa: E402
from tf_gibbs.core import neutral  # noqa: E402
from tf_gibbs.core import ranking as ranking_tf  # noqa: E402


def cases(size, channels):
  rng = np.random.default_rng(0)
  weights = tf.constant(rng.normal(scale=0.1, size=(size * size, channels, channels)),
                        tf.float32)
  p = tf.constant(0.9, tf.float64)
  seed = tf.constant([3, 7], tf.int64)
  kernel = gibbs_tf.KernelHamiltonian()
  chromatic = gibbs_tf.FilterHamiltonian()
  return weights, {
      "quantile": (lambda w: ranking_tf.quantile(tf.square(w), p),
                   lambda w: neutral.quantile(tf.square(w), 0.9)),
      "exact-count mask": (lambda w: ranking_tf.exact_count_keep_mask(tf.square(w), p),
                           lambda w: neutral.exact_count_keep_mask(tf.square(w), 0.9, 0.9)),
      "unstructured sample": (
          lambda w: gibbs_tf.UnstructuredHamiltonian().sample_mask(w, p, 100.0, seed)[0],
          lambda w: neutral.unstructured_sample(
              w, 0.9, 100.0, neutral.hash_uniform(3, 7, 0, w.shape))[0]),
      "kernel sample": (lambda w: kernel.sample_mask(w, p, 100.0, seed)[0],
                        lambda w: neutral.kernel_sample(w, 0.9, 100.0, 0.01, 3, 7)[0]),
      "filter sample (chromatic)": (
          lambda w: chromatic.sample_mask(w, p, 1.0, seed)[0],
          lambda w: neutral.filter_sample(w, 0.9, 1.0, 1.0, 3, 7, "chromatic", 50)[0]),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--size", type=int, default=3)
  parser.add_argument("--channels", type=int, default=64)
  args = parser.parse_args(argv)
  assert keras.backend.backend() == "tensorflow", "run with KERAS_BACKEND=tensorflow"
  weights, table = cases(args.size, args.channels)
  print(f"({args.size}, {args.size}, {args.channels}, {args.channels}) kernel, ms per call "
        f"(p20 of {args.repeats} interleaved calls)")
  print(f"{'computation':<28} {'TensorFlow':>11} {'neutral':>9} {'ratio':>7}")
  ratios = {}
  for name, (fast, neutral_fn) in table.items():
    fns = [tf.function(fast), tf.function(neutral_fn)]
    for fn in fns:
      fn(weights).numpy()
    times = [[], []]
    for i in range(args.repeats):
      for j in ((0, 1) if i % 2 == 0 else (1, 0)):
        start = time.perf_counter()
        fns[j](weights).numpy()
        times[j].append(time.perf_counter() - start)
    low = [1e3 * float(np.percentile(t, 20)) for t in times]
    ratios[name] = low[1] / low[0]
    print(f"{name:<28} {low[0]:>11.2f} {low[1]:>9.2f} {ratios[name]:>7.2f}", flush=True)
  return ratios


if __name__ == "__main__":
  main(sys.argv[1:])
