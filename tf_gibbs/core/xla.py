"""Running small TF computations as their own XLA clusters inside ordinary graphs."""

import functools

import tensorflow as tf


def nested_xla_allowed():
  """Nested XLA clusters are used except inside a multi-replica tf.distribute strategy, where
  XLA on (logical) CPU devices is not supported by TensorFlow."""
  return not (tf.distribute.has_strategy() and
              tf.distribute.get_strategy().num_replicas_in_sync > 1)


def nested_xla(fn):
  """Wraps ``fn`` so that it runs as one XLA cluster, also when called from a non-XLA graph.

  The selections and samplers of tf_gibbs are dozens of small ops per layer; fused by XLA they
  cost a fraction of running the ops one by one on CPU, and they run for every layer at every
  training step. Inside an outer ``jit_compile=True`` function the call is simply inlined.
  Callers pass tensors (a Python number would retrace per value).
  """
  compiled = tf.function(fn, jit_compile=True, autograph=False)

  @functools.wraps(fn)
  def run(*args):
    return compiled(*args) if nested_xla_allowed() else fn(*args)

  run.xla_cluster = compiled
  return run
