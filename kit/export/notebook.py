"""`kit notebook SUBMISSION`: an offline Kaggle notebook submission from a kit package.

Writes OUT/dataset/ (the package files + dataset-metadata.json: `kaggle datasets create -p
OUT/dataset`) and OUT/kernel/ (the notebook + kernel-metadata.json with internet off and the
dataset and competition attached: `kaggle kernels push -p OUT/kernel`). Field names follow the
Kaggle API's documented formats (docs/datasets_metadata.md and the Kernel-Metadata page of
Kaggle/kaggle-api).

The notebook installs nothing from the internet: it finds the package under the input root
(/kaggle/input, or $KIT_INPUT_ROOT), installs wheels from an attached folder with
`pip --no-index --find-links` only when onnxruntime is missing, and runs the package's
solution.py in one of two protocols:
  rows   PredictionModel over a test parquet, one row at a time, predictions written to a CSV;
  batch  predict(batch): one frame per time step with one row per series id (BatchPredictor
         keeps one state per id); handed to a kaggle_evaluation inference server when the
         competition reruns the notebook, else replayed locally over the test parquet.
"""

from __future__ import annotations

import ast
import html.entities
import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

from kit.errors import KitError
from kit.export.pack import MODEL_FILE, PACK_FILES, PackError, hash_mismatches, read_manifest
from kit.scoring.sandbox import prepare_submission

PROTOCOLS = ("rows", "batch")
# Kaggle's documented limits: dataset slugs 3 to 50 characters, kernel slugs at least 5 (the
# kaggle CLI refuses shorter ones); lowercase letters, digits and hyphens
DATASET_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{4,48}[a-z0-9]$")  # the kaggle CLI's 6 to 50
KERNEL_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{3,48}[a-z0-9]$")


class NotebookError(KitError):
    """Bad notebook options (slugs, protocol) or a package that is not whole."""


def _check_slug(kind: str, slug: str, pattern: re.Pattern, lengths: str) -> str:
    if not pattern.match(slug):
        raise NotebookError(f"{kind} {slug!r}: Kaggle wants {lengths} characters, lowercase "
                            "letters, digits and hyphens, not starting or ending with a hyphen")
    return slug


def slugify(text: str, option: str = "--title") -> str:
    """Kaggle's slug of a title, as python-slugify (which `kaggle kernels push` checks the id
    against) makes it for ASCII and accented Latin letters: accents dropped, commas between
    digits removed ("1,000" is "1000"), lowercase, every other run of characters a hyphen.
    Letters it would transliterate otherwise (ß, æ, non-Latin scripts) are refused."""
    entities = re.findall(r"&(#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);", text)
    if any(e.startswith("#") or e in html.entities.name2codepoint for e in entities):
        # python-slugify decodes HTML entities first (a plain "Q&A;" is left alone)
        raise NotebookError(f"{text!r}: an HTML entity (&...;) would be decoded by Kaggle; "
                            f"give {option} without one")
    plain = "".join(c for c in unicodedata.normalize("NFKD", text)
                    if not unicodedata.combining(c))
    if not plain.isascii():
        odd = sorted({c for c in plain if not c.isascii()})
        raise NotebookError(f"{text!r}: {''.join(odd)} would be transliterated by Kaggle in a "
                            f"way kit cannot check; give {option} in ASCII letters")
    plain = re.sub(r"(?<=\d),(?=\d)", "", plain)
    return re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")


def default_title(name: str) -> str:
    """'NAME kit submission', NAME cut so the title stays within Kaggle's 50 characters."""
    suffix = " kit submission"
    return name[:50 - len(suffix)].rstrip(" -_.") + suffix


def parse_renames(text: str | None, outputs: list[str],
                  taken: list[str] | None = None) -> dict[str, str]:
    """'t0=responder_6,t1=b' -> {"t0": "responder_6", "t1": "b"}, outputs checked. The final
    column names must be unique: `taken` are the other columns of the output table (id, step,
    kept columns), which a prediction must not overwrite."""
    renames = {}
    for item in filter(None, (text or "").split(",")):
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not new:
            raise NotebookError(f"--rename {item!r}: write OUTPUT=NEW_NAME, e.g. t0=responder_6")
        if old not in outputs:
            raise NotebookError(f"--rename {item!r}: the package's outputs are {outputs}")
        renames[old] = new
    final = [renames.get(o, o) for o in outputs]
    clash = sorted({n for n in final if final.count(n) > 1} | (set(final) & set(taken or [])))
    if clash:
        raise NotebookError(f"--rename {text!r}: the output table would hold column(s) {clash} "
                            f"twice (outputs become {final}; other columns: {taken or []})")
    return renames


def _cell(kind: str, text: str, index: int) -> dict:
    cell = {"cell_type": kind, "id": f"kit-{index}", "metadata": {},
            "source": text.strip("\n").splitlines(True)}
    if kind == "code":
        cell |= {"execution_count": None, "outputs": []}
    return cell


SETUP = r'''
import glob
import hashlib
import importlib.util
import os
import subprocess
import sys

INPUT_ROOT = os.environ.get("KIT_INPUT_ROOT", "/kaggle/input")
OUTPUT_DIR = os.environ.get("KIT_OUTPUT_DIR", "/kaggle/working")
PROTOCOL = os.environ.get("KIT_PROTOCOL", "__PROTOCOL__")  # rows or batch
PREDICTIONS_FILE = os.environ.get("KIT_PREDICTIONS_FILE", "predictions.csv")
KEEP_COLUMNS = __KEEP__  # batch protocol: columns copied from each batch into its answer
OUTPUT_NAMES = __NAMES__  # output columns renamed in the answers, e.g. {"t0": "responder_6"}
MODEL_SHA256 = "__MODEL_SHA256__"  # model.onnx of the package this notebook was written for


def under_input(*parts):
    """A glob pattern below INPUT_ROOT, whose own characters ([, *, ?) are taken literally."""
    return os.path.join(glob.escape(INPUT_ROOT), *parts)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_package():
    """The attached kit package (solution.py + model.onnx + manifest.json) whose model.onnx is
    the one this notebook was written for: another package attached beside it (a baseline, an
    older pack) is never run by mistake. A lone package with another model (the dataset was
    updated with a new pack) runs with a warning."""
    found = [os.path.dirname(m) for m in
             sorted(glob.glob(under_input("**", "manifest.json"), recursive=True))]
    found = [f for f in found if all(os.path.isfile(os.path.join(f, name))
                                     for name in ("solution.py", "model.onnx"))]
    for folder in found:
        if sha256(os.path.join(folder, "model.onnx")) == MODEL_SHA256:
            return folder
    if len(found) == 1:
        print(f"warning: {found[0]}/model.onnx is not the model this notebook was written for "
              f"(sha256 {MODEL_SHA256[:12]}...); running it all the same")
        return found[0]
    if not found:
        raise FileNotFoundError(f"no kit package (manifest.json + solution.py + model.onnx) "
                                f"under {INPUT_ROOT}; attach the package dataset or set "
                                "KIT_INPUT_ROOT")
    raise FileNotFoundError(f"{len(found)} kit packages under {INPUT_ROOT} ({found}) and none "
                            f"holds the model this notebook was written for (sha256 "
                            f"{MODEL_SHA256[:12]}...): set KIT_PACKAGE_DIR to the one to run, "
                            "or write the notebook again from that package")


PACKAGE_DIR = os.environ.get("KIT_PACKAGE_DIR") or find_package()
print("package:", PACKAGE_DIR)
'''

WHEELS = r'''
# Offline installs: only when the runtime lacks onnxruntime, from wheels in an attached dataset.
try:
    import onnxruntime  # noqa: F401
except ImportError:
    wheel_dirs = sorted({os.path.dirname(p) for p in
                         glob.glob(under_input("**", "*.whl"), recursive=True)})
    if not wheel_dirs:
        raise
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-index",
                           *[f"--find-links={d}" for d in wheel_dirs], "onnxruntime"])
'''

LOAD = r'''
spec = importlib.util.spec_from_file_location("kit_solution",
                                              os.path.join(PACKAGE_DIR, "solution.py"))
solution = importlib.util.module_from_spec(spec)
spec.loader.exec_module(solution)

import json

import numpy as np

MANIFEST = json.load(open(os.path.join(PACKAGE_DIR, "manifest.json")))
SPEC = MANIFEST["spec"]
ID, STEP, NEED = SPEC["id_col"], SPEC["step_col"], SPEC["need_col"]
FEATURES, OUTPUTS = MANIFEST["inputs"], MANIFEST["outputs"]


COLUMNS_OUT = [OUTPUT_NAMES.get(name, name) for name in OUTPUTS]


def read_table(path):
    """Polars unless $KIT_FRAME=pandas (or polars is missing): the frame type gateways send."""
    if os.environ.get("KIT_FRAME", "polars") == "polars":
        try:
            import polars as pl

            return pl.read_parquet(path, glob=False)  # a path, not a pattern
        except ImportError:
            pass
    import pandas as pd

    return pd.read_parquet(path)


def key_text(value):
    """An id or step as the CSV writes it: whole floats (a float column) without ".0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def find_test_file():
    path = os.environ.get("KIT_TEST_FILE")
    if path:
        return path
    found = sorted(glob.glob(under_input("**", "*test*.parquet"), recursive=True))
    if not found:
        raise FileNotFoundError(f"no *test*.parquet under {INPUT_ROOT}; set KIT_TEST_FILE")
    return found[0]
'''

ROWS = r'''
class DataPoint:
    __slots__ = ("seq_ix", "step_in_seq", "need_prediction", "state")

    def __init__(self, seq_ix, step_in_seq, need_prediction, state):
        self.seq_ix, self.step_in_seq = seq_ix, step_in_seq
        self.need_prediction, self.state = need_prediction, state


def run_rows(path):
    """PredictionModel row by row over the test file, as the competition's scorer calls it."""
    table = read_table(path)
    # ids and steps keep their own type (an int64 id past 2**53 is not a float64)
    # (and an id column with a null stays ints, not float64: to_list, not np.asarray)
    ids, steps = table[ID].to_list(), np.asarray(table[STEP]).tolist()
    need = np.asarray(table[NEED]).tolist()
    state = np.column_stack([np.asarray(table[c], dtype=np.float64) for c in FEATURES])
    model = solution.PredictionModel()
    keys, preds = [], []
    for i, row in enumerate(state):
        out = model.predict(DataPoint(ids[i], steps[i], need[i], row))
        if out is not None:
            keys.append((ids[i], steps[i]))
            preds.append(out)
    return keys, np.asarray(preds, dtype=np.float64).reshape(len(preds), len(OUTPUTS))
'''

BATCH = r'''
predictor = None  # made on the first call: a rows run never loads a second session


def predict(batch, *gateway_args):
    """One time step: a Polars/pandas frame with one row per live series id -> a frame of the
    same kind with KEEP_COLUMNS, the id and one column per output. New ids start fresh; absent
    ids keep their state. Further gateway arguments (e.g. Jane Street's lags) are ignored."""
    global predictor
    predictor = predictor or solution.BatchPredictor()
    extra = {"keep": KEEP_COLUMNS, "names": OUTPUT_NAMES} if KEEP_COLUMNS or OUTPUT_NAMES else {}
    return predictor.predict(batch, id_col=ID, step_col=STEP, **extra)


NAN_ID, NA_ID = ("nan id",), ("pd.NA id",)  # one sequence each, as the runtime has them


def replay_key(seq_ix):
    """An id as a dict key: NaN != NaN, and pd.NA compares to NA, not a bool."""
    if isinstance(seq_ix, float) and seq_ix != seq_ix:
        return NAN_ID
    return NA_ID if type(seq_ix).__name__ == "NAType" else seq_ix


def sequence_runs(ids, steps):
    """Each row's sequence number within its id, in file order. An id starts over when its
    step does not move forward (Jane Street's time_id each date_id): its sequences are replayed
    one after another, never two in one time step."""
    last, number, out = {}, {}, np.zeros(len(steps), np.int64)
    for i, (key, step) in enumerate(zip(ids, steps)):
        key = replay_key(key)
        number[key] = number[key] + 1 if key in last and step <= last[key] else number.get(key, 0)
        last[key] = step
        out[i] = number[key]
    return out


def run_batch(path):
    """Local replay of a gateway: the test file cut into time steps, predict() on each."""
    table = read_table(path)
    missing = [c for c in KEEP_COLUMNS if c not in table.columns]
    if missing:  # the runtime skips them (a replay of a train file has no gateway row_id)
        print(f"note: keep column(s) {missing} are not in {path}: the local replay leaves them "
              "out; the gateway's batches must have them (check the names)")
    steps = np.asarray(table[STEP])
    need = np.asarray(table[NEED]).astype(bool)
    runs = sequence_runs(table[ID].to_list(), steps.tolist())
    order = np.lexsort((steps, runs))  # each id's first sequences by step, then its next ones
    keys, preds = [], []
    boundaries = np.flatnonzero((np.diff(runs[order]) != 0) | (np.diff(steps[order]) != 0)) + 1
    for chunk in np.split(order, boundaries):
        batch = table[chunk] if type(table).__module__.startswith("polars") else table.iloc[chunk]
        out = predict(batch)
        y = np.column_stack([np.asarray(out[c], dtype=np.float64) for c in COLUMNS_OUT])
        ids = out[ID].to_list()
        for j, i in enumerate(chunk.tolist()):
            if need[i]:
                keys.append((ids[j], steps[i].item()))
                preds.append(y[j])
    return keys, np.asarray(preds, dtype=np.float64).reshape(len(preds), len(OUTPUTS))


def serve_if_competition_rerun():
    """On Kaggle's rerun, hand predict() to the competition's kaggle_evaluation server."""
    if not os.environ.get("KAGGLE_IS_COMPETITION_RERUN"):
        return False
    import importlib
    import pkgutil

    # the competition's files ship kaggle_evaluation/: import it from there
    for pattern in ("*", os.path.join("*", "*")):
        for init in glob.glob(under_input(pattern, "kaggle_evaluation", "__init__.py")):
            folder = os.path.dirname(os.path.dirname(init))
            if folder not in sys.path:
                sys.path.insert(0, folder)
    import kaggle_evaluation

    for info in pkgutil.iter_modules(kaggle_evaluation.__path__):
        if info.name.endswith("_inference_server"):
            module = importlib.import_module(f"kaggle_evaluation.{info.name}")
            server = next(getattr(module, n) for n in dir(module) if n.endswith("InferenceServer")
                          and n != "InferenceServer")
            server(predict).serve()
            return True
    raise RuntimeError("no kaggle_evaluation.*_inference_server module found")
'''

RUN = r'''
if PROTOCOL == "batch" and serve_if_competition_rerun():
    print("served predict() to the competition's inference server")
else:
    test_file = find_test_file()
    if PROTOCOL not in ("rows", "batch"):
        raise ValueError(f"KIT_PROTOCOL={PROTOCOL!r}: rows or batch")
    keys, preds = (run_batch if PROTOCOL == "batch" else run_rows)(test_file)
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    out_path = os.path.join(OUTPUT_DIR, PREDICTIONS_FILE)
    with open(out_path, "w") as fh:
        fh.write(",".join([ID, STEP, *COLUMNS_OUT]) + "\n")
        for (seq, step), row in zip(keys, preds):
            fh.write(f"{key_text(seq)},{key_text(step)},"
                     + ",".join(repr(float(v)) for v in row) + "\n")
    print(f"{len(preds):,} predictions ({PROTOCOL} protocol) written to {out_path}")
'''


def batch_predict_args(solution: Path) -> set[str] | None:
    """The argument names of the package's BatchPredictor.predict (newer packs take keep= and
    names=); None when solution.py has no BatchPredictor (packed by an older kit)."""
    for node in ast.walk(ast.parse(solution.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "BatchPredictor":
            return next(({a.arg for a in item.args.args} for item in node.body
                         if isinstance(item, ast.FunctionDef) and item.name == "predict"), set())
    return None


def notebook_json(protocol: str, title: str, keep: list[str] | None = None,
                  renames: dict[str, str] | None = None, model_sha256: str = "") -> dict:
    """Both protocols are in every notebook, so $KIT_PROTOCOL can switch between them."""
    setup = (SETUP.replace("__PROTOCOL__", protocol).replace("__KEEP__", repr(list(keep or [])))
             .replace("__NAMES__", repr(dict(renames or {})))
             .replace("__MODEL_SHA256__", model_sha256))
    sources = [
        ("markdown", f"# {title}\n\nGenerated by kit (`kit notebook`): runs a kit package "
                     f"offline, protocol `{protocol}`. Nothing is downloaded."),
        ("code", setup),
        ("code", WHEELS),
        ("code", LOAD),
        ("code", ROWS),
        ("code", BATCH),
        ("code", RUN),
    ]
    cells = [_cell(kind, text, i) for i, (kind, text) in enumerate(sources)]
    return {"cells": cells, "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def default_owner() -> str | None:
    """$KAGGLE_USERNAME, else the username in ~/.kaggle/kaggle.json (the Kaggle CLI's config)."""
    import os

    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    try:
        return json.loads(config.read_text()).get("username")
    except (OSError, ValueError):
        return None


def write_notebook(submission: Path, out: Path, *, owner: str, dataset_slug: str | None = None,
                   competition: str | None = None, protocol: str = "rows",
                   title: str | None = None, wheels: Path | None = None,
                   keep_columns: list[str] | None = None, rename: str | None = None) -> dict:
    """Write OUT/dataset/ and OUT/kernel/; returns the paths and the two metadata documents."""
    if protocol not in PROTOCOLS:
        raise NotebookError(f"--protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if keep_columns and protocol != "batch":
        raise NotebookError("--keep-columns copies columns of each batch into its answer: it "
                            "needs --protocol batch (the rows protocol would ignore it)")
    submission, out = Path(submission), Path(out)
    if not submission.exists():  # before the owner: the first thing to fix comes first
        raise NotebookError(f"{submission}: no such package (kit pack RUN writes "
                            "submissions/NAME)")
    if not owner:
        raise NotebookError("--owner: your Kaggle user name is needed for the dataset and "
                            "kernel ids (or set KAGGLE_USERNAME)")
    if not re.match(r"^[A-Za-z0-9_-]+$", owner):
        raise NotebookError(f"--owner {owner!r}: your Kaggle user name (letters, digits, - or _)")
    name = package_name(submission)
    earlier = _dataset_written_before(submission)
    if earlier:  # OUT/dataset given again (e.g. to switch protocol): the same Kaggle dataset
        name, default_slug = earlier
    else:  # (a cut may end on a hyphen)
        default_slug = (None if dataset_slug else
                        slugify(f"{name}-package", "--dataset-slug")[:50].rstrip("-"))
    dataset_slug = _check_slug("--dataset-slug", dataset_slug or default_slug, DATASET_SLUG,
                               "6 to 50")
    title = title or default_title(name)
    if not 5 <= len(title) <= 50:
        raise NotebookError(f"--title {title!r}: Kaggle kernel titles are 5 to 50 characters")
    # Kaggle derives the kernel's slug from its title: the id must be exactly that slug
    kernel_slug = _check_slug(f"--title {title!r} gives the kernel slug", slugify(title),
                              KERNEL_SLUG, "5 to 50")
    if competition is not None and not re.match(r"^[a-z0-9][a-z0-9-]*$", competition):
        raise NotebookError(f"--competition {competition!r}: a competition's URL slug, e.g. "
                            "jane-street-real-time-market-data-forecasting")
    wheel_files = sorted(Path(wheels).glob("*.whl")) if wheels is not None else []
    if wheels is not None and not wheel_files:
        raise NotebookError(f"--wheels {wheels}: no .whl files there")
    if earlier and wheels is None:  # rewritten in place: the dataset keeps the wheels it has
        wheel_files = sorted([*submission.glob("*.whl"), *(submission / "wheels").glob("*.whl")])
    out.mkdir(parents=True, exist_ok=True)
    # Everything is written into a staging folder and swapped in at the end: a failed check
    # leaves OUT as it was, and a package read from OUT/dataset itself is not deleted first.
    with tempfile.TemporaryDirectory(prefix=".kit-notebook-", dir=out) as staging:
        staged = _write_folders(submission, Path(staging), name=name, owner=owner,
                                dataset_slug=dataset_slug, kernel_slug=kernel_slug, title=title,
                                competition=competition, protocol=protocol,
                                wheel_files=wheel_files, keep_columns=keep_columns,
                                rename=rename)
        for folder in ("dataset", "kernel"):  # only what this command writes is replaced
            shutil.rmtree(out / folder, ignore_errors=True)
            os.replace(Path(staging) / folder, out / folder)
    dataset, kernel = out / "dataset", out / "kernel"
    return {"dataset": dataset, "kernel": kernel, "notebook": kernel / staged["code_file"],
            "dataset_metadata": staged["dataset_metadata"],
            "kernel_metadata": staged["kernel_metadata"]}


def _dataset_written_before(submission: Path) -> tuple[str, str] | None:
    """(name, dataset slug) when `submission` is a dataset folder kit notebook wrote."""
    try:
        meta = json.loads((Path(submission) / "dataset-metadata.json").read_text())
        slug, title = meta["id"].split("/")[1], meta["title"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    name = title.removesuffix(" (kit)").removesuffix(" package")
    # (3 to 50 characters: kit's rule before the CLI's 6; _check_slug then names the rule)
    return (name, slug) if name and re.match(r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$", slug) else None


def package_name(submission: Path) -> str:
    """The submission's name as given, without .zip (a `current` symlink keeps its own name);
    `.` and `..` name the folder they stand for."""
    submission = Path(submission)
    name = submission.name if submission.name not in ("", "..") else submission.resolve().name
    return name.removesuffix(".zip")


def default_out(submission: Path) -> Path:
    """NAME-kaggle beside the package; the OUT a dataset folder was written into when it is
    given again (OUT/dataset: the notebook is rewritten in place)."""
    submission = Path(submission)
    if _dataset_written_before(submission):
        return submission.parent
    parent = submission.resolve().parent if submission.name in ("", "..") else submission.parent
    return parent / f"{package_name(submission)}-kaggle"


def _write_folders(submission: Path, into: Path, *, name: str, owner: str, dataset_slug: str,
                   kernel_slug: str, title: str, competition: str | None, protocol: str,
                   wheel_files: list[Path], keep_columns: list[str] | None,
                   rename: str | None) -> dict:
    """INTO/dataset and INTO/kernel for the package at `submission` (checked whole)."""
    dataset, kernel = into / "dataset", into / "kernel"
    with tempfile.TemporaryDirectory(prefix="kit-notebook-") as tmp:
        source = prepare_submission(submission, Path(tmp) / "package")  # a zip is extracted
        try:
            manifest = read_manifest(source)
        except PackError as exc:  # it names the folder a zip was extracted to
            raise NotebookError(str(exc).replace(str(source), str(submission))) from None
        bad = hash_mismatches(source, manifest)
        if bad:
            raise NotebookError(f"{submission}: {'; '.join(bad)}; re-pack it")
        spec = manifest["spec"]
        renames = parse_renames(rename, manifest["outputs"],
                                [spec.get("id_col", "seq_ix"), spec.get("step_col", "step_in_seq"),
                                 *(keep_columns or [])])
        predict_args = batch_predict_args(source / "solution.py")
        if protocol == "batch" and predict_args is None:
            raise NotebookError(f"{submission}: its solution.py has no BatchPredictor (packed "
                                "by an older kit): re-pack the run with this kit (kit pack), "
                                "or use --protocol rows")
        if (keep_columns or renames) and not {"keep", "names"} <= (predict_args or set()):
            raise NotebookError(f"{submission}: its solution.py predates --keep-columns and "
                                "--rename; re-pack the run with this kit (kit pack)")
        dataset.mkdir(parents=True)
        for file_name in PACK_FILES:  # the package and nothing else (no caches, stray files)
            shutil.copy2(source / file_name, dataset / file_name)
    for wheel in wheel_files:  # at the top: `kaggle datasets create -p` skips subfolders
        shutil.copy2(wheel, dataset / wheel.name)
    dataset_meta = {"title": _title(f"{name} package"), "id": f"{owner}/{dataset_slug}",
                    "licenses": [{"name": "CC0-1.0"}]}
    (dataset / "dataset-metadata.json").write_text(json.dumps(dataset_meta, indent=2) + "\n")
    kernel.mkdir(parents=True)
    code_file = "notebook.ipynb"
    document = notebook_json(protocol, title, keep_columns, renames,
                             manifest["files"][MODEL_FILE])
    (kernel / code_file).write_text(json.dumps(document, indent=1) + "\n")
    kernel_meta = {
        "id": f"{owner}/{kernel_slug}", "title": title, "code_file": code_file,
        "language": "python", "kernel_type": "notebook", "is_private": True,
        "enable_gpu": False, "enable_tpu": False, "enable_internet": False,
        "dataset_sources": [f"{owner}/{dataset_slug}"],
        "competition_sources": [competition] if competition else [],
        "kernel_sources": [], "model_sources": [],
    }
    (kernel / "kernel-metadata.json").write_text(json.dumps(kernel_meta, indent=2) + "\n")
    return {"code_file": code_file, "dataset_metadata": dataset_meta,
            "kernel_metadata": kernel_meta}


def _title(text: str) -> str:
    """Kaggle dataset titles are 6 to 50 characters."""
    return (text if len(text) >= 6 else f"{text} (kit)")[:50]
