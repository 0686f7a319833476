"""Preset experiments for a pip install (r302): the wheel ships experiments/ as kit.experiments,
`kit init` copies them into a project, a missing experiment says to run it, and `kit demo` from
a folder without experiments/ copies them in itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.cli import run_cli

ROOT = Path(__file__).parents[1]
EXPERIMENTS = ROOT / "experiments"
READ_PRESETS = """
import importlib.resources, json, kit
folder = importlib.resources.files("kit.experiments")
print(json.dumps({"kit": kit.__file__,
                  "files": {e.name: e.read_bytes().hex() for e in folder.iterdir()
                            if e.name.endswith((".toml", ".md"))}}))
"""


def checkout_presets() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(EXPERIMENTS.iterdir())
            if p.suffix in (".toml", ".md")}


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """kit built into a wheel from a copy of the checkout (the build writes build/ and
    *.egg-info there, not into the checkout) and installed into a folder of its own."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("kit", "experiments"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
                    str(source)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("kit-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True)
    return root / "site"


def _in_wheel_env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KIT_EXPERIMENTS"}
    return {**env, "PYTHONPATH": str(site)}


def test_the_wheel_ships_the_presets_byte_for_byte(installed_wheel, tmp_path):
    """A pip install had no experiments: the wheel shipped only specs, scoring and groups."""
    read = subprocess.run([sys.executable, "-c", READ_PRESETS], cwd=tmp_path,
                          env=_in_wheel_env(installed_wheel), capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    found = json.loads(read.stdout)
    assert Path(found["kit"]).is_relative_to(installed_wheel)  # the wheel's kit, not the checkout
    assert {n: bytes.fromhex(h) for n, h in found["files"].items()} == checkout_presets()


def test_kit_init_and_params_from_an_empty_folder_with_the_wheel(installed_wheel, tmp_path):
    """`pip install kit`, then kit init and an experiment, from an empty folder."""
    env = _in_wheel_env(installed_wheel)
    kit = [sys.executable, "-m", "kit"]
    init = subprocess.run([*kit, "init"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    copied = {p.name: p.read_bytes() for p in (tmp_path / "experiments").iterdir()}
    assert copied == checkout_presets()
    params = subprocess.run([*kit, "params", "exp=gru_base"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert params.returncode == 0 and "gru_base:" in params.stdout, params.stderr


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject.toml lists the packages (kit.experiments cannot be found, only mapped): a new
    package folder left off the list would be missing from the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    kit = ROOT / "kit"
    folders = {".".join(d.relative_to(ROOT).parts) for d in [kit, *kit.rglob("*")]
               if d.is_dir() and d.name != "__pycache__"
               and any(f.suffix in (".py", ".toml") for f in d.iterdir())}
    assert folders <= listed, f"add {sorted(folders - listed)} to [tool.setuptools] packages"
    assert "kit.experiments" in listed


@pytest.fixture
def empty_folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KIT_EXPERIMENTS", raising=False)
    return tmp_path


def test_kit_init_copies_the_presets_and_says_what_to_run_next(empty_folder):
    result = run_cli("init")
    copied = {p.name: p.read_bytes() for p in (empty_folder / "experiments").iterdir()}
    assert copied == checkout_presets()
    for command in ("kit demo", "kit data synth", "kit train exp=gru_base"):
        assert command in result.stdout


def test_kit_init_never_overwrites_and_lists_what_it_skipped(empty_folder):
    run_cli("init")
    edited = empty_folder / "experiments" / "lstm.toml"
    edited.write_text('extends = "base"\n# mine\n')
    (empty_folder / "experiments" / "tcn.toml").unlink()
    again = run_cli("init", ".")
    assert edited.read_text() == 'extends = "base"\n# mine\n'
    assert "copied 1 preset file(s) into experiments/: tcn.toml" in again.stdout
    assert "already there and edited" in again.stdout and "lstm.toml" in again.stdout
    assert "the same as kit's preset" in again.stdout and "gru_base.toml" in again.stdout


def test_kit_init_into_a_new_folder_says_cd_first(empty_folder):
    result = run_cli("init", "proj")
    assert (empty_folder / "proj" / "experiments" / "gru_base.toml").is_file()
    assert "cd proj" in result.stdout


def test_kit_init_refuses_an_experiments_file(empty_folder):
    (empty_folder / "experiments").write_text("not a folder")
    result = run_cli("init", expect=2)
    assert "experiments is a file, not a folder" in result.stderr
    assert (empty_folder / "experiments").read_text() == "not a folder"


def test_a_missing_experiment_says_to_run_kit_init_not_to_find_a_checkout(empty_folder):
    result = run_cli("params", "exp=gru_base", expect=2)
    assert "run `kit init`" in result.stderr and "checkout" not in result.stderr
    (empty_folder / "experiments").mkdir()  # an own project's folder without the preset
    result = run_cli("params", "gru_base", expect=2)
    assert "gru_base is one of kit's presets: `kit init` copies" in result.stderr


def test_a_missing_kit_experiments_folder_is_named_with_what_to_do(empty_folder, monkeypatch):
    monkeypatch.setenv("KIT_EXPERIMENTS", str(empty_folder / "nowhere"))
    result = run_cli("params", "gru_base", expect=2)
    assert "KIT_EXPERIMENTS names it" in result.stderr and "checkout" not in result.stderr


def test_kit_demo_copies_the_presets_into_a_folder_without_experiments(empty_folder):
    """`pip install kit && kit demo` from an empty folder: the presets are copied before the
    experiment is read (the unknown spec then stops it before any data or training)."""
    result = run_cli("demo", "--spec", "no-such-spec", expect=2)
    assert "no experiments/ here: copied kit's 14 preset files into experiments/" in result.stdout
    assert "unknown competition spec 'no-such-spec'" in result.stderr
    assert (empty_folder / "experiments" / "gru_base.toml").read_bytes() == \
        (EXPERIMENTS / "gru_base.toml").read_bytes()


def test_kit_demo_leaves_an_existing_experiments_folder_alone(empty_folder):
    (empty_folder / "experiments").mkdir()  # an own project's: its experiments are its own
    result = run_cli("demo", expect=2)
    assert "copied" not in result.stdout and "no experiment 'gru_base'" in result.stderr
    assert list((empty_folder / "experiments").iterdir()) == []
