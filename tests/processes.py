"""Real `kd` processes for tests, started quickly: a zygote imports kd (and torch) once and forks one child
per command, so a test can start, signal and kill a dozen processes without paying the import each time.

Each child runs the real CLI (``kdcli.cli.app``) in its own process with its own signal handlers, writes its
stdout and stderr to a log file, and exits with the CLI's exit code; the test signals or kills it by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ZYGOTE = r"""
import json, os, sys, traceback
import kdcli.cli, kdcli.run, kdcli.data.builtin  # imported once; every child inherits them
import sklearn.datasets, torch._dynamo  # imported on first use (digits; the first optimizer step): seconds each
from kdcli.cli import app

for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "run":
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.chdir(request["cwd"])
                os.environ.update(request["env"])
                log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                try:
                    app(request["args"], prog_name="kd")
                except SystemExit as exit:
                    code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif request["op"] == "wait":
        _, status = os.waitpid(request["pid"], 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Child:
    """One `kd` process started by the zygote."""

    pid: int
    log: Path
    zygote: "Zygote"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def markers(self) -> list[str]:
        """The files this process has begun writing, in order (``KD_TEST_PAUSE_WRITES`` makes it say so)."""
        return re.findall(r"^kd-test: writing (\S+)$", self.output(), flags=re.M)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # a zombie (exited, not yet reaped by the zygote) still answers signal 0
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().split()[2] != "Z"
        except (OSError, IndexError):
            return True

    def wait_for_marker(self, name: str, occurrence: int = 1, timeout: float = 120.0) -> bool:
        """Block until this process begins its ``occurrence``-th write of ``name`` (True), or has ended (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.markers().count(name) >= occurrence:
                return True
            if not self.alive():
                return self.markers().count(name) >= occurrence
            time.sleep(0.005)
        raise TimeoutError(f"pid {self.pid} never wrote {name} #{occurrence}:\n{self.output()[-2000:]}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self) -> int:
        """The exit code (negative: the signal that killed it)."""
        return self.zygote.wait(self.pid)


class Zygote:
    """A Python process with kd imported that forks a child per `kd` command."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(folder / "zygote.log").open("w"), text=True, cwd=ROOT, env=env,
        )

    def _ask(self, request: dict) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died: {(self.folder / 'zygote.log').read_text()[-2000:]}")
        return json.loads(line)

    def start(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Child:
        self.count += 1
        log = self.folder / f"child-{self.count}.log"
        reply = self._ask({"op": "run", "args": args, "cwd": str(cwd), "env": env or {}, "log": str(log)})
        return Child(reply["pid"], log, self)

    def run(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
        child = self.start(args, cwd, env)
        return child.wait(), child.output()

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["code"]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
