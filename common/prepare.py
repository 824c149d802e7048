"""make prepare: get the data (download climbmix, or verify a local folder) and train the tokenizer.

    python -m common.prepare [--data FOLDER] [--num-shards 10] [--workers 8] [--if-needed]

DATA=/AUTORESEARCH_DATA names a local folder; without one the climbmix shards are downloaded into
$AUTORESEARCH_CACHE (default ~/.cache/autoresearch). --if-needed does nothing when both are already there.
"""

import argparse
import os

from common import data
from common.errors import run_cli
from common.tokenizer import Tokenizer, tokenizer_dir, train_tokenizer


def prepare(data_folder=None, num_shards=10, workers=8, if_needed=False):
    data_folder = data_folder or os.environ.get("AUTORESEARCH_DATA")
    if not data_folder and not (if_needed and (data.cache_dir() / "data" / data.shard_name(data.VAL_SHARD)).exists()):
        data.download_climbmix(num_shards, workers)
    source = data.get_source(data_folder)
    quiet = if_needed and (tokenizer_dir(source) / "tokenizer.pkl").exists()
    if not quiet:
        print(f"Data: {source.name}: {len(source.train_files)} training file(s), validation = {source.val_files[0].name}")
        print(f"Data: verifying checksums (manifest: {source.manifest_path})")
    source.verify()
    if quiet:
        return
    if (tokenizer_dir(source) / "tokenizer.pkl").exists():
        tok = Tokenizer.load(source)
        print(f"Tokenizer: already trained ({tok.vocab_size} tokens) in {tokenizer_dir(source)}")
    else:
        print("Tokenizer: training BPE with rustbpe...")
        train_tokenizer(source)
    print("Ready to train.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a local folder of parquet/.txt/.jsonl files (default: climbmix download)")
    parser.add_argument("--num-shards", type=int, default=10, help="climbmix training shards to download (-1: all)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--if-needed", action="store_true", help="quiet no-op when data and tokenizer exist")
    args = parser.parse_args()
    prepare(args.data, args.num_shards, args.workers, args.if_needed)


if __name__ == "__main__":
    run_cli(main)
