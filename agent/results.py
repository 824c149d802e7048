"""The run folder: results.jsonl (the record), results.tsv (upstream's five columns, derived), diffs/, logs/.

results.jsonl is written one whole line per experiment and is the source of truth; results.tsv is rewritten
from it, so the two never disagree even after a kill.
"""

import json
import os
import statistics

TSV_STATUSES = ("keep", "discard", "crash", "rejected")  # 'invalid' (no applicable edit) rows live in results.jsonl only
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


class RunFolder:
    def __init__(self, path):
        self.path = str(path)
        self.jsonl = os.path.join(self.path, "results.jsonl")
        self.tsv = os.path.join(self.path, "results.tsv")
        self.diffs = os.path.join(self.path, "diffs")
        self.logs = os.path.join(self.path, "logs")
        self.noise = os.path.join(self.path, "noise.jsonl")
        self.inflight = os.path.join(self.path, "inflight.json")

    def create(self):
        for d in (self.path, self.diffs, self.logs):
            os.makedirs(d, exist_ok=True)

    def exists(self):
        return os.path.exists(self.jsonl)

    def rows(self):
        return read_jsonl(self.jsonl)

    def append(self, row):
        _append_line(self.jsonl, row)
        self.write_tsv()

    def write_tsv(self, rows=None):
        rows = self.rows() if rows is None else rows
        tmp = self.tsv + ".tmp"
        with open(tmp, "w") as f:
            f.write(TSV_HEADER)
            for r in rows:
                if r["status"] in TSV_STATUSES:
                    f.write(tsv_line(r))
        os.replace(tmp, self.tsv)

    def save_diff(self, name, diff):
        path = os.path.join(self.diffs, f"{name}.diff")
        with open(path, "w") as f:
            f.write(diff)
        return os.path.relpath(path, self.path)

    def log_path(self, name):
        return os.path.join(self.logs, f"{name}.log")

    def save_inflight(self, jobs):
        """The experiments started (or queued) but not logged yet, rewritten whole: what --resume re-runs."""
        tmp = self.inflight + ".tmp"
        with open(tmp, "w") as f:
            json.dump(jobs, f)
        os.replace(tmp, self.inflight)

    def inflight_jobs(self):
        try:
            with open(self.inflight) as f:
                jobs = json.load(f)
        except (OSError, ValueError):
            return []
        return jobs if isinstance(jobs, list) else []

    def append_noise(self, row):
        _append_line(self.noise, row)

    def noise_rows(self):
        return read_jsonl(self.noise)


def noise_figure(rows, noise_rows):
    """(sd, runs, where from) of the baseline's run-to-run val_bpb: `make noise` (noise.jsonl) when it has two
    runs or more, else the baseline's own runs (--baseline-runs K); (None, 0, None) when neither has two."""
    noise = [r["val_bpb"] for r in noise_rows if r.get("val_bpb") is not None]
    if len(noise) > 1:
        return statistics.stdev(noise), len(noise), "make noise"
    runs = next((r.get("val_bpb_runs") or [] for r in rows if r.get("kind") == "baseline"), [])
    if len(runs) > 1:
        return statistics.stdev(runs), len(runs), "the baseline's runs"
    return None, 0, None


def tsv_line(r):
    bpb = r.get("val_bpb")
    desc = " ".join(str(r.get("description", "")).split())  # no tabs or newlines inside a cell
    return (f"{(r.get('commit') or '0000000')[:7]}\t{bpb if bpb is not None else 0.0:.6f}\t"
            f"{r.get('memory_gb') or 0.0:.1f}\t{r['status']}\t{desc}\n")


def read_jsonl(path):
    """The rows of a jsonl file. A torn last line (a kill mid-write) is dropped from the file."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    rows, good = [], 0
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good != len(text):
        with open(path, "r+") as f:
            f.truncate(good)
    return rows


def _append_line(path, row):
    data = json.dumps(row, sort_keys=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
