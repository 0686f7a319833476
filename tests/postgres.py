"""A real, throwaway PostgreSQL server on 127.0.0.1 for the scale-out tests.

Binaries come from the `pgserver` wheel (in the dev extra, so `pip install -e ".[dev]"` brings a
full PostgreSQL with no system packages), else from PATH. PostgreSQL refuses to run as root, so
as root the cluster belongs to an unprivileged user made for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

PG_USER = "kitpg"


def binaries() -> Path | None:
    try:
        import pgserver

        path = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (path / "pg_ctl").is_file():
            return path
    except ImportError:
        pass
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL binaries: pip install pgserver (the dev extra)")
        self.data = self.root / "pgdata"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.user = PG_USER if os.geteuid() == 0 else None

    def _as_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def _run(self, *args: str) -> None:
        cmd = self._as_user([str(self.bin / args[0]), *args[1:]])
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode:  # say why: a bare exit status hides initdb's reason
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")

    def _reachable_binaries(self) -> None:
        """A wheel installed under /root (mode 700) cannot be run by the cluster's user: run a
        copy in the test folder instead (about 40 MB, a fraction of a second), laid out as in
        site-packages because the wheel's binaries find their libraries at
        $ORIGIN/../../../pgserver.libs."""
        probe = subprocess.run(self._as_user(["test", "-x", str(self.bin / "initdb")]))
        if probe.returncode != 0:
            install = self.bin.parent
            site = self.root / "site"
            shutil.copytree(install, site / install.parent.name / install.name, symlinks=True)
            libs = install.parent.parent / "pgserver.libs"
            if libs.is_dir():
                shutil.copytree(libs, site / libs.name, symlinks=True)
            self.bin = site / install.parent.name / install.name / "bin"

    def start(self) -> LocalPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            if subprocess.run(["id", self.user], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", self.user],
                               check=True, capture_output=True)
            os.chmod(self.root, 0o777)
            for parent in self.root.parents:  # the user must reach its folder
                if parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
            self._reachable_binaries()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        for attempt in range(3):  # the free port found may be taken before the server binds
            try:  # it (another xdist worker's cluster): a new port, twice at most
                self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"),
                          "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root}", "start")
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
                self.port = _free_port()
                self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        raise AssertionError("unreachable")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
