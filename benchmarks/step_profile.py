"""Where a pruned model's training step spends its time, against tfmot's, from TensorFlow's profiler.

  python benchmarks/step_profile.py [--models mobilenetv2] [--input_size 32] [--batch_size 8]
                                    [--modes tfmot,dense,unstructured,...] [--steps 10] [--top 12]

Issue #25's remaining gaps are per-step costs of each method on edge models; this script says
which. Every model of ``--modes`` (the names of ``benchmarks/overhead.py``: ``tfmot``, ``dense``,
``wrapper``, ``unstructured``, ``filter_chromatic``, ``l0``, ``adaptive``, ...) is built as that
benchmark builds it (every Conv2D, DepthwiseConv2D and Dense wrapped, ``jit_compile=False``),
trained ``--warmup`` steps (12 by default: past L0's first re-ranking of its budget, at
step 10, whose XLA clusters compile then), then ``--steps`` steps under ``tf.profiler``. From the trace it sums, per step,
the time TensorFlow's executor threads spend in each kind of work (threads overlap: two executor
threads run side by side on 2 cores, so the busy time is up to twice the step time):

* each TensorFlow op type (``Mul``, ``CheckNumerics``, ``Conv2DBackpropFilter``...; oneDNN's
  ``_MklNative`` prefix dropped), its time on the executor thread;
* ``XLA <function>``: tf_gibbs' nested XLA clusters (``tf_gibbs.core.xla.nested_xla``) by the
  function they compile, the executor thread's time in them (launch, run, wait), plus
  ``XLA <function> (pool)``: their work on the intra-op pool's threads.

and prints the largest differences to the first mode (the baseline) with their op counts per
step, the step's wall time and the executor threads' total busy time. The profiler slows every
op a little; read differences and counts, and take step-time ratios from ``overhead.py``.
"""

import argparse
import collections
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  pylint: disable=g-import-not-at-top

# Events that only wrap others on the executor threads.
_WRAPPING = ("ThreadpoolListener::Region", "ExecutorState::Process")
_EXECUTOR = "tf_Compute"
_POOL = "tf_numa"


def _trace_events(logdir):
  """The profiler's trace (Chrome trace format) of the run logged in ``logdir``."""
  # The converter TensorBoard's profile plugin uses; it ships with TensorFlow.
  from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # pylint: disable=g-import-not-at-top
  path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
  data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([path], "trace_viewer@", {})
  if not ok:
    raise RuntimeError(f"cannot read the profile {path}: {data[:200]!r}")
  return json.loads(data)["traceEvents"]


def _cluster_name(hlo_module):
  """'a_inference__quantile_1234__.15' -> '_quantile'."""
  match = re.match(r"a_inference_(.*?)_\d+__", hlo_module)
  return (match.group(1) if match else hlo_module).replace("_unjitted", "")


def _cluster_inside(thread_events, i):
  """The XLA cluster (:func:`_cluster_name`) whose work runs inside ``thread_events[i]`` (one
  thread's events sorted by start), or None."""
  end = thread_events[i]["ts"] + thread_events[i]["dur"]
  for j in range(i + 1, len(thread_events)):
    inner = thread_events[j]
    if inner["ts"] > end:
      return None
    if "hlo_module" in inner.get("args", {}):
      return _cluster_name(inner["args"]["hlo_module"])
  return None


def _profiled(run):
  """(``run()``, the trace events of TensorFlow's profiler while it ran)."""
  logdir = tempfile.mkdtemp(prefix="step_profile_")
  try:
    tf.profiler.experimental.start(logdir)
    try:
      result = run()
    finally:
      tf.profiler.experimental.stop()
    return result, _trace_events(logdir)
  finally:
    shutil.rmtree(logdir, ignore_errors=True)


def summarize(events, steps):
  """{kind: (milliseconds per step, events per step)}, the step's wall milliseconds and the
  executor threads' busy milliseconds per step (see the module docstring)."""
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  spans = [e for e in events if e.get("ph") == "X"]
  by_thread = collections.defaultdict(list)
  for e in spans:
    by_thread[threads.get((e["pid"], e["tid"]), "")].append(e)
  time_in, count = collections.Counter(), collections.Counter()
  busy = wall = 0.0
  for thread, thread_events in by_thread.items():
    thread_events.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    if thread == "python":
      wall += sum(e["dur"] for e in thread_events if e["name"] == "train_function")
      continue
    if thread.startswith(_POOL):
      for i, e in enumerate(thread_events):  # XLA's work on the pool: its top-level thunks
        cluster = e["name"] == "ThunkExecutor::Execute" and _cluster_inside(thread_events, i)
        if cluster:
          time_in[f"XLA {cluster} (pool)"] += e["dur"]
          count[f"XLA {cluster} (pool)"] += 1
      continue
    if not thread.startswith(_EXECUTOR):
      continue
    end = -1.0  # the end of the last top-level op: nested events are skipped
    for i, e in enumerate(thread_events):
      if e["name"] == "ExecutorState::Process":
        busy += e["dur"]
      if e["name"] in _WRAPPING or e["ts"] < end:
        continue
      if e["name"] == "ExecutorState::ProcessAsync::Start":
        cluster = _cluster_inside(thread_events, i)
        kind = f"XLA {cluster}" if cluster else e["args"].get("kernel_type", "async op")
      elif "is_eager" in e.get("args", {}):
        kind = e["name"].replace("_MklNative", "").replace("_Mkl", "")
      else:
        continue
      end = e["ts"] + e["dur"]
      time_in[kind] += e["dur"]
      count[kind] += 1
  kinds = {k: (time_in[k] / steps / 1e3, count[k] / steps) for k in time_in}
  return kinds, wall / steps / 1e3, busy / steps / 1e3


def first_step_profile(name, arch, batch_size):
  """Seconds of the first step of ``name`` (building and wrapping the model, then its first
  ``train_on_batch``) by phase, from the profiler: ``build`` (the model, wrapped), ``tracing``
  (Python building the step's graphs, ``tf.function-graph_building``), ``XLA compilation``
  (``CpuCompiler::RunBackend``, the nested clusters compiling at their first run, outside the
  tracing), ``rest of the first call`` (graph optimization, executor setup and the step's
  run), and ``total``; wall time, each instant counted once (compilations run side by side)."""
  def first_step():
    start = time.perf_counter()
    model = overhead._prepare(overhead.make_model(name, arch), False)  # pylint: disable=protected-access
    x, y = overhead.batch(model, batch_size)
    built = time.perf_counter()
    model.train_on_batch(x, y)
    return start, built, time.perf_counter()

  (start, built, end), events = _profiled(first_step)
  spans = [e for e in events if e.get("ph") == "X"]

  def covered(*event_names):  # wall seconds under any such event (nested and parallel once)
    intervals = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] in event_names)
    total, reach = 0.0, float("-inf")
    for begin, finish in intervals:
      total += max(0.0, finish - max(begin, reach))
      reach = max(reach, finish)
    return total / 1e6

  tracing = covered("tf.function-graph_building")
  compiling = covered("tf.function-graph_building", "CpuCompiler::RunBackend") - tracing
  call = end - built
  return {"build": built - start, "tracing": tracing, "XLA compilation": compiling,
          "rest of the first call": call - tracing - compiling, "total": end - start}


def profile(name, arch, batch_size, steps, warmup=12):
  model = overhead._prepare(overhead.make_model(name, arch), False)  # pylint: disable=protected-access
  x, y = overhead.batch(model, batch_size)
  for _ in range(warmup):
    model.train_on_batch(x, y)
  def train():
    start = time.perf_counter()
    for _ in range(steps):
      model.train_on_batch(x, y)
    return time.perf_counter() - start

  seconds, events = _profiled(train)
  kinds, wall, busy = summarize(events, steps)
  return kinds, wall or 1e3 * seconds / steps, busy


def quantile_cost(arch, repeats=20):
  """Milliseconds (median) of the unstructured Gibbs thresholds Q_p = quantile(w², 0.9) of
  every layer ``overhead.py`` wraps, computed together in one graph (the training step's
  selections: :func:`tf_gibbs.core.ranking.quantile`, nested XLA clusters)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tf_gibbs.core import ranking  # pylint: disable=g-import-not-at-top
  wrapped = overhead.prunable(arch)
  kernels = [tf.square(layer.weights[0]) for layer in overhead.base_model(arch).layers
             if wrapped(layer)]
  thresholds = tf.function(lambda ws: [ranking.quantile(w, 0.9) for w in ws], autograph=False)
  thresholds(kernels)
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    _ = [t.numpy() for t in thresholds(kernels)]
    seconds.append(time.perf_counter() - start)
  return 1e3 * float(np.median(seconds))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="mobilenetv2",
                      help="mobilenetv2, efficientnetb0 or resnet<depth> (overhead.py's models)")
  parser.add_argument("--input_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--modes", default="tfmot,unstructured,filter_chromatic,l0,adaptive",
                      help="overhead.py's model names; the first is the baseline")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=12, help="steps before the profiled ones")
  parser.add_argument("--first_step", action="store_true",
                      help="profile the first step instead (build, tracing, XLA compilation)")
  parser.add_argument("--quantiles", action="store_true",
                      help="also time the Gibbs thresholds alone: every wrapped layer's "
                           "quantile of w² in one graph, as a training step computes them")
  parser.add_argument("--top", type=int, default=12, help="rows per mode")
  args = parser.parse_args(argv)
  names = args.modes.split(",")
  load = os.getloadavg()[0]
  all_results = {}
  for model_name in args.models.split(","):
    arch = (model_name, args.input_size)
    print(f"\n{model_name} {args.input_size}x{args.input_size}, batch {args.batch_size}, "
          f"{args.steps} profiled steps per model (load average {load:.1f} at the start)")
    if args.first_step:
      # TensorFlow's one-time start-up (kernel registrations, oneDNN, the first tracing) would
      # otherwise land in the first model's figures.
      first_step_profile("dense", arch, args.batch_size)
      phases = {name: first_step_profile(name, arch, args.batch_size) for name in names}
      all_results[model_name] = phases
      columns = list(phases[names[0]])
      print("seconds to the end of the first step, by phase (models built in turn, after a "
            "dense model that is not shown)")
      print(f"  {'method':24s}" + "".join(f"{c[:22]:>24s}" for c in columns))
      for name in names:
        print(f"  {name:24s}" + "".join(f"{phases[name][c]:24.1f}" for c in columns))
      continue
    results = {name: profile(name, arch, args.batch_size, args.steps, args.warmup)
               for name in names}
    all_results[model_name] = results
    base_kinds, base_wall, base_busy = results[names[0]]
    print(f"{names[0]}: step {base_wall:.1f} ms under the profiler, executor busy "
          f"{base_busy:.1f} ms")
    for name in names[1:]:
      kinds, wall, busy = results[name]
      print(f"\n{name}: step {wall:.1f} ms ({wall / base_wall:.2f}x {names[0]}), executor busy "
            f"{busy:.1f} ms ({busy - base_busy:+.1f} ms)")
      print(f"  {'kind of work':44s} {'ms/step':>8s} {'vs base':>8s} {'count':>7s} {'base':>6s}")
      diffs = {k: kinds.get(k, (0, 0))[0] - base_kinds.get(k, (0, 0))[0]
               for k in set(kinds) | set(base_kinds)}
      for kind in sorted(diffs, key=lambda k: -abs(diffs[k]))[:args.top]:
        ms, n = kinds.get(kind, (0.0, 0.0))
        print(f"  {kind[:44]:44s} {ms:8.2f} {diffs[kind]:+8.2f} {n:7.0f} "
              f"{base_kinds.get(kind, (0, 0))[1]:6.0f}")
    if args.quantiles:
      print(f"\nthe Gibbs thresholds alone: {quantile_cost(arch):.1f} ms for all wrapped layers")
  return all_results


if __name__ == "__main__":
  main()
