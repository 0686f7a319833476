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

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)

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
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"), "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.root}", "start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
