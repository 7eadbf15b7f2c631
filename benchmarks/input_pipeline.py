"""The streaming training input: throughput per process, time to the first batch, bytes written.

Prints ONE JSON line. The corpus is the packaged real text (toxjax/assets/real), scored with the
offline scorer, and the same corpus repeated ten times (each copy its own document ids); both get
the demo's 768-piece SentencePiece vocabulary and the INST task. Measured:
- time_to_first_batch_s: from building the input (toxjax.data.input_pipeline.
  create_train_pipeline, the demo's 16 rows of 128) to holding the first batch, on each corpus
  (median of 3, each corpus after the other); ratio_10x = 10x / 1x. time_to_first_step_s: the
  same for `python -m toxjax.main` training one step (tiny model; median of 2 runs each).
- tokens_per_s: target tokens per second of one process reading `--rows` rows of
  `--seq_len` (the 1.3B config's 2048), one core; per_core = that.
- bytes_written_per_token: what the input writes per corpus (the shards' line indexes) over
  the corpus's training tokens under this vocabulary; nothing is written per strategy or host.
- need: the 1.3B config's projected consumption per v5p host (4 chips x the projected tokens/s
  per chip of `python -m toxjax.compile --config=toxjax/configs/gpt_1p3b.py
  --topology=v5p:2x2x1 --steps=train`, a compiler projection), the ratio of the measured rate
  to it, and the cores a host would need at the measured per-core rate.

    python -m benchmarks.input_pipeline [--compile_json=LINE_FILE] [--output_dir=DIR]
        # --output_dir also writes input_pipeline.json and input_pipeline.png
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
import seqio

from toxjax.data import input_pipeline, scored_documents, task_documents, tasks
from toxjax.data.vocab import train_vocabulary
from toxjax.datasets import real_corpus
from toxjax.scoring import job, scorer_specs

CHIPS_PER_V5P_HOST = 4


def _write_corpus(records: list[dict], path: str, copies: int) -> None:
    with open(path, "w") as f:
        for copy in range(copies):
            for index, record in enumerate(records):
                f.write(json.dumps({**record, "id": f"{copy}:{index}"}) + "\n")


def _scored_corpora(work: str, copies: int) -> tuple[dict[str, str], list[str]]:
    with gzip.open(real_corpus.packaged_path(real_corpus.CORPUS_FILE), "rt") as f:
        records = [json.loads(line) for line in f]
    scored = {}
    for name, times in (("1x", 1), (f"{copies}x", copies)):
        path = os.path.join(work, f"corpus_{name}.jsonl")
        _write_corpus(records, path, times)
        scored[name] = os.path.join(work, f"scored_{name}")
        job.score_corpus(
            path,
            scored[name],
            scorer_specs.make_scorer("offline"),
            job.ScoreOptions(records_per_shard=1000),
            progress=False,
        )
    return scored, [r["text"] for r in records]


def _config(task: str, seq_len: int, batch: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "data": {
                "task": task,
                "split": "train",
                "seq_len": seq_len,
                "seed": 0,
                "global_batch_size": batch,
                "packing_bins": 4,
            },
            "model": {"vocab_size": 768},
            "train": {"num_steps": 1000},
        }
    )


def _sharding() -> jax.sharding.NamedSharding:
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def time_to_first_batch(task: str) -> float:
    started = time.perf_counter()
    pipeline = input_pipeline.create_train_pipeline(_config(task, 128, 16), _sharding())
    pipeline.local_batch(0)
    elapsed = time.perf_counter() - started
    pipeline.close()
    return elapsed


_TASK_MODULE = """import seqio
from toxjax.data import tasks
for size, directory in {scored!r}.items():
    tasks.register_toxicity_tasks(
        "bench_input_" + size, directory,
        vocabulary=seqio.SentencePieceVocabulary({model!r}), strategies=["inst"])
"""


def time_to_first_step(work: str, task: str) -> float:
    """Wall time of `python -m toxjax.main` (tiny model, 768-piece vocabulary) training one
    step on the task: start-up, input, compilation, the step and its checkpoint."""
    workdir = os.path.join(work, f"run_{task}_{time.monotonic_ns()}")
    command = [
        sys.executable,
        "-m",
        "toxjax.main",
        "--config=toxjax/configs/tiny.py",
        f"--workdir={workdir}",
        "--mode=train",
        f"--config.data.task={task}",
        "--config.data.task_modules=('bench_input_tasks',)",
        "--config.model.vocab_size=768",
        "--config.train.num_steps=1",
        "--config.train.cpu_peak_flops=3.6e11",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([work, os.getcwd()])}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def tokens_per_s(task: str, seq_len: int, rows: int, steps: int) -> float:
    streams = input_pipeline.RowStreams(task, "train", seq_len, 0, range(rows), rows, 4)
    streams.next_rows()  # opens files, loads indexes
    started, tokens = time.perf_counter(), 0
    for _ in range(steps):
        tokens += int(streams.next_rows()["decoder_loss_weights"].sum())
    return tokens / (time.perf_counter() - started)


def corpus_tokens(task: str) -> int:
    """Training tokens of one epoch of the task (every document, untrimmed length)."""
    provider = seqio.get_mixture_or_task(task)
    documents = scored_documents.ScoredDocuments(provider.source.corpus("train"), "toxicity")
    process = task_documents.DocumentTokens(provider, "train", 1 << 30)
    return sum(len(tokens) for d in documents if (tokens := process(d)) is not None)


def projected_need(compile_json: str) -> dict:
    """The 1.3B train step's projected tokens/s per v5p host, from toxjax.compile."""
    if compile_json:
        with open(compile_json) as f:
            line = f.read()
    else:
        command = [
            sys.executable,
            "-m",
            "toxjax.compile",
            "--config=toxjax/configs/gpt_1p3b.py",
            "--topology=v5p:2x2x1",
            "--steps=train",
        ]
        line = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    report = json.loads(line.strip().splitlines()[-1])
    per_chip = float(report["projected_tokens_per_s_per_chip"])
    return {
        "source": "toxjax.compile gpt_1p3b v5p:2x2x1 train step (a compiler projection)",
        "projected_tokens_per_s_per_chip": per_chip,
        "projected_tokens_per_s_per_host": per_chip * CHIPS_PER_V5P_HOST,
    }


def run(args: argparse.Namespace) -> dict:
    need = projected_need(args.compile_json)  # before the timings: it keeps both cores busy
    with tempfile.TemporaryDirectory() as work:
        scored, texts = _scored_corpora(work, args.copies)
        model = train_vocabulary(texts, os.path.join(work, "spm"), vocab_size=768, progress=False)
        vocabulary = seqio.SentencePieceVocabulary(model)
        names = {
            size: tasks.register_toxicity_tasks(
                f"bench_input_{size}", directory, vocabulary=vocabulary, strategies=["inst"]
            )["inst"]
            for size, directory in scored.items()
        }
        time_to_first_batch(names["1x"])  # warm-up: imports, the vocabulary's first load
        big = f"{args.copies}x"
        first = {size: [] for size in names}
        for _ in range(3):
            for size in (big, "1x"):
                first[size].append(time_to_first_batch(names[size]))
        with open(os.path.join(work, "bench_input_tasks.py"), "w") as f:
            f.write(_TASK_MODULE.format(scored=scored, model=model))
        first_step = {size: [] for size in names}
        for _ in range(2):
            for size in (big, "1x"):
                first_step[size].append(time_to_first_step(work, names[size]))
        rate = tokens_per_s(names["1x"], args.seq_len, args.rows, args.steps)
        index_bytes = sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, files in os.walk(scored["1x"])
            for name in files
            if name.endswith(scored_documents.INDEX_SUFFIX)
        )
        tokens = corpus_tokens(names["1x"])
    medians = {size: statistics.median(times) for size, times in first.items()}
    step_medians = {size: statistics.median(times) for size, times in first_step.items()}
    host_need = need["projected_tokens_per_s_per_host"]
    return {
        "benchmark": "input_pipeline",
        "time_to_first_batch_s": medians,
        "time_to_first_batch_ratio_10x": medians[big] / medians["1x"],
        "time_to_first_step_s": step_medians,
        "time_to_first_step_ratio_10x": step_medians[big] / step_medians["1x"],
        "tokens_per_s": rate,
        "tokens_per_s_per_core": rate,
        "seq_len": args.seq_len,
        "rows": args.rows,
        "bytes_written_per_token": index_bytes / tokens,
        "corpus_tokens_1x": tokens,
        "need": {
            **need,
            "ratio_measured_to_need": rate / host_need,
            "cores_needed_per_host": math.ceil(host_need / rate),
        },
    }


def draw(result: dict, path: str) -> None:
    """Time to the first step on both corpora, and the rate against the projected need."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    sizes = list(result["time_to_first_step_s"])
    left.bar(sizes, [result["time_to_first_step_s"][s] for s in sizes], color="tab:blue")
    left.set_ylabel("seconds to the first training step")
    left.set_title("corpus size")
    need = result["need"]["projected_tokens_per_s_per_host"]
    right.bar(["input, 1 core", "1.3B on v5p host\n(projected)"], [result["tokens_per_s"], need])
    right.set_ylabel("training tokens/s")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10, help="size of the large corpus")
    parser.add_argument("--seq_len", type=int, default=2048, help="row length of the rate")
    parser.add_argument("--rows", type=int, default=16, help="batch rows of the rate")
    parser.add_argument("--steps", type=int, default=30, help="batches timed for the rate")
    parser.add_argument("--compile_json", default="", help="a saved toxjax.compile JSON line")
    parser.add_argument("--output_dir", default="", help="also write input_pipeline.json here")
    args = parser.parse_args()
    result = run(args)
    line = json.dumps(result)
    print(line)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "input_pipeline.json"), "w") as f:
            f.write(line + "\n")
        draw(result, os.path.join(args.output_dir, "input_pipeline.png"))


if __name__ == "__main__":
    main()
