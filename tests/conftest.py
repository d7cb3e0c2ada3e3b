import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Two host devices for JAX, for the keras.distribution.DataParallel tests
# (tests/keras3/test_keras3_scale.py); read when JAX starts its CPU client. Ops still run on
# the first device by default.
if (os.environ.get("KERAS_BACKEND") == "jax"
    and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()

import tensorflow as tf  # noqa: E402

# Two logical CPU devices, for the tf.distribute.MirroredStrategy tests (test_robustness.py);
# must happen before TensorFlow initializes its devices. Ops still run on the first by default.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import pytest  # noqa: E402
import tf_keras as keras  # noqa: E402

import tf_gibbs  # noqa: E402,F401  (imports tfmot first, which selects tf_keras)


@pytest.fixture(autouse=True)
def _seed_everything():
  keras.utils.set_random_seed(1234)
  yield
  keras.backend.clear_session()


@pytest.fixture(scope="session")
def mirrored_strategy():
  """tf.distribute.MirroredStrategy over the two logical CPUs, one per process: TensorFlow's CPU
  collectives misbehave when several MirroredStrategy objects run one after another in a process
  (the tf_keras tests in test_robustness.py and the Keras 3 ones share it)."""
  devices = tf.config.list_logical_devices("CPU")
  assert len(devices) >= 2, "two logical CPUs are configured above"
  return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def _is_backend_run(item):
  return item.nodeid.split("::")[0].endswith("test_keras3_backends.py")


def pytest_collection_modifyitems(items):
  """The JAX and PyTorch runs of tests/keras3 first: under xdist they are the longest tests."""
  items.sort(key=lambda item: not _is_backend_run(item))


def pytest_collection_finish(session):
  """Without xdist, starts the JAX and PyTorch runs of tests/keras3 in the background when their
  test is selected (tests/test_keras3_backends.py waits for them); an xdist worker runs each as
  its own test instead (tests/keras3_runner.py)."""
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return
  if any(_is_backend_run(item) for item in session.items):
    import keras3_runner  # pylint: disable=g-import-not-at-top
    keras3_runner.start()
