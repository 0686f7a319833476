"""Portability (r302): a --jobs or --workers worker runs the parent's kit whatever the working
folder holds, and kit's own text files are UTF-8 whatever the locale."""

import os
import subprocess
import sys

from kit import __version__
from kit.workers import kit_command, worker_pythonpath


def test_a_worker_runs_this_kit_not_a_kit_py_in_the_working_folder(tmp_path):
    """`python -m kit` puts the working folder first on sys.path: a project's kit.py (or a kit/
    checkout at another commit) ran as the workers' kit."""
    (tmp_path / "kit.py").write_text('print("the project\'s kit.py")\nraise SystemExit(5)\n')
    env = {**os.environ, "PYTHONPATH": worker_pythonpath()}
    plain = subprocess.run([sys.executable, "-m", "kit", "--version"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert plain.returncode == 5  # what the workers were started as
    worker = subprocess.run(kit_command("--version"), cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert worker.returncode == 0, worker.stderr
    assert __version__ in worker.stdout and "project" not in worker.stdout


def test_pack_reads_a_runs_utf8_config_in_an_ascii_locale(runs, tmp_path):
    """config.toml is written as UTF-8; read in the locale's encoding it was a traceback under
    an ASCII locale and garbled (a spec path not found: the old limits) under Latin-1."""
    import json
    import shutil

    run = tmp_path / "runs" / "gru" / runs["gru"].name
    shutil.copytree(runs["gru"], run)
    config = run / "config.toml"
    config.write_text('description = "GRU, lr ≤ 3e-3 (Überprüfung)"\n'
                      + config.read_text(encoding="utf-8"), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": worker_pythonpath()}
    check = subprocess.run([sys.executable, "-c", "import locale; "
                            "print(locale.getpreferredencoding(False))"],
                           env=env, capture_output=True)
    assert check.stdout.decode().strip().lower() in ("ascii", "ansi_x3.4-1968")
    done = subprocess.run([*kit_command("pack", str(run), "--name", "u", "--out",
                                        str(tmp_path / "subs"))],
                          env=env, capture_output=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    manifest = json.loads((tmp_path / "subs" / "u" / "manifest.json").read_text(encoding="utf-8"))
    assert "lr ≤ 3e-3 (Überprüfung)" in json.dumps(manifest, ensure_ascii=False)
