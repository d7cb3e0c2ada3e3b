"""Keras 3 tests: run in-process on the TensorFlow backend (the main run) and, by
``tests/test_keras3_backends.py``, in a process of their own with KERAS_BACKEND = jax, torch."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_keras3():
  keras.utils.set_random_seed(1234)
  yield
  keras.backend.clear_session(free_memory=False)  # gc.collect() costs ~1 s a test


def to_numpy(x):
  return np.asarray(keras.ops.convert_to_numpy(x))


def gradients(fn, *args):
  """The gradient of sum(fn(*args)) with respect to each argument, on the current backend."""
  backend = keras.backend.backend()
  args = [np.asarray(a, np.float32) for a in args]
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    xs = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
      tape.watch(xs)
      total = tf.reduce_sum(fn(*xs))
    return [to_numpy(g) for g in tape.gradient(total, xs)]
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    grads = jax.grad(lambda *xs: jnp.sum(fn(*xs)), argnums=tuple(range(len(args))))(
        *[jnp.asarray(a) for a in args])
    return [np.asarray(g) for g in grads]
  import torch  # pylint: disable=g-import-not-at-top
  xs = [torch.tensor(a, requires_grad=True) for a in args]
  fn(*xs).sum().backward()
  return [x.grad.numpy() for x in xs]


def compiled(fn):
  """``fn`` traced once for the backend (tf.function, jax.jit; PyTorch runs eagerly)."""
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.function(fn)
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    return jax.jit(fn)
  return fn


@pytest.fixture(autouse=True, scope="session")
def _the_requested_backend():
  """Fails every test if Keras did not start on KERAS_BACKEND (default tensorflow)."""
  assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")
