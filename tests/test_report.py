"""tf_gibbs.sparsity_report: every count against a hand count."""

import numpy as np
import pytest
import tf_keras as keras

import tf_gibbs
from helpers import compile_model
from helpers import random_data
from helpers import Subclassed
from helpers import small_cnn

L = keras.layers


def hand_model():
  """Conv2D(4, 3×3) → DepthwiseConv2D(3×3, ×2) → Flatten → Dense(5) on 8×8×1, with known zeros."""
  inputs = keras.Input((8, 8, 1))
  h = L.Conv2D(4, 3, name="conv")(inputs)                       # 6×6×4, kernel 3·3·1·4
  h = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h)    # 4×4×8, kernel 3·3·4·2
  h = L.Flatten()(h)                                            # 128
  model = keras.Model(inputs, L.Dense(5, name="dense")(h))      # kernel 128·5
  rng = np.random.RandomState(0)
  for layer in model.layers:
    for w in layer.weights:
      w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))  # no accidental zeros
  conv, dw, dense = (model.get_layer(n) for n in ("conv", "dw", "dense"))
  k = conv.kernel.numpy()
  k[..., 1] = 0            # a zero filter: 9 zeros
  k[0, 0, 0, 2] = 0        # one more zero weight
  conv.kernel.assign(k)
  k = dw.depthwise_kernel.numpy()
  k[:, :, 0, 1] = 0        # a zero depthwise kernel (output channel 1): 9 zeros
  k[1, 1, 2, 0] = 0
  dw.depthwise_kernel.assign(k)
  k = dense.kernel.numpy()
  k[:, 3] = 0              # a zero unit: 128 zeros
  k[0, 0] = k[5, 1] = 0
  dense.kernel.assign(k)
  return model


def test_report_matches_hand_counts(tmp_path):
  lines = []
  report = tf_gibbs.sparsity_report(hand_model(), plot=tmp_path / "sparsity.png",
                                    print_fn=lines.append)
  rows = {row["name"]: row for row in report["layers"]}
  assert list(rows) == ["conv", "dw", "dense"]
  expected = {
      # weights, zeros, kernels, zero kernels, filters, zero filters, params, MACs
      "conv": (36, 10, 4, 1, 4, 1, 40, 6 * 6 * 36),
      "dw": (72, 10, 8, 1, 8, 1, 80, 4 * 4 * 72),
      "dense": (640, 130, None, None, 5, 1, 645, 640),
  }
  # Shrinking: conv's filter 1 (a constant: its bias) goes, with dw's channel 1 (outputs 2, 3);
  # dw's dead output 1 stays (its input channel 0 is live); the model's output keeps all 5 units.
  shrunk = {"conv": (30, 6 * 6 * 27), "dw": (60, 4 * 4 * 54), "dense": (96 * 5 + 5, 96 * 5)}
  for name, (weights, zeros, kernels, zero_kernels, filters, zero_filters, params,
             macs) in expected.items():
    row = rows[name]
    assert (row["weights"], row["zeros"], row["kernels"], row["zero_kernels"], row["filters"],
            row["zero_filters"], row["params"], row["macs"]) == (
                weights, zeros, kernels, zero_kernels, filters, zero_filters, params, macs)
    assert row["sparsity"] == pytest.approx(zeros / weights)
    assert (row["params_shrunk"], row["macs_shrunk"]) == shrunk[name]
  total = report["total"]
  assert (total["weights"], total["zeros"], total["filters"], total["zero_filters"]) == (
      748, 150, 17, 3)
  assert total["sparsity"] == pytest.approx(150 / 748)
  assert (total["macs"], total["macs_shrunk"]) == (1296 + 1152 + 640, 972 + 864 + 480)
  assert (total["model_params"], total["model_params_shrunk"]) == (765, 575)
  assert report["shrink"]["layers"]["dw"] == {"before": 8, "after": 6, "kept_constant": 1}
  assert lines[0].split()[:3] == ["layer", "type", "weights"]
  assert any(line.startswith("total") and " 748 " in line for line in lines)
  with open(tmp_path / "sparsity.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_strips_a_wrapped_model_and_prints_nothing_when_asked(capsys):
  schedule = tf_gibbs.GibbsSchedule(0.75, beta_begin=1.0, beta_end=1e4, end_step=2)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), schedule, skip="conv1"))
  model.fit(*random_data(32), batch_size=8, epochs=1, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep()])
  report = tf_gibbs.sparsity_report(model, print_fn=None)
  assert capsys.readouterr().out == ""
  rows = {row["name"]: row for row in report["layers"]}
  assert rows["conv1"]["zeros"] == 0
  for name in ("conv2", "dense1", "logits"):
    assert rows[name]["zeros"] == round(0.75 * rows[name]["weights"])


def test_report_of_a_subclassed_model_has_no_shrink_columns():
  model = Subclassed(4)
  model(np.ones((2, 3), "float32"))
  report = tf_gibbs.sparsity_report(model, print_fn=None)
  assert report["shrink"] is None and report["layers"][0]["params_shrunk"] is None
  assert report["layers"][0]["weights"] == 12


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"model": keras.layers.Dense(2)}, TypeError, r"a Keras model \(tf_keras or Keras 3\)"),
    ({"print_fn": "stdout"}, TypeError, "print_fn"),
    ({"plot": 3}, TypeError, "plot"),
    ({"model": keras.Sequential([keras.Input((2,)), L.ReLU()])}, ValueError, "no Conv1D"),
])
def test_report_bad_input(kwargs, error, pattern):
  kwargs.setdefault("model", hand_model())
  with pytest.raises(error, match=pattern):
    tf_gibbs.sparsity_report(**kwargs)
