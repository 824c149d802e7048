"""Train one canvas in a subprocess with a hard timeout, streaming its output to a log and to the view."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from common.errors import ContractError
from common.summary import parse_summary

PAREN_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)%\)")
PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")
TAIL_LINES = 40


@dataclass
class RunResult:
    summary: dict | None
    seconds: float
    returncode: int | None
    timed_out: bool = False
    error: str | None = None          # why there is no summary
    tail: list = field(default_factory=list)

    @property
    def crashed(self):
        return self.summary is None

    def feedback(self):
        """What the proposer sees of a crash: the reason and the end of the output."""
        return f"{self.error}\n--- last lines of output ---\n" + "\n".join(self.tail[-TAIL_LINES:])


def train(root, canvas, env, timeout, log_path, on_progress=None, on_start=None):
    """Run `python <canvas>` from the repo root; kill its whole process group past `timeout` seconds.
    on_progress(fraction or None, line) is called for every output line; on_start(proc) once it started."""
    started = time.monotonic()
    lines = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, canvas], cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
        if on_start:
            on_start(proc)

        def pump():
            # Universal newlines turn the trainers' '\r' progress updates into lines too.
            for line in proc.stdout:
                line = line.rstrip("\n")
                log.write(line + "\n")
                lines.append(line)
                if on_progress:
                    on_progress(_fraction(line), line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
        except BaseException:
            kill_group(proc)
            raise
        finally:
            reader.join(timeout=5)
        seconds = time.monotonic() - started
        if timed_out:
            log.write(f"\n[agent] killed after {timeout:.0f} s (hard timeout)\n")
    text = "\n".join(lines) + "\n"
    tail = lines[-TAIL_LINES:]
    if timed_out:
        return RunResult(None, seconds, proc.returncode, True,
                         f"Training exceeded the hard timeout of {timeout:.0f} s and was killed.", tail)
    try:
        summary = parse_summary(text)
    except ContractError as e:
        why = f"Training exited with status {proc.returncode}. " if proc.returncode else ""
        return RunResult(None, seconds, proc.returncode, False, why + str(e), tail)
    if proc.returncode != 0:
        return RunResult(None, seconds, proc.returncode, False,
                         f"Training printed a summary but exited with status {proc.returncode}.", tail)
    return RunResult(summary, seconds, 0, False, None, tail)


def kill_group(proc, grace=3.0):
    """SIGTERM the run's process group, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=grace if sig == signal.SIGTERM else 10.0)
        except subprocess.TimeoutExpired:
            pass


def _fraction(line):
    """Training progress from a trainer's progress line ('step 00123 (45.2%) | ...'), else None."""
    m = PAREN_PERCENT.search(line) or (PERCENT.search(line) if line.lstrip().startswith("step") else None)
    return min(float(m.group(1)) / 100.0, 1.0) if m else None
