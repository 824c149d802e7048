"""Bad local data: `python -m common.prepare` (what `make prepare DATA=...` runs) exits non-zero with one
paragraph that names the problem and the fix, and no traceback; the trainer's entry points raise ContractError."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.data import get_source, local_source
from common.errors import ContractError
from common.loader import make_loader
from common.tokenizer import Tokenizer
from commonkit import assert_clean_error, flip_bytes, run_prepare, synthetic_docs, truncate, write_shards

pytestmark = pytest.mark.timeout(180)      # a hang fails the test instead of CI (pytest-timeout)


@pytest.fixture
def good_data(tmp_path):
    """Two training shards and a validation shard of synthetic text."""
    folder = tmp_path / "data"
    write_shards(folder, [synthetic_docs(60, 1), synthetic_docs(60, 2), synthetic_docs(20, 3)], row_group_size=20)
    return folder


def test_missing_data_folder(tmp_path):
    proc = run_prepare("--data", tmp_path / "nowhere")
    assert_clean_error(proc, "does not exist", str(tmp_path / "nowhere"), "DATA=")


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not data")
    proc = run_prepare("--data", tmp_path / "empty")
    assert_clean_error(proc, "holds no data files", "DATA=")


def test_a_single_file_has_no_validation_split(tmp_path):
    write_shards(tmp_path / "one", [synthetic_docs(10, 0)])
    proc = run_prepare("--data", tmp_path / "one")
    assert_clean_error(proc, "only one data file", "validation")


def test_a_shard_without_a_text_column(tmp_path):
    folder = tmp_path / "data"
    write_shards(folder, [synthetic_docs(10, 0)])
    pq.write_table(pa.table({"content": ["a document in the wrong column"]}), folder / "shard_00001.parquet")
    proc = run_prepare("--data", folder)
    assert_clean_error(proc, "shard_00001.parquet", "no `text` column", "content")


def test_a_never_seen_truncated_parquet_is_unreadable(good_data):
    truncate(good_data / "shard_00001.parquet")
    proc = run_prepare("--data", good_data)
    assert_clean_error(proc, "shard_00001.parquet", "not a readable parquet file")


def test_a_shard_corrupted_after_prepare_fails_its_checksum(good_data):
    assert run_prepare("--data", good_data).returncode == 0
    flip_bytes(good_data / "shard_00000.parquet")               # same size, other bytes
    proc = run_prepare("--data", good_data)
    assert_clean_error(proc, "shard_00000.parquet", "SHA-256 no longer matches", "manifest")


def test_a_shard_truncated_after_prepare_fails_its_checksum(good_data):
    assert run_prepare("--data", good_data).returncode == 0
    truncate(good_data / "shard_00000.parquet")
    proc = run_prepare("--data", good_data)
    assert_clean_error(proc, "shard_00000.parquet", "SHA-256 no longer matches")


def test_a_text_file_truncated_after_prepare_fails_its_checksum(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n".join(synthetic_docs(80, 4)))
    (folder / "b.txt").write_text("\n\n".join(synthetic_docs(10, 5)))
    assert run_prepare("--data", folder).returncode == 0
    truncate(folder / "a.txt")                                  # still valid text: only the checksum can tell
    proc = run_prepare("--data", folder)
    assert_clean_error(proc, "a.txt", "SHA-256 no longer matches")


def test_the_trainer_does_not_read_a_shard_corrupted_after_prepare(good_data):
    """`python backends/<x>/train.py` goes straight to make_loader: a corrupt shard must not feed training."""
    assert run_prepare("--data", good_data).returncode == 0
    flip_bytes(good_data / "shard_00000.parquet", offset=100, count=2000)
    with pytest.raises(ContractError, match="shard_00000.parquet"):
        loader = make_loader("train", 2, 64, source=get_source(str(good_data)))
        for _ in range(50):
            next(loader)


def test_a_bad_jsonl_line_is_named(tmp_path):
    folder = tmp_path / "jsonl"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    (folder / "b.jsonl").write_text(json.dumps({"text": "validation"}) + "\n")
    proc = run_prepare("--data", folder)
    assert_clean_error(proc, "Line 2", "a.jsonl", "text")


def test_a_training_split_without_documents(tmp_path):
    folder = tmp_path / "blank"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n  \n")
    (folder / "b.txt").write_text("a validation document\n")
    proc = run_prepare("--data", folder, timeout=60)
    assert_clean_error(proc, "a.txt")


def test_too_little_text_for_the_vocabulary(tmp_path):
    """A tokenizer that cannot reach 8192 tokens would silently change the model's vocabulary."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world\n")
    (folder / "b.txt").write_text("goodbye\n")
    proc = run_prepare("--data", folder, timeout=60)
    assert_clean_error(proc, "8192")


def test_missing_tokenizer_names_make_prepare(good_data):
    source = local_source(good_data)
    with pytest.raises(ContractError, match="make prepare"):
        Tokenizer.load(source)
    with pytest.raises(ContractError, match="make prepare"):
        make_loader("train", 2, 64, source=source)


def test_no_data_prepared_at_all_names_make_prepare_and_DATA():
    with pytest.raises(ContractError) as e:
        make_loader("train", 2, 64)
    assert "make prepare" in str(e.value) and "DATA=" in str(e.value)


def test_prepare_twice_is_a_no_op_and_if_needed_is_quiet(good_data):
    first = run_prepare("--data", good_data)
    assert first.returncode == 0 and "Ready to train." in first.stdout, first.stderr
    second = run_prepare("--data", good_data)
    assert second.returncode == 0 and "already trained" in second.stdout
    quiet = run_prepare("--data", good_data, "--if-needed")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_the_fix_the_checksum_message_names_works(tmp_path):
    """An intended change: delete the manifest as the message says, prepare again, and all is well."""
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n".join(synthetic_docs(80, 4)))
    (folder / "b.txt").write_text("\n\n".join(synthetic_docs(10, 5)))
    assert run_prepare("--data", folder).returncode == 0
    (folder / "a.txt").write_text("\n\n".join(synthetic_docs(90, 6)))       # new training text, on purpose
    proc = run_prepare("--data", folder)
    assert_clean_error(proc, "a.txt", "delete")
    manifest = proc.stderr.split("delete ", 1)[1].split(" ", 1)[0]
    assert manifest.endswith("manifest.json")
    import os
    os.remove(manifest)
    again = run_prepare("--data", folder)
    assert again.returncode == 0 and "Ready to train." in again.stdout, again.stderr


def test_null_and_empty_documents_are_skipped_counted_and_reported_once(tmp_path):
    """A parquet shard whose `text` column holds nulls and empty strings among real documents: prepare trains
    the tokenizer (it used to crash with a TypeError), says in one line how many were skipped and where, and
    the loader and the evaluation rows never see them."""
    folder = tmp_path / "holes"
    docs = synthetic_docs(60, 1)
    holes = docs[:20] + [None, "", None] + docs[20:]
    folder.mkdir()
    pq.write_table(pa.table({"text": pa.array(holes, pa.string())}), folder / "shard_00000.parquet",
                   row_group_size=20)
    write_shards(folder, [synthetic_docs(60, 2), synthetic_docs(20, 3)], start=1)
    proc = run_prepare("--data", folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "null or empty" in line]
    assert notes == ["Data: skipping 3 documents with a null or empty `text` (shard_00000.parquet: 3)"]
    assert "Traceback" not in proc.stderr
    again = run_prepare("--data", folder)
    assert "null or empty" not in again.stdout  # reported once, when the file is first recorded
    source = local_source(folder)
    texts = [t for batch in source.documents("train") for t in batch]
    assert len(texts) == 120 and all(isinstance(t, str) and t for t in texts)


def test_a_text_file_that_is_not_utf8_is_named_with_its_replacements(tmp_path):
    folder = tmp_path / "latin1"
    folder.mkdir()
    (folder / "a.txt").write_bytes("\n\n".join(synthetic_docs(80, 1)).encode() + "\n\nCafé crème à la gare".encode("latin-1"))
    (folder / "b.txt").write_text("\n\n".join(synthetic_docs(20, 2)))
    proc = run_prepare("--data", folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "UTF-8" in line]
    assert notes == ["Data: a.txt is not valid UTF-8: 3 undecodable byte sequence(s) read as U+FFFD"]
