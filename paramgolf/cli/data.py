"""`paramgolf-data`: build, inspect, download and record the tokenizer of challenge-format datasets."""

from __future__ import annotations

import argparse
import json
import sys

from paramgolf.data.build import DEFAULT_SHARD_TOKENS, build_dataset
from paramgolf.data.hub import VARIANT_REPOS, download
from paramgolf.data.manifest import record_tokenizer
from paramgolf.data.shard_stats import inspect_shard
from paramgolf.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paramgolf-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="train a tokenizer and write shards from a JSONL of documents")
    b.add_argument("--docs", required=True, help='JSONL file, one {"text": ...} per line')
    b.add_argument("--out", required=True, help="output directory for shards and tokenizer.model")
    b.add_argument("--vocab-size", type=int, required=True)
    b.add_argument("--val-docs", type=int, required=True, help="the first K documents form the validation split")
    b.add_argument("--tokenizer", default=None, help="reuse this SentencePiece model instead of training one")
    b.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS)
    b.add_argument(
        "--tokenizer-train-docs", type=int, default=None, help="train the tokenizer on at most this many documents"
    )
    b.add_argument(
        "--transform",
        default="none",
        choices=["none", "caseops"],
        help="caseops: lossless case transform; the operators become tokenizer pieces, val shards get byte sidecars",
    )

    i = sub.add_parser("inspect", help="print token/byte statistics of one shard as JSON")
    i.add_argument("shard")
    i.add_argument("--tokenizer", required=True)

    m = sub.add_parser(
        "manifest", help="record which tokenizer wrote a dataset's shards (for data made before manifests)"
    )
    m.add_argument("data_dir", help="directory holding fineweb_{train,val}_*.bin")
    m.add_argument("--tokenizer", required=True, help="the SentencePiece model the shards were written with")
    m.add_argument("--force", action="store_true", help="replace a manifest that records another tokenizer")

    d = sub.add_parser("download", help="download challenge shards and tokenizer from the Hugging Face Hub")
    d.add_argument(
        "--variant", default="sp1024", help="sp1024, sp4096, sp8192, byte260, sp8192_lossless_caps_caseops_v1_reserved"
    )
    d.add_argument("--train-shards", type=int, default=10)
    d.add_argument("--out", default="data")
    d.add_argument(
        "--repo-id",
        default=None,
        help="Hub dataset repo; default: the one publishing the variant "
        + ", ".join(f"{v}: {r}" for v, r in VARIANT_REPOS.items())
        + ", else willdepueoai/parameter-golf",
    )
    d.add_argument("--with-docs", action="store_true", help="also fetch docs_selected.jsonl (for re-tokenizing)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            result = build_dataset(
                args.docs,
                args.out,
                args.vocab_size,
                args.val_docs,
                args.tokenizer,
                args.shard_tokens,
                args.tokenizer_train_docs,
                args.transform,
            )
        elif args.command == "inspect":
            result = inspect_shard(args.shard, args.tokenizer)
        elif args.command == "manifest":
            result = record_tokenizer(args.data_dir, args.tokenizer, args.force)
        else:
            result = download(args.variant, args.train_shards, args.out, args.repo_id, args.with_docs)
            result = {**result, "downloaded": len(result["downloaded"]), "skipped": len(result["skipped"])}
    except (UserError, FileNotFoundError) as exc:  # anything else is a bug: its traceback shows
        print(f"paramgolf-data {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
