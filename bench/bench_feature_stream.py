"""Stream face: per-step cost of the full feature set run as an ONNX step graph, batch 1.

Prints one JSON line. The all-groups Predictorium feature set is exported with
`export_step_graph(fs.stream_module(), 32, path)` and run by onnxruntime on one thread
(intra/inter op threads 1, graph optimisation "all"): 200 warm-up steps, then --steps steps of
random rows, the state carried (outputs fed back as inputs); best of --repeats.
- ort_run_us: `session.run(None, feeds)` per step, the returned states fed back.
- ort_iobinding_us: two IOBindings made once, over two swapped sets of preallocated state
  OrtValues (A -> B, then B -> A) and one x buffer the loop writes each row into; per step only
  `run_with_iobinding`.
Baselines in the same run: floor_run_us / floor_iobinding_us, the same calls on a trivial
1-node graph (Identity of one [1, 32] input: the call overhead), and torch_eager_us, the stream
module's own forward at batch 1 on one torch thread. Parity: ONNX vs torch outputs over 200
steps from a fresh state, past the largest window's first eviction (max abs diff of y and of
the states).
Ratios: speedup_vs_torch_eager (torch_eager_us / the best ORT path) and ratio_over_call_floor
(the best ORT path / the faster floor); `ok` also needs every parity figure <= 1e-4.
Goal (issue): <= 10 us per step on one thread (ratio_to_goal = best ORT us / 10).

    python bench/bench_feature_stream.py [--steps 5000] [--repeats 3] [--groups raw,lags,...]
                                         [--rolling-window 300]

--rolling-window W: the set is raw + rolling mean and std of all 32 features over W steps, and
the baseline is that set with its weights in a per-count table ((32 W)^2 floats), the layout
every window had before MEAN_STD_TABLE_LIMIT: speedup_vs_table compares session.run us/step,
size_ratio_table the graph sizes.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from common import best_of, emit
from onnx import TensorProto, helper

from kit.competition import load_spec
from kit.export.step_graph import export_step_graph
from kit.features.sets import available_groups, build_feature_set

WARMUP = 200
PARITY_STEPS = 200
GOAL_US = 10.0


def session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the "optimised model is hardware specific" warning
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def trivial_graph(path: Path, width: int) -> None:
    """y = Identity(x), x float32 [1, width]: the floor of one session call."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))


def table_baseline(fs, rows: np.ndarray, repeats: int) -> dict:
    """The same feature set with its rolling mean/std weights read from a table per step count
    (what every window used before MEAN_STD_TABLE_LIMIT): graph size and session.run us/step."""
    from unittest.mock import patch

    from kit.features import kernels

    with patch.object(kernels, "MEAN_STD_TABLE_LIMIT", float("inf")):
        module = fs.stream_module().eval()
    with tempfile.TemporaryDirectory(prefix="bench-stream-table-") as tmp:
        path = Path(tmp) / "table.onnx"
        export_step_graph(module, rows.shape[-1], path)
        size = path.stat().st_size / 1e6
        sess = session(path)
    init = [s.numpy() for s in module.init_state(1)]
    run_loop(sess, rows[:WARMUP], init)
    seconds, _ = best_of(lambda: run_loop(sess, rows, init), repeats)
    return {"table_onnx_mb": round(size, 2), "table_run_us": round(seconds * 1e6 / len(rows), 2)}


def run_loop(sess, rows: np.ndarray, state: list[np.ndarray]):
    """session.run per step, outputs fed back; returns the final outputs."""
    names = [i.name for i in sess.get_inputs()]
    outs = None
    for row in rows:
        outs = sess.run(None, dict(zip(names, [row, *state], strict=True)))
        state = outs[1:]
    return outs


class BoundLoop:
    """Two IOBindings over swapped state sets A/B; x and y are fixed preallocated buffers."""

    def __init__(self, sess, state: list[np.ndarray], n_in: int, n_out: int):
        self.sess = sess
        inputs = [i.name for i in sess.get_inputs()]
        outputs = [o.name for o in sess.get_outputs()]
        self.x = np.zeros((1, n_in), dtype=np.float32)
        self.y = np.zeros((1, n_out), dtype=np.float32)
        x_value = ort.OrtValue.ortvalue_from_numpy(self.x)
        y_value = ort.OrtValue.ortvalue_from_numpy(self.y)
        self.sets = [[np.array(s, dtype=np.float32, copy=True) for s in state] for _ in range(2)]
        values = [[ort.OrtValue.ortvalue_from_numpy(s) for s in group] for group in self.sets]
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            binding = sess.io_binding()
            binding.bind_ortvalue_input(inputs[0], x_value)
            binding.bind_ortvalue_output(outputs[0], y_value)
            for name, value in zip(inputs[1:], values[src], strict=True):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(outputs[1:], values[dst], strict=True):
                binding.bind_ortvalue_output(name, value)
            self.bindings.append(binding)
        self.turn = 0

    def reset(self, state: list[np.ndarray]) -> None:
        for dst, src in zip(self.sets[0], state, strict=True):
            dst[...] = src
        self.turn = 0

    def run(self, rows: np.ndarray) -> None:
        run, x, bindings = self.sess.run_with_iobinding, self.x, self.bindings
        turn = self.turn
        for row in rows:
            x[...] = row
            run(bindings[turn])
            turn ^= 1
        self.turn = turn

    def state(self) -> list[np.ndarray]:
        return self.sets[self.turn]  # the set the last step wrote


def floor_bound(sess, x: np.ndarray):
    """IOBinding on the trivial graph: x and y bound once."""
    binding = sess.io_binding()
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x))
    y = np.zeros_like(x)
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(y))
    return binding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--groups", help="comma-separated feature groups (default: all)")
    parser.add_argument("--rolling-window", type=int, metavar="W",
                        help="instead: raw + rolling mean and std of every feature over W "
                        "steps, against the same set with its weights in a per-count table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec("predictorium")
    groups = args.groups.split(",") if args.groups else list(available_groups(spec))
    ops = None
    if args.rolling_window:
        groups, ops = ["raw"], [{"op": op, "inputs": ["@features"], "window": args.rolling_window}
                                for op in ("rolling_mean", "rolling_std")]
    fs = build_feature_set(spec, groups, ops)
    module = fs.stream_module().eval()
    n_in, n_out = len(spec.features), len(fs.outputs)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((args.steps, 1, n_in)).astype(np.float32)
    warm = rows[: min(WARMUP, len(rows))]
    table = table_baseline(fs, rows, args.repeats) if args.rolling_window else {}

    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        tmp = Path(tmp)
        export_step_graph(module, n_in, tmp / "features.onnx")
        onnx_mb = (tmp / "features.onnx").stat().st_size / 1e6
        sess = session(tmp / "features.onnx", optimized=tmp / "optimized.onnx")
        nodes = Counter(n.op_type for n in onnx.load(str(tmp / "features.onnx")).graph.node)
        opt_nodes = Counter(n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node)
        trivial_graph(tmp / "floor.onnx", n_in)
        floor = session(tmp / "floor.onnx")
    init = [s.numpy() for s in module.init_state(1)]

    # session.run, outputs fed back.
    run_loop(sess, warm, init)
    run_s, _ = best_of(lambda: run_loop(sess, rows, init), args.repeats)

    # IOBinding, two swapped state sets.
    bound = BoundLoop(sess, init, n_in, n_out)
    bound.run(warm)

    def bound_pass():
        bound.reset(init)
        bound.run(rows)

    bound_s, _ = best_of(bound_pass, args.repeats)

    # The floor: a 1-node graph, plain run and IOBinding.
    def floor_run():
        for row in rows:
            floor.run(None, {"x": row})

    floor_run()
    floor_run_s, _ = best_of(floor_run, args.repeats)
    fx = np.zeros((1, n_in), dtype=np.float32)
    fb = floor_bound(floor, fx)

    def floor_bound_pass():
        for row in rows:
            fx[...] = row
            floor.run_with_iobinding(fb)

    floor_bound_pass()
    floor_bound_s, _ = best_of(floor_bound_pass, args.repeats)

    # torch eager: the stream module itself, batch 1, one thread.
    trows = torch.from_numpy(rows).unsqueeze(1)  # [steps, 1, 1, n_in]

    def torch_pass():
        state = module.init_state(1)
        with torch.inference_mode():
            for row in trows:
                _, state = module(row, state)

    torch_pass()
    torch_s, _ = best_of(torch_pass, args.repeats)

    # Parity over 200 steps from a fresh state (past the first eviction of the largest window,
    # 50 steps): ORT (run and IOBinding) vs torch.
    def max_abs(a, b) -> float:
        return float(np.abs(np.asarray(a) - np.asarray(b)).max())

    state_t, state_o = module.init_state(1), init
    bound.reset(init)
    y_diff = state_diff = bound_diff = 0.0
    with torch.inference_mode():
        for row in rows[:PARITY_STEPS]:
            y_t, state_t = module(torch.from_numpy(row).unsqueeze(1), state_t)
            outs = run_loop(sess, row[None], state_o)
            state_o = outs[1:]
            bound.run(row[None])
            y_ref = y_t[:, 0].numpy()
            y_diff = max(y_diff, max_abs(outs[0], y_ref))
            bound_diff = max(bound_diff, max_abs(bound.y, y_ref))
            pairs = zip(state_o, state_t, strict=True)
            state_diff = max(state_diff, *(max_abs(a, b.numpy()) for a, b in pairs))
    pairs = zip(bound.state(), state_o, strict=True)
    bound_diff = max(bound_diff, *(max_abs(a, b) for a, b in pairs))

    per = 1e6 / args.steps
    ort_run, ort_bound = run_s * per, bound_s * per
    best = min(ort_run, ort_bound)
    emit({
        "bench": "features_stream",
        "features": n_out,
        "groups": groups,
        **({"rolling_window": args.rolling_window, "onnx_mb": round(onnx_mb, 2), **table,
            "baseline_table": "the same set, weights from a per-count table",
            "speedup_vs_table": round(table["table_run_us"] / ort_run, 2),
            "size_ratio_table": round(table["table_onnx_mb"] / onnx_mb, 1)}
           if table else {}),
        "steps": args.steps,
        "repeats": args.repeats,
        "onnx_nodes": sum(nodes.values()),
        "onnx_nodes_optimized": sum(opt_nodes.values()),
        "top_ops_optimized": dict(opt_nodes.most_common(6)),
        "state_tensors": len(init),
        "state_floats": int(sum(s.size for s in init)),
        "ort_run_us": round(ort_run, 2),
        "ort_iobinding_us": round(ort_bound, 2),
        "floor_run_us": round(floor_run_s * per, 2),
        "floor_iobinding_us": round(floor_bound_s * per, 2),
        "torch_eager_us": round(torch_s * per, 2),
        # the call floor of the path that won, so the per-node cost is net of that call
        "us_per_node": round((best - (floor_bound_s if ort_bound <= ort_run else floor_run_s)
                              * per) / sum(opt_nodes.values()), 3),
        "baseline": "torch_eager_us (the stream module's own forward) and the call floor",
        "speedup_vs_torch_eager": round(torch_s * per / best, 2),
        "ratio_over_call_floor": round(best / (min(floor_run_s, floor_bound_s) * per), 2),
        "parity_max_abs_y": y_diff,
        "parity_max_abs_state": state_diff,
        "parity_iobinding_max_abs": bound_diff,
        "goal_us": GOAL_US,
        "ratio_to_goal": round(best / GOAL_US, 2),
        "ok": best <= GOAL_US and max(y_diff, bound_diff) <= 1e-4 and state_diff <= 1e-4,
    })  # fmt: skip


if __name__ == "__main__":
    main()
