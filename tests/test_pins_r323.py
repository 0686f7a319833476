"""Pins of the cache's temp folders and entries, kit.temp's owner tags and the groups of runs
(mutation audit r323): behaviour the suite left unpinned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.data import cache as cache_module
from kit.data.cache import cache_entries, clear_dead_temp, temp_folders
from kit.temp import dead_owners, owner_gone, owner_tag
from kit.train import groups
from kit.train.groups import GROUPS_DIR, claim_group, drop_never_started
from tests.cli import run_cli
from tests.processes import dead_pid
from tests.test_cache_housekeeping_r315 import build, entry_with_a_copy, write_data

REPO = Path(__file__).resolve().parents[1]
TMP = cache_module.TMP_PREFIX


@pytest.fixture
def settled(monkeypatch):
    """Digests are recorded at once (as for a file not written in the last 2 s)."""
    monkeypatch.setattr(cache_module, "RACY_NS", 0)


# --- the cache's temp folders ----------------------------------------------------------------


def test_another_hosts_temp_folder_is_listed_as_such_and_kept(tmp_path):
    """Mutant: _writer_of calls another host's build "running" (the listing's word)."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    dead = dead_pid()  # (its PID means nothing here: another host's)
    other = cache_dir / f"{TMP}train-{dead}.0badcafe-abcdef12"
    other.mkdir()
    (other / "x.npy").write_bytes(b"half")
    (listed,) = temp_folders(cache_dir)
    assert (listed["pid"], listed["writer"], listed["removable"]) == (
        int(dead), "another host's", False)
    out = run_cli("data", "cache", "--dir", cache_dir).stdout
    assert f"(build of process {dead}, another host's)" in out, out
    assert clear_dead_temp(cache_dir) == [] and other.is_dir()


# --- the cache's entries ---------------------------------------------------------------------


def test_an_entry_a_copy_still_holds_is_live_when_its_own_file_is_overwritten(
        tmp_path, settled):
    """Mutant: source_status judges an entry by the file its meta.json names alone: the
    entry a recorded copy still reads was called orphaned, and --clear-stale deleted it."""
    cache_dir, data, entry = entry_with_a_copy(tmp_path)
    write_data(data, seed=1)  # the entry's own file now holds other bytes
    newer = build(data, cache_dir)
    listed = {e["name"]: e for e in cache_entries(cache_dir)}
    assert (listed[entry]["orphaned"], listed[entry]["unverified"]) == (None, None)
    out = run_cli("data", "cache", "--dir", cache_dir, "--clear-stale").stdout
    assert out.startswith(f"removed 0 stale entries from {cache_dir}"), out
    assert (cache_dir / entry).is_dir() and (cache_dir / newer).is_dir()


def test_a_damaged_digests_record_does_not_stop_the_listing(tmp_path, settled):
    """Mutant: RecordedFiles takes every digests.json record, well-formed or not: a record a
    crash or a hand edit left short made `kit data cache` raise instead of listing."""
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "train.parquet", seed=0)
    entry = build(data, cache_dir)
    digests = cache_dir / cache_module.DIGESTS_FILE
    table = json.loads(digests.read_text())
    digests.write_text(json.dumps(table | {"/elsewhere/a.parquet": [1, 2],
                                           "/elsewhere/b.parquet": "abc"}))
    (listed,) = cache_entries(cache_dir)
    assert (listed["name"], listed["orphaned"], listed["unverified"]) == (entry, None, None)
    out = run_cli("data", "cache", "--dir", cache_dir).stdout
    assert entry in out and "1 entry in" in out, out


KILLED_DIGESTS_UPDATE = """
import os, signal, sys
from pathlib import Path
from kit.data import cache
cache.RACY_NS = 0
cache.file_digest(Path(sys.argv[1]))
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # killed before the rename
cache.remember_digest(Path(sys.argv[1]), Path(sys.argv[2]))
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_digests_update_leaves_a_temp_file_of_a_dead_writer(tmp_path):
    """Mutant: digests.json's temp name carries the bare PID (no host tag): a killed update's
    file is then "unknown" and kept 6 hours instead of cleared at once (r319)."""
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "train.parquet", seed=0)
    cache_dir.mkdir()
    done = subprocess.run([sys.executable, "-c", KILLED_DIGESTS_UPDATE, str(data),
                           str(cache_dir)], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    (left,) = cache_dir.glob(f"{TMP}digests.json-*")
    (listed,) = temp_folders(cache_dir)
    assert (listed["name"], listed["writer"], listed["removable"]) == (left.name, "dead", True)
    assert [t["name"] for t in clear_dead_temp(cache_dir)] == [left.name]
    assert not left.exists()


# --- kit.temp: whose folders are whose ------------------------------------------------------


def test_a_live_process_of_another_user_is_not_taken_for_dead(monkeypatch):
    """Mutant: process_alive calls a PID it may not signal (EPERM: another user's) dead, and
    its owner's folders were removed under it."""
    import kit.temp

    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(kit.temp.os, "kill", not_permitted)
    assert owner_gone(owner_tag()) is False
    assert owner_gone(f"4321.{owner_tag().split('.')[1]}") is False


def test_dead_owners_of_this_host_old_tags_and_bare_pids_are_removed_only(tmp_path):
    """Mutants: a bare PID (a kit before host tags) never judged, or this host's tag as kits
    before 2026-12-04 wrote it (its name alone) taken for another host's: their killed
    commands' folders stayed for ever."""
    import hashlib
    import socket

    dead, here = dead_pid(), owner_tag().split(".")[1]
    before = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    names = {"bare": f"kit-x-{dead}-abc", "older": f"kit-x-{dead}.{before}-abc",
             "here": f"kit-x-{dead}.{here}-abc", "other": f"kit-x-{dead}.0badcafe-abc",
             "live": f"kit-x-{owner_tag()}-abc", "junk": "kit-x-notapid-abc"}
    for name in names.values():
        (tmp_path / name).mkdir()
    gone = {p.name for p in dead_owners(tmp_path, "kit-x-")}
    assert gone == {names["bare"], names["older"], names["here"]}


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="PID namespaces (Linux)")
def test_the_owner_tag_tells_a_container_sharing_the_host_name_apart():
    """Mutant: the tag hashes the host name alone: a container with the host's name (docker
    --uts=host) took a live pack of the host for its own dead one."""
    import hashlib
    import socket

    host_only = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    assert owner_tag().split(".")[1] != host_only
    assert cache_module.file_space() not in (host_only, owner_tag().split(".")[1])


DEFAULT_SIGTERM = """
import os, signal, tempfile
from kit.temp import owned_temp_dir
real = tempfile.mkdtemp
def mkdtemp(*a, **k):
    made = real(*a, **k)
    os.kill(os.getpid(), signal.SIGTERM)
    return made
tempfile.mkdtemp = mkdtemp
folder = owned_temp_dir('deferred')
print('went on', flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_sigterm_deferred_while_the_folder_is_made_still_ends_a_default_process(tmp_path):
    """Mutant: a SIGTERM noted while the folder was made is not re-sent where its handler is
    the default: the command went on as if never told to stop."""
    done = subprocess.run([sys.executable, "-c", DEFAULT_SIGTERM], capture_output=True,
                          text=True, env=os.environ | {"PYTHONPATH": str(REPO),
                                                       "TMPDIR": str(tmp_path)})
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stdout, done.stderr)
    assert "went on" not in done.stdout


# --- groups of runs --------------------------------------------------------------------------

BASE = {"name": "tiny", "seed": 5, "train": {"lr": 0.003}}
NOON_2100 = 4102488000.0  # a clock no real group's stamp shares


def _aged(exp_dir: Path, stamp: str) -> None:
    then = time.time() - groups.DEAD_AFTER_S - 60
    os.utime(exp_dir / GROUPS_DIR / f"{stamp}.json", (then, then))


def test_a_dead_group_with_one_started_fold_keeps_every_folder_and_its_record(tmp_path):
    """Mutant: drop_never_started looks at the first member alone: a dead group whose second
    fold had started lost its first fold's (empty) folder, and --resume then said it was not
    there."""
    exp_dir = tmp_path / "runs" / "tiny"
    stamp = claim_group(exp_dir, [3], 2, BASE)
    (exp_dir / f"{stamp}-s3-fold2of2" / "config.toml").write_text("seed = 3\n")
    _aged(exp_dir, stamp)
    drop_never_started(exp_dir)
    assert (exp_dir / f"{stamp}-s3-fold1of2").is_dir()
    assert (exp_dir / f"{stamp}-s3-fold2of2" / "config.toml").is_file()
    assert (exp_dir / GROUPS_DIR / f"{stamp}.json").is_file()


def test_a_group_record_claimed_within_a_minute_is_kept_unlocked(tmp_path):
    """Mutant: DEAD_AFTER_S raised (or the age test dropped): a record 61 s old that nobody
    holds is a dead command's; one 30 s old may be a command that has not locked it yet."""
    exp_dir = tmp_path / "runs" / "tiny"
    dead, young = claim_group(exp_dir, [1], 0, BASE), claim_group(exp_dir, [2], 0, BASE)
    now = time.time()
    os.utime(exp_dir / GROUPS_DIR / f"{dead}.json", (now - 61, now - 61))
    os.utime(exp_dir / GROUPS_DIR / f"{young}.json", (now - 30, now - 30))
    drop_never_started(exp_dir)
    assert not (exp_dir / f"{dead}-s1").exists()
    assert {p.stem for p in (exp_dir / GROUPS_DIR).glob("*.json")} == {young}
    assert (exp_dir / f"{young}-s2").is_dir()


def test_a_claim_whose_member_folder_exists_takes_the_next_second_leaving_nothing(
        tmp_path, monkeypatch):
    """Mutants: the folders made for the clashing stamp, or its record, are left behind when
    a member's folder of that stamp already exists (made by hand or by an older kit)."""
    monkeypatch.setattr(groups.time, "time", lambda: NOON_2100)
    first = time.strftime("%Y%m%d-%H%M%S", time.localtime(NOON_2100))
    nxt = time.strftime("%Y%m%d-%H%M%S", time.localtime(NOON_2100 + 1))
    exp_dir = tmp_path / "runs" / "tiny"
    (exp_dir / f"{first}-s2").mkdir(parents=True)  # the user's
    (exp_dir / f"{first}-s2" / "notes.txt").write_text("mine")
    assert claim_group(exp_dir, [1, 2], 0, BASE) == nxt
    assert sorted(p.name for p in exp_dir.iterdir()) == sorted(
        [GROUPS_DIR, f"{first}-s2", f"{nxt}-s1", f"{nxt}-s2"])
    assert [p.name for p in (exp_dir / GROUPS_DIR).iterdir()] == [f"{nxt}.json"]
    assert (exp_dir / f"{first}-s2" / "notes.txt").read_text() == "mine"


def _group_record(exp_dir: Path, stamp: str, seeds: list[int], config: dict) -> Path:
    (exp_dir / GROUPS_DIR).mkdir(parents=True, exist_ok=True)
    path = exp_dir / GROUPS_DIR / f"{stamp}.json"
    path.write_text(json.dumps({"seeds": seeds, "folds": 0,
                                "config": groups.group_config(config)}))
    return path


def test_a_resume_with_changed_settings_names_the_newest_differing_group(tmp_path):
    """Mutant: the error named the oldest unfinished group of other settings, not the newest
    (the one the user most likely just started)."""
    from kit.config import ConfigError

    exp_dir = tmp_path / "runs" / "tiny"
    for stamp, lr in (("20260101-000000", 0.1), ("20260102-000000", 0.2)):
        _group_record(exp_dir, stamp, [1, 2], BASE | {"train": {"lr": lr}})
    with pytest.raises(ConfigError, match="the unfinished group 20260102-000000 of") as raised:
        groups.resumable_group(exp_dir, [2, 1], 0, BASE)
    assert "train.lr (was 0.2, now 0.003)" in str(raised.value), raised.value


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_group_whose_run_another_command_trains_is_not_resumed(tmp_path):
    """Mutant: _in_use looks at the group's record alone: a --resume that had taken the group
    (it holds the runs' locks, not the record's) was resumed again beside it."""
    import fcntl

    from kit.config import ConfigError

    exp_dir = tmp_path / "runs" / "tiny"
    stamp = "20260101-000000"
    _group_record(exp_dir, stamp, [1, 2], BASE)
    for seed in (1, 2):
        (exp_dir / f"{stamp}-s{seed}").mkdir()
    assert groups.resumable_group(exp_dir, [1, 2], 0, BASE) == stamp  # free: resumable
    fd = os.open(exp_dir / f"{stamp}-s2", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as its trainer holds it
        with pytest.raises(ConfigError, match=f"the unfinished group {stamp} of runs of seeds "
                                              r"\[1, 2\] .* is being trained by another"):
            groups.resumable_group(exp_dir, [1, 2], 0, BASE)
    finally:
        os.close(fd)


def test_a_stop_after_an_epochs_last_batch_says_it_was_validating():
    """Mutant: `done >= total` made `done > total`: a stop in validation said "after 671 of
    671 batches", as if a batch were left to train."""
    class Stop(KeyboardInterrupt):
        epoch_at = (1, 671, 671)

    said = groups.nothing_kept_text(Stop())
    assert said.startswith("in epoch 1 after all 671 batches, while validating: no epoch had "
                           "finished"), said
    Stop.epoch_at = (2, 20, 671)
    assert groups.nothing_kept_text(Stop()).startswith("in epoch 2 after 20 of 671 batches: ")
