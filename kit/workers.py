"""Child processes that work for this one: `kit sweep --workers K` and `kit train --jobs N`.

WorkerGroup starts them each in its own session and passes signals on (see its docstring); a
worker whose command was SIGKILLed (nothing passed on) stops by itself (stop_when_orphaned).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def worker_pythonpath() -> str:
    """The workers import this very kit, installed or not (a checkout run with PYTHONPATH)."""
    here = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])


def kit_command(*args: str) -> list[str]:
    """A worker's command line: this Python running kit. `-P`: `-m` would put the working
    folder first on sys.path, ahead of worker_pythonpath, so a kit.py or a kit/ checkout in
    the project folder would run as the workers' kit (r302)."""
    return [sys.executable, "-P", "-m", "kit", *args]


def stop_when_orphaned(interval_s: float = 0.5) -> None:
    """In a worker: when the command that started it dies without passing a signal on
    (SIGKILL, the out-of-memory killer), stop as that command's Ctrl-C would have stopped it
    (SIGINT to itself). In its own session, nothing else reaches it: it trained on unseen,
    holding its run's lock, and an immediate --resume was refused."""
    parent = os.getppid()
    if parent <= 1:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="kit-orphan-watch", daemon=True).start()


TRAIN_WORKER_ENV = "KIT_TRAIN_WORKER"  # set in a `kit train --jobs` worker's environment
SIGPIPE = getattr(signal, "SIGPIPE", 13)  # (Windows has no SIGPIPE; POSIX's number)
STDOUT_CLOSED = 128 + SIGPIPE  # 141: the exit of a command whose stdout's reader left


def ended_text(signum: int) -> str:
    """How a long command was stopped, for its line on stderr (and then what is left)."""
    if signum == signal.SIGINT:
        return "interrupted"
    if signum == SIGPIPE:  # `kit train ... | head -1`: head exited
        return "stdout's reader exited (a closed pipe)"
    return f"stopped by {signal.Signals(signum).name}"


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports POLLERR on it):
    `kit train ... | head -1` once head has exited."""
    import sys

    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real stdout
        return False


def stdout_closed(exc: BaseException) -> bool:
    """Whether `exc` is stdout's broken pipe (its reader exited), which stops a long command
    as an interrupt does (the same resume hint, exit STDOUT_CLOSED); another pipe's is an
    error of its own."""
    return isinstance(exc, BrokenPipeError) and stdout_reader_gone()


def stop_writing_stdout() -> None:
    """Point stdout at /dev/null: Python flushes it again at exit, which would fail as the
    write did (the recipe of the signal module's docs)."""
    import sys

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class EndedBySignal(SystemExit):
    """SIGTERM or SIGHUP ended a worker group: exit 128 + the signal, as a process it killed
    would, after the command has said what is left (`nothing_started`: no run to resume)."""

    nothing_started = False

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def caught(signals) -> list:
    """The signals a command may take over: not those its caller ignores (`nohup` sets
    SIGHUP to SIG_IGN, so a closed terminal does not stop it; a handler would)."""
    return [sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN]


@contextlib.contextmanager
def ended_by_signals(signals=(signal.SIGTERM, signal.SIGHUP)):
    """While held, SIGTERM and SIGHUP raise EndedBySignal in the main thread (as a worker
    group's do), so a command stopped by them says what is left, as after a Ctrl-C; the
    previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise EndedBySignal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in caught(signals)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class WorkerGroup:
    """Worker processes, each in its own session, so a terminal's Ctrl-C reaches only this
    process, which passes it on exactly once to every live worker (a sweep worker stops at the
    end of its epoch, a training worker at once; a second Ctrl-C is passed on too: stop now).
    SIGTERM and SIGHUP (a scheduler, `kill`, a closed terminal) are passed on as they are (and
    no worker starts after one), and leaving the block early (an error or a
    Ctrl-C while starting) terminates the workers started so far: none outlives this process
    unless it is SIGKILLed, and then they finish their trials and stop as usual. A signal that
    comes once every worker has finished (exit 0, none queued) stops nothing: wait() returns."""

    PASSED_ON = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.ended_by: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> WorkerGroup:
        if threading.current_thread() is threading.main_thread():  # signal.signal needs it
            self.previous = {sig: signal.signal(sig, self._pass_on)
                             for sig in caught(self.PASSED_ON)}
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is not None:
                self.signal_live(signal.SIGTERM)
                for p in self.procs:
                    p.wait()
        finally:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)

    def start(self, cmd: list[str], env: dict, **popen) -> None:
        """Start one worker; none once a signal has ended the group (it would never get it)."""
        if self.ended_by is not None:
            return
        self.procs.append(subprocess.Popen(cmd, env=env, start_new_session=True, **popen))
        if self.ended_by is not None:  # the signal came while this one was being started
            self.signal_live(self.ended_by)

    def signal_live(self, signum: int) -> None:
        for p in self.procs:
            if p.poll() is None:  # poll() never blocks, so it is safe inside a handler
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    def _pass_on(self, signum, frame) -> None:
        # no Popen.wait() here: the interrupted main thread may hold that very lock
        self.ended_by = signum
        self.signal_live(signum)

    def wait(self, queued: list[tuple[list[str], dict]] | None = None, jobs: int = 0,
             on_poll=None, **popen) -> list[int]:
        """The exit codes once every worker has exited. `queued` (command, env) workers are
        started as running ones end, at most `jobs` at a time; none after an interruption.
        `on_poll()` runs between polls (e.g. to report progress)."""
        queued, interrupted = list(queued or []), False
        while True:
            try:
                # polled, not a blocking wait(): a signal delivered to another of this process's
                # threads (torch starts some) never wakes a waitpid, so it would go unnoticed
                while True:
                    running = sum(p.poll() is None for p in self.procs)
                    while queued and running < jobs and not interrupted and not self.ended_by:
                        self.start(*queued.pop(0), **popen)
                        running += 1
                    if on_poll is not None:
                        on_poll()
                    if not running:
                        break
                    time.sleep(0.2)
                break
            except KeyboardInterrupt:
                interrupted = True
                self.signal_live(signal.SIGINT)
        codes = [p.returncode for p in self.procs]
        if (self.ended_by is not None or interrupted) and not queued and not any(codes):
            return codes  # every worker had finished its work: nothing was stopped
        if self.ended_by is not None:
            raise EndedBySignal(self.ended_by)
        if interrupted:
            raise KeyboardInterrupt
        return codes
