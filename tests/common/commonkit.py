"""Helpers for the common/ tests: fixture data, the upstream packing loop, the CLI, a real shard server.

(Named commonkit, not helpers/utils, so that it cannot collide with a module of another test folder.)
"""

import hashlib
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# Fixture data
# ---------------------------------------------------------------------------------------------------------

def write_shards(folder, docs_per_file, row_group_size=None, compression="zstd", start=0):
    """Write shard_%05d.parquet files (column `text`), one per list of documents. Returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, docs in enumerate(docs_per_file, start):
        path = folder / f"shard_{i:05d}.parquet"
        pq.write_table(pa.table({"text": pa.array(docs, pa.string())}), path,
                       row_group_size=row_group_size, compression=compression)
        paths.append(path)
    return paths


def synthetic_docs(n, seed, words_per_doc=(20, 400)):
    """Documents of made-up words (many distinct ones, so a BPE can learn 8192 tokens) with some unicode."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(6000)]
    vocab = np.array(vocab + ["naïve", "café", "Zürich", "你好", "日本語", "🙂", "résumé", "Ελλάδα", "Москва", "2026", "3.14"])
    docs = []
    for _ in range(n):
        words = rng.choice(vocab, rng.integers(*words_per_doc))
        docs.append(" ".join(words).capitalize() + ".")
    return docs


def flip_bytes(path, offset=None, count=16):
    """Corrupt a file in place without changing its size (the middle of the file by default)."""
    data = bytearray(Path(path).read_bytes())
    offset = len(data) // 2 if offset is None else offset
    for i in range(offset, min(offset + count, len(data))):
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def truncate(path, fraction=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * fraction)])


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The packing loop as upstream karpathy/autoresearch prepare.py writes it (make_dataloader), in pure Python
# ---------------------------------------------------------------------------------------------------------

def upstream_rows(doc_batches, batch_size, seq_len, buffer_size=1000):
    """Endless (B, T+1) row arrays from an iterator of (token lists, epoch), packed by upstream's loop:
    scan the buffer for the largest document that fits the remaining space, else crop the shortest."""
    row_capacity = seq_len + 1
    doc_buffer = []
    while True:
        rows = np.empty((batch_size, row_capacity), dtype=np.int64)
        for row_idx in range(batch_size):
            pos = 0
            while pos < row_capacity:
                while len(doc_buffer) < buffer_size:
                    docs, _epoch = next(doc_batches)
                    doc_buffer.extend(docs)
                remaining = row_capacity - pos
                best_idx, best_len = -1, 0
                for i, doc in enumerate(doc_buffer):
                    doc_len = len(doc)
                    if doc_len <= remaining and doc_len > best_len:
                        best_idx, best_len = i, doc_len
                if best_idx >= 0:
                    doc = doc_buffer.pop(best_idx)
                    rows[row_idx, pos:pos + len(doc)] = doc
                    pos += len(doc)
                else:
                    shortest_idx = min(range(len(doc_buffer)), key=lambda i: len(doc_buffer[i]))
                    doc = doc_buffer.pop(shortest_idx)
                    rows[row_idx, pos:pos + remaining] = doc[:remaining]
                    pos += remaining
        yield rows


def cycled_batches(token_lists, batch=128, as_arrays=False):
    """Endless (documents, epoch) batches over a fixed list of tokenized documents, as a loader's stream.
    The batches (numpy arrays with as_arrays, as common.loader.document_batches gives them) are built now,
    before the first next()."""
    chunks = [token_lists[i:i + batch] for i in range(0, len(token_lists), batch)]
    if as_arrays:
        chunks = [[np.asarray(t, dtype=np.int32) for t in c] for c in chunks]

    def stream():
        epoch = 1
        while True:
            for c in chunks:
                yield c, epoch
            epoch += 1
    return stream()


def split_at_bos(row, bos):
    """A row's pieces: each starts at a BOS."""
    starts = np.flatnonzero(np.asarray(row) == bos).tolist()
    return [list(map(int, row[a:b])) for a, b in zip(starts, starts[1:] + [len(row)])]


# ---------------------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------------------

def run_prepare(*args, env=None, timeout=120):
    """`python -m common.prepare ARGS` from the repository root, as `make prepare` runs it."""
    import os
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    return subprocess.run([sys.executable, "-m", "common.prepare", *map(str, args)], cwd=REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def run_with_tokenizer(tokenizer_folder, imports, call, timeout=15):
    """Run `call` in a fresh Python with `tok`, the Tokenizer saved in tokenizer_folder, and print
    "ContractError: ..." if it raises one. Returns the CompletedProcess, or None if it ran past `timeout`
    (a hang, which a subprocess can be stopped from)."""
    code = f"""
import pickle, numpy as np
from pathlib import Path
from common.errors import ContractError
from common.tokenizer import Tokenizer
{imports}
folder = Path({str(tokenizer_folder)!r})
tok = Tokenizer(pickle.loads((folder / "tokenizer.pkl").read_bytes()), np.load(folder / "token_bytes.npy"))
try:
    {call}
except ContractError as e:
    print("ContractError:", e)
"""
    try:
        return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def assert_clean_error(proc, *needles):
    """Non-zero exit, one paragraph on stderr that contains every needle, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode != 0, f"expected a failure, got exit 0\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in err, f"a traceback instead of a message:\n{err}"
    assert err, "no message on stderr"
    assert "\n\n" not in err and len(err.splitlines()) <= 3, f"more than one paragraph on stderr:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in the message:\n{err}"


# ---------------------------------------------------------------------------------------------------------
# A real HTTP server for shard downloads
# ---------------------------------------------------------------------------------------------------------

class ShardServer:
    """Serves named files on 127.0.0.1 the way the Hugging Face hub does: ETag = the file's SHA-256, Range
    requests answered with 206. `cut[name] = offset` drops the connection once the body reaches that byte
    offset of the file (after a full Content-Length); `etag[name]` overrides the stated hash; `fail[name]` is a
    list of HTTP statuses to answer, one per request, before the file is served."""

    def __init__(self, files):
        self.files = dict(files)
        self.cut = {}
        self.etag = {}
        self.fail = {}
        self.requests = []          # (name, Range header or None)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                data = server.files.get(name)
                if server.fail.get(name):
                    self.send_error(server.fail[name].pop(0))
                    return
                if data is None:
                    self.send_error(404)
                    return
                total, start = len(data), 0
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(total - start))
                self.send_header("ETag", '"%s"' % server.etag.get(name, sha256(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                end = total if name not in server.cut else max(start, server.cut[name])
                self.wfile.write(data[start:end])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def gets(self, name):
        return [rng for n, rng in self.requests if n == name]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
