"""The preset experiments kit ships, and `kit init`, which copies them into a project.

The presets are the checkout's top-level experiments/ folder. A wheel carries them as the data
package `kit.experiments` (pyproject.toml maps it onto experiments/, so the repository holds one
copy); a pip user has no checkout, and `kit demo` found no experiment from an empty folder
(r302). An editable install cannot import that mapped package (setuptools' editable finder needs
an __init__.py there), so a checkout's experiments/ beside the kit package is read instead: the
same files.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

from kit.config import EXPERIMENTS_FOLDER
from kit.errors import KitError

PRESETS_PACKAGE = "kit.experiments"  # the wheel's copy of experiments/ (pyproject.toml)
PRESET_SUFFIXES = (".toml", ".md")  # the experiments and their README
NEXT_COMMANDS = (
    ("kit demo", "the whole job on synthetic data: data, 3 seeds, ensemble, pack, score"),
    ("kit data synth", "the synthetic competition into data/synth/"),
    ("kit train exp=gru_base", "train one experiment into runs/gru_base/"),
)


def preset_folder() -> Traversable | None:
    """The folder of the shipped presets: the installed package's, else the checkout's
    experiments/ (an editable install, or kit run from its source folder); None when this kit
    has neither (a wheel built before r302)."""
    try:
        folder = importlib.resources.files(PRESETS_PACKAGE)
    except ModuleNotFoundError:
        folder = None
    if folder is not None and any(_is_preset(f) for f in folder.iterdir()):
        return folder
    checkout = Path(__file__).resolve().parent.parent / EXPERIMENTS_FOLDER
    return checkout if checkout.is_dir() else None


def _is_preset(entry: Traversable) -> bool:
    return entry.is_file() and entry.name.endswith(PRESET_SUFFIXES)


def preset_files() -> dict[str, bytes]:
    """File name -> content of every shipped preset (experiments and README), sorted by name."""
    folder = preset_folder()
    if folder is None:
        raise KitError("this kit install ships no preset experiments (kit.experiments is "
                       "missing): reinstall kit (pip install --force-reinstall kit), or write "
                       "your experiments into experiments/ yourself (README, Commands)")
    return {entry.name: entry.read_bytes()
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if _is_preset(entry)}


def preset_names() -> list[str]:
    """The shipped experiments' names (gru_base, lstm, ...); [] when there are none."""
    try:
        return [Path(name).stem for name in preset_files() if name.endswith(".toml")]
    except KitError:
        return []


@dataclass
class InitResult:
    folder: Path  # FOLDER/experiments
    copied: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already there, the preset's content
    differing: list[str] = field(default_factory=list)  # already there, edited: left alone

    def format(self, project: Path) -> str:
        lines = [f"copied {len(self.copied)} preset file(s) into {self.folder}/: "
                 f"{', '.join(self.copied)}" if self.copied else
                 f"copied nothing: every preset file is in {self.folder}/ already"]
        if self.kept:
            lines.append(f"skipped {len(self.kept)} already there and the same as kit's preset: "
                         f"{', '.join(self.kept)}")
        if self.differing:
            lines.append(f"skipped {len(self.differing)} already there and edited (kit never "
                         f"overwrites a file: delete one and run kit init again for the "
                         f"preset): {', '.join(self.differing)}")
        return "\n".join([*lines, next_steps_text(project)])


def next_steps_text(project: Path) -> str:
    """What to run next, from the project's folder."""
    here = Path.cwd().resolve() == project.resolve()
    steps = ([] if here else [f"  cd {project}"]) + [
        f"  {command:<24}# {what}" for command, what in NEXT_COMMANDS]
    return "next, from " + ("this folder" if here else str(project)) + ":\n" + "\n".join(steps)


def init_project(project: Path) -> InitResult:
    """Copy the shipped presets into PROJECT/experiments/, creating the folders; a file that is
    already there is never overwritten (it is listed as skipped, edited or not)."""
    project = Path(project)
    folder = project / EXPERIMENTS_FOLDER
    for path in (project, folder):
        if path.exists() and not path.is_dir():
            raise KitError(f"{path} is a file, not a folder: kit init writes the preset "
                           f"experiments into {folder}/; move the file away, or run kit init "
                           "FOLDER with another folder")
    presets = preset_files()  # (before any folder is made: a kit without presets writes none)
    folder.mkdir(parents=True, exist_ok=True)
    result = InitResult(folder)
    for name, content in presets.items():
        target = folder / name
        if _write_new(target, content):
            result.copied.append(name)
        elif target.is_file() and target.read_bytes() == content:
            result.kept.append(name)
        else:
            result.differing.append(name)
    return result


def _write_new(path: Path, content: bytes) -> bool:
    """Write a file that does not exist yet; False, untouched, when something is there ('x'
    mode: a file made meanwhile is not overwritten either)."""
    try:
        with open(path, "xb") as fh:
            fh.write(content)
    except FileExistsError:
        return False
    except BaseException:  # a full disk, Ctrl-C: a torn preset would pass for an edited one
        path.unlink(missing_ok=True)
        raise
    return True


def experiments_here_missing() -> bool:
    """True when an `exp=NAME` has no folder to be read from: KIT_EXPERIMENTS unset and no
    experiments/ in the working folder (kit demo then copies the presets in)."""
    return "KIT_EXPERIMENTS" not in os.environ and not Path(EXPERIMENTS_FOLDER).exists()
