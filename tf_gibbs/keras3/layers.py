"""Keras 3 layers that :func:`tf_gibbs.shrink` writes into a shrunk Keras 3 model."""

import keras


@keras.saving.register_keras_serializable(package="tf_gibbs")
class SpatialBias(keras.layers.Layer):
  """Adds a fixed map: y = x + B, B of shape ``x.shape[1:]`` (a non-trainable weight).

  The Keras 3 twin of :class:`tf_gibbs.shrinking.SpatialBias` (same maths and config): written
  by :func:`tf_gibbs.shrink` with ``borders="map"`` where removed constant channels reach a
  'same'-padded convolution, whose contribution W_R * c_R differs near the image borders.
  """

  def __init__(self, bias_shape, **kwargs):
    super().__init__(**kwargs)
    self.bias_shape = tuple(int(d) for d in bias_shape)

  def build(self, input_shape):
    self.bias = self.add_weight(name="bias", shape=self.bias_shape, initializer="zeros",
                                trainable=False)

  def call(self, inputs):
    return inputs + keras.ops.cast(self.bias, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "bias_shape": list(self.bias_shape)}
