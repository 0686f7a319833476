"""Export a stream module as one stateful ONNX step graph (see docs/design.md "Frozen step graph").

inputs: x float32 [B, F], state_0 ... state_{n-1}; outputs: y float32 [B, K], state_0_out ...
B is dynamic. The TorchScript exporter is used (dynamo mis-exports nn.GRU and freezes size-1
dims); parity, not belief, decides whether an export is right.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from kit.export.graph_passes import simplified_graph

OPSET = 17


class StepWrapper(nn.Module):
    """Adapts forward(x[B, T, F], state) to the flat signature of the step graph (T = 1)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, *state: Tensor):
        y, new_state = self.module(x.unsqueeze(1), list(state))
        return (y.select(1, 0), *new_state)  # select exports as one Gather; squeeze may not


def batch_axes(module: nn.Module) -> list[int]:
    """Each state tensor's batch axis: the one axis whose size follows init_state's batch
    (the models' own states are batch first; step forms and stacked modules may put it
    elsewhere, e.g. [1, B, H] per layer of a recurrent model)."""
    axes = []
    for i, (a, b) in enumerate(zip(module.init_state(2), module.init_state(3), strict=True)):
        moved = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
        if len(moved) != 1 or a.shape[moved[0]] != 2:
            raise ValueError(f"state {i}: no single batch axis in shapes {tuple(a.shape)} / "
                             f"{tuple(b.shape)}")
        axes.append(moved[0])
    return axes


def export_step_graph(module: nn.Module, n_inputs: int, path: Path, opset: int = OPSET,
                      simplify: bool = True) -> list:
    """Write module's step graph to path; returns the state shapes, "batch" at the batch axis.
    simplify: the peephole rewrites of kit.export.graph_passes (fewer nodes, same numbers).
    The module is switched to eval mode (dropout off in the graph) and left there."""
    module = module.eval()
    axes = batch_axes(module)
    state = module.init_state(2)  # batch 2 in the example so no dim is frozen at size 1
    x = torch.zeros(2, n_inputs)
    names = [f"state_{i}" for i in range(len(state))]
    dynamic = {"x": {0: "batch"}, "y": {0: "batch"}}
    for name, axis in zip(names, axes, strict=True):
        dynamic |= {name: {axis: "batch"}, f"{name}_out": {axis: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python loops over T = 1
        torch.onnx.export(
            # eval(): export restores the wrapper's training flag, and a fresh wrapper's is True,
            # which would switch the caller's dropout back on
            StepWrapper(module).eval(), (x, *state), str(path), input_names=["x", *names],
            output_names=["y", *[f"{n}_out" for n in names]], dynamic_axes=dynamic,
            opset_version=opset, dynamo=False,
        )
    graph = onnx.load(str(path))
    if simplify:
        graph = simplified_graph(graph)  # may move a state's batch axis
        onnx.save(graph, str(path))
    return [declared_shape(i) for i in graph.graph.input[1:]]


def declared_shape(value: onnx.ValueInfoProto) -> list:
    """A graph input's shape as the manifest records it: "batch" at the dynamic axis."""
    shape = ["batch" if d.dim_param == "batch" else d.dim_value
             for d in value.type.tensor_type.shape.dim]
    if shape.count("batch") != 1 or 0 in shape:
        raise ValueError(f"state {value.name}: shape {shape} has no single batch axis")
    return shape
