"""An ensemble as ONE stream module: shared work computed once, weights and post-processing inside.

    raw x -> one feature pipeline per distinct feature set -> one normaliser per distinct
    (features, normaliser) -> the models -> sum of member outputs times per-target weights
    -> optional post-processing (per-target smoothing over steps, per-target scale).

Members that are plain GRUs (or plain LSTMs) of the same shape (linear shared head, no layer
norm) are computed together by `StackedRNN`: batched MatMuls per layer for all of them, instead
of one ONNX GRU/LSTM op per member (bench/bench_ensemble.py measures both); when such a stack
reads several normalisers' outputs (e.g. fold members: one normaliser per fold), those
normalisers run as one `StackedAffineClip`. Any other model runs as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kit.export.frozen import Member, spare_guard_clip, split_state
from kit.features.normaliser import StackedAffineClip
from kit.models.rnn import GRUModel, LSTMModel


@dataclass
class Weighted:
    member: Member
    weights: list[float]  # per target


STACKABLE = {GRUModel: "gru", LSTMModel: "lstm"}  # recurrent cells StackedRNN computes


def stackable(model: nn.Module) -> tuple | None:
    """The key under which recurrent members can be stacked, None for models that run on
    their own: plain GRUs (or LSTMs) of one shape, no layer norm, one linear shared head."""
    kind = STACKABLE.get(type(model))
    if kind is None or not isinstance(model.norm, nn.Identity):
        return None
    parts = model.head.parts
    if len(parts) != 1 or type(parts[0]) is not nn.Linear:
        return None
    return (kind, model.rnn.input_size, model.hidden, model.layers)


def _output_affine(model: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale, center) of a model's outputs: 1 and 0 unless normaliser.targets set them."""
    affine = model.head.output_affine()
    if affine is None:
        n = model.head.parts[0].out_features
        return torch.ones(n), torch.zeros(n)
    return affine[0].detach(), affine[1].detach()


class StackedRNN(nn.Module):
    """M GRUs (or M LSTMs) of one shape, one step at a time, with batched matmuls; returns the
    weighted sum of their heads. State: one h [M, B, 1, H] per layer, then (LSTMs) one c per
    layer: each goes into its layer's matmuls as it is, so the step graph has no Split, Squeeze
    or stack on the state (and no transposes: the batch is on axis 1). The step axis stays in
    every tensor (weights [M, 1, I, G] broadcast over the batch), so a step takes the input
    [B, 1, I] and returns [B, 1, K] without a Gather, Unsqueeze or Concat."""

    def __init__(self, models: list[GRUModel | LSTMModel], weights: Tensor, shared_input: bool):
        super().__init__()
        first = models[0]
        self.lstm = isinstance(first, LSTMModel)
        self.layers, self.hidden, self.m = first.layers, first.hidden, len(models)
        self.shared_input = shared_input
        h = self.hidden

        def stack(name: str, transpose: bool) -> Tensor:
            ts = [getattr(m.rnn, name).detach() for m in models]
            return torch.stack([t.t() if transpose else t for t in ts])

        for layer in range(self.layers):
            # [M, 1, I, G*H] and [M, 1, H, G*H]: G = 3 gates (GRU: r, z, n), 4 (LSTM: i, f, g,
            # o); the biases [M, 1, 1, G*H]
            self.register_buffer(f"wi{layer}", stack(f"weight_ih_l{layer}", True).unsqueeze(1))
            self.register_buffer(f"wh{layer}", stack(f"weight_hh_l{layer}", True).unsqueeze(1))
            bi, bh = stack(f"bias_ih_l{layer}", False), stack(f"bias_hh_l{layer}", False)
            if self.lstm:  # every gate takes the sum of both biases
                self.register_buffer(f"bi{layer}", (bi + bh).view(self.m, 1, 1, -1))
                continue
            # r and z take the sum of both biases; n keeps the hidden one inside r * (.)
            self.register_buffer(f"bi{layer}", torch.cat(
                [bi[:, :2 * h] + bh[:, :2 * h], bi[:, 2 * h:]], dim=1).view(self.m, 1, 1, -1))
            self.register_buffer(f"bh{layer}", torch.cat(
                [torch.zeros_like(bh[:, :2 * h]), bh[:, 2 * h:]], dim=1).view(self.m, 1, 1, -1))
        heads = [m.head.parts[0] for m in models]
        # weights and output scales (normaliser.targets) folded into the heads:
        # sum_m w_mk (s_mk (W_m h_m + b_m)_k + c_mk)
        scale, center = (torch.stack(t) for t in zip(*map(_output_affine, models), strict=True))
        w = (weights * scale).view(self.m, 1, 1, -1)  # [M, 1, 1, K]
        self.register_buffer("wo", torch.stack([hd.weight.detach().t() for hd in heads]
                                               ).unsqueeze(1) * w)  # [M, 1, H, K]
        bias = torch.stack([hd.bias.detach() for hd in heads]) * scale + center
        self.register_buffer("bo", (bias * weights).sum(0))

    def init_state(self, batch: int) -> list[Tensor]:
        shape = (self.m, batch, 1, self.hidden)
        return [torch.zeros(shape) for _ in range(self.layers * (2 if self.lstm else 1))]

    def _gru(self, layer: int, inp: Tensor, prev: Tensor) -> Tensor:
        size = self.hidden
        gi = torch.matmul(inp, getattr(self, f"wi{layer}")) + getattr(self, f"bi{layer}")
        gh = torch.matmul(prev, getattr(self, f"wh{layer}")) + getattr(self, f"bh{layer}")
        gi_rz, gi_n = gi.split([2 * size, size], dim=-1)
        gh_rz, gh_n = gh.split([2 * size, size], dim=-1)
        r, z = torch.sigmoid(gi_rz + gh_rz).split([size, size], dim=-1)  # chunk: 4 ONNX nodes
        n = torch.tanh(gi_n + r * gh_n)
        return n + z * (prev - n)

    def _lstm(self, layer: int, inp: Tensor, prev: Tensor, cell: Tensor
              ) -> tuple[Tensor, Tensor]:
        size = self.hidden
        gates = (torch.matmul(inp, getattr(self, f"wi{layer}"))
                 + torch.matmul(prev, getattr(self, f"wh{layer}")) + getattr(self, f"bi{layer}"))
        input_forget, cell_out = gates.split([2 * size, 2 * size], dim=-1)  # torch: i, f, g, o
        i, f = torch.sigmoid(input_forget).split([size, size], dim=-1)  # one sigmoid for both
        g, o = cell_out.split([size, size], dim=-1)
        cell = f * cell + i * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell

    def step(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """x [B, 1, I] or [M, B, 1, I], state: h [M, B, 1, H] per layer (then c per layer for
        LSTMs) -> y [B, 1, K], state'."""
        inp, hs, cs = x, [], []
        for layer in range(self.layers):
            if self.lstm:
                inp, cell = self._lstm(layer, inp, state[layer], state[self.layers + layer])
                cs.append(cell)
            else:
                inp = self._gru(layer, inp, state[layer])
            hs.append(inp)
        y = torch.matmul(inp, self.wo).sum(0) + self.bo  # [B, 1, K]
        return y, hs + cs

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        time_axis = 2 if not self.shared_input else 1
        if x.shape[time_axis] == 1:  # the step graph: no slicing at all
            return self.step(x, state)
        ys = []
        for t in range(x.shape[time_axis]):
            y, state = self.step(x.narrow(time_axis, t, 1), state)
            ys.append(y)
        return torch.cat(ys, dim=1), state


class PostProcess(nn.Module):
    """Per target: s_t = a s_(t-1) + (1 - a) y_t from step `start` on (s = y up to and at
    `start`), then a scale. `start` is the spec's warm-up: the first scored step, where the
    tuning (kit.ensemble.smooth over the scored rows) starts its recursion too, so what was tuned
    is what runs. State: the last s [B, 1, K] and the steps seen [B, 1] (zeros = a new
    sequence)."""

    def __init__(self, smoothing: list[float], scale: list[float], start: int = 0):
        super().__init__()
        self.start = start
        self.smooths = any(a != 0 for a in smoothing)
        self.is_identity = not self.smooths and all(c == 1 for c in scale)
        self.register_buffer("alpha", torch.tensor(smoothing, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.k = len(scale)

    def init_state(self, batch: int) -> list[Tensor]:
        return [torch.zeros(batch, 1, self.k), torch.zeros(batch, 1)] if self.smooths else []

    def forward(self, y: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if not self.smooths:
            return y * self.scale, state
        last, seen = state
        out = []
        for t in range(y.shape[1]):
            yt = y[:, t:t + 1]
            mixed = self.alpha * last + (1 - self.alpha) * yt
            last = torch.where(seen.unsqueeze(-1) > self.start, mixed, yt)
            seen = seen + 1
            out.append(last)
        s = out[0] if len(out) == 1 else torch.cat(out, dim=1)
        return s * self.scale, [last, seen]


def postprocess_numpy(grid: np.ndarray, smoothing: list[float], scale: list[float],
                      start: int = 0) -> np.ndarray:
    """The same as PostProcess over (N, T, K) predictions of whole sequences from step 0
    (parity's reference paths)."""
    out = np.array(grid, dtype=np.float64)
    alpha = np.asarray(smoothing, dtype=np.float64)
    for t in range(start + 1, out.shape[1]):
        out[:, t] = alpha * out[:, t - 1] + (1 - alpha) * out[:, t]
    return out * np.asarray(scale, dtype=np.float64)


class Ensemble(nn.Module):
    """The stream module of a weighted ensemble (see the module docstring)."""

    def __init__(self, members: list[Weighted], postprocess: dict | None = None,
                 stack: bool = True):
        super().__init__()
        pipelines: dict[str, int] = {}
        normalisers: dict[tuple, int] = {}
        self.pipelines, self.normalisers = nn.ModuleList(), nn.ModuleList()
        self.norm_source: list[int] = []  # normaliser -> pipeline
        inputs = []  # member -> normaliser index
        readers: list[list] = []  # per pipeline: the normalisers that read it
        for entry in members:
            m = entry.member
            digest = m.feature_set.digest()
            if digest not in pipelines:
                pipelines[digest] = len(self.pipelines)
                readers.append([])
                self.pipelines.append(m.feature_set.stream_module())
            key = (digest, m.normaliser.method, m.normaliser.clip,
                   m.normaliser.center.tobytes(), m.normaliser.scale.tobytes())
            if key not in normalisers:
                normalisers[key] = len(self.normalisers)
                self.normalisers.append(m.normaliser.stream_module())
                self.norm_source.append(pipelines[digest])
                readers[pipelines[digest]].append(m.normaliser)
            inputs.append(normalisers[key])
        for pipeline, own in zip(self.pipelines, readers, strict=True):
            spare_guard_clip(pipeline, own)
        groups: dict[object, list[int]] = {}
        for i, entry in enumerate(members):
            key = stackable(entry.member.model) if stack else None
            groups.setdefault(key if key is not None else ("alone", i), []).append(i)
        self.models, self.model_inputs = nn.ModuleList(), []
        self.shared_inputs: list[bool] = []
        # a stack on several normalisers' outputs: its normalisers as one module (by position)
        self.stacked_norms = nn.ModuleDict()
        for key, idx in groups.items():
            weights = torch.tensor([members[i].weights for i in idx], dtype=torch.float32)
            ins = [inputs[i] for i in idx]
            if key[0] in STACKABLE.values() and len(idx) > 1:
                shared = len(set(ins)) == 1
                self.models.append(StackedRNN([members[i].member.model for i in idx], weights,
                                              shared))
                norms = [members[i].member.normaliser for i in idx]
                if not shared and StackedAffineClip.fits(norms):
                    self.stacked_norms[str(len(self.models) - 1)] = StackedAffineClip(norms)
            else:
                shared = True
                model = members[idx[0]].member.model.step_form()
                self.models.append(WeightedModel(model, weights[0]))
            self.model_inputs.append(ins)
            self.shared_inputs.append(shared)
        post = postprocess or {}
        k = len(members[0].weights)
        self.post = PostProcess(post.get("smoothing", [0.0] * k), post.get("scale", [1.0] * k),
                                start=members[0].member.spec.warmup)
        self.use_post = not self.post.is_identity
        self.stages = [*self.pipelines, *self.models] + ([self.post] if self.use_post else [])
        self.state_sizes = [len(s.init_state(1)) for s in self.stages]

    def init_state(self, batch: int) -> list[Tensor]:
        return [t for stage in self.stages for t in stage.init_state(batch)]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        chunks = split_state(state, self.state_sizes)
        new_state: list[Tensor] = []
        features = []
        for pipeline, own in zip(self.pipelines, chunks, strict=False):
            f, s = pipeline(x, own)
            features.append(f)
            new_state += s
        normed: dict[int, Tensor] = {}  # only the normalisers something reads get computed

        def normalised(j: int) -> Tensor:
            if j not in normed:
                normed[j] = self.normalisers[j](features[self.norm_source[j]], [])[0]
            return normed[j]

        total = None
        offset = len(self.pipelines)
        for i, (model, ins, shared) in enumerate(zip(self.models, self.model_inputs,
                                                     self.shared_inputs, strict=True)):
            if str(i) in self.stacked_norms:  # one input for all, or one per member
                sources = [self.norm_source[j] for j in ins]
                raw = (features[sources[0]] if len(set(sources)) == 1
                       else torch.stack([features[k] for k in sources]))
                inp = self.stacked_norms[str(i)](raw)
            elif shared:
                inp = normalised(ins[0])
            else:
                inp = torch.stack([normalised(j) for j in ins])
            y, s = model(inp, chunks[offset + i])
            new_state += s
            total = y if total is None else total + y
        if self.use_post:
            total, s = self.post(total, chunks[-1])
            new_state += s
        return total, new_state


class WeightedModel(nn.Module):
    """A model whose outputs are multiplied by per-target weights."""

    def __init__(self, model: nn.Module, weights: Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("weights", weights)
        self.unit = bool((weights == 1).all())  # a single member at weight 1: no Mul node

    def init_state(self, batch: int) -> list[Tensor]:
        return self.model.init_state(batch)

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        y, state = self.model(x, state)
        return (y if self.unit else y * self.weights), state
