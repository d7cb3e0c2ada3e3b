"""Network-wide budgets: how one sparsity target over many layers is split between them.

With ``allocation="network"`` a method prunes round(s·N) of the N weights of all its wrapped
layers together instead of round(s·n_l) of each layer's n_l. The split is decided by LAMP
scores (Lee, Park, Mo, Ahn & Shin, "Layer-adaptive sparsity for the magnitude-based pruning",
ICLR 2021, arXiv 2010.07611): in one layer, with its groups' energies e (Σ w² of a weight,
kernel or filter) sorted in descending order,

    score(u) = e_u / Σ_{v ≤ u} e_v    (the group's energy over the energy of every group at
                                       least as large, itself included)

and the groups of smallest score over the whole network are pruned. Why LAMP and not w² over
the layer's mean w²: a LAMP score is scale-free (multiplying a layer by a constant changes
nothing), it is monotone in e within a layer (so a layer's pruned groups are its smallest, as
every Gibbs energy and L0 budget here prunes them), and a layer's largest group scores 1, the
highest score there is, so a global threshold never empties a layer; Lee et al. measure it
above global magnitude, uniform and ERK allocations at 95–99 % sparsity. A mean-normalised
energy has no such bound (a layer of near-equal weights would be emptied first).

Deviations from the paper, stated for users: LAMP ranks single weights; for kernel and filter
groups we use the same formula on group energies (our extension). The budget counts weights,
so where groups differ in size between layers the pruned groups are the smallest-score prefix
whose weights fit within round(s·N) (exact for single weights). Every layer keeps its largest
group (its score is set above 1), so the budget is capped at N − Σ_l (weights of a group of l).

Written once for both fronts: ``xp`` is the schedules' math (:data:`tf_gibbs.schedule.TF_MATH`
for tf_keras, :data:`tf_gibbs.schedule.KERAS_MATH` for Keras 3 on any backend). Nothing here
imports Keras.
"""

KEPT = 2.0  # the score of a layer's largest group: above every LAMP score (≤ 1), never pruned


def group_axes(hamiltonian):
  """Axes of the [n, C, F] view summed into one group's energy: ``"unstructured"``/
  ``"weight"`` none, ``"kernel"`` the spatial axis, ``"filter"`` spatial and input."""
  return {"unstructured": (), "weight": (), "kernel": (0,), "filter": (0, 1)}[hamiltonian]


def group_energies(view, axes, xp):
  """Σ w² of every group of a weight in the [n, C, F] view, flattened (in float32)."""
  energy = xp.square(xp.cast(view, "float32"))
  if axes:
    energy = xp.sum(energy, axes)
  return xp.reshape(energy, [-1])


def lamp_scores(energies, xp):
  """The LAMP scores of one layer's groups (1-D ``energies``), in descending order of energy;
  the largest group's is :data:`KEPT`. Computed in the backend's wide float (descending
  cumulative sums: no cancellation at the top, where the scores matter)."""
  energies = xp.cast(energies, xp.wide())
  descending = -xp.sort(-energies)
  tail = xp.cumsum(descending)
  positive = tail > 0.0  # 0 / 0 (a zero group with only zeros above it) scores 0
  scores = xp.where(positive, descending / xp.where(positive, tail, 1.0), 0.0)
  return xp.concatenate([xp.constant([KEPT], xp.wide()), scores[1:]])


def budget_cap(groups, group_sizes):
  """The most weights a network-wide budget may prune: all but one group of every layer."""
  return sum(g * m for g, m in zip(groups, group_sizes)) - sum(group_sizes)


def python_budget(target_sparsity, groups, group_sizes):
  """(weights to prune, whether the cap bound) for a Python ``target_sparsity``."""
  total = sum(g * m for g, m in zip(groups, group_sizes))
  wanted = round(float(target_sparsity) * total)  # half to even, as the graph's round
  cap = budget_cap(groups, group_sizes)
  return min(wanted, cap), wanted > cap


def network_counts(energies, group_sizes, target_sparsity, xp):
  """Groups to prune in each layer under one network-wide budget (int32, one per layer).

  Args:
    energies: one 1-D tensor of group energies per layer (:func:`group_energies`).
    group_sizes: weights per group of each layer (Python ints).
    target_sparsity: the network's pruned fraction s (a scalar, tensor or number).
    xp: the math of the front.

  The budget is round(s·N) weights, N = Σ_l (groups × weights per group), capped so that every
  layer keeps a group (:func:`budget_cap`); the groups of smallest LAMP score are pruned, in
  order, while their weights fit. Ties between layers are broken by the sort (the total is
  unaffected).
  """
  groups = [int(e.shape[0]) for e in energies]
  total = sum(g * m for g, m in zip(groups, group_sizes))
  scores = xp.concatenate([lamp_scores(e, xp) for e in energies])
  sizes = xp.concatenate([xp.ones([g], xp.wide()) * float(m)
                          for g, m in zip(groups, group_sizes)])
  layer = xp.concatenate([xp.ones([g], "int32") * i for i, g in enumerate(groups)])
  order = xp.argsort(scores)
  budget = xp.minimum(xp.round(xp.cast(target_sparsity, xp.wide()) * float(total)),
                      float(budget_cap(groups, group_sizes)))
  pruned = xp.cast(xp.cumsum(xp.take(sizes, order)) <= budget, "int32")
  return xp.segment_sum(pruned, xp.take(layer, order), len(groups))


def refresh(step, begin_step, end_step, frequency, xp):
  """Bool: the allocation is recomputed at ``step``: every ``frequency`` steps from the first
  pruning step (max(begin_step, 1); training steps count from 1) and at ``end_step``, where
  it is final; never after."""
  step = xp.cast(step, xp.int_type)
  first = max(int(begin_step), 1)
  periodic = xp.logical_and(xp.logical_and(step >= first, step < end_step),
                            xp.equal((step - first) % frequency, 0))
  return xp.logical_or(periodic, xp.equal(step, end_step))


def layer_sparsity(allocated, sparsity, target_sparsity, xp):
  """A layer's pruned fraction at a step of the schedule: p_l · s(step) / s_T, where p_l is
  the layer's share of the network's budget at the target s_T (``allocated``) and s(step) the
  schedule's sparsity; exactly p_l once s(step) reaches s_T, so the network prunes its exact
  count then."""
  allocated = xp.cast(allocated, "float32")
  if target_sparsity <= 0.0:
    return xp.cast(sparsity, "float32")
  sparsity = xp.cast(sparsity, xp.wide())  # compared with s_T in the schedule's precision
  return xp.where(sparsity >= float(target_sparsity), allocated,
                  allocated * xp.cast(sparsity / float(target_sparsity), "float32"))


def group_count(view, hamiltonian):
  """(groups, weights per group) of a kernel of [n, C, F] shape ``view`` (Python ints) for the
  groups of ``hamiltonian``."""
  size = _numel(view[axis] for axis in group_axes(hamiltonian))
  return _numel(view) // size, size


def network_sparsities(views, hamiltonian, target_sparsity, xp):
  """p_l = (groups pruned in layer l) / (groups of l) under one network-wide budget at
  ``target_sparsity``, for weights given in their [n, C, F] ``views`` (float32, one per
  layer): :func:`network_counts` on the groups of ``hamiltonian``."""
  axes = group_axes(hamiltonian)
  energies = [group_energies(view, axes, xp) for view in views]
  sizes = [group_count(view.shape, hamiltonian)[1] for view in views]
  return shares(energies, sizes, target_sparsity, xp)


def shares(energies, group_sizes, target_sparsity, xp):
  """p_l = (groups pruned in layer l) / (groups of l): :func:`network_counts` as fractions."""
  counts = network_counts(energies, group_sizes, target_sparsity, xp)
  groups = [float(int(e.shape[0])) for e in energies]
  return xp.cast(counts, "float32") / xp.constant(groups, "float32")


def _numel(shape):
  total = 1
  for d in shape:
    total *= int(d)
  return total
