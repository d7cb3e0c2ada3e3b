"""Quickstart: train and Gibbs-prune a small CNN on scikit-learn's digits, ship a TFLite file.

  python examples/quickstart.py [--epochs 30] [--sparsity 0.9] [--out_dir quickstart_out]
  python examples/quickstart.py --keras 3 --backend jax     # or tensorflow, torch

The whole path: train a dense baseline; train the same CNN from scratch with Gibbs pruning
(``tf_gibbs.prune_gibbs`` + ``UpdatePruningStep``) → strip the wrappers (``strip_pruning``) →
remove whole zero filters and units (``shrink``) → export a sparse TFLite file
(``export_tflite``) → check that LiteRT (ai-edge-litert) predicts what Keras predicts
(``run_tflite``) → print the per-layer report (``sparsity_report``, also a PNG), accuracies and
gzipped file sizes. Runs offline (the digits ship with scikit-learn) in well under 3 minutes on
2 CPU cores.

``--keras 3`` runs the same pipeline, with the same code, on Keras 3 (``import keras``) with the
backend of ``--backend``: no callback is needed there (the wrappers count their own steps). On
JAX and PyTorch, ``export_tflite`` converts in a TensorFlow-backend process (~15 s per file).
"""

import argparse
import gzip
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BACKENDS = ("tensorflow", "jax", "torch")
if "--backend" in sys.argv:  # Keras 3 fixes its backend at the first `import keras`
  _backend = sys.argv[sys.argv.index("--backend") + 1]
  if _backend in BACKENDS:
    os.environ["KERAS_BACKEND"] = _backend

import numpy as np  # noqa: E402

import tf_gibbs  # noqa: E402  (import before tf_keras models are built: it selects Keras 2)
import tf_keras as keras  # noqa: E402


def load_digits(seed=0):
  """scikit-learn's 8x8 digits, scaled to [0, 1], split 80/20 (stratified)."""
  from sklearn.datasets import load_digits as sk_load  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  data = sk_load()
  x = (data.images / 16.0).astype("float32")[..., None]
  return train_test_split(x, data.target, test_size=0.2, random_state=seed,
                          stratify=data.target)


def digits_cnn(weight_decay=0.0, keras=keras):  # pylint: disable=redefined-outer-name
  """Conv32-Conv64-Dense128-Dense10 on 8x8x1 inputs (optional L2 on the kernels); ``keras``:
  tf_keras (default) or Keras 3, which build it with the same code."""
  l2 = keras.regularizers.l2(weight_decay) if weight_decay else None
  inputs = keras.Input((8, 8, 1), name="image")
  h = keras.layers.Conv2D(32, 3, activation="relu", kernel_regularizer=l2, name="conv1")(inputs)
  h = keras.layers.Conv2D(64, 3, activation="relu", kernel_regularizer=l2, name="conv2")(h)
  h = keras.layers.Flatten(name="flatten")(h)
  h = keras.layers.Dense(128, activation="relu", kernel_regularizer=l2, name="dense1")(h)
  outputs = keras.layers.Dense(10, kernel_regularizer=l2, name="logits")(h)
  return keras.Model(inputs, outputs, name="digits_cnn")


def compile_model(model, learning_rate=1e-3, keras=keras):  # pylint: disable=redefined-outer-name
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def accuracy(model, x, y):
  return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def gzipped_size(path):
  with open(path, "rb") as f:
    return len(gzip.compress(f.read(), compresslevel=9))


def save_keras_and_tflite(model, out_dir, name, keras=keras):  # pylint: disable=redefined-outer-name
  keras_path = os.path.join(out_dir, f"{name}.keras")
  shipped = keras.models.clone_model(model)  # uncompiled: what ships has no optimizer slots
  shipped.set_weights(model.get_weights())
  shipped.save(keras_path)
  tflite_path = os.path.join(out_dir, f"{name}.tflite")
  flatbuffer = tf_gibbs.export_tflite(model, path=tflite_path, sparse=True)
  return flatbuffer, gzipped_size(keras_path), gzipped_size(tflite_path)


def epoch_lines(keras, epochs, name):  # pylint: disable=redefined-outer-name
  """A callback that prints one line per epoch: ``name  epoch 3/30  loss 0.21  accuracy 0.94``."""

  class EpochLine(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
      values = "  ".join(f"{key} {float(value):.4g}" for key, value in (logs or {}).items())
      print(f"{name}  epoch {epoch + 1:>{len(str(epochs))}}/{epochs}  {values}  "
            f"({time.time() - self.start:.1f} s)", flush=True)

  return EpochLine()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out_dir", default="quickstart_out")
  parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2,
                      help="training output: 2 one line per epoch (default), 1 Keras' "
                           "progress bars, 0 none")
  parser.add_argument("--keras", choices=["2", "3"], default="2",
                      help="2: tf_keras + tfmot (default); 3: Keras 3 (`import keras`)")
  parser.add_argument("--backend", choices=BACKENDS, default=None,
                      help="Keras 3 backend (set before keras is first imported)")
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  if args.keras == "3":
    import keras as keras3  # pylint: disable=g-import-not-at-top
    backend = keras3.backend.backend()
    if args.backend is not None and backend != args.backend:
      raise SystemExit(f"Keras 3 already runs on {backend!r}; start a new process with "
                       f"--backend {args.backend} (or KERAS_BACKEND={args.backend}).")
    # No callback on Keras 3: each wrapper counts its own training steps.
    return run(args, keras3, [], f"Keras {keras3.__version__} on {backend}", backend)
  if args.backend is not None:
    parser.error("--backend selects a Keras 3 backend: use it with --keras 3")
  return run(args, keras, [tf_gibbs.UpdatePruningStep()], "tf_keras + tfmot", "tf_keras")


def run(args, keras, callbacks, label, backend):  # pylint: disable=redefined-outer-name
  """The main job with ``keras`` (tf_keras or Keras 3): the same code for both."""
  start = time.time()
  x_train, x_test, y_train, y_test = load_digits(args.seed)
  steps_per_epoch = int(np.ceil(len(x_train) / args.batch_size))
  total_steps = steps_per_epoch * args.epochs

  print(f"== {label}: dense baseline ({args.epochs} epochs)")
  keras.utils.set_random_seed(args.seed)
  dense = compile_model(digits_cnn(keras=keras), keras=keras)
  dense.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
            verbose=int(args.verbose == 1),
            callbacks=[epoch_lines(keras, args.epochs, "dense")] if args.verbose == 2 else [])
  dense_acc = accuracy(dense, x_test, y_test)

  print(f"== Gibbs pruning to {args.sparsity:.0%} ({args.epochs} epochs, trained from scratch)")
  keras.utils.set_random_seed(args.seed)
  # β anneals geometrically 1 → 1e4 over the first 2/3 of training, then stays (the reference
  # recipe's shape); every prunable layer keeps exactly (1 − p) of its weights at the end.
  schedule = tf_gibbs.GibbsSchedule(target_sparsity=args.sparsity, beta_begin=1.0,
                                    beta_end=1e4, begin_step=0,
                                    end_step=max(1, (2 * total_steps) // 3))
  pruned = compile_model(tf_gibbs.prune_gibbs(digits_cnn(keras=keras), schedule,
                                              seed=args.seed), keras=keras)
  if args.verbose == 2:
    callbacks = callbacks + [epoch_lines(keras, args.epochs, "pruned")]
  pruned.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
             verbose=int(args.verbose == 1), callbacks=callbacks)
  wrapped_acc = accuracy(pruned, x_test, y_test)

  print("== Strip: the wrappers become plain layers with exact zeros (strip_pruning)")
  stripped = tf_gibbs.strip_pruning(pruned)
  print("== Shrink: whole zero filters and units removed (shrink)")
  shrunk, shrink_report = tf_gibbs.shrink(stripped)
  removed = {n: e for n, e in shrink_report["layers"].items() if e["after"] < e["before"]}
  print("   removed: " + (", ".join(f"{n} {e['before']} -> {e['after']}"
                                     for n, e in removed.items()) or "no whole filter"))
  pruned_acc = accuracy(shrunk, x_test, y_test)
  keras_out = stripped.predict(x_test, verbose=0)
  shrunk_diff = float(np.max(np.abs(shrunk.predict(x_test, verbose=0) - keras_out)))

  print(f"== Export: sparse TFLite files (export_tflite) in {args.out_dir}/")
  _, dense_keras_gz, dense_tflite_gz = save_keras_and_tflite(dense, args.out_dir, "dense",
                                                             keras=keras)
  pruned_tflite, pruned_keras_gz, pruned_tflite_gz = save_keras_and_tflite(
      shrunk, args.out_dir, "pruned", keras=keras)

  print("== LiteRT check: the pruned TFLite file must predict what Keras predicts (run_tflite)")
  litert_out = tf_gibbs.run_tflite(pruned_tflite, x_test)
  max_diff = float(np.max(np.abs(keras_out - litert_out)))
  litert_acc = float(np.mean(np.argmax(litert_out, -1) == y_test))
  if not np.allclose(litert_out, keras_out, rtol=1e-4, atol=1e-4):
    raise SystemExit(f"LiteRT predictions differ from Keras (max |diff| = {max_diff:.2e})")
  print(f"   max |Keras - LiteRT| = {max_diff:.2e}; max |shrunk - stripped| = {shrunk_diff:.2e}")

  print("\n== Sparsity report (stripped model)")
  report = tf_gibbs.sparsity_report(stripped, plot=os.path.join(args.out_dir, "sparsity.png"))
  total = report["total"]
  print(f"\n== Summary ({label}; digits test set, {len(y_test)} images)")
  print(f"Gibbs pruning to {args.sparsity:.0%}, {args.epochs} epochs, seed {args.seed}")
  print(f"accuracy   dense {dense_acc:.4f} | pruned {pruned_acc:.4f} (Keras) "
        f"{litert_acc:.4f} (LiteRT) | wrapped {wrapped_acc:.4f}")
  print(f"sparsity   {total['sparsity']:.4f} of the prunable weights are zero")
  print(f"gzipped    .keras {dense_keras_gz} B -> {pruned_keras_gz} B "
        f"({pruned_keras_gz / dense_keras_gz:.3f}) | TFLite {dense_tflite_gz} B -> "
        f"{pruned_tflite_gz} B ({pruned_tflite_gz / dense_tflite_gz:.3f})")
  print(f"LiteRT     max |Keras - LiteRT| = {max_diff:.1e} (checked: rtol = atol = 1e-4)")
  print(f"time       {time.time() - start:.0f} s; files in {args.out_dir}/")
  return {
      "backend": backend, "dense_accuracy": dense_acc, "pruned_accuracy": pruned_acc,
      "litert_accuracy": litert_acc, "wrapped_accuracy": wrapped_acc,
      "sparsity": report["total"]["sparsity"], "max_litert_diff": max_diff,
      "max_shrink_diff": shrunk_diff, "gzip_keras": (dense_keras_gz, pruned_keras_gz),
      "gzip_tflite": (dense_tflite_gz, pruned_tflite_gz),
  }


if __name__ == "__main__":
  main(sys.argv[1:])
