"""What the loop shows while it runs: a rich Live panel on a terminal, plain lines otherwise (logs, CI)."""

import threading
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


class State:
    def __init__(self, title, budget, max_experiments):
        self.title, self.budget, self.max_experiments = title, budget, max_experiments
        self.n, self.description, self.phase = None, "", "starting"
        self.started = None
        self.fraction = None
        self.last_line = ""
        self.best = None
        self.counts = {"keep": 0, "discard": 0, "crash": 0, "rejected": 0}
        self.recent = []

    def progress(self):
        """Training progress against the budget: the trainer's own percentage, else elapsed time."""
        if self.fraction is not None:
            return self.fraction
        if self.started is None or not self.budget:
            return 0.0
        return min((time.monotonic() - self.started) / self.budget, 1.0)


def make_view(title, budget, max_experiments, console=None):
    console = console or Console()
    cls = LiveView if console.is_terminal else PlainView
    return cls(State(title, budget, max_experiments), console)


class PlainView:
    def __init__(self, state, console):
        self.s, self.console = state, console

    def __enter__(self):
        self._print(self.s.title)
        return self

    def __exit__(self, *exc):
        return False

    def _print(self, text):
        print(text, flush=True)

    def message(self, text):
        self._print(text)

    def start(self, n, description, phase="proposing"):
        self.s.n, self.s.description, self.s.phase = n, description, phase
        self.s.started, self.s.fraction, self.s.last_line = time.monotonic(), None, ""

    def phase(self, phase):
        self.s.phase = phase
        self.s.started, self.s.fraction = time.monotonic(), None
        self._print(f"[{self.s.n:03d}] {phase}: {self.s.description}")

    def line(self, fraction, line):
        if fraction is not None:
            self.s.fraction = fraction
        self.s.last_line = line

    def finish(self, row, best):
        self.s.best = best
        if row["status"] in self.s.counts and row.get("kind") == "experiment":
            self.s.counts[row["status"]] += 1
        self.s.recent = (self.s.recent + [row])[-6:]
        bpb = f"{row['val_bpb']:.6f}" if row.get("val_bpb") is not None else "-"
        c = self.s.counts
        best_s = f"{best:.6f}" if best is not None else "-"
        self._print(f"[{row['n']:03d}] {row['status']:<7} val_bpb {bpb}  best {best_s}  "
                    f"(kept {c['keep']}, discarded {c['discard']}, crashed {c['crash']}{rejected_note(c)})  "
                    f"{row.get('description', '')}")


def rejected_note(counts):
    return f", rejected {counts['rejected']}" if counts["rejected"] else ""


def training_status(s):
    """The progress bar and its words. Until the trainer reports progress of its timed steps, the run is in
    its untimed phase (imports, compilation, the profile's untimed steps): say so, not "7 s of 3 s budget"."""
    elapsed = time.monotonic() - s.started if s.started else 0.0
    bar = Table.grid(padding=(0, 1))
    if s.phase.startswith(("training", "confirming")) and not s.fraction:
        bar.add_row(ProgressBar(total=1.0, completed=0.0, width=40),
                    f"untimed start-up {elapsed:.0f} s (compiling, first steps; not part of the {s.budget:g} s budget)")
    else:
        bar.add_row(ProgressBar(total=1.0, completed=s.progress(), width=40),
                    f"{100 * s.progress():5.1f}% of the {s.budget:g} s budget, {elapsed:.0f} s in this phase")
    return bar


class LiveView(PlainView):
    def __init__(self, state, console):
        super().__init__(state, console)
        self.live = Live(self, console=console, refresh_per_second=4, transient=False)
        self.lock = threading.Lock()

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        return False

    def _print(self, text):
        self.live.console.print(Text(text))

    def phase(self, phase):
        self.s.phase = phase
        self.s.started, self.s.fraction = time.monotonic(), None

    def __rich__(self):
        s = self.s
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        total = f"/{s.max_experiments}" if s.max_experiments else ""
        grid.add_row("experiment", f"{s.n if s.n is not None else '-'}{total}  [{s.phase}]")
        grid.add_row("change", Text(s.description or "-", overflow="ellipsis", no_wrap=True))
        grid.add_row("training", training_status(s))
        grid.add_row("best val_bpb", f"{s.best:.6f}" if s.best is not None else "-")
        c = s.counts
        grid.add_row("results", f"kept {c['keep']}  discarded {c['discard']}  crashed {c['crash']}{rejected_note(c)}")
        grid.add_row("output", Text(s.last_line[-120:], style="dim", overflow="ellipsis", no_wrap=True))
        return Group(Text(s.title, style="bold cyan"), grid)


