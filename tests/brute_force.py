"""Exact distributions of the Gibbs energies by enumeration, and the total-variation check."""

import itertools
import math

import numpy as np


def tv_bound(num_configs, num_samples, delta=1e-6):
  """E[TV(p̂, p)] ≤ ½·√(K/M); TV moves by ≤ 1/M per sample, so by McDiarmid
  P(TV ≥ E[TV] + t) ≤ exp(−2 M t²): with t = √(log(1/δ) / (2M)) the test fails with prob ≤ δ."""
  return 0.5 * math.sqrt(num_configs / num_samples) + math.sqrt(
      math.log(1 / delta) / (2 * num_samples))


def empirical_tv(samples, configs, probs):
  index = {tuple(np.asarray(c).astype(int)): i for i, c in enumerate(configs)}
  counts = np.zeros(len(configs))
  for row in np.asarray(samples).reshape(len(samples), -1).astype(int):
    counts[index[tuple(row)]] += 1
  return 0.5 * np.abs(counts / len(samples) - probs).sum()


def exact(energy_fn, n, beta):
  configs = np.array(list(itertools.product([0, 1], repeat=n)))
  spins = 2.0 * configs - 1.0
  logits = -beta * np.array([energy_fn(s) for s in spins])
  probs = np.exp(logits - logits.max())
  return [tuple(c) for c in configs], probs / probs.sum()


def kernel_energy(fields, coupling):
  return lambda s: -coupling * (s.sum() ** 2 - len(s)) + (fields * s).sum()


def filter_energy(fields_a, fields_b, coupling):
  n_a = len(fields_a)
  return lambda s: 0.5 * (np.r_[fields_a, fields_b] * s).sum() - 0.5 * coupling * (
      s[:n_a].sum() * s[n_a:].sum())
