"""Models of your own: `[model] type = "path/to/file.py:Class"` trains, packs and passes parity
like a registered model; a class that breaks the stream contract, a file that cannot be read and
a file changed or gone since a run trained are each said before they cost anything."""

import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest
import tomli_w

from kit.errors import KitError
from kit.export.frozen import load_member
from kit.export.pack import pack_run
from kit.models import ModelConfigError, known_class, model_values
from kit.models.custom import MODEL_SOURCE, check_run_source
from kit.parity import run_parity
from kit.train.recipe import check_config, experiment_config, train_experiment
from tests.test_train import raw_gru_experiment, tiny_competition

LEAKY = textwrap.dedent('''
    """A leaky integrator: h_t = decay * h_{t-1} + (1 - decay) * tanh(W x_t)."""
    import torch
    from torch import nn

    from kit.models import StreamModel
    from kit.models.config import Key
    from kit.models.heads import make_head


    class LeakyRNN(StreamModel):
        keys = {"hidden": Key(16, "int"), "decay": Key(0.9, "prob")}
        width_key = "hidden"

        def __init__(self, n_inputs, n_outputs, hidden=16, decay=0.9, dropout=0.0,
                     head="linear", heads="shared"):
            super().__init__()
            self.hidden, self.decay = hidden, decay
            self.inp = nn.Linear(n_inputs, hidden)
            self.head = make_head(hidden, n_outputs, head, heads)

        def init_state(self, batch):
            return [self.zeros(batch, self.hidden)]

        def forward(self, x, state):
            u = (1 - self.decay) * torch.tanh(self.inp(x))
            h, out = state[0], []
            for t in range(x.shape[1]):
                h = self.decay * h + u[:, t]
                out.append(h)
            return self.head(torch.stack(out, dim=1)), [h]
''')

BROKEN = textwrap.dedent('''
    import torch
    from torch import nn

    from kit.models import StreamModel


    class Forgetful(StreamModel):
        """Sums over the sequence but carries nothing: step by step sees one row."""

        def __init__(self, n_inputs, n_outputs, **values):
            super().__init__()
            self.inp = nn.Linear(n_inputs, n_outputs)

        def init_state(self, batch):
            return [self.zeros(batch, 1)]

        def forward(self, x, state):
            return torch.cumsum(self.inp(x), dim=1), state


    class BatchMixer(Forgetful):
        """Centres each step over the batch: a sequence's output depends on its neighbours."""

        def forward(self, x, state):
            y = self.inp(x)
            return y - y.mean(dim=0, keepdim=True), state


    class Raises(Forgetful):
        def forward(self, x, state):
            return x @ torch.zeros(3, 3), state


    class Headless(Forgetful):
        def forward(self, x, state):
            return self.inp(x), state


    class Float64State(Forgetful):
        def init_state(self, batch):
            return [torch.zeros(batch, 1, dtype=torch.float64)]


    class LearnedStart(Forgetful):
        def init_state(self, batch):
            return [torch.full((batch, 1), 3.0)]


    class NoisyInEval(Forgetful):
        def forward(self, x, state):
            return self.inp(x) + torch.randn(x.shape[0], x.shape[1], 2), state


    class NoParameters(StreamModel):
        def __init__(self, n_inputs, n_outputs, **values):
            super().__init__()
            self.n_outputs = n_outputs

        def init_state(self, batch):
            return [torch.zeros(batch, 1)]

        def forward(self, x, state):
            return x[..., :self.n_outputs] * 2, state


    class StepShape(Forgetful):
        """Drops the time axis of a one-step input."""

        def forward(self, x, state):
            y = self.inp(x)
            return (y[:, 0] if x.shape[1] == 1 else y), state


    class BuildsBadly(Forgetful):
        def __init__(self, n_inputs, n_outputs, **values):
            super().__init__(n_inputs, n_outputs)
            self.extra = undefined_name  # noqa: F821


    class NoCommonKeys(Forgetful):
        def __init__(self, n_inputs, n_outputs):
            super().__init__(n_inputs, n_outputs)


    class Plain(nn.Module):
        pass
''')


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny competition with models/leaky.py and models/broken.py."""
    root = tmp_path_factory.mktemp("custom")
    tiny_competition(root, train_seqs=10, valid_seqs=4, seed=4)
    (root / "models").mkdir()
    (root / "models/leaky.py").write_text(LEAKY)
    (root / "models/broken.py").write_text(BROKEN)
    return root


def experiment(root: Path, name: str, model: dict, **sections) -> str:
    config = raw_gru_experiment(root) | {"model": model} | sections
    path = root / "experiments" / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    return str(path)


def leaky_type(root: Path) -> str:
    return f"{root / 'models/leaky.py'}:LeakyRNN"


@pytest.fixture(scope="module")
def leaky_run(project):
    exp = experiment(project, "leaky", {"type": leaky_type(project), "hidden": 8, "decay": 0.8})
    return Path(train_experiment(exp, progress=False, runs_dir=project / "runs")[0]["run_dir"])


def test_own_model_trains_packs_and_passes_parity(project, leaky_run):
    """The whole path: trained with its own keys, the file kept in the run folder, packed
    into one step graph and equal to the PyTorch model step by step."""
    assert (leaky_run / MODEL_SOURCE).read_text() == LEAKY
    member = load_member(leaky_run)
    assert (member.model.hidden, member.model.decay) == (8, 0.8)
    packed = pack_run(leaky_run, "leaky", project / "submissions")
    report = run_parity(packed.folder, project / "data/valid.parquet", seqs=4)
    assert report.ok, report.failures


def test_relative_path_is_read_from_the_folder_kit_runs_in(project, monkeypatch):
    monkeypatch.chdir(project)
    config = experiment_config(experiment(
        project, "relative", {"type": "models/leaky.py:LeakyRNN", "decay": 0.5}))
    assert check_config(config)["model"]["decay"] == 0.5
    monkeypatch.chdir(project / "models")
    with pytest.raises(ModelConfigError, match=r"no file models/leaky.py \(a relative path is "
                       r"read from the folder kit runs in, .*models\)"):
        check_config(config)


@pytest.mark.parametrize("cls, said", [
    ("Forgetful", r"one step at a time \(as the packed submission runs it\) differ, first "
                  r"beyond .* at step 1 .*: the state must carry everything"),
    ("BatchMixer", r"for the second sequence alone .* differ, first beyond .* at step 0 .*"
                   r"each sequence of a batch must be computed on its own"),
    ("Raises", r"its forward over a whole sequence raised RuntimeError at broken.py:\d+: "
               r"mat1 and mat2 shapes cannot be multiplied"),
    # (r324: each of these trained, then failed at pack, at parity, or in the optimizer)
    ("Float64State", r"init_state's tensor 0 is torch.float64: every state tensor must be "
                     r"float32"),
    ("LearnedStart", r"init_state's tensor 0 is not all zeros: the submission starts every "
                     r"sequence from a zero state"),
    ("NoisyInEval", r"forward in eval mode gave other outputs for the same input on a second "
                    r"call: it must be deterministic there"),
    ("NoParameters", r"the model has no parameters, nothing to train"),
    # (r328: a traceback each)
    ("StepShape", r"forward\(x \[B, T, F\], state\) must return \(y \[B, T, K\], new_state\); "
                  r"y was \(2, 2\) for B, T, K = \(2, 1, 2\)"),
    ("BuildsBadly", r"building it raised NameError at broken.py:\d+: name 'undefined_name' is "
                    r"not defined"),
    ("NoCommonKeys", r"its __init__\(n_inputs, n_outputs, ...\) must take each of its keys and "
                     r"the common ones \(dropout, head, heads\) as keyword arguments"),
])
def test_broken_stream_contract_is_refused_before_training(project, cls, said):
    """A model whose whole-sequence and step paths differ would be validated on predictions
    the submission never makes: refused with the first step they part, nothing written."""
    exp = experiment(project, f"broken-{cls}", {"type": f"{project / 'models/broken.py'}:{cls}"})
    runs = project / f"runs-{cls}"
    with pytest.raises(ModelConfigError, match=said):
        train_experiment(exp, progress=False, runs_dir=runs)
    assert not runs.exists()


@pytest.mark.parametrize("kind, said", [
    ("models/broken.py:Plain", r"Plain is not a subclass of kit.models.StreamModel"),
    ("models/broken.py:Forgetfull", r"defines no 'Forgetfull' \(did you mean 'Forgetful'\?\); "
                                    r"its StreamModel classes: \['Forgetful', 'BatchMixer'"),
    ("models/gone.py:Net", r"no file models/gone.py"),
    ("models/broken.py", r"unknown model 'models/broken.py'"),
    ("models/broken.py:", r"expected \"path/to/file.py:ClassName\""),
    ("models.broken:Forgetful", r"cannot import models.broken .*run kit with the folder that "
                                r"holds models on PYTHONPATH \(PYTHONPATH=. kit ... from the "
                                r"project folder\) or install it, or, for a file that imports "
                                r"no package of yours, model.type = "
                                r"\"models/broken.py:Forgetful\""),
    ("transfomer", r"unknown model 'transfomer' \(did you mean 'transformer'\?\); "
                   r"available: .*or your own"),
])
def test_model_type_errors_say_what_to_write(project, monkeypatch, kind, said):
    monkeypatch.chdir(project)
    with pytest.raises(ModelConfigError, match=said):
        model_values({"type": kind})


@pytest.mark.parametrize("source, said", [
    ("x = (\n", r"reading models/bad_syntax.py raised SyntaxError at line 1"),
    ("import torch\n\nraise RuntimeError('needs a GPU')\n",
     r"reading models/bad_syntax.py raised RuntimeError at bad_syntax.py:3: needs a GPU"),
])
def test_a_file_that_cannot_be_read_names_its_line(project, monkeypatch, source, said):
    monkeypatch.chdir(project)
    (project / "models/bad_syntax.py").write_text(source)
    with pytest.raises(ModelConfigError, match=said):
        model_values({"type": "models/bad_syntax.py:Net"})


def test_an_edited_file_is_read_anew(tmp_path, monkeypatch):
    """A long-lived process (a notebook) sees the file as it is now, not as first imported."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(LEAKY)
    assert "decay" in known_class("net.py:LeakyRNN").keys
    (tmp_path / "net.py").write_text(LEAKY.replace('"decay"', '"leak"'))
    assert "leak" in known_class("net.py:LeakyRNN").keys
    (tmp_path / "net.py").unlink()
    assert known_class("net.py:LeakyRNN") is None  # (readers describing a config go on)


def test_settings_the_model_cannot_take_are_refused(project):
    headless = {"type": f"{project / 'models/broken.py'}:Headless"}
    exp = experiment(project, "headless", headless, normaliser={"targets": True})
    with pytest.raises(KitError, match=r"normaliser.targets = true scales the outputs of the "
                       r"model's head, and .*Headless' has no head made by "
                       r"kit.models.heads.make_head"):
        check_config(experiment_config(exp))
    exp = experiment(project, "budget", headless | {"params": 500})
    with pytest.raises(ModelConfigError, match=r"model.params: .*Headless' declares no "
                       r"width_key to solve from a parameter budget"):
        check_config(experiment_config(exp))
    exp = experiment(project, "solved", {"type": leaky_type(project), "params": 300})
    assert check_config(experiment_config(exp))["model"]["hidden"] > 1  # (one it declares)


def test_a_changed_or_gone_file_is_said_when_the_run_is_loaded(project, leaky_run, tmp_path):
    """The weights were trained with the run's copy of the file: a changed file is warned of,
    a gone one names the copy to put back."""
    file = project / "models/leaky.py"
    try:
        file.write_text(LEAKY + "\n# tuned since\n")
        with pytest.warns(RuntimeWarning, match=rf"{file} changed since {leaky_run} trained: "
                          r"pack and parity build its model from the file as it is now, so "
                          r"parity compares the package with that code, not with the code the "
                          rf"weights trained with \({leaky_run / MODEL_SOURCE}\)"):
            load_member(leaky_run)
        file.unlink()
        with pytest.raises(KitError, match=rf"names {file}, not found .*"
                           rf"{leaky_run / MODEL_SOURCE} is the code it trained with: copy it "
                           "back there"):
            load_member(leaky_run)
    finally:
        file.write_text(LEAKY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file as trained: nothing to say
        load_member(leaky_run)


def test_the_docs_example_keeps_the_contract(tmp_path, monkeypatch):
    """docs/models.md "Your own model": its class and [model] table, as printed, pass the
    checks kit runs before training."""
    from kit.models import build_model
    from kit.models.custom import check_stream_contract

    docs = (Path(__file__).parents[1] / "docs/models.md").read_text(encoding="utf-8")
    section = docs.split("## Your own model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    table = section.split("```toml\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models/leaky.py").write_text(code)
    model = tomllib.loads(table)["model"]
    assert model_values(model)["decay"] == 0.8
    check_stream_contract(build_model(model, 5, 2), model["type"], 5, 2)


def test_an_importable_module_is_checked_like_a_file(project, tmp_path, monkeypatch):
    """The "package.module:Class" form: an edit since the run trained is warned of before
    anything imports the module, and a module gone from the path says PYTHONPATH (r324)."""
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(LEAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    exp = experiment(project, "dotted", {"type": "mynets.nets:LeakyRNN", "hidden": 4})
    run = Path(train_experiment(exp, progress=False, runs_dir=tmp_path / "runs")[0]["run_dir"])
    assert (run / MODEL_SOURCE).read_text() == LEAKY
    (package / "nets.py").write_text(LEAKY + "\n# tuned since\n")
    with pytest.warns(RuntimeWarning, match=r"nets.py changed since .* trained"):
        check_run_source("mynets.nets:LeakyRNN", run)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    for name in [m for m in sys.modules if m.startswith("mynets")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModelConfigError, match=r"cannot import mynets.nets; run kit with the "
                       rf"folder that holds mynets on PYTHONPATH .*{run / MODEL_SOURCE} is the "
                       "code it trained with"):
        check_run_source("mynets.nets:LeakyRNN", run)


def test_a_resume_under_a_changed_file_is_refused(project, tmp_path):
    """r324: resumed under an edited file, the best epoch trained under code model_source.py
    did not hold, and a pack after the edit was reverted said nothing."""
    model = tmp_path / "leaky.py"
    model.write_text(LEAKY)
    exp = experiment(project, "resumed", {"type": f"{model}:LeakyRNN", "hidden": 4},
                     train=raw_gru_experiment(project)["train"] | {"epochs": 2})
    runs = tmp_path / "runs"
    [first] = train_experiment(exp, progress=False, runs_dir=runs, stop_after_epochs=1)
    model.write_text(LEAKY.replace("(1 - self.decay) *", "1.5 * (1 - self.decay) *"))
    with pytest.raises(ModelConfigError, match=r"leaky.py changed since .* started training: "
                       r"--resume would train its weights on under other code than its epochs "
                       r"so far .*model_source.py\); put that copy back to resume"):
        train_experiment(exp, progress=False, runs_dir=runs, resume=True,
                         run_dir=Path(first["run_dir"]))
    model.write_text(LEAKY)
    [done] = train_experiment(exp, progress=False, runs_dir=runs, resume=True,
                              run_dir=Path(first["run_dir"]))
    assert done["run_dir"] == first["run_dir"]


def test_the_run_keeps_the_code_that_ran_not_an_edit_made_since(tmp_path, monkeypatch):
    """r328: the copy was read again after the model was built, so an edit in between was
    recorded as the trained code."""
    from kit.models.custom import keep_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(LEAKY)
    known_class("net.py:LeakyRNN")  # built from these bytes
    (tmp_path / "net.py").write_text(LEAKY + "\n# edited while the data loaded\n")
    keep_source("net.py:LeakyRNN", tmp_path)
    assert (tmp_path / MODEL_SOURCE).read_text() == LEAKY
