"""Where the text comes from: the climbmix shards (downloaded) or any local folder, verified by checksum.

Two equal kinds of source:
- climbmix (the default): upstream's parquet shards `shard_%05d.parquet` (column `text`), downloaded into
  $AUTORESEARCH_CACHE/data; shard 06542 is pinned as validation.
- a local folder (DATA=path / AUTORESEARCH_DATA): parquet files with a `text` column, `.txt` files (one
  document per paragraph, paragraphs split at blank lines) or `.jsonl` files (one JSON object per line, key
  `text`). The rule for validation: the LAST file in sorted path order is the validation split, every other
  file is training data. Upstream's layout (highest-numbered shard = validation) follows that rule.

Every file's SHA-256 is recorded in a manifest the first time it is seen (after download, for climbmix);
later reads verify it, so a corrupt or truncated file is caught before it silently feeds training.
"""

import hashlib
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import ContractError

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
MAX_SHARD = 6542
VAL_SHARD = MAX_SHARD
DATA_SUFFIXES = (".parquet", ".txt", ".jsonl")
DOWNLOAD_ATTEMPTS = 5


def cache_dir():
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch")


def shard_name(index):
    return f"shard_{index:05d}.parquet"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class DataSource:
    """A set of data files split into train and val, with a work folder for its manifest, tokenizer and
    evaluation cache. Build one with get_source()."""

    def __init__(self, name, root, workdir, files, remote):
        self.name = name
        self.root = Path(root)
        self.workdir = Path(workdir)
        self.remote = remote
        self.files = files                       # sorted; the last one is validation
        self.train_files = files[:-1]
        self.val_files = files[-1:]

    @property
    def manifest_path(self):
        return self.workdir / "manifest.json"

    def read_manifest(self):
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}

    def write_manifest(self, manifest):
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "source.txt").write_text(f"{self.name}\n")
            if not self.remote:
                path_binding(self.root).parent.mkdir(parents=True, exist_ok=True)
                path_binding(self.root).write_text(self.workdir.name)
            tmp = self.manifest_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(tmp, self.manifest_path)
        except OSError as e:
            raise ContractError(
                f"Cannot write the data manifest in {self.workdir} ({e.strerror}). The cache must be writable the "
                "first time a data folder is used: run `make prepare DATA=...` where the cache is writable (or set "
                "AUTORESEARCH_CACHE to a writable folder).") from None

    def identity(self):
        """What a result records about its data: the source and every file's hash."""
        manifest = self.read_manifest()
        return {
            "source": self.name,
            "val": [f.name for f in self.val_files],
            "sha256": {str(f.relative_to(self.root)): manifest.get(str(f.relative_to(self.root)), {}).get("sha256")
                       for f in self.files},
        }

    def verify(self, full=False):
        """Check every file against the manifest (recording files seen for the first time) and check that
        parquet files are readable and have a `text` column. Hashes are recomputed when a file's size or
        mtime changed, or always with full=True. Raises ContractError naming the file and the fix."""
        manifest = self.read_manifest()
        changed, skipped, replaced = False, {}, {}
        for path in self.files:
            key = str(path.relative_to(self.root))
            stat = path.stat()
            entry = manifest.get(key)
            if entry is None:
                if self.remote:
                    raise ContractError(self._corrupt_message(path, "it has no download record"))
                if path.suffix == ".parquet":
                    check_parquet(path)
                empty, bad_chars = unusable(path)
                manifest[key] = {"sha256": sha256_file(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                 "skipped_documents": empty, "replaced_characters": bad_chars}
                skipped.update({path.name: empty} if empty else {})
                replaced.update({path.name: bad_chars} if bad_chars else {})
                changed = True
                continue
            if entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns and not full:
                continue
            if entry["size"] != stat.st_size or sha256_file(path) != entry["sha256"]:
                raise ContractError(self._corrupt_message(path, "its SHA-256 no longer matches the manifest"))
            entry["mtime_ns"] = stat.st_mtime_ns
            changed = True
        for path in self.files:     # before the manifest is written: an unreadable file is never recorded
            if path.suffix == ".parquet":
                check_parquet(path)
        if skipped:  # said once, when the files are first recorded
            print(f"Data: skipping {sum(skipped.values())} documents with a null or empty `text` ("
                  + ", ".join(f"{name}: {n}" for name, n in skipped.items()) + ")", flush=True)
        for name, n in replaced.items():
            print(f"Data: {name} is not valid UTF-8: {n} undecodable byte sequence(s) read as U+FFFD", flush=True)
        if changed:
            self.write_manifest(manifest)

    def _corrupt_message(self, path, why):
        if self.remote:
            return (f"The data file {path} is corrupt or truncated ({why}). Run `make prepare` again: it deletes "
                    "the bad shard and downloads it afresh.")
        return (f"The data file {path} changed since it was first used ({why}), so results would no longer be "
                f"comparable. Restore the file, or, if the change is intended, delete {self.manifest_path} "
                "(and the tokenizer beside it) and run `make prepare DATA=...` again.")

    def units(self, split):
        """The split's reading units in order: (path, row_group) for parquet, (path, None) for text files.
        A loader shuffles units, so it never has to hold a whole split in memory."""
        files = self.train_files if split == "train" else self.val_files
        units = []
        for path in files:
            if path.suffix == ".parquet":
                units += [(path, rg) for rg in range(pq.ParquetFile(path).num_row_groups)]
            else:
                units.append((path, None))
        return units

    def documents(self, split):
        """One pass over the documents of a split, in order: yields a list of texts per unit."""
        for path, rg in self.units(split):
            yield read_unit(path, rg)


def check_parquet(path):
    """A parquet file must open and hold a `text` column."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ContractError(
            f"The data file {path} is not a readable parquet file ({e}). It is corrupt or truncated: delete it "
            "and run `make prepare` again (downloaded shards are fetched afresh), or point DATA= at a folder "
            "of good files.") from None
    if "text" not in schema.names:
        raise ContractError(
            f"The parquet file {path} has no `text` column (its columns: {', '.join(schema.names) or 'none'}). "
            "Every shard needs the documents in a string column named `text`: rename the column, or convert "
            "the data to .txt/.jsonl files.")


def unusable(path):
    """(documents with a null or empty text, undecodable byte sequences) of a data file: what read_unit leaves
    out or replaces, for verify() to report once."""
    if path.suffix == ".parquet":
        column = pq.read_table(path, columns=["text"]).column("text")
        return column.null_count + (pc.sum(pc.equal(column, "")).as_py() or 0), 0
    data = Path(path).read_bytes()
    bad = len(data.decode("utf-8", errors="replace")) - len(data.decode("utf-8", errors="ignore"))
    if path.suffix == ".jsonl":
        return sum(1 for line in data.decode("utf-8", errors="replace").splitlines()
                   if line.strip() and _jsonl_text(line) in (None, "")), bad
    return 0, bad


def _jsonl_text(line):
    try:
        return json.loads(line).get("text")
    except (ValueError, AttributeError):
        return "not checked here"  # read_unit names a malformed line


def read_unit(path, row_group=None):
    """The document strings of one parquet row group, or of one whole .txt/.jsonl file. Null and empty
    documents are left out (verify() reports how many); text that is not UTF-8 is decoded with U+FFFD."""
    if path.suffix == ".parquet":
        try:
            docs = pq.ParquetFile(path).read_row_group(row_group, columns=["text"]).column("text").to_pylist()
            return [d for d in docs if d]
        except (pa.ArrowException, OSError) as e:
            raise ContractError(
                f"The data file {path} cannot be read ({e}): it is corrupt or truncated. Run `make prepare` "
                "again (downloaded shards are fetched afresh; a local file is reported by name).") from None
    if path.suffix == ".jsonl":
        docs = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        docs.append(json.loads(line)["text"])
                    except (ValueError, KeyError, TypeError):
                        raise ContractError(f"Line {n} of {path} is not a JSON object with a `text` field. "
                                            "Each line of a .jsonl data file must be {\"text\": \"...\"}.") from None
        return [d for d in docs if d]
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def local_source(folder):
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ContractError(
            f"The data folder {root} does not exist. Point DATA= (or AUTORESEARCH_DATA) at a folder of "
            "parquet shards with a `text` column, or of .txt/.jsonl files; or leave it unset to download the "
            "default climbmix shards.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise ContractError(
            f"The data folder {root} holds no data files (.parquet with a `text` column, .txt or .jsonl). "
            "Put the shards there, or point DATA= at the folder that has them.")
    if len(files) < 2:
        raise ContractError(
            f"The data folder {root} has only one data file ({files[0].name}), so there is no validation "
            "split: the last file in sorted order is validation and the others are training data. Split the "
            "data into at least two files (e.g. shard_00000.parquet for training, shard_00001.parquet for "
            "validation).")
    # The work folder is keyed by file names and sizes, not the path, so a copy of the folder (a container's
    # mount, another machine) finds its manifest and tokenizer. source.txt in it names the folder.
    names = [str(p.relative_to(root)) for p in files]
    key = hashlib.sha1("\n".join(f"{n}:{p.stat().st_size}" for n, p in zip(names, files)).encode()).hexdigest()[:16]
    # A file of this folder that changed size changes the key; the folder's binding finds its old work folder,
    # so verify() reports the change instead of silently starting afresh.
    binding = path_binding(root)
    if binding.exists():
        bound = binding.read_text().strip()
        manifest = cache_dir() / "local" / bound / "manifest.json"
        if bound != key and manifest.exists() and set(json.loads(manifest.read_text())) == set(names):
            key = bound
    return DataSource(f"local:{root}", root, cache_dir() / "local" / key, files, remote=False)


def path_binding(root):
    """The file that remembers which work folder a local data folder used last."""
    return cache_dir() / "local" / "by-path" / hashlib.sha1(str(root).encode()).hexdigest()[:16]


def climbmix_source():
    root = cache_dir() / "data"
    files = sorted(root.glob("shard_*.parquet")) if root.is_dir() else []
    if not any(f.name == shard_name(VAL_SHARD) for f in files):
        raise ContractError(
            f"The climbmix data is not prepared: {root / shard_name(VAL_SHARD)} (the validation shard) is "
            "missing. Run `make prepare` to download it, or on a machine without network point DATA= at a "
            "local folder of parquet or text files (e.g. make prepare DATA=../shared/corpus).")
    return DataSource("climbmix-400b-shuffle", root, cache_dir(), files, remote=True)


def get_source(data=None):
    """The local folder named by `data` or $AUTORESEARCH_DATA, else the downloaded climbmix shards."""
    data = data or os.environ.get("AUTORESEARCH_DATA")
    return local_source(data) if data else climbmix_source()


# ---------------------------------------------------------------------------------------------------------
# Downloading climbmix
# ---------------------------------------------------------------------------------------------------------

class NameNotResolved(Exception):
    """The download host's name does not resolve: no network (or no DNS), and retrying will not change that."""


def download_climbmix(num_shards, workers=8, base_url=None, progress=print, live=None):
    """Download training shards 0..num_shards-1 and the validation shard into the cache, in parallel, with
    retries, resuming partial files, verifying the SHA-256 the server states and recording every hash in the
    manifest. Shards already downloaded and intact are kept. `progress` gets plain lines; `live` (default:
    when stdout is a terminal) shows one rich progress display instead of periodic status lines."""
    import httpx

    base_url = base_url or os.environ.get("AUTORESEARCH_DATA_URL") or CLIMBMIX_URL
    root = cache_dir() / "data"
    root.mkdir(parents=True, exist_ok=True)
    num_train = MAX_SHARD if num_shards < 0 else min(num_shards, MAX_SHARD)    # -1: all, as upstream
    wanted = [shard_name(i) for i in range(num_train)] + [shard_name(VAL_SHARD)]
    manifest_source = DataSource("climbmix-400b-shuffle", root, cache_dir(), [], remote=True)
    manifest = manifest_source.read_manifest()

    def intact(name):
        path, entry = root / name, manifest.get(name)
        if not path.exists() or entry is None:
            return False
        if entry["size"] == path.stat().st_size and sha256_file(path) == entry["sha256"]:
            return True
        progress(f"  {name}: checksum mismatch, downloading it again")
        path.unlink()
        return False

    todo = [name for name in wanted if not intact(name)]
    if not todo:
        progress(f"Data: all {len(wanted)} shards present and verified in {root}")
        return
    if error := unresolved(base_url):
        raise no_network(base_url, error)
    progress(f"Data: downloading {len(todo)} shard(s) from {base_url} ({len(wanted) - len(todo)} already here)")
    retry_base = float(os.environ.get("AUTORESEARCH_RETRY_BASE", "1.0"))
    not_resolved = []     # set by the first shard whose host name does not resolve; the others then stop
    display = DownloadDisplay(len(todo), progress, live)

    def fetch(name):
        if not_resolved:
            return name, None
        try:
            return name, download_file(client, f"{base_url}/{name}", root / name, retry_base, display)
        except NameNotResolved as e:
            not_resolved.append(e)
            return name, None

    try:
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True) as client:
            with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
                results = list(pool.map(fetch, todo))
    finally:
        display.close()
    for name, record in results:
        if record is not None:
            manifest[name] = record
    manifest_source.write_manifest(manifest)
    failed = [name for name, record in results if record is None]
    if not_resolved:
        raise no_network(base_url, not_resolved[0])
    if failed and len(failed) == len(todo) and display.unreachable:
        raise no_network(base_url, display.unreachable[-1])
    if failed:
        raise ContractError(
            f"Could not download {len(failed)} shard(s) ({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}) "
            f"from {base_url} after {DOWNLOAD_ATTEMPTS} attempts each. If this machine has no network, use a "
            "local folder instead: `make prepare DATA=/path/to/shards` (parquet with a `text` column, or "
            ".txt/.jsonl files). Otherwise run `make prepare` again later: finished shards are kept and "
            "partial ones resume.")


def no_network(base_url, why):
    return ContractError(
        f"No network: {base_url} cannot be reached ({why}). On a machine without network, use a "
        "local folder of text instead: `make prepare DATA=/path/to/shards` or `make run DATA=...` (parquet "
        "with a `text` column, or .txt/.jsonl files; e.g. DATA=../shared/corpus).")


def unresolved(url):
    """Why url's host name does not resolve, or None when it does. Skipped (None) when a proxy is set for
    the URL's scheme: the proxy resolves names, and this machine may not."""
    import urllib.request
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not parts.hostname or proxies.get(parts.scheme) or proxies.get("all"):
        return None
    try:
        socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as e:
        return f"the host name {parts.hostname} does not resolve: {e.strerror or e}"
    return None


def one_line(error):
    """An httpx or OS error as one short line (httpx's status errors add a line of advice)."""
    import httpx
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code} {error.response.reason_phrase}"
    return (str(error) or repr(error)).splitlines()[0]


def name_not_resolved(error):
    """Whether an httpx error was caused by a failed name lookup (socket.gaierror somewhere in its chain)."""
    while error is not None:
        if isinstance(error, socket.gaierror):
            return True
        error = error.__cause__ or error.__context__
    return False


def download_file(client, url, path, retry_base, display):
    """Fetch url into path through path.part, resuming a partial file with an HTTP Range request.
    Returns the manifest record, or None after the last failed attempt. Raises NameNotResolved at once
    when the host name does not resolve: that is not worth retrying."""
    import httpx

    part = path.with_name(path.name + ".part")
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            with client.stream("GET", url, headers=headers) as r:
                if r.status_code == 416:          # the partial file is already complete
                    pass
                else:
                    r.raise_for_status()
                    if have and r.status_code != 206:
                        have = 0                  # the server ignored the Range: start over
                    expected = int(r.headers["content-length"]) + have if "content-length" in r.headers else None
                    stated = stated_sha256(r.headers)
                    with open(part, "ab" if have else "wb") as f:
                        for chunk in r.iter_bytes():
                            f.write(chunk)
                            display.received(len(chunk))
                    if expected is not None and part.stat().st_size != expected:
                        raise httpx.ReadError(f"got {part.stat().st_size} of {expected} bytes")
            digest = sha256_file(part)
            if r.status_code != 416 and stated and digest != stated:
                part.unlink()
                raise httpx.ReadError("SHA-256 does not match the one the server states")
            try:
                check_parquet(part)
            except ContractError:
                part.unlink()
                raise httpx.ReadError("the server sent something that is not a parquet file with a `text` column")
            os.replace(part, path)
            stat = path.stat()
            display.finished()
            return {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "url": url}
        except (httpx.HTTPError, OSError) as e:
            if name_not_resolved(e):
                raise NameNotResolved(str(e)) from None
            missing = isinstance(e, httpx.HTTPStatusError) and e.response.status_code == 404     # not retried
            final = missing or attempt == DOWNLOAD_ATTEMPTS
            display.failed(path.name, attempt, e, final)
            if final:
                return None
            time.sleep(retry_base * 2 ** (attempt - 1))
    return None


class DownloadDisplay:
    """Progress of the parallel downloads: shards done of total, bytes, rate and retries. On a terminal one
    rich progress line, with failed attempts printed above it; otherwise plain lines through `note`: the
    failed attempts, a status line every STATUS_EVERY seconds and one at the end. Safe to call from threads."""

    STATUS_EVERY = 15.0

    def __init__(self, total, note, live=None):
        self.total, self.note = total, note
        self.unreachable = []      # connection errors: when every shard fails with one, the machine has no network
        self.done = self.bytes = self.retries = 0
        self.start = self.last_status = time.monotonic()
        self.lock = threading.Lock()
        self.bar = None
        if live is None:
            live = sys.stdout.isatty()
        if live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            self.bar = Progress(TextColumn("Data"), BarColumn(), TextColumn("{task.description}"),
                                TimeElapsedColumn())
            self.task = self.bar.add_task(self.status(), total=total)
            self.bar.start()

    def status(self):
        seconds = max(time.monotonic() - self.start, 1e-6)
        retries = f"{self.retries} retr{'y' if self.retries == 1 else 'ies'}"
        return (f"{self.done}/{self.total} shards, {self.bytes / 1e6:.1f} MB, "
                f"{self.bytes / 1e6 / seconds:.1f} MB/s, {retries}")

    def update(self):
        """Show the new counts: redraw the bar, or print a status line when the last one is old enough."""
        if self.bar is not None:
            self.bar.update(self.task, description=self.status(), completed=self.done)
        elif time.monotonic() - self.last_status >= self.STATUS_EVERY:
            self.last_status = time.monotonic()
            self.note(f"Data: {self.status()}")

    def received(self, nbytes):
        with self.lock:
            self.bytes += nbytes
            self.update()

    def finished(self):
        with self.lock:
            self.done += 1
            self.update()

    def failed(self, name, attempt, error, final):
        import httpx
        with self.lock:
            if isinstance(error, httpx.ConnectError):
                self.unreachable.append(str(error))
            self.retries += not final
            line = f"  {name}: attempt {attempt}/{DOWNLOAD_ATTEMPTS} failed: {one_line(error)}"
            line += "" if final else ", retrying"
            self.update()
            if self.bar is not None:
                self.bar.console.print(line, markup=False, highlight=False)
            else:
                self.note(line)

    def close(self):
        with self.lock:
            if self.bar is not None:
                self.update()
                self.bar.stop()
            else:
                self.note(f"Data: {self.status()}")


def stated_sha256(headers):
    """The SHA-256 a server states for a file (Hugging Face sends it as the ETag of LFS files), if any."""
    for key in ("x-linked-etag", "etag"):
        value = headers.get(key, "").strip('W/"')
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return value
    return None
