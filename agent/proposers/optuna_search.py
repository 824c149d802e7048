"""The offline proposer on Optuna (--search optuna): a model-based search over the canvas's numeric constants.

The search space is the baseline canvas's module-level numeric constants (offline.constants()), each given a
kind and a range by the first matching row of SPACE below, relative to its value in the BASELINE canvas (so the
ranges do not drift as the best moves).

Every proposal rebuilds an in-memory study from the results log and asks it one trial (Optuna's ask interface;
the study is told the results by adding them as finished trials):
- every experiment row with a commit is a trial whose params are the constants of the canvas it trained (read
  from git at its commit, so rows of the coordinate search, of LLMs and the baseline count too, and a re-run on
  a new best counts as what it trained; the params in each row's meta stand in where git has no canvas):
  the baseline, kept, discarded and 'rebase' rows are COMPLETE with their val_bpb, crashed (or rejected)
  ones FAIL. A value outside its range is told at the nearer bound;
- experiments in flight (other workers) are RUNNING trials with their params; with the constant liar, the
  sampler treats them as bad results, so N workers get N different trials. A proposal equal to one in flight
  or one already measured is asked again, with a fresh subset.
Nothing else is stored: the proposal is a pure function of (the rows, the metas in flight, --seed), and a
resumed run proposes exactly what an uninterrupted one would have.

The sampler, for nights of 8-20 experiments: a tuned baseline in 10-20 dimensions is a poor place for random
search or for TPE's usual 10 random start-up trials, since a random point in the whole box is almost always
worse than the baseline and a night would end before the model has learnt anything. So each trial is greedy and
local: it starts from the current best canvas and changes 1-3 constants of it, drawn at random (seeded; the
constants changed least often so far are the likelier), the others fixed at the best's values
(PartialFixedSampler). Their values come from a multivariate TPE (TPESampler(multivariate=True,
constant_liar=True)) after only N_STARTUP finished trials (the baseline counts), random before. With up to ten
results TPE's 'good' group is the best canvas alone, so it samples near the best (and, through its broad prior,
now and then far from it) and away from the results that were worse or are in flight: a hill-climb whose step
sizes and directions learn from every result, discarded and crashed ones included. The sampler is seeded from
(--seed, the trial number), so the proposal stays a pure function of the log.
"""

import ast
import hashlib
import math
import random
import re
import subprocess
import warnings
from dataclasses import dataclass

from agent.git import Git
from agent.proposers.base import NoProposal, Proposal
from agent.proposers.offline import _number, constants, replace_value

# The search space. First match on the constant's name wins; v is the constant's value in the baseline canvas.
#   log      float, log-uniform in [low, high]       float    float, uniform in [low, high]
#   int      integer in [low, high]; `step s`: only low, low + s, ...
#   log-int  integer, log-uniform in [low, high]
#   pow2     2**k for the integers k with 2**k in [low, high]; written as 2**k when the canvas writes it so
#   auto     a positive float: log; a power of two: pow2; another positive integer: log-int; anything else: left out
# A rule that does not fit the value (log or auto for v <= 0, an integer kind for a float) leaves it out, as do
# the names offline.constants() skips (SEED, EVAL..., UNTIMED...). Tuples such as ADAM_BETAS are not constants.
SPACE = (
    # name pattern                  kind        range
    (r"_STEPS$|_ITERS$|_EPOCHS$",   "log-int",  "v/4 .. 4v"),          # schedule lengths in steps
    (r"LR$|LEARNING_RATE",          "log",      "v/4 .. 4v"),          # learning rates
    (r"WEIGHT_DECAY",               "log",      "v/4 .. 4v"),
    (r"BETA|MOMENTUM",              "float",    "0.5 .. 0.999"),       # EMA coefficients; 1 would never move
    (r"WARMUP_(RATIO|FRAC)",        "float",    "0 .. 0.3"),           # share of the budget spent warming up
    (r"DROPOUT",                    "float",    "0 .. 0.5"),
    (r"ASPECT_RATIO",               "int",      "v/2 .. 2v step v/4"), # width per layer, not a ratio in [0, 1];
                                                                       # steps that change the rounded width
    (r"RATIO|FRAC|PROB",            "float",    "0 .. 1"),             # fractions: warmdown, final LR, ...
    (r"HEAD_DIM",                   "pow2",     "v/2 .. 2v"),          # attention kernels want 64, 128, 256
    (r"DEPTH|LAYERS|HEADS",         "int",      "v/2 .. 2v"),          # model shape
    (r"BATCH|SIZE|DIM|TOKENS",      "pow2",     "v/4 .. 4v"),          # batch sizes and widths
    (r"",                           "auto",     "v/4 .. 4v"),          # anything else
)

N_STARTUP = 3          # finished trials (the baseline included) before TPE models instead of sampling at random
SUBSET_SIZES = (1, 2, 3)  # how many constants one trial changes, drawn uniformly
MAX_ASKS = 32          # asks per proposal before giving up on finding a new configuration
OK_STATUS = ("keep", "discard", "rebase")


@dataclass(frozen=True)
class Dim:
    name: str
    kind: str      # log, float, int, log-int, pow2
    low: float     # bounds of the value in the canvas (pow2: of 2**k)
    high: float
    step: int = 1  # int: the grid low, low + step, ...

    def distribution(self):
        from optuna.distributions import FloatDistribution, IntDistribution
        if self.kind == "pow2":
            return IntDistribution(int(math.log2(self.low)), int(math.log2(self.high)))
        if self.kind in ("int", "log-int"):
            return IntDistribution(int(self.low), int(self.high), log=self.kind == "log-int", step=self.step)
        return FloatDistribution(self.low, self.high, log=self.kind == "log")

    def internal(self, value):
        """A canvas value as this dimension's param (pow2: the exponent), clipped into its range."""
        if self.kind == "pow2":
            k = round(math.log2(value)) if value > 0 else -math.inf
            return int(min(max(k, math.log2(self.low)), math.log2(self.high)))
        if self.kind in ("int", "log-int"):
            on_grid = self.low + round((value - self.low) / self.step) * self.step
            return int(min(max(on_grid, self.low), self.high))
        return float(min(max(value, self.low), self.high))

    def literal(self, param, current_src):
        """A param as a Python literal for the canvas: ints as ints (2**k where the canvas writes that form),
        floats in the fewest significant digits (3 or more) that stay inside the range."""
        if self.kind == "pow2":
            k = int(param)
            return f"2**{k}" if re.fullmatch(r"\s*2\s*\*\*\s*\d+\s*", current_src) else str(2 ** k)
        if self.kind in ("int", "log-int"):
            return str(int(param))
        for digits in range(3, 18):
            s = f"{param:.{digits}g}"
            if not any(c in s for c in ".e"):
                s += ".0"
            if self.low <= float(s) <= self.high:
                return s
        return repr(float(param))


def _bound(text, v):
    """'v/4', '4v', 'v', '0.999' -> a number."""
    m = re.fullmatch(r"(\d*\.?\d*)v(?:/(\d+(?:\.\d*)?))?", text.strip())
    if not m:
        return float(text)
    return v * float(m.group(1) or 1) / float(m.group(2) or 1)


def dimension(name, v):
    """The Dim for a constant with baseline value v, from the first matching SPACE row; None when left out."""
    for pattern, kind, span in SPACE:
        if re.search(pattern, name):
            break
    span, _, step = span.partition(" step ")
    low, high = (_bound(s, v) for s in span.split(".."))
    is_int = isinstance(v, int) and not isinstance(v, bool)
    if kind == "auto":
        if not v > 0:
            return None
        kind = "log" if not is_int else "pow2" if v >= 2 and v & (v - 1) == 0 else "log-int"
    if kind == "pow2" and not (is_int and v >= 1 and v & (v - 1) == 0):
        kind = "int"  # a size that is not a power of two: plain integers in the same range
    if kind in ("int", "log-int", "pow2"):
        if not is_int or v < 1:
            return None
        if kind == "pow2":
            low, high = 2 ** math.ceil(math.log2(max(low, 1))), 2 ** math.floor(math.log2(high))
        else:
            low, high = max(math.ceil(low), 1), math.floor(high)
            step = _bound(step, v) if step and kind == "int" else 1
            if step != int(step) or step < 1 or (v - low) % step:
                step = 1  # v is not on that grid: every integer
            step = int(step)
            high = low + (high - low) // step * step
    elif kind == "log" and not (v > 0 and low > 0):
        return None
    if not low < high or not low <= v <= high:
        return None
    return Dim(name, kind, low, high, step if kind == "int" else 1)


def search_space(text):
    """{name: Dim} for a (baseline) canvas, in the canvas's order."""
    dims = {}
    for name, const in constants(text).items():
        dim = dimension(name, const.value)
        if dim:
            dims[name] = dim
    return dims


def values(text):
    """{name: number} of a canvas's constants; None when it does not parse."""
    try:
        return {n: c.value for n, c in constants(text).items()}
    except (SyntaxError, ValueError):
        return None


def config(found, space, default):
    """The space's values among a canvas's constants (`values()`), `default` (the baseline's) for any it lacks."""
    return None if found is None else {n: found.get(n, default[n]) for n in space}


def _seed(*parts):
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def _quiet():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class OptunaProposer:
    name = "optuna"
    model = None
    needs_program = False  # reads no program.md

    def __init__(self, seed=0):
        self.seed = seed
        self._texts = {}   # commit -> canvas text (git objects never change, so these caches keep it pure)
        self._values = {}  # commit -> values() of that text

    # -- the study, rebuilt from the log ------------------------------------------------------------------

    def canvas_at(self, root, canvas, commits):
        """{commit: the canvas text at that commit, or None when git has none}, cached."""
        for c in dict.fromkeys(commits):
            if c and c not in self._texts:
                try:
                    self._texts[c] = Git(root).show(c, canvas)
                except subprocess.CalledProcessError:
                    self._texts[c] = None
        return {c: self._texts.get(c) for c in commits}

    def baseline_text(self, ctx):
        """The canvas at the baseline row's commit: the ranges are relative to it, so they never drift."""
        base = next((r for r in ctx.history if r.get("kind") == "baseline" and r.get("commit")), None)
        if base is None:
            return ctx.text  # no baseline yet: this canvas is the baseline
        text = self.canvas_at(ctx.root, ctx.canvas, [base["commit"]])[base["commit"]]
        if text is None:
            raise NoProposal(f"The Optuna search cannot read the baseline canvas ({ctx.canvas} at {base['commit'][:7]} "
                             f"in {ctx.root}); its ranges are relative to it. Was the repository's history rewritten?")
        return text

    def trials(self, ctx, space, default):
        """[(state, value, config, meta)] for the finished experiments (in log order), then the ones in flight."""
        rows = [r for r in ctx.history if r.get("commit") and r.get("kind") in ("baseline", "experiment")]
        texts = self.canvas_at(ctx.root, ctx.canvas, [r["commit"] for r in rows])
        out = []
        for r in rows:
            c = r["commit"]
            if c not in self._values and texts.get(c) is not None:
                self._values[c] = values(texts[c])
            cfg = config(self._values.get(c), space, default)
            params = (r.get("meta") or {}).get("params")
            if cfg is None and params:
                cfg = {n: params.get(n, default[n]) for n in space}
            if cfg is None:
                continue  # its canvas is gone or does not parse: nothing to tell
            ok = r.get("kind") == "baseline" or r.get("status") in OK_STATUS  # else crash, rejected, ...: FAIL
            if ok and r.get("val_bpb") is not None and math.isfinite(r["val_bpb"]):
                out.append(("COMPLETE", r["val_bpb"], cfg, r.get("meta") or {}))
            else:
                out.append(("FAIL", None, cfg, r.get("meta") or {}))
        current = config(values(ctx.text), space, default) or dict(default)
        for f in ctx.in_flight:
            meta = f.get("meta") or {}
            if "params" in meta:
                cfg = {n: meta["params"].get(n, default[n]) for n in space}
            elif meta.get("name") in space and "new" in meta:  # a coordinate-search move from the best
                try:
                    new = _number(ast.parse(str(meta["new"]), mode="eval").body)
                except SyntaxError:
                    new = None
                if new is None:
                    continue
                cfg = {**current, meta["name"]: new}
            else:
                continue  # an LLM's edit: not a point of this space
            out.append(("RUNNING", None, cfg, meta))
        return out

    def study(self, ctx):
        """(study, space, configs, default) rebuilt from ctx: every finished experiment as a COMPLETE or FAIL
        trial, the ones in flight as RUNNING. configs: the trials' canvas values, in the same order; default: the
        baseline's values."""
        import optuna
        from optuna.trial import TrialState, create_trial
        _quiet()
        base = self.baseline_text(ctx)
        space = search_space(base)
        default = {n: c.value for n, c in constants(base).items() if n in space}
        dists = {n: d.distribution() for n, d in space.items()}
        study = optuna.create_study(direction="minimize")
        configs = []
        for state, value, cfg, meta in self.trials(ctx, space, default):
            params = {n: space[n].internal(cfg[n]) for n in space}
            study.add_trial(create_trial(state=TrialState[state], value=value, params=params, distributions=dists,
                                         user_attrs={"optuna_trial": meta.get("trial")} if "trial" in meta else None))
            configs.append(cfg)
        return study, space, configs, default

    # -- one proposal -------------------------------------------------------------------------------------

    def propose(self, ctx):
        from optuna.samplers import PartialFixedSampler, TPESampler
        study, space, configs, default = self.study(ctx)
        current_consts = constants(ctx.text)
        free = [n for n in space if n in current_consts]
        if not free:
            raise NoProposal(f"{ctx.canvas} has no module-level numeric constant in the Optuna search space (see "
                             "SPACE in agent/proposers/optuna_search.py), so --search optuna has nothing to "
                             "change. Use an LLM proposer, or write the hyperparameters as NAME = number.",
                             exhausted=True)
        current = config(values(ctx.text), space, default)
        number = len(study.trials)
        seen = {tuple(sorted(c.items())) for c in configs}
        counts = self.change_counts(ctx)
        tpe = TPESampler(seed=_seed("optuna", self.seed, number), n_startup_trials=N_STARTUP, multivariate=True,
                         constant_liar=True)
        dists = {n: d.distribution() for n, d in space.items()}
        for attempt in range(MAX_ASKS):
            rng = random.Random(_seed("subset", self.seed, number, attempt))
            chosen = self.pick(free, counts, rng)
            fixed = {n: space[n].internal(current[n]) for n in space if n not in chosen}
            study.sampler = PartialFixedSampler(fixed, tpe)
            trial = study.ask(dists)
            changes = {}
            for n in chosen:
                src = current_consts[n].src
                new = space[n].literal(trial.params[n], src)
                if _number(ast.parse(new, mode="eval").body) != current_consts[n].value:
                    changes[n] = (src, new)
            if not changes:
                continue
            text, params = ctx.text, dict(current)
            for n, (_, new) in changes.items():
                text = replace_value(text, constants(text)[n], new)
                params[n] = constants(text)[n].value
            if tuple(sorted(params.items())) in seen or text == ctx.text:
                continue
            listing = ", ".join(f"{n} {old} -> {new}" for n, (old, new) in changes.items())
            return Proposal(description=f"optuna trial {number}: {listing}", text=text,
                            meta={"search": "optuna", "trial": number, "seed": self.seed, "params": params,
                                  "changed": {n: [old, new] for n, (old, new) in changes.items()}})
        raise NoProposal(f"The Optuna search asked {MAX_ASKS} trials and each was the current best, one already "
                         "measured or one in flight: its space around the best looks exhausted. Widen SPACE in "
                         "agent/proposers/optuna_search.py, or use an LLM proposer.", exhausted=True)

    @staticmethod
    def change_counts(ctx):
        """How often each constant was changed by the experiments so far and those in flight (from their metas)."""
        counts = {}
        metas = [r.get("meta") for r in ctx.history if r.get("status") != "invalid"]
        for m in metas + [f.get("meta") for f in ctx.in_flight]:
            m = m or {}
            for n in list(m.get("changed") or ()) + ([m["name"]] if isinstance(m.get("name"), str) else []):
                counts[n] = counts.get(n, 0) + 1
        return counts

    @staticmethod
    def pick(names, counts, rng):
        """1-3 of the names, the less often changed the likelier (weight 1 / (1 + count))."""
        k = min(rng.choice(SUBSET_SIZES), len(names))
        pool, chosen = list(names), []
        for _ in range(k):
            weights = [1 / (1 + counts.get(n, 0)) for n in pool]
            x, acc = rng.random() * sum(weights), 0.0
            for i, w in enumerate(weights):
                acc += w
                if x < acc or i == len(pool) - 1:
                    chosen.append(pool.pop(i))
                    break
        return [n for n in names if n in chosen]

    def fix(self, ctx, proposal, feedback):
        return None  # a crash is a failed trial; the study learns from it
