"""The sparsity report: per-layer zeros, zero kernels and filters, and what shrinking saves."""

import os

import numpy as np

from tf_gibbs import _keras
from tf_gibbs import export as export_lib
from tf_gibbs import shrinking as shrink_lib

_REPORTED_NAMES = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "Dense")


def _reported(front):
  return tuple(getattr(front.layers, name) for name in _REPORTED_NAMES)


def is_reported(layer):
  """Whether the report has a row for ``layer``: a Conv1D/2D/3D, DepthwiseConv2D or Dense of
  either Keras (exactly those types; wrappers are stripped before reporting)."""
  return type(layer) in _reported(shrink_lib.front_of(layer))


def _is_depthwise(layer):
  return isinstance(layer, shrink_lib.front_of(layer).layers.DepthwiseConv2D)


def _is_dense(layer):
  return isinstance(layer, shrink_lib.front_of(layer).layers.Dense)


def layer_macs(layer, output_shape):
  """Multiply-accumulates of one call on one example: (output positions) × (kernel size).

  For Conv1D/2D/3D the kernel holds k·C_in·C_out weights per output position, for
  DepthwiseConv2D k·C·m, for Dense C_in·C_out per leading position; biases are not counted.
  None if the output's spatial size is not static.
  """
  positions = output_shape[1:-1]
  if any(d is None for d in positions):
    return None
  return int(np.prod(positions, dtype=np.int64)) * int(_kernel(layer).size)


def _kernel(layer):
  return np.asarray((layer.depthwise_kernel if _is_depthwise(layer) else layer.kernel).numpy())


def layer_stats(layer):
  """Weights, zeros, zero kernels (k×k slices of a convolution) and zero filters (outputs)."""
  kernel = _kernel(layer)
  zero = kernel == 0
  stats = {"name": layer.name, "type": type(layer).__name__, "weights": int(kernel.size),
           "zeros": int(zero.sum()), "sparsity": float(zero.mean()) if kernel.size else 0.0}
  if _is_dense(layer):
    stats.update(kernels=None, zero_kernels=None)
    per_output = zero.reshape(-1, kernel.shape[-1])
  else:
    per_kernel = zero.reshape(-1, kernel.shape[-2] * kernel.shape[-1])
    stats.update(kernels=int(per_kernel.shape[1]), zero_kernels=int(per_kernel.all(axis=0).sum()))
    # A depthwise kernel's output channels are its kernels; a convolution's are its filters.
    per_output = per_kernel if _is_depthwise(layer) else zero.reshape(
        -1, kernel.shape[-1])
  stats.update(filters=int(per_output.shape[1]), zero_filters=int(per_output.all(axis=0).sum()))
  return stats


def sparsity_report(model, plot=None, print_fn=print):
  """Per-layer sparsity of ``model`` and its parameters and MACs before and after shrinking.

  For every Conv1D/2D/3D, DepthwiseConv2D and Dense layer: weights, zeros, sparsity = zeros /
  weights, zero kernels (of C_in·C_out k×k kernels), zero filters (output channels), parameters
  and multiply-accumulates per example, and the same two after :func:`tf_gibbs.shrink`; then the
  totals (sparsity over all reported kernels; parameters of the whole model).

  Args:
    model: a tf_keras or Keras 3 model (any backend); a wrapped model is stripped first
      (``tf_gibbs.strip_pruning``).
      The "after shrinking" columns need a Sequential or functional model (None otherwise).
    plot: optional path of a PNG with per-layer sparsity and zero-filter fraction (matplotlib).
    print_fn: prints the table line by line (None: print nothing).

  Returns:
    ``{"layers": [per-layer dicts], "total": dict, "shrink": shrink's report or None,
    "left_dense": {layer name: why prune_* did not wrap it}}`` (the last for a model returned by
    ``prune_*`` in this process; empty otherwise). Each
    layer's ``"note"`` is None or, for a wrapped model, why the layer prunes fewer groups than
    its target (a per-layer target never prunes a layer's last weight, kernel, filter or unit)
    or, under a network-wide budget, the layer's share of it; the printed table lists the
    notes under it.
  """
  front = shrink_lib.front_of(model)
  if not isinstance(model, front.keras.Model):
    raise TypeError(f"`model` must be a Keras model (tf_keras or Keras 3), got "
                    f"{type(model).__name__}.")
  if print_fn is not None and not callable(print_fn):
    raise TypeError(f"`print_fn` must be callable or None, got {print_fn!r}.")
  if plot is not None and not isinstance(plot, (str, os.PathLike)):
    raise TypeError(f"`plot` must be a file path or None, got {type(plot).__name__}.")
  notes = {}
  left_dense = dict(getattr(model, "_tf_gibbs_left_dense", None) or {})
  wrapper_class = front.wrapper_class()
  if export_lib.is_wrapped(model):
    from tf_gibbs.prune import strip_pruning  # pylint: disable=g-import-not-at-top
    for layer in front.walk_layers(model):
      note = layer.capped_target() if isinstance(layer, wrapper_class) else None
      if getattr(layer, "allocation", None) == "network" and layer.built:
        note = (f"share {float(layer.allocated_sparsity.numpy()):.4f} of the network-wide "
                "budget (allocation='network', split by LAMP scores)")
      if note is not None:
        notes[layer.layer.name] = note
    model = strip_pruning(model)
  layers = [layer for layer in front.walk_layers(model) if is_reported(layer)]
  if not layers:
    raise ValueError(f"`model` ({model.name}) has no Conv1D/Conv2D/Conv3D/DepthwiseConv2D/"
                     "Dense layer to report on.")
  shrunk, shrink_report = None, None
  if front.is_graph_model(model):
    shrunk, shrink_report = shrink_lib.shrink(model)
  shrunk_layers = {} if shrunk is None else {l.name: l for l in front.walk_layers(shrunk)}
  rows = []
  for layer in layers:
    row = layer_stats(layer)
    row["params"] = int(layer.count_params())
    row["macs"] = _macs(layer)
    after = shrunk_layers.get(layer.name)
    row["params_shrunk"] = None if after is None else int(after.count_params())
    row["macs_shrunk"] = None if after is None else _macs(after)
    row["note"] = notes.get(layer.name)
    rows.append(row)
  total = {key: _sum(rows, key) for key in ("weights", "zeros", "kernels", "zero_kernels",
                                            "filters", "zero_filters", "params",
                                            "params_shrunk", "macs", "macs_shrunk")}
  total["sparsity"] = total["zeros"] / total["weights"] if total["weights"] else 0.0
  total["model_params"] = int(model.count_params())
  total["model_params_shrunk"] = None if shrunk is None else int(shrunk.count_params())
  report = {"layers": rows, "total": total, "shrink": shrink_report, "left_dense": left_dense}
  if print_fn is not None:
    for line in format_report(report):
      print_fn(line)
  if plot is not None:
    _plot(rows, plot)
  return report


def _macs(layer):
  try:
    shape = (tuple(layer.output.shape) if _keras.is_keras3_object(layer)
             else layer.output_shape)
  except (AttributeError, ValueError):  # a layer without a single output (called twice)
    return None
  return layer_macs(layer, shape)


def _sum(rows, key):
  values = [row[key] for row in rows if row[key] is not None]
  if any(row[key] is None for row in rows) and key.endswith(("shrunk", "macs")):
    return None
  return int(sum(values))


def _fmt(value):
  return "-" if value is None else str(value)


def format_report(report):
  """The report as lines of a fixed-width table."""
  head = (f"{'layer':<20} {'type':<16} {'weights':>9} {'zeros':>9} {'sparsity':>8} "
          f"{'0-kernels':>11} {'0-filters':>9} {'params':>9} {'shrunk':>9} {'MACs':>11} "
          f"{'shrunk':>11}")
  lines = [head, "-" * len(head)]
  for row in report["layers"] + [dict(report["total"], name="total", type="")]:
    kernels = "-" if row["kernels"] is None else f"{row['zero_kernels']}/{row['kernels']}"
    lines.append(
        f"{row['name'][:20]:<20} {row['type'][:16]:<16} {row['weights']:>9} {row['zeros']:>9} "
        f"{row['sparsity']:>8.4f} {kernels:>11} {row['zero_filters']:>4}/{row['filters']:<4} "
        f"{_fmt(row['params']):>9} {_fmt(row['params_shrunk']):>9} {_fmt(row['macs']):>11} "
        f"{_fmt(row['macs_shrunk']):>11}")
  total = report["total"]
  lines.append(f"whole model: {total['model_params']} parameters, "
               f"{_fmt(total['model_params_shrunk'])} after shrinking")
  if report.get("left_dense"):
    lines.append("left dense by pruning:")
    lines.extend(f"  {name}: {why}" for name, why in report["left_dense"].items())
  notes = [row for row in report["layers"] if row.get("note")]
  if notes:
    lines.append("notes:")
    lines.extend(f"  {row['name']}: {row['note']}" for row in notes)
  if report["shrink"] and report["shrink"]["left_as_is"]:
    lines.append("left as is by shrink:")
    lines.extend(f"  {name}: {why}" for name, why in report["shrink"]["left_as_is"].items())
  return lines


def _plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = [row["name"] for row in rows]
  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4))
  ax.bar(x - 0.2, [row["sparsity"] for row in rows], 0.4, label="zero weights")
  ax.bar(x + 0.2, [row["zero_filters"] / max(row["filters"], 1) for row in rows], 0.4,
         label="zero filters / units")
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("fraction")
  ax.legend()
  ax.set_title("Sparsity per layer")
  fig.tight_layout()
  folder = os.path.dirname(os.fspath(path))
  if folder:
    os.makedirs(folder, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
