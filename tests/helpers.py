"""Small models and data shared by the tests."""

import numpy as np
import tf_keras as keras


def small_cnn(name="cnn"):
  """A tiny functional CNN on 8x8x1 inputs (digits-shaped)."""
  inputs = keras.Input((8, 8, 1), name="image")
  h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
  h = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
  h = keras.layers.Flatten(name="flatten")(h)
  h = keras.layers.Dense(16, activation="relu", name="dense1")(h)
  outputs = keras.layers.Dense(10, name="logits")(h)
  return keras.Model(inputs, outputs, name=name)


class Subclassed(keras.Model):
  """A minimal subclassed model (one Dense layer), for the "subclassed model" errors."""

  def __init__(self, units=2):
    super().__init__()
    self.fc = keras.layers.Dense(units)

  def call(self, x):
    return self.fc(x)


def wrappers(model, wrapper_type=None):
  """The pruning wrappers among ``model``'s layers (of ``wrapper_type``; default: any)."""
  import tf_gibbs  # pylint: disable=g-import-not-at-top
  return [l for l in model.layers if isinstance(l, wrapper_type or tf_gibbs.PruningWrapper)]


def check_mask(mask, gates, name):
  """Gibbs and adaptive masks are binary; with ``gates`` (an L0 wrapper, either Keras) the mask
  is Louizos et al.'s test-time gate ẑ = clip(σ(log α)(ζ − γ) + γ, 0, 1): exact zeros, and kept
  values in (0, 1] that scale the weight, never outside [0, 1]."""
  if gates:
    assert np.all((mask >= 0.0) & (mask <= 1.0)), name
  else:
    assert np.all(np.isin(mask, [0.0, 1.0])), name


def digits(n=600):
  """The first ``n`` of scikit-learn's 8x8 digits, scaled to [0, 1], with their labels."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  return (data.images[:n] / 16.0).astype("float32")[..., None], data.target[:n]


def random_data(n=64, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.randn(n, 8, 8, 1).astype("float32")
  y = rng.randint(0, 10, size=n)
  return x, y


def compile_model(model, jit_compile=False):
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile)
  return model


def litert_predict(model, x):
  """Converts a (stripped) tf_keras model to TFLite and runs it with LiteRT on ``x``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
  runner = Interpreter(model_content=flatbuffer).get_signature_runner()
  name = next(iter(runner.get_input_details()))
  return next(iter(runner(**{name: x}).values()))


def reload(model, path, x, wrapper_type):
  """Saves ``model`` to ``path``, loads it back with no custom objects, and checks that the
  loaded model predicts the same on ``x`` and that every ``wrapper_type`` layer comes back as
  that class with the same config. Returns the loaded model and (original, restored) pairs."""
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-6, atol=1e-6)
  pairs = list(zip(*([l for l in m.layers if isinstance(l, wrapper_type)]
                     for m in (model, loaded))))
  assert pairs
  for original, restored in pairs:
    assert type(restored) is wrapper_type
    assert restored.get_config() == original.get_config()
  return loaded, pairs


def check_strip(model, strip, x, wrapper_type):
  """Strips ``model`` with ``strip`` (no warning allowed) and checks what every method owes:
  no wrapper left, the wrapped model's predictions, and each stripped kernel zero exactly
  where its wrapper's mask is. Then writes the final weights once more (what every epoch end
  does) and checks that this changes nothing. Returns the stripped model and the wrappers."""
  import warnings  # pylint: disable=g-import-not-at-top
  own = wrappers(model, wrapper_type)
  wrapped_out = model.predict(x, verbose=0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    stripped = strip(model)
  assert not wrappers(stripped, wrapper_type)
  np.testing.assert_allclose(stripped.predict(x, verbose=0), wrapped_out, rtol=1e-5, atol=1e-6)
  layers = {l.name: l for l in stripped.layers}
  for w in own:
    np.testing.assert_array_equal(layers[w.layer.name].kernel.numpy() == 0, w.mask.numpy() == 0)
  for w in own:
    w.write_final_weight()
  np.testing.assert_allclose(model.predict(x, verbose=0), wrapped_out, rtol=1e-6, atol=1e-6)
  return stripped, own


def random_batchnorm(model, seed=0):
  """Non-trivial BatchNormalization statistics, so zero filters become nonzero constants."""
  rng = np.random.RandomState(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, var = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.randn(*beta.shape),
                         rng.randn(*mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def random_biases(model, seed=0):
  rng = np.random.RandomState(seed)
  for layer in model.layers:
    if getattr(layer, "use_bias", False) and hasattr(layer, "bias"):
      layer.bias.assign(rng.randn(*layer.bias.shape).astype("float32"))


def readme_block(marker):
  """The one ```python block of the README that contains ``marker``, as printed."""
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
  with open(path, encoding="utf-8") as f:
    blocks = re.findall(r"^```python\n(.*?)^```$", f.read(), re.M | re.S)
  matching = [block for block in blocks if marker in block]
  assert len(matching) == 1, f"{len(matching)} README python blocks contain {marker!r}"
  return matching[0]
