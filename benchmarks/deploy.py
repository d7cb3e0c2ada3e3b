"""Deployment: is a pruned ResNet-20 really smaller and faster once shrunk and exported?

  python benchmarks/deploy.py [--steps 30] [--runs 2000] [--threads 1]
  KERAS_BACKEND=jax python benchmarks/deploy.py --keras 3     # Keras 3 rows (tensorflow, jax)

Two models, both ResNet-20 on CIFAR-shaped inputs, pruned by tf_gibbs during ``fit`` (every
conv and projection except the stem; not the classifier), stripped, exported with
``tf_gibbs.export_tflite`` and run with LiteRT (ai-edge-litert, XNNPACK, batch 1):

1. Filter Hamiltonian at 50 %: half of every pruned layer's filters are zero. ``tf_gibbs.shrink``
   removes them; target: LiteRT latency(shrunk) / latency(dense) ≤ 1.2 × kept-MAC fraction,
   the kept-MAC fraction being MACs(shrunk) / MACs(dense) over all Conv/Dense layers, for the
   default ``borders="map"``; ``borders="channel"`` is printed beside it, and the map variant
   after ``tf_gibbs.pack_narrow_convs`` (``--tile``), checked against the same target.
2. Unstructured Gibbs at 90 %: target: gzipped sparse TFLite file ≤ 0.3 × the gzipped dense one.
3. Why latency is not proportional to MACs on a SIMD CPU: one convolution's latency against its
   number of output channels (XNNPACK computes output channels in tiles, 16 wide on AVX-512).

The training data are random (CIFAR-10 cannot be downloaded here): this measures size and
speed, which depend on the architecture and the zeros, not on accuracy. Training runs just long
enough for the β schedule to end, so the final exact-count masks are the ones exported.
Latency is the median of ``--runs`` single-example invocations after warm-up, dense and shrunk
interleaved in rounds so that machine load affects both alike.

``--keras 3`` builds, prunes, strips, shrinks and exports the same models with Keras 3 on the
backend that KERAS_BACKEND names (parts 1 and 2; part 3 does not depend on Keras). On JAX and
PyTorch ``export_tflite`` converts in a TensorFlow process of its own.
"""

import argparse
import gzip
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tf_gibbs  # noqa: E402
import tf_keras  # noqa: E402

keras = tf_keras  # the Keras of the run: tf_keras, or Keras 3 with --keras 3 (set in main)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from models import resnet  # noqa: E402  pylint: disable=g-import-not-at-top

SKIP = ("stem", "classifier")


def _prunable(layer):
  return type(layer).__name__ in ("Conv2D", "Dense") and layer.name not in SKIP


def pruned_resnet(hamiltonian, sparsity, steps, batch_size=16, seed=0):
  """ResNet-20 pruned by Gibbs pruning in ``fit`` on random data until the schedule ends."""
  keras.utils.set_random_seed(seed)
  schedule = tf_gibbs.GibbsSchedule.reference(hamiltonian, begin_step=0, end_step=steps - 2,
                                              target_sparsity=sparsity)
  model = tf_gibbs.prune_gibbs(resnet(20, keras=keras), schedule, hamiltonian=hamiltonian,
                               seed=seed, skip=lambda layer: not _prunable(layer))
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.RandomState(seed)
  x = rng.rand(steps * batch_size, 32, 32, 3).astype("float32")
  y = rng.randint(0, 10, len(x))
  model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep()])
  return tf_gibbs.strip_pruning(model), x[:64]


def _interpreter(flatbuffer, threads):
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
  interpreter.allocate_tensors()
  return interpreter


def latencies(flatbuffers, x, runs, threads, rounds=40):
  """Median single-example latency (ms) of each flatbuffer, measured in interleaved rounds."""
  interpreters = [_interpreter(fb, threads) for fb in flatbuffers]
  times = [[] for _ in flatbuffers]
  example = x[:1]
  for interpreter in interpreters:
    index = interpreter.get_input_details()[0]["index"]
    for _ in range(20):
      interpreter.set_tensor(index, example)
      interpreter.invoke()
  for _ in range(rounds):
    for interpreter, out in zip(interpreters, times):
      index = interpreter.get_input_details()[0]["index"]
      for _ in range(max(1, runs // rounds)):
        interpreter.set_tensor(index, example)
        start = time.perf_counter()
        interpreter.invoke()
        out.append(time.perf_counter() - start)
  return [1e3 * float(np.median(t)) for t in times]


def gz(data):
  return len(gzip.compress(data, compresslevel=9))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=30, help="training steps per model")
  parser.add_argument("--runs", type=int, default=2000, help="timed invocations per model")
  parser.add_argument("--threads", type=int, default=1, help="LiteRT CPU threads")
  parser.add_argument("--tile", type=int, default=16,
                      help="output-channel tile for tf_gibbs.pack_narrow_convs (16: XNNPACK on "
                      "AVX-512, 8: AVX2 / NEON)")
  parser.add_argument("--out_dir", default=None, help="write the .tflite files here")
  parser.add_argument("--keras", type=int, choices=(2, 3), default=2,
                      help="2: tf_keras (default); 3: Keras 3 on KERAS_BACKEND (parts 1 and 2)")
  args = parser.parse_args(argv)
  global keras  # pylint: disable=global-statement
  if args.keras == 3:
    import keras as keras3  # pylint: disable=g-import-not-at-top
    keras = keras3
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")
  else:
    keras = tf_keras
  results = {}

  print("== 1. Filter Hamiltonian, 50 % of the filters: shrink")
  dense_model = resnet(20, keras=keras)
  stripped, x = pruned_resnet("filter", 0.5, args.steps)
  dense_model.set_weights(stripped.get_weights())  # same architecture; weights do not matter
  # (the dense model's latency does not depend on its weights: XNNPACK runs dense kernels)
  expected = stripped.predict(x, verbose=0)
  report = tf_gibbs.sparsity_report(stripped, print_fn=None)  # shrinks with the default
  columns = {"dense": (dense_model, None)}
  for borders in ("map", "channel"):
    columns[f"shrunk ({borders})"] = tf_gibbs.shrink(stripped, borders=borders)
  columns["+ packed"] = (tf_gibbs.pack_narrow_convs(columns["shrunk (map)"][0], args.tile)[0],
                         columns["shrunk (map)"][1])
  figures = {}
  for name, (model, shrink_report) in columns.items():
    flatbuffer = tf_gibbs.export_tflite(
        model, sparse=False,
        path=os.path.join(args.out_dir, f"resnet20_{name.split()[-1].strip('()')}.tflite")
        if args.out_dir else None)
    macs = sum(l["macs"] for l in tf_gibbs.sparsity_report(model, print_fn=None)["layers"])
    parity = None
    if shrink_report is not None:
      parity = max(
          float(np.max(np.abs(out - expected)) / np.max(np.abs(expected)))
          for out in (model.predict(x, verbose=0), tf_gibbs.run_tflite(flatbuffer, x)))
    figures[name] = {"params": model.count_params(), "macs": macs, "bytes": len(flatbuffer),
                     "gzipped": gz(flatbuffer), "flatbuffer": flatbuffer, "parity": parity}
  times = latencies([f["flatbuffer"] for f in figures.values()], x, args.runs, args.threads)
  for f, ms in zip(figures.values(), times):
    f["ms"] = ms
  dense = figures["dense"]
  print(f"\n{'':<22}" + "".join(f"{name:>17}" for name in figures))
  for key, label, fmt in (("params", "parameters", "d"), ("macs", "MACs (conv + dense)", "d"),
                          ("bytes", "TFLite bytes", "d"), ("gzipped", "TFLite bytes gzipped", "d"),
                          ("ms", "LiteRT latency (ms)", ".3f")):
    print(f"{label:<22}" + "".join(
        f"{f[key]:>10{fmt}} ({f[key] / dense[key]:.2f})" for f in figures.values()))
  for name, f in figures.items():
    if f["parity"] is not None:
      print(f"{name}: max relative |shrunk - stripped| (Keras and LiteRT) {f['parity']:.1e}")
  kept = {n: f"{e['after']}/{e['before']}" for n, e in report["shrink"]["layers"].items()}
  print("filters kept (map): " + ", ".join(f"{n} {k}" for n, k in kept.items()))
  shrunk = figures["shrunk (map)"]
  kept_macs = report["total"]["macs_shrunk"] / report["total"]["macs"]
  ratio = shrunk["ms"] / dense["ms"]
  print(f"latency ratio {ratio:.3f} vs 1.2 x kept-MAC fraction = {1.2 * kept_macs:.3f}: "
        f"{'MET' if ratio <= 1.2 * kept_macs else 'NOT MET'}")
  packed_ratio = figures["+ packed"]["ms"] / dense["ms"]
  print(f"shrunk and packed for {args.tile}-wide tiles (tf_gibbs.pack_narrow_convs): latency "
        f"ratio {packed_ratio:.3f} vs 1.2 x the shrunk model's kept-MAC fraction = "
        f"{1.2 * kept_macs:.3f}: {'MET' if packed_ratio <= 1.2 * kept_macs else 'NOT MET'} "
        f"(its own MACs, padded taps included: {figures['+ packed']['macs'] / dense['macs']:.3f} "
        "of dense)")
  results["filter"] = {"latency_ratio": ratio, "kept_mac_fraction": kept_macs,
                       "packed_latency_ratio": packed_ratio,
                       "parity": max(f["parity"] for f in figures.values() if f["parity"])}

  print("\n== 2. Unstructured Gibbs, 90 %: sparse TFLite")
  stripped, x = pruned_resnet("unstructured", 0.9, args.steps)
  dense_model = resnet(20, keras=keras)
  dense_fb = tf_gibbs.export_tflite(dense_model, sparse=False)
  zeros_fb = tf_gibbs.export_tflite(stripped, sparse=False)
  sparse_fb = tf_gibbs.export_tflite(stripped, sparse=True)
  expected = stripped.predict(x, verbose=0)
  sparse_parity = float(np.max(np.abs(tf_gibbs.run_tflite(sparse_fb, x) - expected))
                        / np.max(np.abs(expected)))
  sparsity = tf_gibbs.sparsity_report(stripped, print_fn=None)["total"]["sparsity"]
  dense_ms, zeros_ms, sparse_ms = latencies([dense_fb, zeros_fb, sparse_fb], x, args.runs,
                                            args.threads)
  print(f"sparsity of the conv/dense kernels: {sparsity:.4f}")
  print(f"\n{'':<30}{'bytes':>10}{'gzipped':>10}{'gz ratio':>10}{'latency ms':>12}")
  for name, fb, ms in (("dense", dense_fb, dense_ms), ("pruned, dense format", zeros_fb, zeros_ms),
                       ("pruned, sparse format", sparse_fb, sparse_ms)):
    print(f"{name:<30}{len(fb):>10}{gz(fb):>10}{gz(fb) / gz(dense_fb):>10.3f}{ms:>12.3f}")
  size_ratio = gz(sparse_fb) / gz(dense_fb)
  print(f"max relative |LiteRT sparse - Keras|: {sparse_parity:.1e}")
  print(f"gzipped sparse / dense {size_ratio:.3f} vs 0.3: "
        f"{'MET' if size_ratio <= 0.3 else 'NOT MET'}")
  results["unstructured"] = {"size_ratio": size_ratio, "sparsity": sparsity,
                             "parity": sparse_parity}
  if args.keras == 3:
    return results

  print("\n== 3. One 3x3 'same' conv on 32x32x32 inputs: LiteRT latency against output channels")
  channels = (8, 16, 17, 24, 31, 32)
  convs = []
  for filters in channels:
    inputs = keras.Input((32, 32, 32))
    convs.append(tf_gibbs.export_tflite(
        keras.Model(inputs, keras.layers.Conv2D(filters, 3, padding="same")(inputs)),
        sparse=False))
  probe = np.random.RandomState(0).rand(1, 32, 32, 32).astype("float32")
  times = latencies(convs, probe, args.runs // 2, args.threads)
  print("output channels  " + "".join(f"{c:>9}" for c in channels))
  print("latency (us)     " + "".join(f"{1e3 * t:>9.1f}" for t in times))
  print("latency / MACs, relative to 32 channels  " + "".join(
      f"{(t / c) / (times[-1] / 32):>6.2f}" for t, c in zip(times, channels)))
  results["conv_latency_ms"] = dict(zip(channels, times))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
