# kit recipes: `just --list` shows them all. Every CLI verb has a recipe of the same name.
# Recipes run in this folder (the project's experiments/, runs/ and data/ from any subfolder),
# except those whose argument is a file or folder you point at (check, stats, score, pack,
# parity, report, notebook, ensemble): [no-cd], they run where `just` is called, so a relative path
# (`just pack .` in a run folder, `just check ../x.parquet`) names what it names in your shell.

set shell := ["bash", "-euo", "pipefail", "-c"]
# Arguments reach the commands as "$@", each one whole: an override such as
# 'loss.terms={ wmse = 1.0 }' is neither split at its spaces nor brace-expanded by bash.
set positional-arguments

default:
    @just --list

# Install kit and its dev tools (editable)
setup:
    python -m pip install -e ".[dev]"

# (pytest-xdist: most tests wait on the processes they start, so 2 cores take 2 workers well;
# `just test -n 0` runs the suite in one process)
# Lint, then run the whole test suite on up to 4 worker processes
test *args:
    ruff check kit tests bench
    python -m pytest -q -n auto --maxprocesses 4 --dist worksteal "$@"

# The main job on the built-in synthetic competition, end to end
demo *args:
    kit demo "$@"

# Every benchmark in bench/, one JSON line each
bench:
    for f in bench/bench_*.py; do python "$f"; done

# kit train EXP [overrides]: e.g. just train exp=gru_base train.lr=3e-4 seeds=42,43
train *args:
    kit train "$@"

# kit params EXP: the parameter count of an experiment's model
params *args:
    kit params "$@"

# kit runs: the training runs as a table (e.g. just runs --sort t0)
runs *args:
    kit runs "$@"

# kit report RUN: plots and a markdown summary of a run
[no-cd]
report run *args:
    kit report "$@"

# kit data synth: generate the synthetic competition (e.g. just synth --full)
synth *args:
    kit data synth "$@"

# kit data check FILE: check a parquet file against the competition contract
[no-cd]
check file *args:
    kit data check "$@"

# kit data cache: the feature-array cache's entries and size (--clear removes them)
cache *args:
    kit data cache "$@"

# kit data stats FILE: describe a data file
[no-cd]
stats file *args:
    kit data stats "$@"

# kit score SUBMISSION --data FILE: replay the competition's scorer locally
[no-cd]
score submission *args:
    kit score "$@"

# kit features list|build ...: feature ops and groups (e.g. just features build exp=base)
features *args:
    if [ $# -eq 0 ]; then kit features list; else kit features "$@"; fi

# kit spec list: the competition specs kit knows
spec *args:
    if [ $# -eq 0 ]; then kit spec list; else kit spec "$@"; fi

# kit pack RUN [--name NAME] | kit pack --ensemble FILE: freeze into submissions/NAME/ + NAME.zip
[no-cd]
pack *args:
    kit pack "$@"

# kit parity SUBMISSION [--data FILE]: prove the package equals the PyTorch model
[no-cd]
parity submission *args:
    kit parity "$@"

# kit ensemble select RUNS...: greedy-weighted ensemble of runs (e.g. just ensemble select runs/gru_base)
[no-cd]
ensemble *args:
    kit ensemble "$@"

# kit sweep exp=NAME trials=N [--storage URL] [--workers K]: an Optuna study
sweep *args:
    kit sweep "$@"

# kit ablate exp=NAME --groups a,b,c [--seeds 1,2]: feature-group ablation
ablate *args:
    kit ablate "$@"

# kit notebook SUBMISSION [--protocol rows|batch]: an offline Kaggle notebook submission
[no-cd]
notebook submission *args:
    kit notebook "$@"

# kit version: the installed kit's version
version:
    kit version
