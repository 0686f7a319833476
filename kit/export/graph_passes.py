"""Peephole rewrites of an exported step graph: fewer ONNX nodes, the same numbers.

On one CPU thread every ONNX node costs about 0.4 us per step whatever its size (docs/bench.md),
so after the weights a step graph's speed is its node count. The TorchScript exporter writes
what the modules do over [B, T, ...]: a model's head runs on [B, 1, H] (MatMul, then Add of the
bias) and StepWrapper's `select(1, 0)` is a Gather at the very end. At T = 1 the select can go
first instead, where it meets the reshape that made the time axis (a recurrent layer's state
[1, B, H] seen as [B, 1, H]) and both fold into one Reshape to [B, H]; the head is then a 2-D
MatMul + Add, one Gemm. A GRU 2x128 pack loses 4 of its 15 nodes after onnxruntime's
optimiser (about 1 us a row).

`simplify(model)` moves every `Gather(axis=1, scalar index)` up through the nodes that act on
each step on its own (elementwise ops with a per-feature constant, MatMul by a weight matrix,
LayerNormalization over the last axis), folds it into a Reshape or Unsqueeze that made that axis,
and fuses MatMul + Add into Gemm where both are 2-D; `time_major_input` builds a recurrent op's
input in its [1, B, F] layout from the start (the guard's state declared so too), and
`drop_leading_unsqueeze` removes an Unsqueeze that broadcasting makes redundant. A rewrite
needs the ranks from ONNX shape inference and single-use intermediates; anything else is left
as exported. `simplified_graph` keeps the result only if it computes what the exported graph
computes, states included, on random rows with NaN and inf in them at batch 1 and 3, state
carried over several steps.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ops that act on each element alone: a select on any axis commutes with them
UNARY = {"Abs", "Ceil", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "Identity",
         "LeakyRelu", "Log", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign",
         "Softplus", "Softsign", "Sqrt", "Tanh"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
ELEMENTWISE = UNARY | BINARY | {"Clip", "Where", "Equal", "Less", "Greater", "LessOrEqual",
                                "GreaterOrEqual", "And", "Or", "Not", "IsNaN", "IsInf"}
CHECK_STEPS, CHECK_BATCHES = 4, (1, 3)


class Graph:
    """Who makes and who reads each value of a graph, and its constants and ranks."""

    def __init__(self, model: onnx.ModelProto, numbers: Iterator[int]):
        self.model = model
        self.graph = model.graph
        inferred = onnx.shape_inference.infer_shapes(model).graph
        self.ranks, self.widths = {}, {}  # widths: the last axis's size where it is static
        for info in [*inferred.input, *inferred.value_info, *inferred.output]:
            if info.type.tensor_type.HasField("shape"):
                dims = info.type.tensor_type.shape.dim
                self.ranks[info.name] = len(dims)
                self.widths[info.name] = dims[-1].dim_value if dims and dims[-1].HasField(
                    "dim_value") else None
        self.constants = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.outputs = {o.name for o in self.graph.output}
        self.numbers = numbers  # one count over all rewrites of a graph: new names stay unique

    def producer(self, name: str):
        return next((n for n in self.graph.node if name in n.output), None)

    def readers(self, name: str) -> list:
        return [n for n in self.graph.node if name in n.input]

    def single_use(self, name: str) -> bool:
        return name not in self.outputs and len(self.readers(name)) == 1

    def constant(self, array: np.ndarray, hint: str) -> str:
        """A new initializer (never a shared exported Constant, which other nodes may read)."""
        name = self.value(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        self.constants[name] = np.asarray(array)
        return name

    def value(self, hint: str) -> str:
        return f"kit_simplify/{hint}_{next(self.numbers)}"

    def remove(self, *nodes) -> None:
        for node in nodes:
            self.graph.node.remove(node)


def attribute(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def read_instead(nodes, old: str, new: str) -> None:
    """Every node of `nodes` that reads value `old` reads `new` there instead."""
    for node in nodes:
        node.input[:] = [new if name == old else name for name in node.input]


def axes_of(g: Graph, unsqueeze) -> list | None:
    """The constant axes of an Unsqueeze (opset 13+: its second input) as a list, else None."""
    axes = g.constants.get(unsqueeze.input[1]) if len(unsqueeze.input) == 2 else None
    return None if axes is None else axes.reshape(-1).tolist()


def step_select(g: Graph, node) -> int | None:
    """The index of a `Gather(axis=1)` by a scalar constant (a select on the time axis)."""
    if node.op_type != "Gather" or attribute(node, "axis", 0) != 1:
        return None
    index = g.constants.get(node.input[1])
    if index is None or index.ndim != 0:
        return None
    return int(index)


def per_step_constant(g: Graph, name: str, rank: int) -> bool:
    """A constant that broadcasts along the last axis only of a rank-`rank` tensor (a bias or
    a per-feature scale): selecting on axis 1 never indexes it."""
    array = g.constants.get(name)
    return array is not None and rank >= 3 and (
        array.ndim <= 1 or (array.ndim == 2 and array.shape[0] == 1))


def sink_select(g: Graph, select, index: int) -> bool:
    """Move one step select above the node that made its input, or fold it away there."""
    data = select.input[0]
    node = g.producer(data)
    if node is None or not g.single_use(data) or len([o for o in node.output if o]) != 1:
        return False  # (LayerNormalization's optional mean and 1/std outputs are not moved)
    rank = g.ranks.get(data)
    out = select.output[0]
    if node.op_type == "Reshape" and index in (0, -1):
        shape = g.constants.get(node.input[1])
        if shape is None or shape.shape != (3,) or shape[1] != 1 or 0 in shape \
                or (shape == -1).sum() > 1:
            return False
        flat = g.constant(np.array([shape[0], shape[2]], dtype=np.int64), "shape")
        g.graph.node.append(helper.make_node("Reshape", [node.input[0], flat], [out]))
        g.remove(node, select)
        return True
    if node.op_type == "Unsqueeze" and index in (0, -1):
        if axes_of(g, node) != [1]:
            return False
        if out in g.outputs:  # a graph output keeps its name
            g.graph.node.append(helper.make_node("Identity", [node.input[0]], [out]))
        else:
            read_instead(g.graph.node, out, node.input[0])
        g.remove(node, select)
        return True
    if rank is None or rank < 3:
        return False
    if node.op_type in UNARY or (node.op_type == "Clip" and all(
            not name or name in g.constants for name in node.input[1:])):
        moved = 0
    elif node.op_type in BINARY:
        ranks = [g.ranks.get(name) for name in node.input]
        moved = next((i for i in (0, 1) if ranks[i] == rank
                      and per_step_constant(g, node.input[1 - i], rank)), None)
    elif node.op_type == "MatMul":
        weight = g.constants.get(node.input[1])
        moved = 0 if weight is not None and weight.ndim == 2 and g.ranks.get(
            node.input[0]) == rank else None
    elif node.op_type == "LayerNormalization":
        axis = attribute(node, "axis", -1)
        moved = 0 if axis in (-1, rank - 1) and all(
            name in g.constants for name in node.input[1:] if name) else None
    else:
        moved = None
    if moved is None:
        return False
    picked = g.value("step")
    g.graph.node.append(helper.make_node("Gather", [node.input[moved], select.input[1]],
                                         [picked], axis=1))
    inputs = list(node.input)
    inputs[moved] = picked
    del node.input[:]
    node.input.extend(inputs)
    node.output[0] = out
    if node.op_type == "LayerNormalization":
        for a in node.attribute:
            if a.name == "axis":
                a.i = -1
    g.remove(select)
    g.ranks[picked] = rank - 1
    return True


def fuse_gemm(g: Graph) -> bool:
    """MatMul(A [B, H], W [H, K]) then Add of a bias [K]: one Gemm."""
    for node in list(g.graph.node):
        if node.op_type != "MatMul" or g.ranks.get(node.input[0]) != 2:
            continue
        weight = g.constants.get(node.input[1])
        if weight is None or weight.ndim != 2 or not g.single_use(node.output[0]):
            continue
        add = g.readers(node.output[0])[0]
        if add.op_type != "Add":
            continue
        bias_name = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        bias = g.constants.get(bias_name)
        if bias is None or bias.shape not in ((weight.shape[1],), (1, weight.shape[1])):
            continue
        g.graph.node.append(helper.make_node(
            "Gemm", [node.input[0], node.input[1], bias_name], [add.output[0]]))
        g.remove(node, add)
        return True
    return False


def region_of(g: Graph, root: str) -> tuple[list, list, list] | None:
    """(nodes, state inputs, x Unsqueezes) of the elementwise ops that make `root` [B, 1, F]
    from x (unsqueezed at axis 1) and state inputs, if none of it is read outside; else None."""
    nodes, states, unsqueezes = [], [], []
    inputs = {i.name: i for i in g.graph.input}
    pending, seen = [root], set()
    while pending:
        name = pending.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in g.constants:
            if g.constants[name].ndim > 1:  # broadcasts the same in [B, 1, F] and [1, B, F]
                return None
            continue
        if name in inputs:
            dims = inputs[name].type.tensor_type.shape.dim
            if len(dims) != 3 or not dims[0].dim_param or dims[1].dim_value != 1 \
                    or f"{name}_out" not in g.outputs:
                return None
            states.append(inputs[name])
            continue
        node = g.producer(name)
        if node is None:
            return None
        if node.op_type == "Unsqueeze" and node.input[0] in inputs and axes_of(g, node) == [1]:
            unsqueezes.append(node)
        elif node.op_type in ELEMENTWISE and g.ranks.get(node.output[0]) == 3:
            nodes.append(node)
            pending.extend(node.input)
        else:
            return None
    made = {o for n in nodes for o in n.output}
    inside = {id(n) for n in nodes}
    for name in [*made, *(s.name for s in states), *(u.output[0] for u in unsqueezes)]:
        if name != root and any(id(r) not in inside for r in g.readers(name)):
            return None  # read by a node outside: it must keep its layout
    for name in made & g.outputs:
        if not name.endswith("_out") or name[:-4] not in {s.name for s in states}:
            return None
    if any(f"{s.name}_out" not in made for s in states):
        return None  # a state passed through unchanged elsewhere keeps its layout
    return nodes, states, unsqueezes


def time_major_input(g: Graph) -> bool:
    """A recurrent op's input: Reshape(v, [1, -1, F]) of a [B, 1, F] value that the guard and
    the normaliser made elementwise from x unsqueezed at axis 1 and the guard's state. Made as
    [1, B, F] from the start (x unsqueezed at axis 0, the state in that layout too), v is
    already what the op wants and the Reshape goes. At T = 1 both layouts hold the same numbers
    in the same order; only the state's declared shape changes (solution.py reads it from the
    graph)."""
    for reshape in g.graph.node:
        shape = g.constants.get(reshape.input[1]) if reshape.op_type == "Reshape" else None
        if shape is None or shape.shape != (3,) or shape[:2].tolist() != [1, -1]:
            continue
        root = reshape.input[0]
        if shape[2] not in (0, g.widths.get(root)):
            continue  # [1, -1, F'] with F' not root's width: another layout, not a transpose
        if g.ranks.get(root) != 3 or reshape.output[0] in g.outputs or not g.readers(root) \
                or (region := region_of(g, root)) is None:
            continue
        nodes, states, unsqueezes = region
        if any(r is not reshape and r not in nodes for r in g.readers(root)):
            continue
        for node in unsqueezes:
            node.input[1] = g.constant(np.array([0], dtype=np.int64), "axes")
        outputs = {o.name: o for o in g.graph.output}
        for state in states:
            for info in (state, outputs[f"{state.name}_out"]):
                dims = info.type.tensor_type.shape.dim
                batch = dims[0].dim_param
                dims[0].Clear()
                dims[0].dim_value = 1
                dims[1].Clear()
                dims[1].dim_param = batch
        read_instead(g.graph.node, reshape.output[0], root)
        g.remove(reshape)
        del g.graph.value_info[:]  # the region's inferred shapes are stale
        return True
    return False


def boundary_ranks(model: onnx.ModelProto) -> dict[str, int | None]:
    """The rank of every value that a non-elementwise node or the caller reads (outputs: the
    rank their makers give them, not the declared one, which inference would keep)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    g = Graph(model, itertools.count())
    names = {name for n in model.graph.node if n.op_type not in ELEMENTWISE for name in n.input}
    return {name: g.ranks.get(name) for name in names | g.outputs
            if name and name not in g.constants}


def drop_leading_unsqueeze(g: Graph) -> bool:
    """An Unsqueeze at axis 0 read only by elementwise ops that broadcast it against a tensor
    of the full rank anyway (x [B, F] beside the guard's state [1, B, F]): numpy broadcasting
    adds the leading axis itself. Kept only if no non-elementwise node and no output sees
    another rank without it."""
    for node in g.graph.node:
        if node.op_type != "Unsqueeze" or axes_of(g, node) != [0] \
                or node.output[0] in g.outputs \
                or any(r.op_type not in ELEMENTWISE for r in g.readers(node.output[0])):
            continue
        trial = onnx.ModelProto.FromString(g.model.SerializeToString())
        read_instead(trial.graph.node, node.output[0], node.input[0])
        del trial.graph.value_info[:]
        before = boundary_ranks(g.model)
        if None not in before.values() and boundary_ranks(trial) == before:
            read_instead(g.graph.node, node.output[0], node.input[0])
            g.remove(node)
            del g.graph.value_info[:]
            return True
    return False


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of model with the step selects sunk and MatMul + Add fused (see module doc)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    numbers, changed = itertools.count(), True
    while changed:
        g = Graph(model, numbers)
        changed = False
        for node in list(g.graph.node):
            index = step_select(g, node)
            if index is not None and sink_select(g, node, index):
                changed = True
                break
        changed = changed or fuse_gemm(g) or time_major_input(g) or drop_leading_unsqueeze(g)
        topological_order(g.graph)
    drop_unused(model.graph)
    return model


def topological_order(graph) -> None:
    """Nodes re-listed so every node comes after the makers of its inputs (rewrites append)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(name in ready for name in n.input)]
        if not progress:
            raise ValueError("the rewritten graph has a cycle")
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in progress]
    del graph.node[:]
    graph.node.extend(ordered)


def drop_unused(graph) -> None:
    """Remove nodes and initializers nothing reads any more (shared exported Constants)."""
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:  # a constant output stays
        graph.initializer.remove(init)


def same_results(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> bool:
    """Both graphs on the same random rows (NaN and inf included), state carried over a few
    steps from zero, at batch 1 (the scorer's) and a larger one: equal outputs within float32
    rounding. A state whose layout moved is compared in memory order ([B, 1, F] and [1, B, F]
    hold the same numbers at T = 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(m.SerializeToString(), options,
                                     providers=["CPUExecutionProvider"]) for m in (a, b)]
    metas = [s.get_inputs() for s in sessions]
    if [i.name for i in metas[0]] != [i.name for i in metas[1]]:
        return False
    rng = np.random.default_rng(seed)
    for batch in CHECK_BATCHES:
        shapes = [[[d if isinstance(d, int) else batch for d in i.shape] for i in m]
                  for m in metas]
        states = [[np.zeros(s, np.float32) for s in shape[1:]] for shape in shapes]
        for _ in range(CHECK_STEPS):
            x = rng.standard_normal(shapes[0][0]).astype(np.float32) * 3
            x.flat[rng.integers(0, x.size, 2)] = [np.nan, np.inf]
            results = [s.run(None, dict(zip([i.name for i in m], [x, *st], strict=True)))
                       for s, m, st in zip(sessions, metas, states, strict=True)]
            for want, got in zip(*results, strict=True):
                if want.size != got.size or not np.allclose(
                        want.reshape(-1), got.reshape(-1), rtol=1e-5, atol=1e-6,
                        equal_nan=True):
                    return False
            states = [r[1:] for r in results]
    return True


def simplified_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """simplify(model) if it computes the same as model, else model itself (with a warning:
    a rewrite that changes the numbers is a kit bug, and the exported graph is still right)."""
    try:
        simpler = simplify(model)
        if len(simpler.graph.node) >= len(model.graph.node):
            return model
        if same_results(model, simpler):
            return simpler
        problem = "computes other numbers"
    except Exception as exc:  # a rewrite kit did not foresee: the graph as exported is fine
        problem = f"failed ({type(exc).__name__}: {exc})"
    warnings.warn(f"kit's step graph simplification {problem}; the graph is kept as exported "
                  "(please report this)", stacklevel=2)
    return model
