"""TFLite / LiteRT export of pruned models, and a LiteRT runner to check them."""

import os
import re
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tf_gibbs._keras import is_keras3_object
from tf_gibbs._keras import keras
from tf_gibbs._keras import wrapped_layer_names

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")


def is_wrapped(model):
  """True if ``model`` (or a model nested in it) still holds tf_gibbs or tfmot wrappers."""
  if is_keras3_object(model):
    from tf_gibbs import shrinking  # pylint: disable=g-import-not-at-top
    front = shrinking.front_of(model)
    if isinstance(model, front.wrapper_class()):
      return True
    return isinstance(model, front.keras.Model) and bool(front.wrapped_layer_names(model))
  if isinstance(model, pruning_wrapper.PruneLowMagnitude):
    return True
  return bool(wrapped_layer_names(model))


def _representative_dataset(data, argument="representative_data"):
  """Turns an array, a list of arrays, a tf.data.Dataset or a generator function into the
  converter's generator of input lists (one example per call, as TFLite calibrates)."""
  if callable(data):
    return data
  if isinstance(data, tf.data.Dataset):
    def generate():
      for example in data.unbatch().take(500):
        yield [tf.expand_dims(t, 0) for t in tf.nest.flatten(example)]
    return generate
  arrays = [np.asarray(a, np.float32) for a in (data if isinstance(data, (list, tuple))
                                                 else [data])]
  if not arrays or any(a.ndim < 1 or len(a) != len(arrays[0]) for a in arrays) or \
      not len(arrays[0]):
    raise ValueError(f"`{argument}` must be a non-empty batch of inputs (an array, or a list "
                     "of arrays with one entry per model input).")

  def generate():
    for i in range(min(len(arrays[0]), 500)):
      yield [a[i:i + 1] for a in arrays]
  return generate


def export_tflite(model, path=None, sparse=True, quantize=None, representative_data=None):
  """Converts a pruned model to a TFLite (LiteRT) flatbuffer (and writes it to ``path``).

  Wrapped models are stripped first (``tf_gibbs.strip_pruning``, which also unwraps tfmot's
  wrappers); call :func:`tf_gibbs.shrink` before exporting to remove pruned filters physically.

  Keras 3 models: on the TensorFlow backend Keras' ``ExportArchive`` writes the model's
  inference call as a SavedModel (the path of Keras' own LiteRT export), which is converted in
  this process. On JAX and PyTorch the TFLite converter cannot read the model's
  computation (Keras' own LiteRT export refuses JAX; its SavedModel export of a JAX model holds
  jax2tf ``XlaCallModule`` ops, which TFLite has no kernels for; its PyTorch route needs the
  separate ``litert-torch`` package and fixed input shapes), so the model is saved as a
  ``.keras`` file (backend-neutral) and converted, with the same options, by a Python process
  on the TensorFlow backend: the same layers and weights, converted the same way, at the cost
  of starting that process (~10–30 s).

  Args:
    model: a Sequential or functional model (tf_keras, or Keras 3 on the TensorFlow, JAX or
      PyTorch backend), pruned, stripped or shrunk.
    path: optional file to write the flatbuffer to (folders are created).
    sparse: add ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``: the converter stores sparse
      weight tensors in a compressed (block-sparse) format where that is smaller. With
      ``quantize="dynamic"`` or ``"int8"`` the sparse int8 weights cannot be run by LiteRT's
      default XNNPACK delegate, only by its built-in kernels (:func:`run_tflite` falls back).
    quantize: None (float32), ``"dynamic"`` (dynamic-range: int8 weights, float activations),
      ``"float16"`` (float16 weights) or ``"int8"`` (full integer kernels calibrated on
      ``representative_data``; inputs and outputs stay float32).
    representative_data: for ``quantize="int8"``: a batch of inputs (array, list of arrays),
      a ``tf.data.Dataset`` of inputs, or a generator function as TFLite expects.

  Returns:
    The flatbuffer as bytes.
  """
  keras3 = is_keras3_object(model)
  if keras3:
    import keras as keras3_module  # pylint: disable=g-import-not-at-top
  if not isinstance(model, keras3_module.Model if keras3 else keras.Model):
    raise TypeError(f"`model` must be a Keras model (tf_keras or Keras 3), got "
                    f"{type(model).__name__}.")
  if quantize not in QUANTIZE_MODES:
    raise ValueError(f"`quantize` must be one of {QUANTIZE_MODES}, got {quantize!r}.")
  if not isinstance(sparse, bool):
    raise TypeError(f"`sparse` must be True or False, got {sparse!r}.")
  if quantize == "int8" and representative_data is None:
    raise ValueError("`quantize='int8'` needs `representative_data` (a batch of typical "
                     "inputs) to calibrate the activation ranges.")
  if quantize != "int8" and representative_data is not None:
    raise ValueError("`representative_data` is used only with `quantize='int8'`; got "
                     f"quantize={quantize!r}.")
  if path is not None and not isinstance(path, (str, os.PathLike)):
    raise TypeError(f"`path` must be a file path or None, got {type(path).__name__}.")
  if path is not None and os.path.isdir(os.fspath(path)):
    raise ValueError(f"`path` {os.fspath(path)!r} is a directory; give the path of the "
                     ".tflite file to write (e.g. 'model.tflite').")
  if is_wrapped(model):
    from tf_gibbs.prune import strip_pruning  # pylint: disable=g-import-not-at-top
    model = strip_pruning(model)
  representative = (None if representative_data is None
                    else _representative_dataset(representative_data))
  if not keras3:
    flatbuffer = _convert(tf.lite.TFLiteConverter.from_keras_model(model), sparse, quantize,
                          representative)
  elif keras3_module.backend.backend() == "tensorflow":
    flatbuffer = _convert_keras3(model, sparse, quantize, representative)
  else:
    flatbuffer = _convert_keras3_in_tensorflow_process(model, sparse, quantize, representative)
  if path is not None:
    folder = os.path.dirname(os.fspath(path))
    if folder:
      os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:
      f.write(flatbuffer)
  return flatbuffer


def _keras3_input_signature(model):
  if not model.inputs:
    raise ValueError("`model` is not built: give it an Input before exporting.")
  return [tf.TensorSpec(tuple(t.shape), t.dtype, name=t.name.split(":")[0])
          for t in model.inputs]


def _convert_keras3(model, sparse, quantize, representative):
  """A Keras 3 model on the TensorFlow backend: its inference call written as a SavedModel by
  Keras' ExportArchive (the path Keras' own LiteRT export takes), then converted."""
  import keras as keras3_module  # pylint: disable=g-import-not-at-top
  signature = _keras3_input_signature(model)

  def serve(*inputs):
    return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

  with tempfile.TemporaryDirectory() as folder:
    archive = keras3_module.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=signature)
    archive.write_out(folder, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(folder)
    return _convert(converter, sparse, quantize, representative)


def _convert_keras3_in_tensorflow_process(model, sparse, quantize, representative):
  """A Keras 3 model on JAX or PyTorch: saved as .keras, converted by a TensorFlow-backend
  process (see :func:`export_tflite`)."""
  with tempfile.TemporaryDirectory() as folder:
    model_path = os.path.join(folder, "model.keras")
    model.save(model_path)
    command = [sys.executable, "-m", "tf_gibbs.export", model_path,
               os.path.join(folder, "model.tflite"), str(sparse), str(quantize)]
    if representative is not None:
      examples = list(representative())
      arrays = [np.concatenate([np.asarray(example[i]) for example in examples])
                for i in range(len(examples[0]))]
      np.savez(os.path.join(folder, "representative.npz"), *arrays)
      command.append(os.path.join(folder, "representative.npz"))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError("export_tflite: converting the Keras 3 model in a TensorFlow-backend "
                         f"process failed:\n{done.stderr[-4000:]}")
    with open(command[4], "rb") as f:
      return f.read()


def _convert_saved_keras3_file(model_path, tflite_path, sparse, quantize, representative_path):
  """The TensorFlow-backend side of :func:`_convert_keras3_in_tensorflow_process`."""
  import keras as keras3_module  # pylint: disable=g-import-not-at-top
  import tf_gibbs  # pylint: disable=g-import-not-at-top,unused-import  (registers the layers)
  model = keras3_module.models.load_model(model_path, compile=False)
  representative = None
  if representative_path:
    with np.load(representative_path) as data:
      arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    representative = _representative_dataset(arrays if len(arrays) > 1 else arrays[0])
  flatbuffer = _convert_keras3(model, sparse == "True", None if quantize == "None" else quantize,
                               representative)
  with open(tflite_path, "wb") as f:
    f.write(flatbuffer)


def _convert(converter, sparse, quantize, representative):
  """Sets the converter's options (see :func:`export_tflite`) and converts."""
  optimizations = []
  if sparse:
    optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
  if quantize is not None:
    optimizations.append(tf.lite.Optimize.DEFAULT)
  converter.optimizations = optimizations
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantize == "int8":
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return converter.convert()


def run_tflite(model, inputs, num_threads=None):
  """Runs a TFLite model with LiteRT (``ai-edge-litert``) on a batch.

  Args:
    model: flatbuffer bytes or the path of a ``.tflite`` file.
    inputs: an array for a one-input model, or a dict {input name: array}.
    num_threads: LiteRT's CPU thread count (None: its default).

  Returns:
    The output array of a one-output model, else a dict {output name: array}.
  """
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    from ai_edge_litert.interpreter import OpResolverType  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("run_tflite needs LiteRT: pip install 'tf_gibbs[litert]' "
                      "(ai-edge-litert).") from e
  if isinstance(model, (bytes, bytearray)):
    source = {"model_content": bytes(model)}
  elif isinstance(model, (str, os.PathLike)):
    source = {"model_path": os.fspath(model)}
  else:
    raise TypeError(f"`model` must be flatbuffer bytes or a .tflite path, got "
                    f"{type(model).__name__}.")
  try:
    return _run(Interpreter(num_threads=num_threads, **source), inputs)
  except RuntimeError as e:
    if not _XNNPACK_PREPARE_FAILURE.search(str(e)):
      raise
  # LiteRT's default XNNPACK delegate cannot prepare sparse int8 weights (sparse=True with
  # quantize="dynamic" or "int8"); the built-in kernels run them.
  warnings.warn("run_tflite: the XNNPACK delegate cannot run this model (sparse quantized "
                "weights); running it with LiteRT's built-in kernels instead.", stacklevel=2)
  resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
  return _run(Interpreter(num_threads=num_threads, experimental_op_resolver_type=resolver,
                          **source), inputs)


# What LiteRT says when XNNPACK cannot prepare a node (e.g. sparse int8 weights): "failed to
# delegate FULLY_CONNECTED node #4Node number 6 (TfLiteXNNPackDelegate) failed to prepare."
_XNNPACK_PREPARE_FAILURE = re.compile(r"TfLiteXNNPackDelegate\) failed to prepare")


def _check_input(name, value, detail):
  """The batch axis first and the model's other dimensions, or a ValueError saying which."""
  signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
  expected = tuple(None if d < 0 or i == 0 else d for i, d in enumerate(signature))
  shape = tuple(np.shape(value))
  fits = len(shape) == len(signature) and all(
      e is None or e == d for e, d in zip(expected, shape))
  if not fits:
    hint = (" (a batch axis first: for one example pass x[None])"
            if len(shape) == len(signature) - 1 else "")
    raise ValueError(f"`inputs` for the model's input {name!r} has shape {shape}; the model "
                     f"expects {expected}, batch first{hint}.")


def _run(interpreter, inputs):
  runner = interpreter.get_signature_runner()
  details = runner.get_input_details()
  names = list(details)
  if isinstance(inputs, dict):
    unknown = sorted(set(inputs) - set(names))
    if unknown or len(inputs) != len(names):
      raise ValueError(f"`inputs` must give exactly the model's inputs {names}; got "
                       f"{sorted(inputs)}.")
    feed = dict(inputs)
  else:
    if len(names) != 1:
      raise ValueError(f"The model has inputs {names}: pass `inputs` as a dict by name.")
    feed = {names[0]: inputs}
  for name, value in feed.items():
    _check_input(name, value, details[name])
  feed = {k: np.asarray(v, details[k]["dtype"]) for k, v in feed.items()}
  outputs = runner(**feed)
  return next(iter(outputs.values())) if len(outputs) == 1 else dict(outputs)


if __name__ == "__main__":  # the TensorFlow-backend converter process of export_tflite
  _convert_saved_keras3_file(*sys.argv[1:5], sys.argv[5] if len(sys.argv) > 5 else None)
