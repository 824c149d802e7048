"""climbmix downloads against a real HTTP server on 127.0.0.1: checksums, re-download, resume, retries, the
progress display, no network."""

import json
import os
import pty
import socket
import subprocess
import sys
import time

import pytest

from common.data import DownloadDisplay, NameNotResolved, climbmix_source, download_climbmix, download_file, sha256_file
from common.errors import ContractError
from commonkit import REPO_ROOT, ShardServer, assert_clean_error, flip_bytes, run_prepare, sha256, synthetic_docs, write_shards

pytestmark = pytest.mark.timeout(180)      # a hang fails the test instead of CI (pytest-timeout)

NAMES = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
VAL = "shard_06542.parquet"


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory):
    """Two small training shards and a validation shard of about 2.5 MB (uncompressed, so that a download
    cut halfway leaves more than httpx's 1 MB chunk in the .part file)."""
    folder = tmp_path_factory.mktemp("served")
    write_shards(folder, [synthetic_docs(80, 10), synthetic_docs(80, 11)])
    write_shards(folder, [synthetic_docs(1500, 12, words_per_doc=(200, 400))], compression="none", start=6542)
    files = {name: (folder / name).read_bytes() for name in NAMES}
    assert len(files[VAL]) > 2_200_000
    return files


@pytest.fixture
def server(shard_bytes, monkeypatch):
    srv = ShardServer(shard_bytes)
    monkeypatch.setenv("AUTORESEARCH_DATA_URL", srv.url)
    monkeypatch.setenv("AUTORESEARCH_RETRY_BASE", "0.01")
    yield srv
    srv.close()


def quiet(*args):
    pass


def manifest(cache):
    return json.loads((cache / "manifest.json").read_text())


def test_download_fetches_training_and_validation_shards_and_records_their_hashes(server, shard_bytes, cache):
    download_climbmix(num_shards=2, progress=quiet)
    record = manifest(cache)
    for name in NAMES:
        path = cache / "data" / name
        assert path.read_bytes() == shard_bytes[name]
        assert record[name]["sha256"] == sha256(shard_bytes[name])
        assert record[name]["size"] == len(shard_bytes[name])
        assert record[name]["url"] == f"{server.url}/{name}"
    assert not list((cache / "data").glob("*.part"))
    source = climbmix_source()
    assert [f.name for f in source.val_files] == [VAL]
    source.verify(full=True)


def test_a_second_download_fetches_nothing(server):
    download_climbmix(num_shards=2, progress=quiet)
    n = len(server.requests)
    download_climbmix(num_shards=2, progress=quiet)
    assert len(server.requests) == n


def test_a_corrupt_cached_shard_is_downloaded_again_by_the_next_prepare(server, shard_bytes, cache):
    first = run_prepare("--num-shards", 2)
    assert first.returncode == 0, first.stderr
    flip_bytes(cache / "data" / "shard_00001.parquet")
    assert sha256_file(cache / "data" / "shard_00001.parquet") != sha256(shard_bytes["shard_00001.parquet"])

    checked = run_prepare("--num-shards", 2, "--if-needed")        # what `make run` does first
    assert_clean_error(checked, "shard_00001.parquet", "make prepare")

    again = run_prepare("--num-shards", 2)
    assert again.returncode == 0, again.stderr
    assert "checksum mismatch" in again.stdout
    assert (cache / "data" / "shard_00001.parquet").read_bytes() == shard_bytes["shard_00001.parquet"]
    assert len(server.gets("shard_00001.parquet")) == 2 and len(server.gets("shard_00000.parquet")) == 1


def test_an_interrupted_download_resumes_from_the_part_file(server, shard_bytes, cache):
    data = shard_bytes[VAL]
    server.cut[VAL] = len(data) // 2                  # every attempt: full Content-Length, then hang up halfway
    with pytest.raises(ContractError, match=VAL):
        download_climbmix(num_shards=2, progress=quiet)
    part = cache / "data" / (VAL + ".part")
    assert not (cache / "data" / VAL).exists()
    have = part.stat().st_size
    assert have == len(data) // 2 and part.read_bytes() == data[:have]     # every byte received was kept
    assert (cache / "data" / "shard_00000.parquet").exists()      # the other shards finished and are kept

    del server.cut[VAL]
    before = len(server.gets(VAL))
    download_climbmix(num_shards=2, progress=quiet)
    assert server.gets(VAL)[before:] == [f"bytes={have}-"]      # one request, for the rest only
    assert (cache / "data" / VAL).read_bytes() == data
    assert manifest(cache)[VAL]["sha256"] == sha256(data)
    assert not part.exists()
    assert [n for n, _ in server.requests].count("shard_00000.parquet") == 1


def test_a_shard_whose_hash_differs_from_the_servers_etag_is_rejected(server, cache):
    server.etag["shard_00001.parquet"] = "0" * 64
    with pytest.raises(ContractError, match="shard_00001.parquet"):
        download_climbmix(num_shards=2, progress=quiet)
    assert not (cache / "data" / "shard_00001.parquet").exists()
    assert not (cache / "data" / "shard_00001.parquet.part").exists()
    assert "shard_00001.parquet" not in manifest(cache)
    assert "shard_00000.parquet" in manifest(cache)


def test_a_shard_that_is_not_parquet_is_rejected(server, cache):
    server.files["shard_00001.parquet"] = b"<html><body>Too many requests</body></html>"   # ETag matches it
    with pytest.raises(ContractError, match="shard_00001.parquet"):
        download_climbmix(num_shards=2, progress=quiet)
    assert not (cache / "data" / "shard_00001.parquet").exists()
    assert "shard_00001.parquet" not in manifest(cache)


def test_a_missing_shard_on_the_server_is_reported(server, cache):
    del server.files["shard_00001.parquet"]
    with pytest.raises(ContractError, match="shard_00001.parquet"):
        download_climbmix(num_shards=2, progress=quiet)
    assert len(server.gets("shard_00001.parquet")) == 1          # a 404 is not retried


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_fails_fast_and_names_DATA():
    t0 = time.time()
    proc = run_prepare("--num-shards", 2, env={"AUTORESEARCH_DATA_URL": f"http://127.0.0.1:{closed_port()}",
                                                "AUTORESEARCH_RETRY_BASE": "0.01"}, timeout=60)
    assert time.time() - t0 < 30
    assert proc.returncode == 2
    assert_clean_error(proc, "DATA=", "make prepare")


NO_PROXY_ENV = {var: None for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")}


def test_an_unresolvable_host_fails_at_once_without_retrying():
    # .invalid never resolves (RFC 2606). With a 100 s retry base, one retry would outlast the 60 s timeout.
    proc = run_prepare("--num-shards", 2, env={"AUTORESEARCH_DATA_URL": "https://shards.invalid/climbmix",
                                                "AUTORESEARCH_RETRY_BASE": "100", **NO_PROXY_ENV}, timeout=60)
    assert proc.returncode == 2
    assert_clean_error(proc, "No network", "shards.invalid does not resolve", "DATA=")
    assert "attempt" not in proc.stdout and "Data: downloading" not in proc.stdout


def test_a_name_that_stops_resolving_during_a_download_is_final(tmp_path):
    import httpx
    notes = []
    display = DownloadDisplay(1, notes.append, live=False)
    with httpx.Client(trust_env=False) as client, pytest.raises(NameNotResolved):
        download_file(client, "http://shards.invalid/shard_00000.parquet", tmp_path / "shard_00000.parquet",
                      retry_base=100, display=display)
    assert notes == [] and display.retries == 0


def test_a_503_is_retried_once_and_progress_is_a_few_plain_lines(server, shard_bytes, cache):
    server.fail["shard_00001.parquet"] = [503]
    proc = run_prepare("--num-shards", 2)
    assert proc.returncode == 0, proc.stderr
    assert server.gets("shard_00001.parquet") == [None, None]
    assert (cache / "data" / "shard_00001.parquet").read_bytes() == shard_bytes["shard_00001.parquet"]
    lines = proc.stdout.splitlines()
    download = lines[:next(i for i, line in enumerate(lines) if "3/3 shards" in line) + 1]
    assert len(download) <= 4, proc.stdout
    assert any("shard_00001.parquet: attempt 1/5 failed" in line and "503" in line for line in download)
    assert "1 retry" in download[-1]
    assert "\x1b" not in proc.stdout and "\r" not in proc.stdout          # no control codes in a log


def test_on_a_terminal_progress_is_one_live_display(server):
    server.fail["shard_00000.parquet"] = [503]
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", "from common.data import download_climbmix; download_climbmix(2)"],
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=dict(os.environ, COLUMNS="120", TERM="xterm"))
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:            # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "\x1b[" in text                                     # drawn in place, not line by line
    assert "3/3 shards" in text and "1 retry" in text
    assert "shard_00000.parquet: attempt 1/5 failed" in text
