"""Run the kit CLI in-process, the way a user would type it."""

from __future__ import annotations

from typer.testing import CliRunner

from kit.cli import app


def run_cli(*args: str, expect: int | None = 0):
    """Invoke `kit ARGS...`; assert the exit code unless expect is None."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if expect is not None:
        assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
    return result
