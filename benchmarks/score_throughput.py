"""Scoring throughput: toxjax's Detoxify backends (torch wrapper, JAX port) against naive
`Detoxify.predict`, and the offline scorer.

Prints one JSON line. All scorers see the same deterministic, mixed-length documents (mostly
short, some up to ~400 tokens), the shape of web text. The Detoxify models are random-weight
BERTs built locally (no weights can be downloaded): a tiny one and a BERT-base-sized one
(hidden 768, 12 layers, 12 heads; small vocabulary, which barely changes the compute).

    python -m benchmarks.score_throughput [--num_docs=512] [--num_docs_bert_base=96]
        [--output_dir=DIR]   # also writes score_throughput.json and score_throughput.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence

# Before transformers and huggingface_hub are imported: they read these once, at import (ruff's
# E402 allows os.environ changes above imports). Every model here is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import numpy as np
import torch
import transformers
from detoxify import Detoxify

from toxjax.scoring import detoxify_jax, scorers
from toxjax.testing import detoxify_checkpoint

BLOCK = 20  # Each block of 20 documents holds exactly `long_per_block` long ones, so any
# prefix of the stream (the BERT-base run uses one) has the same length mix as the whole.


def mixed_length_documents(
    num_docs: int, *, long_per_block: int, max_tokens: int, seed: int
) -> list[str]:
    """Deterministic documents: short ones of 5-40 tokens, long ones of 100-`max_tokens`.

    Every vocabulary word is one token, so a document's length in words is its token count.
    """
    rng = np.random.default_rng(seed)
    words = np.asarray(detoxify_checkpoint.WORDS)
    documents = []
    for block_start in range(0, num_docs, BLOCK):
        long_slots = set(rng.choice(BLOCK, size=long_per_block, replace=False).tolist())
        for slot in range(min(BLOCK, num_docs - block_start)):
            length = (
                rng.integers(100, max_tokens + 1) if slot in long_slots else rng.integers(5, 41)
            )
            documents.append(" ".join(rng.choice(words, size=length)))
    return documents


def docs_per_second(
    score: Callable[[list[str]], np.ndarray], docs: list[str], min_s: float
) -> tuple[float, np.ndarray]:
    """Best-of-runs throughput, repeating `score(docs)` until `min_s` has passed (at least
    once): fast scorers need repeats, and the best run is the least disturbed by other load
    on shared cores. Also returns the last run's scores, for the equality check."""
    best, start = float("inf"), time.perf_counter()
    while True:
        run_start = time.perf_counter()
        output = score(docs)
        best = min(best, time.perf_counter() - run_start)
        if time.perf_counter() - start >= min_s:
            return len(docs) / best, output


def naive_predict(detoxify: Detoxify, chunk: int) -> Callable[[list[str]], np.ndarray]:
    """What a user of `Detoxify.predict` does without the wrapper: chunks of `chunk` texts in
    the order they come (one call on thousands of texts would pad them all to the longest and
    run out of memory). Each chunk is padded to its longest text, which in mixed web text is
    nearly always a long one: that padding waste is what length-sorted batching removes."""

    def score(docs: list[str]) -> np.ndarray:
        parts = []
        for start in range(0, len(docs), chunk):
            out = detoxify.predict(docs[start : start + chunk])
            parts.append(np.stack([np.atleast_1d(out[c]) for c in detoxify.class_names], 1))
        return np.concatenate(parts)

    return score


def wrapper_scores(scorer: scorers.Scorer) -> Callable[[list[str]], np.ndarray]:
    def score(docs: list[str]) -> np.ndarray:
        result = scorer.score(docs)
        return np.stack([result[a] for a in scorer.attributes], 1)

    return score


def compare_detoxify(
    name: str, checkpoint: str, docs: list[str], args: argparse.Namespace
) -> dict[str, float]:
    """Wrapper, JAX port and naive throughput on one checkpoint; also checks all three give
    the same scores. The JAX scorer's first pass over the documents compiles its few bucket
    shapes; it is timed apart (`jax_first_pass_s`) and the steady state is what is compared."""
    logging.info("%s: %d docs", name, len(docs))
    wrapper = scorers.DetoxifyScorer(checkpoint, batch_size=args.batch_size)
    naive = naive_predict(Detoxify(checkpoint=checkpoint), args.batch_size)
    jax_scorer = detoxify_jax.DetoxifyJaxScorer(checkpoint, batch_tokens=args.jax_batch_tokens)
    wrapped, jax_scores = wrapper_scores(wrapper), wrapper_scores(jax_scorer)
    warmup = docs[: min(len(docs), 8)]
    wrapped(warmup), naive(warmup)
    start = time.perf_counter()
    jax_scores(docs)
    results: dict[str, float] = {"jax_first_pass_s": time.perf_counter() - start}
    outputs = {}
    for label, score in (("wrapper", wrapped), ("jax", jax_scores), ("naive", naive)):
        start = time.perf_counter()
        results[label], outputs[label] = docs_per_second(score, docs, args.min_seconds)
        elapsed = time.perf_counter() - start
        logging.info("%s %s: %.2f docs/s (%.1f s)", name, label, results[label], elapsed)
    # Documents stay under 512 tokens, so both must give the same scores.
    results["max_abs_diff"] = float(np.abs(outputs["wrapper"] - outputs["naive"]).max())
    results["max_abs_diff_jax"] = float(np.abs(outputs["jax"] - outputs["naive"]).max())
    lengths = np.asarray([len(ids) for ids in jax_scorer.windows(docs)[0]["input_ids"]])
    results["jax_padded_tokens"] = sum(
        jax_scorer.batch_rows(bucket, len(rows)) * bucket
        for bucket, rows in jax_scorer.batches(lengths)
    )
    return results


def padded_tokens(lengths: np.ndarray, batch_size: int, *, sort: bool) -> int:
    """Tokens a forward pass computes, padding included: the work each strategy pays for."""
    ordered = np.sort(lengths)[::-1] if sort else lengths
    return int(
        sum(
            len(ordered[i : i + batch_size]) * ordered[i : i + batch_size].max()
            for i in range(0, len(ordered), batch_size)
        )
    )


def save_chart(path: str, docs_per_s: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(docs_per_s)
    colors = [
        "tab:gray" if "naive" in n else "tab:orange" if "jax" in n else "tab:blue" for n in names
    ]
    ax.barh(names, [docs_per_s[n] for n in names], color=colors)
    ax.set_xscale("log")
    ax.set_xlabel(f"documents / second ({torch.get_num_threads()} CPU threads, log scale)")
    ax.set_title("Toxicity scoring throughput, mixed-length documents")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_docs", type=int, default=512, help="docs for offline and tiny")
    parser.add_argument(
        "--num_docs_bert_base",
        type=int,
        default=96,
        help="docs for the BERT-base-sized model (a prefix of the same stream)",
    )
    parser.add_argument("--long_per_block", type=int, default=3, help="long docs per 20")
    parser.add_argument("--max_tokens", type=int, default=400, help="longest document, tokens")
    # The speed-up grows with num_docs / batch_size (the wrapper pads only its first, long
    # batch to ~400 tokens): 96 docs in batches of 16 keeps the naive BERT-base run near a
    # minute on 2 quiet cores. padded_tokens gives the load-independent view of the ratio.
    parser.add_argument("--batch_size", type=int, default=16, help="wrapper batch = naive chunk")
    parser.add_argument(
        "--jax_batch_tokens", type=int, default=8192, help="JAX scorer: padded tokens per batch"
    )
    parser.add_argument("--bert_hidden", type=int, default=768)
    parser.add_argument("--bert_layers", type=int, default=12)
    parser.add_argument("--bert_heads", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--min_seconds", type=float, default=1.0, help="time each at least")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="also write JSON and PNG here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    docs = mixed_length_documents(
        max(args.num_docs, args.num_docs_bert_base),
        long_per_block=args.long_per_block,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    tiny_docs, base_docs = docs[: args.num_docs], docs[: args.num_docs_bert_base]
    lengths = np.asarray([len(d.split()) for d in tiny_docs])  # One token per word.

    def padding(doc_set: list[str]) -> dict[str, int]:
        with_specials = np.asarray([len(d.split()) + 2 for d in doc_set])  # [CLS], [SEP].
        return {
            "wrapper": padded_tokens(with_specials, args.batch_size, sort=True),
            "naive": padded_tokens(with_specials, args.batch_size, sort=False),
            "real": int(with_specials.sum()),
        }

    total_start = time.perf_counter()

    offline = scorers.OfflineScorer()
    docs_per_s = {"offline": docs_per_second(offline.score, tiny_docs, args.min_seconds)[0]}
    logging.info("offline: %.1f docs/s", docs_per_s["offline"])
    with tempfile.TemporaryDirectory() as tmp:
        tiny_ckpt = detoxify_checkpoint.build_tiny_detoxify_checkpoint(tmp, model_type_name="tiny")
        tiny = compare_detoxify("tiny", tiny_ckpt, tiny_docs, args)
        logging.info("building the BERT-base-sized checkpoint")
        base_ckpt = detoxify_checkpoint.build_tiny_detoxify_checkpoint(
            tmp,
            hidden=args.bert_hidden,
            layers=args.bert_layers,
            heads=args.bert_heads,
            model_type_name="bert-base-sized",
        )
        base = compare_detoxify("bert_base", base_ckpt, base_docs, args)
    docs_per_s.update(
        detoxify_wrapper_tiny=tiny["wrapper"],
        detoxify_naive_tiny=tiny["naive"],
        detoxify_wrapper_bert_base=base["wrapper"],
        detoxify_naive_bert_base=base["naive"],
        detoxify_jax_tiny=tiny["jax"],
        detoxify_jax_bert_base=base["jax"],
    )
    result = {
        "benchmark": "score_throughput",
        "docs_per_s": {k: round(v, 2) for k, v in docs_per_s.items()},
        "ratio_vs_naive": round(base["wrapper"] / base["naive"], 2),
        "ratio_vs_naive_tiny": round(tiny["wrapper"] / tiny["naive"], 2),
        # The JAX port against both torch paths, same documents, same machine, same run.
        "jax_vs_wrapper": {
            "tiny": round(tiny["jax"] / tiny["wrapper"], 2),
            "bert_base": round(base["jax"] / base["wrapper"], 2),
        },
        "jax_vs_naive": {
            "tiny": round(tiny["jax"] / tiny["naive"], 2),
            "bert_base": round(base["jax"] / base["naive"], 2),
        },
        "jax_first_pass_s": {
            "tiny": round(tiny["jax_first_pass_s"], 1),
            "bert_base": round(base["jax_first_pass_s"], 1),
        },
        "jax_devices": [str(d) for d in jax.devices()],
        "num_docs": args.num_docs,
        "num_docs_bert_base": args.num_docs_bert_base,
        "doc_tokens": {
            "mean": round(float(lengths.mean()), 1),
            "median": int(np.median(lengths)),
            "max": int(lengths.max()),
        },
        "batch_size": args.batch_size,
        "padded_tokens": {
            "tiny": {**padding(tiny_docs), "jax": tiny["jax_padded_tokens"]},
            "bert_base": {**padding(base_docs), "jax": base["jax_padded_tokens"]},
        },
        "bert_base": {
            "hidden": args.bert_hidden,
            "layers": args.bert_layers,
            "heads": args.bert_heads,
        },
        "max_abs_diff_wrapper_vs_naive": {
            "tiny": tiny["max_abs_diff"],
            "bert_base": base["max_abs_diff"],
        },
        "max_abs_diff_jax_vs_naive": {
            "tiny": tiny["max_abs_diff_jax"],
            "bert_base": base["max_abs_diff_jax"],
        },
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - total_start, 1),
    }
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "score_throughput.json"), "w") as f:
            json.dump(result, f, indent=2)
        save_chart(os.path.join(args.output_dir, "score_throughput.png"), docs_per_s)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
