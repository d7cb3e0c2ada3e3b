"""ResNet-20/32/56 on CIFAR-10, pruned while training: the Gibbs pruning paper's recipe.

  python examples/cifar10_resnet.py --method gibbs --hamiltonian filter --sparsity 0.5 \
      [--depth 20] [--epochs 200] [--batch_size 128] [--data_dir ~/tensorflow_datasets]

Defaults follow the reference recipe (Labach & Valaee; ``methods.md`` §1.4): CIFAR-10 from
tensorflow-datasets, per-channel standardisation, random shifts (4-pixel zero padding and a
random 32×32 crop) and horizontal flips in ``tf.data``; Adam 1e-3 divided by 10 after 40 %,
60 % and 80 % of training (epochs 80, 120, 160 of 200); batch 128; L2 1e-4 on the conv kernels;
the sparsity / β ramps end after 64 % of training (epoch 128 of 200), geometric β ramps
1 → 1e4 (unstructured, kernel) or 10^−2.5 → 1 (filter), couplings c = 0.01 (kernel) and 1.0
(filter); the stem conv and the classifier stay dense for every method, the 1×1 projection
shortcuts are pruned. One deviation: β rises at every step rather than once per epoch (the
same geometric curve, without the steps).

``--method``: dense | tfmot (``prune_low_magnitude``, ``PolynomialDecay`` 0 → s) | gibbs |
l0 (``--granularity``, budget mode) | adaptive (one global budget). TensorBoard logs
(``--log_dir``, default ``runs/cifar10/<method>_<sparsity>``): loss, accuracy, per-layer
sparsity and threshold (tfmot's ``PruningSummaries``), β (Gibbs) or each layer's r (adaptive).
At the end: strip, shrink (structured methods), sparse TFLite export checked against LiteRT,
the sparsity report and its plot (``--out_dir``, default the log directory).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_gibbs  # noqa: E402,F401  (selects Keras 2 before tf_keras models are built)
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402  pylint: disable=g-import-not-at-top
import recipes  # noqa: E402  pylint: disable=g-import-not-at-top

FLAGS = flags.FlagValues()
recipes.define_flags(FLAGS, epochs=200, batch_size=128, learning_rate=1e-3,
                     lr_decay_at=["0.4", "0.6", "0.8"], ramp_fraction=0.64, weight_decay=1e-4,
                     dataset="cifar10")
flags.DEFINE_enum("depth", "20", ["20", "32", "56"], "ResNet depth.", flag_values=FLAGS)
flags.DEFINE_bool("augment", True, "Random shifts and flips of the training images.",
                  flag_values=FLAGS)

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 per-channel mean and standard deviation
STD = (0.2470, 0.2435, 0.2616)


def preprocess(image):
  return (tf.cast(image, tf.float32) / 255.0 - MEAN) / STD


def augment(image):
  """Random shift by up to 4 pixels (zero padding, random crop) and random horizontal flip."""
  image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
  image = tf.image.random_crop(image, (32, 32, 3))
  return tf.image.random_flip_left_right(image)


def main(argv):
  fv = recipes.parse_flags(FLAGS, argv, __doc__)
  if fv is None:
    return None
  keras.utils.set_random_seed(fv.seed)
  train, test, steps_per_epoch = recipes.load_tfds(
      "cifar10", fv.data_dir, fv.batch_size, preprocess, augment if fv.augment else None,
      seed=fv.seed)
  model = models.resnet(int(fv.depth), weight_decay=fv.weight_decay)
  recipe = recipes.recipe_from_flags(fv, "cifar10", skip=("stem", "classifier"))
  print(f"ResNet-{fv.depth}, CIFAR-10, {recipe.method} "
        f"{recipe.structure or ''} to {recipe.sparsity:g}, {fv.epochs} epochs of "
        f"{steps_per_epoch} steps; logs in {recipe.log_dir}")
  return recipes.run(recipe, model, train, test, steps_per_epoch)


if __name__ == "__main__":
  main(sys.argv)
