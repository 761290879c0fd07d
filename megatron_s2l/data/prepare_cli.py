"""`s2l data prepare`: dataset files in the public releases' schemas -> one verl-format parquet file
for `data.train_files` / `data.eval_files`.

    s2l data prepare DAPO-Math-17k.parquet --output data/dapo-math-17k.parquet
    s2l data prepare aime_2024.parquet aime_2025.jsonl --output data/aime.parquet
    s2l data prepare aime_2024.parquet --math-prompt dapo --output data/aime24-dapo.parquet
    s2l data prepare train-00000-of-00001.parquet --source aime24 --output data/aime24.parquet
    s2l data prepare csqa/dev_rand_split.jsonl --output data/csqa-dev.parquet

Prints one line per input (rows read, duplicates dropped, rows written). The schemas, the templates
and the data_source rule: megatron_s2l/data/prepare.py.
"""

from __future__ import annotations

import argparse
import sys

from megatron_s2l.data.prepare import FORMATS, MATH_PROMPTS, prepare_prompt_files
from megatron_s2l.reward import check_data_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="convert DAPO-Math-17k, AIME or CommonsenseQA files to prompt parquet")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".parquet, .jsonl or .json files")
    p.add_argument("--output", required=True, help="the .parquet file to write (replaced only on success)")
    p.add_argument(
        "--format", choices=FORMATS, default="auto", help="the inputs' schema (auto: from the columns)"
    )
    p.add_argument(
        "--source",
        help="data_source of every row written (default: dapo rows keep theirs, aime rows get aime<yy> "
        "from the file name, CommonsenseQA rows commonsense_qa)",
    )
    p.add_argument(
        "--math-prompt",
        choices=tuple(MATH_PROMPTS),
        default="plain",
        help="the user message of AIME-style (problem + answer) rows: plain = the problem alone, the "
        "S2L-PO authors' evaluation prompt (default); dapo = DAPO's 'Answer:' instruction around it, "
        "as in DAPO's AIME-2024 parquet (rows already in verl format keep their prompt)",
    )
    p.add_argument("--limit", type=int, help="write at most N rows of each input (after deduplication)")


def run(args: argparse.Namespace) -> int:
    try:
        summaries = prepare_prompt_files(
            args.inputs,
            args.output,
            check_source=check_data_source,
            schema=args.format,
            source=args.source,
            math_prompt=args.math_prompt,
            limit=args.limit,
        )
    except FileNotFoundError as e:
        print(f"s2l data prepare: error: {e}", file=sys.stderr)
        return 2
    for summary in summaries:
        print(summary)
    print(f"wrote {sum(s.rows_written for s in summaries)} rows to {args.output}")
    return 0
