"""Pins of kit/cli.py and kit/workers.py behaviours that a mutation audit found unpinned.

Each test calls the function a command calls through a monkeypatched stand-in (nothing is
trained), so the whole file runs in seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from kit import workers
from kit.workers import EndedBySignal, WorkerGroup, ended_by_signals, stop_when_orphaned
from tests.cli import run_cli


def _sleeper(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def _record(monkeypatch, module, name: str, returns=None) -> list[dict]:
    """Replace module.NAME by a stand-in that records its keyword arguments."""
    calls: list[dict] = []

    def stand_in(*args, **kwargs):
        calls.append({"args": args, **kwargs})
        return returns

    monkeypatch.setattr(module, name, stand_in)
    return calls


# --- kit/workers.py -------------------------------------------------------------------------


def test_no_queued_worker_starts_after_a_ctrl_c():
    """W19: after a Ctrl-C, queued workers stay queued. A worker started after it never gets
    the SIGINT that was passed on, so `kit train seeds=[1,2,3] --jobs 1` would go on training
    the seeds after the one the user interrupted."""
    polls = []

    def on_poll():
        polls.append(1)
        if len(polls) == 1:
            raise KeyboardInterrupt

    queued = [(_sleeper(0.5), None) for _ in range(3)]
    with WorkerGroup() as group, pytest.raises(KeyboardInterrupt):
        group.wait(queued, jobs=1, on_poll=on_poll, stderr=subprocess.DEVNULL)
    assert len(group.procs) == 1


def test_a_signal_arriving_while_a_worker_starts_is_passed_on_to_it(monkeypatch):
    """W13: a SIGTERM handled while Popen starts a worker (after the check in start()) is
    passed on to that worker too; otherwise it would outlive the group's stop."""
    real_popen = subprocess.Popen
    group = WorkerGroup()

    def popen_then_signal(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        group.ended_by = signal.SIGTERM  # as _pass_on would, with procs not yet holding it
        return proc

    monkeypatch.setattr(workers.subprocess, "Popen", popen_then_signal)
    group.start(_sleeper(5), None)
    proc = group.procs[0]
    try:
        assert proc.wait(timeout=3) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ended_by_signals_restores_the_previous_handlers():
    """W06: after a command (run in-process: a notebook, CliRunner, kit.demo) the SIGTERM and
    SIGHUP handlers are the host's again; otherwise a later SIGTERM raises EndedBySignal
    wherever the host happens to be."""
    def host_handler(signum, frame):
        pass

    before = {sig: signal.signal(sig, host_handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with ended_by_signals():
            assert signal.getsignal(signal.SIGTERM) is not host_handler
        assert signal.getsignal(signal.SIGTERM) is host_handler
        assert signal.getsignal(signal.SIGHUP) is host_handler
        run_cli("version")
        assert signal.getsignal(signal.SIGTERM) is host_handler
        assert signal.getsignal(signal.SIGHUP) is host_handler
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _in_a_thread(target):
    """Run target() in a non-main thread; what it returned, or the exception it raised."""
    box: dict = {}

    def body():
        try:
            box["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_a_command_runs_from_a_thread_other_than_the_main_one():
    """W07: a CLI command invoked from a non-main thread (a GUI, a server, a test runner)
    works; signal.signal there raises ValueError, so ended_by_signals must leave it alone."""
    result = _in_a_thread(lambda: run_cli("version", expect=None))
    assert result.exit_code == 0, (result.output, result.exception)


def test_a_worker_group_runs_from_a_thread_other_than_the_main_one():
    """W08: a WorkerGroup (kit train --jobs, kit sweep --workers) started from a non-main
    thread runs its workers rather than failing on signal.signal."""
    def group_in_thread():
        with WorkerGroup() as group:
            return group.wait([([sys.executable, "-c", "pass"], None)], jobs=1)

    assert _in_a_thread(group_in_thread) == [0]


def test_an_orphaned_worker_sends_itself_sigint(monkeypatch):
    """W02: a worker whose command died unseen stops as a Ctrl-C of that command would have
    stopped it: SIGINT to itself (a sweep trial finishes its epoch; SIGTERM would not)."""
    parents = iter([4242, 4242])  # the parent at the start, then once in the watch loop
    monkeypatch.setattr(workers.os, "getppid", lambda: next(parents, 1))
    sent = threading.Event()
    kills: list[tuple[int, int]] = []

    def fake_kill(pid, sig):
        kills.append((pid, sig))
        sent.set()

    monkeypatch.setattr(workers.os, "kill", fake_kill)
    stop_when_orphaned(interval_s=0.01)
    assert sent.wait(timeout=5)
    assert kills == [(workers.os.getpid(), signal.SIGINT)]


# --- kit/cli.py -------------------------------------------------------------------------------


def test_the_workers_override_reaches_the_sweep(monkeypatch):
    """C18: `kit sweep exp=X workers=2` reads like `--workers 2` (docs/sweeps.md); dropped, it
    silently ran one worker."""
    import kit.sweep

    calls = _record(monkeypatch, kit.sweep, "sweep")
    run_cli("sweep", "exp=tiny", "workers=2", "--no-summary", "-q")
    assert calls[0]["workers"] == 2
    run_cli("sweep", "exp=tiny", "--workers", "3", "--no-summary", "-q")
    assert calls[1]["workers"] == 3


def test_the_sweep_timeout_is_passed_on(monkeypatch):
    """C19: `kit sweep --timeout S` (stop starting trials after S seconds) reaches the sweep."""
    import kit.sweep

    calls = _record(monkeypatch, kit.sweep, "sweep")
    run_cli("sweep", "exp=tiny", "--timeout", "12.5", "--no-summary", "-q")
    assert calls[0]["timeout"] == 12.5


@pytest.mark.parametrize("ensemble", [False, True])
def test_pack_force_is_passed_on(monkeypatch, tmp_path, ensemble):
    """C38: `kit pack --force` (pack over the time budget, or with weights not summing to 1)
    reaches pack_run and pack_ensemble; without --force they get force=False."""
    import kit.export.pack

    result = SimpleNamespace(format=lambda: "packed", manifest={"members": []})
    name = "pack_ensemble" if ensemble else "pack_run"
    calls = _record(monkeypatch, kit.export.pack, name, returns=result)
    monkeypatch.setattr(kit.export.pack, "unfinished_note", lambda run: None)
    target = ["--ensemble", str(tmp_path / "e.toml")] if ensemble else [str(tmp_path / "run")]
    run_cli("pack", *target, "--out", tmp_path / "out", "--force")
    run_cli("pack", *target, "--out", tmp_path / "out")
    assert [call["force"] for call in calls] == [True, False]


def test_a_sigterm_before_any_run_started_gives_no_resume_hint(monkeypatch):
    """C14: SIGTERM (here through a --jobs group) before any run started says there is nothing
    to resume; a --resume hint would name a run that does not exist."""
    import kit.train.recipe

    def stopped(*args, **kwargs):
        stop = EndedBySignal(signal.SIGTERM)
        stop.nothing_started = True
        raise stop

    monkeypatch.setattr(kit.train.recipe, "train_experiment", stopped)
    out = run_cli("train", "exp=tiny", "seeds=[1,2]", "--jobs", "2", expect=143).output
    assert "stopped by SIGTERM before any run started: nothing to resume" in out
    assert "--resume" not in out


def test_the_ablation_resume_hint_keeps_the_overrides(monkeypatch, tmp_path):
    """C27: the `continue with` command of an interrupted ablation has its experiment
    overrides; the resumed ablation must have the same settings."""
    import kit.ablate

    summary = tmp_path / "ablate-1.json"

    def interrupted(*args, **kwargs):
        raise kit.ablate.AblationInterrupted(summary, 1, 4, signal.SIGTERM)

    monkeypatch.setattr(kit.ablate, "ablate", interrupted)
    out = run_cli("ablate", "exp=tiny", "train.lr=1e-3", "--groups", "raw,diffs",
                  "--seeds", "1,2", expect=143).output
    assert (f"continue with `kit ablate exp=tiny train.lr=1e-3 --groups raw,diffs --seeds 1,2 "
            f"--resume {summary}`") in out
    # and its -q (r267: dropped)
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", "-q", expect=143).output
    assert f"continue with `kit ablate exp=tiny --groups raw -q --resume {summary}`" in out, out


def test_a_seed_of_true_is_refused():
    """C09: `seeds=[true]` is no seed (True is an int in Python: it would train seed 1)."""
    out = run_cli("train", "exp=tiny", "seeds=[true]", expect=2).output
    assert "each seed must be a whole number" in out


def test_runs_asc_orders_the_table(monkeypatch, tmp_path):
    """C33: `kit runs --asc` sorts the table ascending, not only the --json output."""
    import kit.reports

    calls = _record(monkeypatch, kit.reports, "format_runs", returns="table")
    run_cli("runs", "--runs-dir", tmp_path, "--asc")
    run_cli("runs", "--runs-dir", tmp_path)
    assert [call["descending"] for call in calls] == [False, True]


def test_data_synth_full_is_passed_on(monkeypatch, tmp_path):
    """C50: `kit data synth --full` (Predictorium's real split sizes, docs/synth.md) reaches the
    generator."""
    import kit.data.synth

    result = SimpleNamespace(train=Path("t"), train_rows=1, valid=Path("v"), valid_rows=1,
                             oracle=Path("o"), seconds=0.0)
    calls = _record(monkeypatch, kit.data.synth, "synthesize", returns=result)
    run_cli("data", "synth", "--full", "--out", tmp_path / "full", "-q")
    run_cli("data", "synth", "--out", tmp_path / "demo", "-q")
    assert [call["full"] for call in calls] == [True, False]
