"""``tpo-fast eval``: multiple-choice video QA accuracy of a video LLM.

    tpo-fast eval --format videomme --annotations videomme/test-00000-of-00001.parquet \\
        --video-root Video-MME/data --model /models/LongVA-7B --frames 128 --method generate
    tpo-fast eval --format videomme --subtitles ...           # lmms-eval's videomme_w_subtitle
    tpo-fast eval --format mlvu --annotations MLVU/json --video-root MLVU/video --model ...
    tpo-fast eval --format longvideobench --annotations LongVideoBench/lvb_val.json \\
        --video-root LongVideoBench --model ...
    tpo-fast eval --format synthetic --annotations heldout/questions.jsonl --tiny qwen2_vl
    tpo-fast eval eval.yaml frames=64 decode.backend=pyav      # a YAML config + key=value

Every flag sets one key of ``EvalConfig`` (tpo_fast/eval/config.py: ``--video-root`` is
``video_root``, ``--video-backend`` is ``decode.backend``, ...); a YAML file holds the same keys
(``decode:`` is the section train and curate share), ``key=value`` items override it, and
flags override both.

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

from tpo_fast.eval.config import EvalConfig
from tpo_fast.eval.protocol import DEFAULT_TASK, task_for
from tpo_fast.eval.readers import READERS
from tpo_fast.eval.records import LETTERS, AnnotationError, MCQuestion, ReadStats

# Each flag is sugar for the config key of its name (``--video-root`` -> ``video_root``), except
# the decode flags, which set keys of the decode: section
DECODE_FLAGS = {"decode_workers": "decode.workers", "video_backend": "decode.backend",
                "decode_device": "decode.device", "video_threads": "decode.threads"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpo-fast eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="an eval YAML config (optional) and key=value overrides of its keys "
                        "(tpo_fast/eval/config.py: EvalConfig; e.g. frames=64 "
                        "decode.backend=pyav); each flag below sets one key")
    flag = p.add_argument
    on = {"action": "store_const", "const": True}
    flag("--format", help=f"annotation format: {', '.join(sorted(READERS))} (format)")
    flag("--annotations", help="annotation file (MLVU: also a folder of its per-task JSON "
                               "files) (annotations)")
    flag("--video-root", help="folder of the videos (default: the annotation file's folder)")
    flag("--model", help="a local Hugging Face model folder (LongVA included)")
    flag("--tiny", metavar="FAMILY",
         help="a random-weight tiny model of this family (tests, smoke runs)")
    flag("--frames", type=int, help="frames per video (default: 32 under the lmms-eval "
                                    "protocol, as lmms-eval's LongVA model; 8 native)")
    flag("--method", help="loglik (default): fast (option log-likelihood); generate: greedy "
                          "answer, extracted (with --protocol lmms-eval: comparable with "
                          "lmms-eval); both")
    flag("--protocol", help="auto (default): lmms-eval for videomme/mlvu/longvideobench, "
                            "native for synthetic; lmms-eval; native")
    flag("--subtitles", **on, help="videomme: lmms-eval's videomme_w_subtitle (subtitle lines "
                                   "in the prompt)")
    flag("--subtitle-root", help="videomme --subtitles: the folder of <videoID>.srt (default: "
                                 "subtitle/ beside the videos' folder)")
    flag("--system", help="system prompt for the chat template (use the one the model was "
                          "trained with)")
    flag("--lmms-eval-version", help="the lmms-eval release whose protocol to follow: 0.7.3 "
                                     "(default), or 0.3 (v0.3.0/v0.3.1, the TPO paper's era: "
                                     "MLVU prompt and score, Video-MME / MLVU answer extraction "
                                     "differ)")
    flag("--seed", type=int, help="longvideobench: seed of the random letter lmms-eval gives "
                                  "answers without one (default 0)")
    flag("--answer-format", help="loglik scores the answer 'B' (letter, default) or 'B. text' "
                                 "(letter_text)")
    flag("--length-normalize", **on, help="loglik: rank options by mean per-token log-prob")
    flag("--max-new-tokens", type=int, help="generate: answer length (default: the lmms-eval "
                                            "task's, 16 or 32; native 16)")
    flag("--limit", type=int, help="evaluate only the first N questions")
    flag("--batch-size", type=int, help="questions per forward (default 4)")
    flag("--decode-workers", type=int, help="video decoding threads (decode.workers)")
    flag("--video-backend", help="video decoder (decode.backend; auto: DALI on the model's GPU "
                                 "when it is on CUDA, else PyAV)")
    flag("--decode-device", help="where frames are decoded/preprocessed (decode.device; auto: "
                                 "the model's device)")
    flag("--video-threads", type=int, help="decoder threads per video (decode.threads)")
    flag("--device", help="auto (GPU if any), cpu, cuda, cuda:1 ...")
    flag("--dtype", help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    flag("--skip-invalid", **on, help="skip malformed annotation items (counted) instead of "
                                      "stopping")
    flag("--out", help="write the results JSON here")
    flag("--no-progress", dest="progress", action="store_const", const=False,
         help="no progress bar")
    return p


def config_from_args(argv: list[str] | None) -> EvalConfig:
    """The ``EvalConfig`` of a command line: the YAML file (if the first item is not
    key=value), the key=value items, then the flags given."""
    from tpo_fast.eval.config import load_eval_config

    args = build_parser().parse_intermixed_args(argv)
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    values = {DECODE_FLAGS.get(dest, dest): value for dest, value in vars(args).items()
              if dest != "items" and value is not None}
    return load_eval_config(path, items, values)


def load_model(cfg: EvalConfig, questions: list[MCQuestion]):
    """(model, tokenizer) from ``model`` or ``tiny``, on ``device`` in ``dtype``."""
    import torch

    from tpo_fast.curate.policy import load_video_llm, resolve_device

    device = resolve_device(cfg.device)
    dtype = cfg.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if not cfg.tiny:
        model, tokenizer, _ = load_video_llm(cfg.model, None, dtype, str(device))
        return model, tokenizer
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

    # The tiny word-level vocabulary gets the option letters, so answers can be told apart.
    n_options = max((len(q.options) for q in questions), default=4)
    tokenizer = tiny_tokenizer(cfg.tiny, words=list(LETTERS[:n_options]))
    model = tiny_model(cfg.tiny, tokenizer, dtype=getattr(torch, dtype))
    return model.to(device).eval(), tokenizer


def read(cfg: EvalConfig) -> tuple[list[MCQuestion], ReadStats]:
    stats = ReadStats()
    questions = READERS[cfg.format](cfg.annotations, cfg.video_root,
                                     skip_invalid=cfg.skip_invalid, stats=stats)
    if cfg.limit is not None:
        questions = questions[:cfg.limit]
    return questions, stats


def protocol_of(cfg: EvalConfig) -> tuple[str, str | None]:
    """(protocol, lmms-eval task) from ``protocol``, ``format`` and ``subtitles``."""
    protocol = cfg.protocol
    if protocol == "auto":
        protocol = "lmms-eval" if cfg.format in DEFAULT_TASK else "native"
    if protocol == "native":
        if cfg.subtitles:
            raise ValueError("subtitles (--subtitles) is part of the lmms-eval protocol")
        return protocol, None
    return protocol, task_for(cfg.format, cfg.subtitles, cfg.lmms_eval_version).name


def main(argv: list[str] | None = None) -> int:
    """Run ``tpo-fast eval``; returns the exit status (2: unusable annotations or options)."""
    from tpo_fast.eval.results import format_table
    from tpo_fast.eval.runner import evaluate

    try:
        cfg = config_from_args(argv)
        protocol, task = protocol_of(cfg)
        questions, stats = read(cfg)
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
    model, tokenizer = load_model(cfg, questions)
    frames = cfg.frames or (32 if protocol == "lmms-eval" else 8)
    results = evaluate(model, tokenizer, questions, method=cfg.method, frames=frames,
                       batch_size=cfg.batch_size, answer_format=cfg.answer_format,
                       length_normalize=cfg.length_normalize,
                       max_new_tokens=cfg.max_new_tokens, system=cfg.system,
                       decode=cfg.decode,
                       protocol=protocol, task=task, subtitle_root=cfg.subtitle_root,
                       seed=cfg.seed, lmms_eval_version=cfg.lmms_eval_version,
                       progress=cfg.progress)
    results["source"] = {"format": cfg.format, "annotations": str(cfg.annotations),
                         "video_root": cfg.video_root, "model": cfg.model or f"tiny:{cfg.tiny}",
                         "invalid_items_skipped": stats.skipped,
                         "not_multiple_choice_left_out": stats.not_multiple_choice}
    print(format_table(results))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
