"""One worker of the MultiWorkerMirroredStrategy test (test_robustness.py); not a test itself.

  python multiworker_worker.py METHOD WORKER_INDEX PORT0,PORT1 OUT_DIR   (or "single")
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

method, index, ports, out_dir = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
if index != "single":
  os.environ["TF_CONFIG"] = json.dumps({
      "cluster": {"worker": [f"localhost:{p}" for p in ports.split(",")]},
      "task": {"type": "worker", "index": int(index)}})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_robustness  # noqa: E402  pylint: disable=g-import-not-at-top
import tf_keras as keras  # noqa: E402

strategy = (tf.distribute.get_strategy() if index == "single"
            else tf.distribute.MultiWorkerMirroredStrategy())
keras.utils.set_random_seed(0)
with strategy.scope():
  model = test_robustness._compile(test_robustness.METHODS[method]())  # pylint: disable=protected-access
test_robustness._fit(model)  # pylint: disable=protected-access
np.savez(os.path.join(out_dir, f"{index}.npz"), *model.get_weights())
