"""Framework-neutral batches: BOS-aligned best-fit packing into numpy (B, T) inputs and targets.

Packing follows upstream autoresearch exactly: rows of T+1 tokens, each starting at a document's BOS; the
largest buffered document that fits the remaining space goes next; when none fits, the shortest one is
cropped to fill the row. No padding, every token is trained on. Upstream scans the whole buffer in Python for
every placement; here the buffer is indexed by length (a sorted list of lengths, each with a FIFO of
documents), so a placement is a bisect, with the same choices and the same rows.

By default every split is read in its files' order, every epoch the same, as upstream's loader does (the
training loss and val_bpb of a trainer depend on it: see docs/notes/fidelity.md). With a seed, training units
(parquet row groups) are shuffled per epoch from it instead. Either way the same arguments give the same
batches. A background thread packs ahead so the accelerator never waits.

make_loader serves the training split only (the validation rows are evaluate_bpb's), and it is the budget
guard: it counts the batches it hands out, knows when timed training began (after the profile's untimed
steps) and stops serving once training runs past the profile's budget plus a slack (common/record.py).
"""

import queue
import threading
import time
from bisect import bisect_right, insort
from collections import deque

import numpy as np

from common import record
from common.data import get_source, read_unit
from common.errors import ContractError
from common.platform import get_profile
from common.tokenizer import Tokenizer

TOKENIZE_BATCH = 128      # documents per tokenizer call, as upstream
BUFFER_SIZE = 1000        # documents kept to choose from


def document_batches(source, tokenizer, split, seed=None):
    """Endless (token arrays, epoch) batches of BOS-prefixed documents, in the files' order every epoch, as
    upstream; with a seed, training units are shuffled per epoch by a generator seeded by (seed, epoch).
    Validation is always read in order, tokenized once and replayed."""
    if split == "val":
        record.note_val_read()
    source.verify()
    units = source.units(split)
    replay = [] if split == "val" else None
    epoch = 1
    while True:
        if replay:                  # validation after its first pass
            for batch in replay:
                yield batch, epoch
            epoch += 1
            continue
        order = range(len(units))
        if split == "train" and seed is not None:
            order = np.random.default_rng((seed, epoch)).permutation(len(units))
        documents = 0
        for u in order:
            texts = read_unit(*units[u])
            documents += len(texts)
            for i in range(0, len(texts), TOKENIZE_BATCH):
                batch = tokenizer.encode_arrays(texts[i:i + TOKENIZE_BATCH])
                if replay is not None:
                    replay.append(batch)
                yield batch, epoch
        if documents == 0:
            files = source.train_files if split == "train" else source.val_files
            raise ContractError(
                f"The {split} split of {source.name} holds no documents ({', '.join(f.name for f in files)}). "
                "Put text in those files, or point DATA= at a folder that has some.")
        epoch += 1


class BestFitPacker:
    """Fills rows from a stream of document batches, choosing documents as upstream's best-fit loop does."""

    def __init__(self, batches, buffer_size=BUFFER_SIZE):
        self.batches = batches
        self.buffer_size = buffer_size
        self.lengths = []            # sorted distinct lengths present in the buffer
        self.by_length = {}          # length -> deque of documents, oldest first
        self.count = 0
        self.epoch = 1

    def _add(self, doc):
        n = len(doc)
        docs = self.by_length.get(n)
        if docs is None:
            docs = self.by_length[n] = deque()
            insort(self.lengths, n)
        docs.append(doc)
        self.count += 1

    def _take(self, index):
        n = self.lengths[index]
        docs = self.by_length[n]
        doc = docs.popleft()
        if not docs:
            del self.by_length[n]
            del self.lengths[index]
        self.count -= 1
        return doc

    def fill(self, row):
        """Write one packed row into the 1-D int array `row`."""
        pos, size = 0, len(row)
        while pos < size:
            while self.count < self.buffer_size:
                docs, self.epoch = next(self.batches)
                for doc in docs:
                    self._add(doc)
            remaining = size - pos
            i = bisect_right(self.lengths, remaining) - 1
            if i >= 0:
                doc = self._take(i)
                row[pos:pos + len(doc)] = doc
                pos += len(doc)
            else:
                row[pos:] = self._take(0)[:remaining]
                pos = size


def packed_batches(packer, batch_size, seq_len):
    """Endless (inputs, targets, epoch): int32 arrays of shape (B, T), targets shifted by one."""
    while True:
        rows = np.empty((batch_size, seq_len + 1), dtype=np.int32)
        for r in range(batch_size):
            packer.fill(rows[r])
        yield np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:]), packer.epoch


class Prefetcher:
    """Runs a generator in a daemon thread, `depth` items ahead. Errors surface in the consumer."""

    def __init__(self, generator, depth=4):
        self.error = None
        self.queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, args=(generator,), daemon=True)
        self.thread.start()

    def _run(self, generator):
        try:
            for item in generator:
                self.queue.put((item, None))
        except BaseException as e:   # noqa: BLE001 - re-raised in the consumer
            self.queue.put((None, e))

    def __iter__(self):
        return self

    def __next__(self):
        if self.error is not None:      # the thread has ended; keep failing the same way
            raise self.error
        item, self.error = self.queue.get()
        if self.error is not None:
            raise self.error
        return item


class BudgetedBatches(Prefetcher):
    """make_loader's iterator: hands out the prefetched batches, counting them when they are taken (not when
    the thread packs them) with the time timed training waited for them, and stops serving once training runs
    past the budget. Timed training begins once the profile's untimed steps are served, counted in tokens
    (untimed_steps x the profile's tokens per step). The profile is the environment's ($AUTORESEARCH_PROFILE /
    $AUTORESEARCH_BUDGET, fixed by the agent), not one the canvas passes; the counts are the run's, shared by all
    its loaders, so a fresh loader buys no fresh untimed steps."""

    def __init__(self, generator, depth, batch_tokens, profile):
        super().__init__(generator, depth)
        self.batch_tokens, self.profile = batch_tokens, profile
        self.untimed_tokens = profile.untimed_steps * profile.total_batch_size
        self.slack = max(0.1 * profile.time_budget, 5.0)  # an honest run must never trip it, even on a loaded CI host
        self.counts = record.training_counts()

    def __next__(self):
        counts, now = self.counts, time.time()
        if counts["timed_start_at"] is None and counts["tokens"] >= self.untimed_tokens:
            counts["timed_start_at"] = now
            counts["deadline_at"] = now + self.profile.time_budget + self.slack
        if counts["deadline_at"] is not None and now > counts["deadline_at"]:
            counts["stopped"] = True
            p = self.profile
            record.reject("budget", (
                f"Training went past its budget: a training batch was asked for "
                f"{now - counts['timed_start_at']:.1f} s after timed training began (after the profile's "
                f"{p.untimed_steps} untimed steps), but the budget is {p.time_budget:g} s (plus {self.slack:g} s "
                f"of slack), so the loader stopped serving. The budget is fixed by the profile ({p.name}), not by "
                "train.py: the training loop must stop once its timed training reaches the profile's time_budget."))
        t0 = time.perf_counter()
        item = super().__next__()
        if counts["timed_start_at"] is not None:  # the packing thread fell behind the training loop
            counts["data_wait_s"] += time.perf_counter() - t0
        counts["batches"] += 1
        counts["tokens"] += self.batch_tokens
        counts["last_batch_at"] = time.time()
        counts["first_batch_at"] = counts["first_batch_at"] or counts["last_batch_at"]
        return item


def make_loader(split, batch_size, seq_len, seed=None, source=None, tokenizer=None, prefetch=4):
    """Endless (inputs, targets, epoch) training batches, packed in a background thread; seed None reads the
    files in order every epoch (upstream), a seed shuffles the training units per epoch. `split` must be
    'train': the validation rows are scored by evaluate_bpb only (eval_rows gives them to tools)."""
    if split != "train":
        record.reject("validation", (
            f"make_loader was asked for the '{split}' split, but it serves the training split only: training "
            "batches come from the training split, and the validation rows are scored by evaluate_bpb only. "
            "Training on them would score the model on text it has seen; use make_loader('train', ...)."))
    source = source or get_source()
    tokenizer = tokenizer or Tokenizer.load(source)
    packer = BestFitPacker(document_batches(source, tokenizer, "train", seed))
    return BudgetedBatches(packed_batches(packer, batch_size, seq_len), prefetch, batch_size * seq_len, get_profile())
