"""Models of the paper recipes, in tf_keras: ResNet-20/32/56 for CIFAR, LeNet-300-100 and LeNet-5.

* :func:`resnet`: He et al. 2016, §4.2 (3 stages of 16/32/64 filters, ``(depth − 2) / 6``
  basic blocks each), with 1×1 conv + BN projection shortcuts where the shape changes, as in the
  Gibbs pruning reference recipe. The stem conv is named ``stem`` and the classifier
  ``classifier`` so the recipes can leave them dense.
* :func:`lenet_300_100` and :func:`lenet5`: the MNIST models of Louizos et al. (L0
  regularization, 2018) — an MLP 784-300-100-10, and the "LeNet-5-Caffe" network
  conv20(5×5)-pool-conv50(5×5)-pool-dense500-dense10 — the classifier again named ``classifier``.
"""

import tf_keras as keras


def _conv(filters, kernel_size, strides, name, weight_decay, keras=keras):  # pylint: disable=redefined-outer-name
  return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                             use_bias=False, kernel_initializer="he_normal",
                             kernel_regularizer=keras.regularizers.l2(weight_decay), name=name)


def resnet(depth=20, num_classes=10, input_shape=(32, 32, 3), weight_decay=1e-4, keras=keras):  # pylint: disable=redefined-outer-name
  """ResNet-``depth`` (6n + 2) for 32×32 images; L2 ``weight_decay`` on the conv kernels.
  ``keras``: tf_keras (default) or the Keras 3 module, which build it with the same code."""
  if (depth - 2) % 6:
    raise ValueError(f"`depth` must be 6n + 2 (20, 32, 56, ...), got {depth}.")
  blocks = (depth - 2) // 6
  inputs = keras.Input(input_shape, name="image")
  h = _conv(16, 3, 1, "stem", weight_decay, keras)(inputs)
  h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="stem_bn")(h))
  for stage, filters in enumerate((16, 32, 64)):
    for block in range(blocks):
      name = f"s{stage}b{block}"
      strides = 2 if stage > 0 and block == 0 else 1
      shortcut = h
      h = _conv(filters, 3, strides, f"{name}_conv1", weight_decay, keras)(h)
      h = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"{name}_bn1")(h))
      h = _conv(filters, 3, 1, f"{name}_conv2", weight_decay, keras)(h)
      h = keras.layers.BatchNormalization(name=f"{name}_bn2")(h)
      if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_proj", weight_decay, keras)(shortcut)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
      h = keras.layers.ReLU()(keras.layers.Add()([h, shortcut]))
  h = keras.layers.GlobalAveragePooling2D()(h)
  outputs = keras.layers.Dense(num_classes, name="classifier")(h)
  return keras.Model(inputs, outputs, name=f"resnet{depth}")


def lenet_300_100(num_classes=10, input_shape=(28, 28, 1), weight_decay=0.0):
  """LeNet-300-100: Flatten → Dense 300 → Dense 100 → Dense classes (ReLU)."""
  l2 = keras.regularizers.l2(weight_decay) if weight_decay else None
  inputs = keras.Input(input_shape, name="image")
  h = keras.layers.Flatten()(inputs)
  h = keras.layers.Dense(300, activation="relu", kernel_regularizer=l2, name="fc1")(h)
  h = keras.layers.Dense(100, activation="relu", kernel_regularizer=l2, name="fc2")(h)
  outputs = keras.layers.Dense(num_classes, kernel_regularizer=l2, name="classifier")(h)
  return keras.Model(inputs, outputs, name="lenet_300_100")


def lenet5(num_classes=10, input_shape=(28, 28, 1), weight_decay=0.0):
  """LeNet-5-Caffe: conv 20@5×5 → max-pool → conv 50@5×5 → max-pool → Dense 500 → classes."""
  l2 = keras.regularizers.l2(weight_decay) if weight_decay else None
  inputs = keras.Input(input_shape, name="image")
  h = keras.layers.Conv2D(20, 5, activation="relu", kernel_regularizer=l2, name="conv1")(inputs)
  h = keras.layers.MaxPooling2D(2, name="pool1")(h)
  h = keras.layers.Conv2D(50, 5, activation="relu", kernel_regularizer=l2, name="conv2")(h)
  h = keras.layers.MaxPooling2D(2, name="pool2")(h)
  h = keras.layers.Flatten()(h)
  h = keras.layers.Dense(500, activation="relu", kernel_regularizer=l2, name="fc1")(h)
  outputs = keras.layers.Dense(num_classes, kernel_regularizer=l2, name="classifier")(h)
  return keras.Model(inputs, outputs, name="lenet5")


LENETS = {"lenet300": lenet_300_100, "lenet5": lenet5}  # the L0 paper's MNIST models, by flag
