"""ResNet-20/32/56 for CIFAR-shaped inputs (He et al. 2016, §4.2), in tf_keras, for benchmarks.

Projection shortcuts (1×1 conv + BN) where the shape changes, as in the Gibbs pruning reference
recipe; the stem conv is named ``stem`` and the classifier ``classifier`` so they can be skipped.
"""

import tf_keras as keras


def _conv(filters, kernel_size, strides, name, weight_decay):
  return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                             use_bias=False, kernel_initializer="he_normal",
                             kernel_regularizer=keras.regularizers.l2(weight_decay), name=name)


def resnet(depth=20, num_classes=10, input_shape=(32, 32, 3), weight_decay=1e-4):
  if (depth - 2) % 6:
    raise ValueError(f"`depth` must be 6n + 2 (20, 32, 56, ...), got {depth}.")
  blocks = (depth - 2) // 6
  inputs = keras.Input(input_shape, name="image")
  h = _conv(16, 3, 1, "stem", weight_decay)(inputs)
  h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="stem_bn")(h))
  for stage, filters in enumerate((16, 32, 64)):
    for block in range(blocks):
      name = f"s{stage}b{block}"
      strides = 2 if stage > 0 and block == 0 else 1
      shortcut = h
      h = _conv(filters, 3, strides, f"{name}_conv1", weight_decay)(h)
      h = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"{name}_bn1")(h))
      h = _conv(filters, 3, 1, f"{name}_conv2", weight_decay)(h)
      h = keras.layers.BatchNormalization(name=f"{name}_bn2")(h)
      if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_proj", weight_decay)(shortcut)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
      h = keras.layers.ReLU()(keras.layers.Add()([h, shortcut]))
  h = keras.layers.GlobalAveragePooling2D()(h)
  outputs = keras.layers.Dense(num_classes, name="classifier")(h)
  return keras.Model(inputs, outputs, name=f"resnet{depth}")
