"""`kit pack RUN`: freeze a run into submissions/NAME/{solution.py, model.onnx, manifest.json}
and submissions/NAME.zip (exactly those files, solution.py at the root).

model.onnx is the run's whole inference path as one stateful step graph (guard, feature ops,
normaliser, model; dynamic batch). solution.py is the generic runtime in
kit/export/solution_template.py. manifest.json records what went in (DESIGN.md "Frozen step
graph"): spec, input column order, outputs, state shapes, members with their validation scores
and configs, the sha256 of every other file, and later the parity report.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import onnx

from kit import __version__
from kit.competition import CompetitionSpec, load_spec, spec_from_dict
from kit.errors import KitError
from kit.export.frozen import Member, load_member, sha256_file
from kit.export.step_graph import OPSET, export_step_graph
from kit.submission import write_submission_zip

SUBMISSIONS_DIR = Path("submissions")
MODEL_FILE, SOLUTION_FILE, MANIFEST_FILE = "model.onnx", "solution.py", "manifest.json"
PACK_FILES = (SOLUTION_FILE, MODEL_FILE, MANIFEST_FILE)
# IR 8 is the lowest that carries opset 17: onnxruntime >= 1.11 loads it, so an older runtime
# in a competition image still does.
IR_VERSION = 8


class PackError(KitError):
    """A run cannot be packed, or a package is not what its manifest says."""


@dataclass
class PackResult:
    folder: Path
    zip_path: Path
    manifest: dict

    def format(self) -> str:
        m = self.manifest
        states = ", ".join(f"{s['name']}{s['shape']}" for s in m["states"])
        sizes = "  ".join(f"{n} {(self.folder / n).stat().st_size / 1024:,.0f} KB"
                          for n in PACK_FILES)
        return "\n".join([
            f"packed {self.folder}  ->  {self.zip_path}",
            f"graph: {m['onnx']['nodes']} nodes, opset {m['onnx']['opset']}, IR "
            f"{m['onnx']['ir_version']}; inputs x[B, {len(m['inputs'])}] + "
            f"{len(m['states'])} state(s); outputs y[B, {len(m['outputs'])}]",
            f"states: {states or 'none'}",
            f"files: {sizes}",
        ])


def default_name(run: Path) -> str:
    run = Path(run)
    run = run.parent if run.is_file() else run
    return f"{run.parent.name}-{run.name}"


def pack_run(run: Path, name: str | None = None, out_dir: Path = SUBMISSIONS_DIR) -> PackResult:
    """Freeze one run (its best.pt) into a submission folder and zip."""
    member = load_member(run)
    return pack_members([member], [1.0], name or default_name(run), out_dir)


def pack_members(members: list[Member], weights: list[float], name: str,
                 out_dir: Path = SUBMISSIONS_DIR) -> PackResult:
    """Write the package of `members` combined with `weights` (one member: weight 1)."""
    if len(members) != 1 or weights != [1.0]:
        raise PackError("packing several members is the ensemble pack (kit pack --ensemble)")
    if not name or "/" in name or name.startswith("."):
        raise PackError(f"--name {name!r}: a plain folder name is needed")
    spec = members[0].spec
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # build beside the target and swap in at the end: a failed pack leaves the old one whole
    staging = out_dir / f".{name}.packing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        module = members[0].stream_module()
        shapes = export_step_graph(module, len(spec.features), staging / MODEL_FILE)
        graph = finalize_graph(staging / MODEL_FILE, {"kit_version": __version__,
                                                      "members": members[0].name})
        template = resources.files("kit.export") / "solution_template.py"
        (staging / SOLUTION_FILE).write_text(template.read_text())
        manifest = {
            "kit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "spec": spec.to_dict(),
            "inputs": list(spec.features),
            "outputs": list(spec.outputs),
            "states": [{"name": f"state_{i}", "shape": ["batch", *s]}
                       for i, s in enumerate(shapes)],
            "onnx": {"opset": OPSET, **graph},
            "members": [m.describe() | {"weight": w} for m, w in zip(members, weights,
                                                                    strict=True)],
            "parity": None,
        }
        write_manifest(staging, manifest)
        folder = out_dir / name
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PackResult(folder, write_submission_zip(folder), manifest)


def finalize_graph(path: Path, metadata: dict[str, str]) -> dict:
    """Set a portable IR version and metadata, check the graph; returns its description."""
    model = onnx.load(str(path))
    model.ir_version = IR_VERSION
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"ir_version": IR_VERSION, "nodes": len(model.graph.node)}


def write_manifest(folder: Path, manifest: dict) -> None:
    """manifest.json with the sha256 of every other package file."""
    manifest["files"] = {n: sha256_file(folder / n) for n in PACK_FILES if n != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise PackError(f"{folder}: no {MANIFEST_FILE}; is this a folder written by kit pack?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PackError(f"{path}: not valid JSON ({exc})") from None


def submission_spec(submission: Path, spec: str | None = None) -> CompetitionSpec:
    """The spec to score a submission with: the one named, else its manifest's, else the
    default preset."""
    if spec is not None:
        return load_spec(spec)
    manifest = _manifest_of(Path(submission))
    if manifest is None:
        return load_spec(None)
    return spec_from_dict(manifest["spec"], f"{submission}: {MANIFEST_FILE}")


def _manifest_of(submission: Path) -> dict | None:
    """The manifest of a package folder or zip, None when there is none."""
    try:
        if submission.is_dir():
            return json.loads((submission / MANIFEST_FILE).read_text())
        with zipfile.ZipFile(submission) as archive:
            return json.loads(archive.read(MANIFEST_FILE))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def hash_mismatches(folder: Path, manifest: dict) -> list[str]:
    """Package files whose sha256 differs from the manifest's (or that are missing)."""
    bad = []
    for name, digest in manifest.get("files", {}).items():
        path = Path(folder) / name
        if not path.is_file():
            bad.append(f"{name} is missing")
        elif sha256_file(path) != digest:
            bad.append(f"{name} changed since pack (sha256 differs from the manifest)")
    return bad
