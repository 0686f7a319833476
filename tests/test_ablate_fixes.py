"""kit ablate --resume of a damaged summary, and the command an interrupted ablation prints to
continue it (review r267). A real ablation of the shared tiny competition's GRU (one group,
one seed) writes the summary that is then damaged by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.test_ablate_record import tiny_experiment

OLD_KIT = "written by a kit from before `kit ablate --resume`"


@pytest.fixture
def ablation(workspace, tmp_path, monkeypatch) -> Path:
    """The summary of `kit ablate exp=tiny --groups raw --seeds 1`, trained for real."""
    tiny_experiment(workspace, tmp_path, monkeypatch)
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", "--seeds", "1", "-q").output
    return Path(out.strip().splitlines()[-1].removeprefix("wrote "))


def _resume(summary: Path) -> str:
    return run_cli("ablate", "exp=tiny", "--groups", "raw", "--seeds", "1", "-q",
                   "--resume", summary, expect=2).output


def _damage(summary: Path, good: str, *drop: str, **change) -> None:
    """The summary kit wrote (`good`) with keys deleted and others changed, as by hand."""
    saved = {k: v for k, v in json.loads(good).items() if k not in drop} | change
    summary.write_text(json.dumps(saved))


def test_a_damaged_summary_is_named_as_such_not_blamed_on_an_older_kit(ablation):
    """`[]`, or a summary whose `config` was deleted by hand, was said to be "written by a kit
    from before `kit ablate --resume`"."""
    good = ablation.read_text()
    ablation.write_text("[]")
    said = _resume(ablation)
    assert (f"--resume {ablation}: not an ablation summary (the JSON object kit ablate "
            "writes): it holds []") in said and OLD_KIT not in said
    for key in ("config", "groups"):
        _damage(ablation, good, key)
        said = _resume(ablation)
        assert OLD_KIT not in said, said
        assert ("it lacks `config` (what its runs train: edited by hand" if key == "config"
                else "damaged or not an ablation summary (the JSON object kit ablate writes): "
                     "it lacks ['groups']") in said, said
    _damage(ablation, good, config=[])
    assert "it has a damaged `config`" in _resume(ablation)
    # a summary of a kit from before --resume (neither overrides nor config) is still one
    _damage(ablation, good, "overrides", "config")
    assert OLD_KIT in _resume(ablation)
    ablation.write_text(good)  # the summary as kit wrote it resumes (its run kept)
    assert "wrote" in run_cli("ablate", "exp=tiny", "--groups", "raw", "--seeds", "1",
                              "--resume", ablation).output


def test_the_resume_command_keeps_the_commands_own_options(ablation):
    """The `continue with` command dropped the -q the interrupted command had."""
    from kit.ablate import resume_command

    again = resume_command("exp=tiny", ["train.lr=1e-3"], "raw", "1", ablation, quiet=True)
    assert again == ["kit", "ablate", "exp=tiny", "train.lr=1e-3", "--groups", "raw",
                     "--seeds", "1", "-q", "--resume", str(ablation)]
    assert resume_command("exp=tiny", [], "raw", None, ablation) == [
        "kit", "ablate", "exp=tiny", "--groups", "raw", "--resume", str(ablation)]
    # as printed, it resumes the ablation it names (the same settings)
    printed = run_cli(*resume_command("exp=tiny", [], "raw", "1", ablation, quiet=True)[1:])
    assert printed.output.strip().endswith(f"wrote {ablation}")
