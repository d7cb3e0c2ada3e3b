import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
