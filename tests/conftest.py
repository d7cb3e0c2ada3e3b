import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tf_keras as keras  # noqa: E402

import tf_gibbs  # noqa: E402,F401  (imports tfmot first, which selects tf_keras)


@pytest.fixture(autouse=True)
def _seed_everything():
  keras.utils.set_random_seed(1234)
  yield
  keras.backend.clear_session()
