"""``tpo-fast eval``: multiple-choice video QA accuracy of a video LLM.

    tpo-fast eval --format videomme --annotations videomme/test-00000-of-00001.parquet \\
        --video-root Video-MME/data --model /models/LongVA-7B --frames 128 --method generate
    tpo-fast eval --format videomme --subtitles ...           # lmms-eval's videomme_w_subtitle
    tpo-fast eval --format mlvu --annotations MLVU/json --video-root MLVU/video --model ...
    tpo-fast eval --format longvideobench --annotations LongVideoBench/lvb_val.json \\
        --video-root LongVideoBench --model ...
    tpo-fast eval --format synthetic --annotations heldout/questions.jsonl --tiny qwen2_vl

Video-MME, MLVU and LongVideoBench follow lmms-eval 0.7.3's protocol (its prompt text, uniform
frame sampling, answer extraction and per-category scores); ``--method generate`` under it is
comparable with lmms-eval's numbers (the TPO paper's), ``loglik`` is the fast method. Prints
the accuracy per group and writes everything (settings, summaries, per-question predictions,
skipped videos) to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tpo_fast.config import DecodeConfig
from tpo_fast.eval.protocol import DEFAULT_TASK, LMMS_EVAL_VERSION, VERSIONS, task_for
from tpo_fast.eval.readers import READERS
from tpo_fast.eval.records import LETTERS, AnnotationError, MCQuestion, ReadStats
from tpo_fast.eval.runner import METHODS, PROTOCOLS
from tpo_fast.eval.scoring import ANSWER_FORMATS
from tpo_fast.video.decoders import decoder_names

DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpo-fast eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=sorted(READERS),
                   help="annotation format")
    p.add_argument("--annotations", required=True,
                   help="annotation file (MLVU: also a folder of its per-task JSON files)")
    p.add_argument("--video-root", help="folder of the videos (default: the annotation "
                                        "file's folder)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a local Hugging Face model folder (LongVA included)")
    model.add_argument("--tiny", metavar="FAMILY",
                       help="a random-weight tiny model of this family (tests, smoke runs)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per video (default: 32 under the lmms-eval protocol, as "
                        "lmms-eval's LongVA model; 8 native)")
    p.add_argument("--method", choices=METHODS, default="loglik",
                   help="loglik: fast (option log-likelihood); generate: greedy answer, "
                        "extracted (with --protocol lmms-eval: comparable with lmms-eval)")
    p.add_argument("--protocol", choices=("auto", *PROTOCOLS), default="auto",
                   help="auto: lmms-eval for videomme/mlvu/longvideobench, native for synthetic")
    p.add_argument("--subtitles", action="store_true",
                   help="videomme: lmms-eval's videomme_w_subtitle (subtitle lines in the "
                        "prompt)")
    p.add_argument("--subtitle-root", help="videomme --subtitles: the folder of <videoID>.srt "
                                           "(default: subtitle/ beside the videos' folder)")
    p.add_argument("--system", help="system prompt for the chat template (use the one the model "
                                    "was trained with)")
    p.add_argument("--lmms-eval-version", choices=VERSIONS, default=LMMS_EVAL_VERSION,
                   help="the lmms-eval release whose protocol to follow: 0.7.3, or 0.3 "
                        "(v0.3.0/v0.3.1, the TPO paper's era: MLVU prompt and score, Video-MME "
                        "/ MLVU answer extraction differ)")
    p.add_argument("--seed", type=int, default=0,
                   help="longvideobench: seed of the random letter lmms-eval gives answers "
                        "without one")
    p.add_argument("--answer-format", choices=ANSWER_FORMATS, default="letter",
                   help="loglik scores the answer 'B' (letter) or 'B. text' (letter_text)")
    p.add_argument("--length-normalize", action="store_true",
                   help="loglik: rank options by mean per-token log-prob")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generate: answer length (default: the lmms-eval task's, 16 or 32; "
                        "native 16)")
    p.add_argument("--limit", type=int, help="evaluate only the first N questions")
    p.add_argument("--batch-size", type=int, default=4, help="questions per forward")
    p.add_argument("--decode-workers", type=int, default=2, help="video decoding threads")
    p.add_argument("--video-backend", choices=decoder_names(),
                   default="auto", help="video decoder (auto: DALI on the model's GPU when it "
                                        "is on CUDA, else PyAV)")
    p.add_argument("--decode-device", default="auto",
                   help="where frames are decoded/preprocessed (auto: the model's device)")
    p.add_argument("--video-threads", type=int, default=2,
                   help="FFmpeg / DALI threads per video decode")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed annotation items (counted) instead of stopping")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_model(args: argparse.Namespace, questions: list[MCQuestion]):
    """(model, tokenizer) from ``--model`` or ``--tiny``, on ``--device`` in ``--dtype``."""
    import torch

    from tpo_fast.curate.policy import load_video_llm, resolve_device

    device = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if not args.tiny:
        model, tokenizer, _ = load_video_llm(args.model, None, dtype, str(device))
        return model, tokenizer
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

    # The tiny word-level vocabulary gets the option letters, so answers can be told apart.
    n_options = max((len(q.options) for q in questions), default=4)
    tokenizer = tiny_tokenizer(args.tiny, words=list(LETTERS[:n_options]))
    model = tiny_model(args.tiny, tokenizer, dtype=getattr(torch, dtype))
    return model.to(device).eval(), tokenizer


def read(args: argparse.Namespace) -> tuple[list[MCQuestion], ReadStats]:
    stats = ReadStats()
    questions = READERS[args.format](args.annotations, args.video_root,
                                     skip_invalid=args.skip_invalid, stats=stats)
    if args.limit is not None:
        questions = questions[:args.limit]
    return questions, stats


def protocol_of(args: argparse.Namespace) -> tuple[str, str | None]:
    """(protocol, lmms-eval task) from ``--protocol``, ``--format`` and ``--subtitles``."""
    protocol = args.protocol
    if protocol == "auto":
        protocol = "lmms-eval" if args.format in DEFAULT_TASK else "native"
    if protocol == "native":
        if args.subtitles:
            raise ValueError("--subtitles is part of the lmms-eval protocol")
        return protocol, None
    return protocol, task_for(args.format, args.subtitles, args.lmms_eval_version).name


def main(argv: list[str] | None = None) -> int:
    """Run ``tpo-fast eval``; returns the exit status (2: unusable annotations or options)."""
    from tpo_fast.eval.results import format_table
    from tpo_fast.eval.runner import evaluate

    args = build_parser().parse_args(argv)
    try:
        protocol, task = protocol_of(args)
        questions, stats = read(args)
    except (AnnotationError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"tpo-fast eval: {e}", file=sys.stderr)
        return 2
    if stats.skipped:
        print(f"skipped {stats.skipped} malformed annotation items (first: {stats.errors[0]})",
              file=sys.stderr)
    if stats.not_multiple_choice:
        files = ", ".join(f"{Path(f).name}: {n}" for f, n in stats.left_out.items())
        print(f"left out {stats.not_multiple_choice} items that are not multiple choice "
              f"(generation tasks: {files})", file=sys.stderr)
    if not questions:
        print("tpo-fast eval: no questions to evaluate", file=sys.stderr)
        return 2
    model, tokenizer = load_model(args, questions)
    frames = args.frames or (32 if protocol == "lmms-eval" else 8)
    results = evaluate(model, tokenizer, questions, method=args.method, frames=frames,
                       batch_size=args.batch_size, answer_format=args.answer_format,
                       length_normalize=args.length_normalize,
                       max_new_tokens=args.max_new_tokens, system=args.system,
                       decode=DecodeConfig(backend=args.video_backend, device=args.decode_device,
                                           threads=args.video_threads,
                                           workers=args.decode_workers),
                       protocol=protocol, task=task, subtitle_root=args.subtitle_root,
                       seed=args.seed, lmms_eval_version=args.lmms_eval_version,
                       progress=not args.no_progress)
    results["source"] = {"format": args.format, "annotations": str(args.annotations),
                         "video_root": args.video_root, "model": args.model or f"tiny:{args.tiny}",
                         "invalid_items_skipped": stats.skipped,
                         "not_multiple_choice_left_out": stats.not_multiple_choice}
    print(format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
