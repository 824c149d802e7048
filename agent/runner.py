"""Train one canvas in a subprocess with a hard timeout, streaming its output to a log and to the view."""

import json
import os
import re
import secrets
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
    record: dict | None = None        # what common.evaluate recorded for this run (see agent/integrity.py)
    nonce: str | None = None          # the run's AUTORESEARCH_NONCE, which the record must carry
    rejected: str | None = None       # the trick, when agent.integrity rejected the run

    @property
    def crashed(self):
        return self.summary is None

    def feedback(self):
        """What the proposer sees of a crash: the reason and the end of the output."""
        return f"{self.error}\n--- last lines of output ---\n" + "\n".join(self.tail[-TAIL_LINES:])


def train(root, canvas, env, timeout, log_path, on_progress=None, on_start=None):
    """Run `python <canvas>` from the repo root; kill its whole process group past `timeout` seconds.
    on_progress(fraction or None, line) is called for every output line; on_start(proc) once it started.
    The run gets a fresh nonce and a record path (<log>.record.json) in its environment; what common.evaluate
    writes there comes back in result.record. While it runs, <log>.pid holds its process group, so that a
    driver killed outright can stop it when resumed (stop_leftovers)."""
    started = time.monotonic()
    lines = []
    nonce, record_path = secrets.token_hex(8), log_path + ".record.json"
    if os.path.exists(record_path):
        os.remove(record_path)
    env = dict(env, AUTORESEARCH_NONCE=nonce, AUTORESEARCH_RECORD=record_path)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, canvas], cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
        with open(log_path + ".pid", "w") as f:
            f.write(f"{proc.pid}\n")
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
            if proc.poll() is not None:
                os.remove(log_path + ".pid")
        seconds = time.monotonic() - started
        if timed_out:
            log.write(f"\n[agent] killed after {timeout:.0f} s (hard timeout)\n")
    result = _result("\n".join(lines) + "\n", proc.returncode, seconds, timed_out, timeout)
    result.tail, result.nonce, result.record = lines[-TAIL_LINES:], nonce, _read_record(record_path)
    return result


def _result(text, returncode, seconds, timed_out, timeout):
    if timed_out:
        return RunResult(None, seconds, returncode, True,
                         f"Training exceeded the hard timeout of {timeout:.0f} s and was killed.")
    try:
        summary = parse_summary(text)
    except ContractError as e:
        why = f"Training exited with status {returncode}. " if returncode else ""
        return RunResult(None, seconds, returncode, False, why + str(e))
    if returncode != 0:
        return RunResult(None, seconds, returncode, False,
                         f"Training printed a summary but exited with status {returncode}.")
    return RunResult(summary, seconds, 0, False, None)


def _read_record(path):
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stop_leftovers(logs, canvas):
    """Kill the trainings that a driver killed outright (kill -9) left running: the process groups named by
    logs/*.pid, when that process still runs the canvas (Linux: /proc). Returns how many were stopped."""
    stopped = 0
    for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
        if not name.endswith(".pid"):
            continue
        path = os.path.join(logs, name)
        try:
            with open(path) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                alive = canvas.encode() in f.read().split(b"\0")
        except (OSError, ValueError):
            alive = False
        if alive:
            try:
                os.killpg(pid, signal.SIGKILL)
                stopped += 1
            except (ProcessLookupError, PermissionError):
                pass
        os.remove(path)
    return stopped


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
