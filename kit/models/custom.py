"""Your own model: `[model] type = "models/my_net.py:MyNet"` (a Python file, relative to the
folder kit runs in) or `"my_package.nets:MyNet"` (a module Python can import).

The class subclasses kit.models.StreamModel and keeps the stream contract (docs/models.md
"Your own model"). kit checks that contract before training, because the packed submission
runs the model one step at a time while training runs whole sequences: a model whose two paths
differ would be validated on predictions the submission never makes. The run folder keeps a
copy of the file it trained with (MODEL_SOURCE): pack and parity build the model from the
project's file and say when it has changed since.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
import warnings
from pathlib import Path
from types import ModuleType

import torch

from kit.config import ConfigError, did_you_mean
from kit.models.config import ModelConfigError, StreamModel

SEPARATOR = ":"
MODEL_SOURCE = "model_source.py"  # the run folder's copy of the file its model came from
CHECK_STEPS = 64  # steps of the contract check: past a short window's wrap (r328), cheap
CHECK_RTOL = 1e-4  # of the largest output: float32 sums in another order, not another model
HOW = "see docs/models.md \"Your own model\""

_loaded: dict[tuple[str, str], ModuleType] = {}  # (resolved file, sha256) -> module
_executed: dict[str, bytes] = {}  # resolved file -> the bytes last run from it (what trains)


def is_custom(kind: object) -> bool:
    """Whether a model.type names a class of the user's ("file.py:Class", "module:Class")."""
    return isinstance(kind, str) and SEPARATOR in kind


def source_file(kind: str) -> Path | None:
    """The file a custom type is read from (None for an importable module's name)."""
    where = kind.rpartition(SEPARATOR)[0]
    if where.endswith(".py") or "/" in where or "\\" in where:
        return Path(where).expanduser()
    return None


def custom_class(kind: str) -> type[StreamModel]:
    """The class a custom model.type names; ModelConfigError saying what is wrong and how."""
    where, _, name = kind.rpartition(SEPARATOR)
    if not where or not name.isidentifier():
        raise ModelConfigError(f"model.type = {kind!r}: expected \"path/to/file.py:ClassName\" "
                               f"or \"package.module:ClassName\"; {HOW}")
    module = _module(kind, where)
    cls = getattr(module, name, None)
    if cls is None:
        found = [n for n, v in vars(module).items() if isinstance(v, type)
                 and issubclass(v, StreamModel) and v is not StreamModel]
        raise ModelConfigError(f"model.type = {kind!r}: {where} defines no {name!r}"
                               f"{did_you_mean(name, found)}; its StreamModel classes: "
                               f"{found or 'none'}")
    if not (isinstance(cls, type) and issubclass(cls, StreamModel)):
        raise ModelConfigError(f"model.type = {kind!r}: {name} is not a subclass of "
                               "kit.models.StreamModel (it declares the config keys kit checks "
                               f"and builds it with); {HOW}")
    if cls.width_key and cls.width_key not in cls.all_keys():
        raise ModelConfigError(f"model.type = {kind!r}: {name}.width_key = {cls.width_key!r} "
                               f"is not one of its keys {sorted(cls.all_keys())}")
    return cls


def _module(kind: str, where: str) -> ModuleType:
    path = source_file(kind)
    if path is None:
        return _imported(kind, where)
    if not path.is_file():
        raise ModelConfigError(f"model.type = {kind!r}: no file {path} (a relative path is read "
                               f"from the folder kit runs in, {Path.cwd()})")
    resolved = path.resolve()
    content = resolved.read_bytes()
    key = (str(resolved), hashlib.sha256(content).hexdigest())
    if key not in _loaded:  # an edited file is read anew in a long-lived process
        # (named by path and content: two files of one stem and content stay two modules)
        name = (f"kit_user_model_{resolved.stem}_"
                f"{hashlib.sha256(f'{resolved}:{key[1]}'.encode()).hexdigest()[:12]}")
        spec = importlib.util.spec_from_file_location(name, resolved)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # (dataclasses and pickling look their module up there)
        try:  # the bytes hashed, not the file read again: the run keeps what ran (r328)
            exec(compile(content, str(resolved), "exec"), module.__dict__)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ModelConfigError(f"model.type = {kind!r}: reading {path} raised "
                                   f"{_raised(exc, resolved)}") from None
        _loaded[key] = module
    _executed[key[0]] = content
    return _loaded[key]


def _imported(kind: str, where: str) -> ModuleType:
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        raise ModelConfigError(f"model.type = {kind!r}: cannot import {where} ({exc}); "
                               f"{_import_advice(kind, where)}") from None
    except Exception as exc:
        raise ModelConfigError(f"model.type = {kind!r}: importing {where} raised "
                               f"{_raised(exc)}") from None


def _import_advice(kind: str, where: str) -> str:
    """What makes a module importable (r324: the advice was only the file form, which a file
    importing its own package cannot take)."""
    local = Path(*where.split(".")).with_suffix(".py")
    single = (f", or, for a file that imports no package of yours, model.type = "
              f"\"{local.as_posix()}:{kind.rpartition(SEPARATOR)[2]}\"" if local.is_file()
              else "; a single file of your project can be named by its path "
              "(\"models/net.py:Net\")")
    return (f"run kit with the folder that holds {where.split('.')[0]} on PYTHONPATH "
            f"(PYTHONPATH=. kit ... from the project folder) or install it{single}")


def _raised(exc: BaseException, file: Path | None = None) -> str:
    """The exception and where in the user's code it came from (its last frame there, or
    the last frame at all): the line to look at, without kit's frames around it."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.lineno:
        at = f" at line {exc.lineno}"
    else:
        own = [f for f in frames if file is not None and Path(f.filename) == file] or frames
        at = f" at {Path(own[-1].filename).name}:{own[-1].lineno}" if own else ""
    said = (str(exc).splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}{at}: {said}"


def keep_source(kind: object, run_dir: Path) -> None:
    """Copy the file a custom model came from into the run folder (the code its weights were
    trained with)."""
    source = _source_of(kind)
    if source is not None:
        ran = _executed.get(str(source.resolve()))  # (an edit since it ran did not train)
        (Path(run_dir) / MODEL_SOURCE).write_bytes(ran if ran is not None else
                                                   source.read_bytes())


def _source_of(kind: object) -> Path | None:
    """The file of a custom model.type: the named file, or an imported module's file."""
    if not is_custom(kind):
        return None
    path = source_file(kind)
    if path is not None:
        return path if path.is_file() else None
    try:  # (where it would be imported from, before it is: r324, an edit went unsaid)
        found = importlib.util.find_spec(kind.rpartition(SEPARATOR)[0])
    except Exception:  # (its package's __init__ runs: whatever it raises, not found here)
        return None
    file = getattr(found, "origin", None)
    return Path(file) if file and Path(file).is_file() else None


def check_run_source(kind: object, run_dir: Path, *, resuming: bool = False) -> None:
    """Before a run's model is built from the project's code: a file gone, or a module that
    cannot be imported, names the run's copy; a file changed since the run trained is warned
    of (its weights may load into code that computes something else), and refused for a
    resume (r324: its next epochs trained under other code than model_source.py recorded)."""
    if not is_custom(kind):
        return
    kept = Path(run_dir) / MODEL_SOURCE
    copy = f"; {kept} is the code it trained with" if kept.is_file() else ""
    path, where = source_file(kind), kind.rpartition(SEPARATOR)[0]
    if path is not None and not path.is_file():
        raise ModelConfigError(f"{run_dir}: its model.type {kind!r} names {path}, not found "
                               f"from {Path.cwd()}{copy}: copy it back there, or run kit from "
                               "the project folder")
    source = _source_of(kind)
    if path is None and source is None:
        raise ModelConfigError(f"{run_dir}: its model.type {kind!r}: cannot import {where}; "
                               f"{_import_advice(kind, where)}{copy}")
    if source is None or not kept.is_file() or source.read_bytes() == kept.read_bytes():
        return
    if resuming:
        raise ModelConfigError(f"{source} changed since {run_dir} started training: --resume "
                               f"would train its weights on under other code than its epochs "
                               f"so far ({kept}); put that copy back to resume, or train a new "
                               "run")
    warnings.warn(f"{source} changed since {run_dir} trained: pack and parity build its model "
                  f"from the file as it is now, so parity compares the package with that code, "
                  f"not with the code the weights trained with ({kept}); put the copy back to "
                  "pack the model as trained", RuntimeWarning, stacklevel=3)


def check_own_model(model_config: dict, n_inputs: int, n_outputs: int, *,
                    scales_targets: bool) -> None:
    """What kit checks of a model of your own before training: built (on a forked random
    state, so the run's seeded initial weights stay what they were), the stream contract,
    and the head normaliser.targets scales."""
    from kit.models import build_model

    kind = model_config["type"]
    with torch.random.fork_rng(devices=[]):
        model = build_model(model_config, n_inputs, n_outputs)
    check_stream_contract(model, kind, n_inputs, n_outputs)
    if scales_targets and not callable(getattr(getattr(model, "head", None), "scale_outputs",
                                               None)):
        raise ConfigError(f"normaliser.targets = true scales the outputs of the model's head, "
                          f"and {kind!r} has no head made by kit.models.heads.make_head: make "
                          "its head so, or set normaliser.targets = false",
                          settings=("normaliser.targets", "model.type"))


@torch.no_grad()
def check_stream_contract(model: StreamModel, kind: str, n_inputs: int, n_outputs: int) -> None:
    """A custom model's whole-sequence forward must equal its step-by-step forward, keep each
    sequence of a batch to itself and give [B, T, K]: the submission runs it step by step, one
    sequence after another. Random input from its own generator (the seeded weights and
    shuffles of training are untouched); the model's train/eval mode is restored."""
    from kit.export.step_graph import batch_axes

    if next(model.parameters(), None) is None:  # (the optimizer's traceback otherwise)
        raise ModelConfigError(f"model.type = {kind!r}: the model has no parameters, nothing "
                               f"to train; {HOW}")
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(2, CHECK_STEPS, n_inputs, generator=torch.Generator().manual_seed(0)
                        ).to(next(model.parameters()).device)
        whole = _called(model, kind, "forward over a whole sequence", lambda: model(
            x, model.init_state(2))[0])
        _check_shape(kind, whole, (2, CHECK_STEPS, n_outputs))
        try:
            batch_axes(model)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelConfigError(f"model.type = {kind!r}: init_state(batch) must return a list "
                                   f"of tensors, each with one axis of size batch ({exc}); "
                                   f"{HOW}") from None
        _check_state(model, kind)
        again = _called(model, kind, "forward over a whole sequence", lambda: model(
            x, model.init_state(2))[0])
        if not torch.equal(again, whole):
            raise ModelConfigError(f"model.type = {kind!r}: forward in eval mode gave other "
                                   "outputs for the same input on a second call: it must be "
                                   "deterministic there (draw noise only while self.training); "
                                   f"{HOW}")
        stepped = _called(model, kind, "forward one step at a time",
                          lambda: _steps(model, kind, x, n_outputs))
        alone = _called(model, kind, "forward over one sequence", lambda: model(
            x[1:], model.init_state(1))[0])
        _check_shape(kind, alone, (1, CHECK_STEPS, n_outputs))
    finally:
        model.train(was_training)
    if not bool(torch.isfinite(whole).all()):
        raise ModelConfigError(f"model.type = {kind!r}: forward gave NaN or inf on random "
                               f"standard-normal input (its initial weights); {HOW}")
    scale = CHECK_RTOL * (1.0 + float(whole.abs().max()))
    for what, got, ref, fix in (
            ("one step at a time (as the packed submission runs it)", stepped, whole,
             "the state must carry everything a step needs from the steps before it"),
            ("for the second sequence alone (its batch neighbour removed)", alone, whole[1:],
             "each sequence of a batch must be computed on its own (no statistics across the "
             "batch axis)")):
        beyond = (got - ref).abs().amax(dim=(0, 2)) > scale  # (NaN compares False: and caught)
        if bool(beyond.any()) or not bool(torch.isfinite(got).all()):
            step = int(beyond.nonzero()[0]) if bool(beyond.any()) else "?"
            raise ModelConfigError(
                f"model.type = {kind!r}: the stream contract does not hold: forward over whole "
                f"sequences and {what} differ, first beyond {scale:.1e} at step {step} (max "
                f"{float((got - ref).abs().max()):.3g}); training would validate predictions "
                f"the submission never makes: {fix}; {HOW}")


def _check_state(model: StreamModel, kind: str) -> None:
    """Every state tensor float32 and zeros at the start: the step graph's states are float32,
    and the submission starts each sequence from zeros, whatever init_state returns (r324:
    a float64 state packed into a graph onnxruntime refused; a learned h0 was dropped)."""
    for i, tensor in enumerate(model.init_state(2)):
        if tensor.dtype != torch.float32:
            raise ModelConfigError(f"model.type = {kind!r}: init_state's tensor {i} is "
                                   f"{tensor.dtype}: every state tensor must be float32 (a "
                                   f"count too, as a float); {HOW}")
        if bool(tensor.ne(0).any()):
            raise ModelConfigError(f"model.type = {kind!r}: init_state's tensor {i} is not all "
                                   "zeros: the submission starts every sequence from a zero "
                                   "state; add a learned initial state inside forward (e.g. "
                                   f"at the first step, told by a step count in the state); "
                                   f"{HOW}")


def _steps(model: StreamModel, kind: str, x: torch.Tensor, n_outputs: int) -> torch.Tensor:
    state, out = model.init_state(x.shape[0]), []
    for t in range(x.shape[1]):
        y, state = model(x[:, t:t + 1], state)
        _check_shape(kind, y, (x.shape[0], 1, n_outputs))  # (r328: [B, K] broadcast)
        out.append(y)
    return torch.cat(out, dim=1)


def build_error(kind: str, exc: Exception) -> ModelConfigError:
    """What the constructor of a model of your own raised, as one line (r328: a NameError
    was a traceback, a missing `dropout` argument blamed the sizes)."""
    if isinstance(exc, TypeError) and "keyword argument" in str(exc):
        return ModelConfigError(f"model.type = {kind!r}: its __init__(n_inputs, n_outputs, ...) "
                                "must take each of its keys and the common ones (dropout, "
                                f"head, heads) as keyword arguments ({exc}); {HOW}")
    return ModelConfigError(f"model.type = {kind!r}: building it raised {_raised(exc)}; {HOW}")


def _called(model: StreamModel, kind: str, what: str, call):
    try:
        return call()
    except ModelConfigError:
        raise
    except Exception as exc:
        file = getattr(sys.modules.get(type(model).__module__), "__file__", None)
        raised = _raised(exc, Path(file).resolve() if file else None)
        raise ModelConfigError(f"model.type = {kind!r}: its {what} raised {raised}; {HOW}"
                               ) from None


def _check_shape(kind: str, y, expected: tuple[int, ...]) -> None:
    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else None
    if shape != expected:
        raise ModelConfigError(f"model.type = {kind!r}: forward(x [B, T, F], state) must return "
                               f"(y [B, T, K], new_state); y was {shape or type(y).__name__} "
                               f"for B, T, K = {expected}; {HOW}")
