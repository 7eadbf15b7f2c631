r"""Score a corpus for toxicity into a directory of resumable, deterministic shards.

    python -m toxjax.scoring --input=demo --output_dir=/tmp/scored --scorer=offline
    python -m toxjax.scoring --input='data/*.jsonl.gz' --output_dir=gs://b/scored \
        --scorer=detoxify:original --runner=DataflowRunner --project=p --region=r ...

The input is cut into shards of --records_per_shard records (input files sorted, records in
order), so every run, local or Beam, produces the same shards. Each shard is written to a
temporary file and renamed into place, and the manifest (rewritten the same way after every
shard) lists the finished ones: a killed run, rerun with the same flags, scores only what is
missing, and its output equals that of an uninterrupted run record for record. The output
directory is locked while a run writes to it (toxjax.workdir_lock: a second run is refused);
a full disk stops the run with an error naming the shard and the space it needs. Each shard
gets its line index (`<shard>.index.npy`, line_index.py) as it is committed.

On several JAX processes (a pod slice's workers, `--distributed`) see multiprocess_job.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from toxjax import fileio, workdir_lock
from toxjax.fileio import AtomicFile, write_atomic
from toxjax.scoring import corpora, corpus_summary, readers, scorer_specs
from toxjax.scoring.corpora import BadRecordError, Corpus, InputError, ShardSpec
from toxjax.scoring.line_index import INDEX_SUFFIX, LineIndexer, index_bytes
from toxjax.scoring.run_manifest import (
    FORMAT_VERSION,
    HISTOGRAM,
    SUMMARY,
    complete_manifest,
    json_bytes,
    load_manifest,
    prepare_output,
    remove_shard_results,
    shard_path,
    write_manifest,
)
from toxjax.scoring.segments import Segmenter, check_ends, split_at

ON_BAD_RECORD = ("error", "skip")
RUNNERS = ("local", "DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")


class ConfigError(ValueError):
    """An option that cannot work (bad value, attribute the scorer does not score)."""


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """Everything that decides how records are read, validated, scored and summarised."""

    text_field: str = "text"
    records_per_shard: int = 1000
    on_bad_record: str = "error"
    max_doc_chars: int = corpora.DEFAULT_MAX_DOC_CHARS
    score_batch_size: int = 256
    threshold: float = 0.5
    attribute: str = "toxicity"
    tfds_data_dir: str | None = None
    tfds_download: bool = False
    # "" (documents only) | "sentence" | "chunk:<chars>": also score each segment (SEGMENT).
    segment: str = ""
    shard_delay_s: float = 0.0  # testing only: a pause before each shard is committed

    def __post_init__(self):
        if self.on_bad_record not in ON_BAD_RECORD:
            raise ValueError(
                f"on_bad_record must be one of {ON_BAD_RECORD}, got {self.on_bad_record!r}"
            )
        if self.score_batch_size < 1:
            raise ConfigError(f"score_batch_size must be >= 1, got {self.score_batch_size}")
        if self.records_per_shard < 1:
            raise ConfigError(f"records_per_shard must be >= 1, got {self.records_per_shard}")
        if self.segment:
            try:
                Segmenter.parse(self.segment)
            except ValueError as error:
                raise ConfigError(str(error)) from None

    def open_corpus(self, input_spec: str) -> Corpus:
        return readers.open_corpus(
            input_spec,
            text_field=self.text_field,
            max_doc_chars=self.max_doc_chars,
            tfds_data_dir=self.tfds_data_dir,
            tfds_download=self.tfds_download,
        )


# ------------------------------------------------------------------------------------------
# What identifies a run.


def run_header(plan: corpora.ShardPlan, scorer, options: ScoreOptions) -> dict[str, Any]:
    """What identifies a run: rerunning into the same directory must match it exactly."""
    # Only segmented runs name their segmentation, so older outputs keep their identity.
    segment = {"segment": options.segment} if options.segment else {}
    return {
        "format_version": FORMAT_VERSION,
        "scorer": scorer.scorer_id,
        "attributes": list(scorer.attributes),
        "input": plan.input_spec,
        "input_files": [{"path": path, "num_records": n} for path, n in plan.sources],
        "num_input_records": plan.num_records,
        "text_field": options.text_field,
        "max_doc_chars": options.max_doc_chars,
        "records_per_shard": plan.records_per_shard,
        "num_shards": len(plan.shards),
        **segment,
    }


# ------------------------------------------------------------------------------------------
# Scoring one shard (shared by the local loop and the Beam DoFn).


def _float32_values(values: np.ndarray) -> list[float]:
    """Shortest decimals that round-trip the scorer's float32 scores."""
    return [float(str(value)) for value in np.asarray(values, np.float32)]


def _checked_scores(scorer, texts: list[str], where: corpora.Document) -> dict[str, np.ndarray]:
    """One scorer call, its output checked for shape and NaN (a bad scorer names the batch)."""
    raw_scores = scorer.score(texts)
    scores = {}
    for attribute in scorer.attributes:
        values = np.asarray(raw_scores.get(attribute, ()), np.float32)
        if values.shape != (len(texts),) or not np.all(np.isfinite(values)):
            raise RuntimeError(
                f"scorer {scorer.scorer_id} returned bad {attribute!r} scores (shape "
                f"{values.shape}) for the batch starting at {where.source}:{where.line}"
            )
        scores[attribute] = values
    return scores


def _scored_lines(
    batch: list[corpora.Document], scorer, segmenter: Segmenter | None = None
) -> tuple[bytes, dict[str, np.ndarray]]:
    """Scores one batch (and its segments); returns its output lines and the document scores."""
    scores = _checked_scores(scorer, [doc.text for doc in batch], batch[0])
    columns = {a: _float32_values(values) for a, values in scores.items()}
    if segmenter is not None:
        ends = [segmenter.ends(doc.text) for doc in batch]
        for doc, doc_ends in zip(batch, ends, strict=True):
            problem = check_ends(doc_ends, len(doc.text))
            if problem:
                raise RuntimeError(f"{doc.source}:{doc.line}: segment_ends {problem}")
        pieces = [
            piece for doc, e in zip(batch, ends, strict=True) for piece in split_at(doc.text, e)
        ]
        segment_columns = {
            a: _float32_values(v) for a, v in _checked_scores(scorer, pieces, batch[0]).items()
        }
        bounds = np.cumsum([0, *(len(e) for e in ends)])
    lines = []
    for i, doc in enumerate(batch):
        # The original fields in their order, then ours (a rescored input's are replaced).
        record = dict(doc.fields)
        record["scores"] = {a: column[i] for a, column in columns.items()}
        if segmenter is not None:
            record["segment_ends"] = ends[i]
            record["segment_scores"] = {
                a: column[bounds[i] : bounds[i + 1]] for a, column in segment_columns.items()
            }
        record["scorer"] = scorer.scorer_id
        lines.append(json_bytes(record))
    return b"".join(lines), scores


@contextlib.contextmanager
def _no_space_names_the_shard(
    path: str, shard: ShardSpec, progress: Callable[[], tuple[int, int]]
) -> Iterator[None]:
    """A full disk while a shard is written: an error with the shard's path, its size so far
    and the size it needs (estimated from the records scored so far), and what to do. The
    shard's temporary file is gone by then (AtomicFile), so no partial shard is published."""
    try:
        yield
    except fileio.DiskFullError as error:
        written, num_scored = progress()  # the lines of the batches written before
        if num_scored:
            needed = f"about {written * shard.num_records // num_scored} bytes for its "
            needed += f"{shard.num_records} records ({written} bytes for the first {num_scored})"
        else:
            needed = f"more than {error.num_bytes} bytes (its first batch)"
        raise fileio.DiskFullError(
            path,
            max(written, error.num_bytes),
            f"no space left on device writing shard {path}: it needs {needed}. Finished "
            "shards are kept: free space on that disk, or choose another --output_dir, then "
            "rerun the same command to score the rest",
        ) from error


def score_shard(
    shard: ShardSpec,
    corpus: Corpus,
    scorer,
    output_dir: str,
    options: ScoreOptions,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Scores one shard and commits its file, then its line index (`<shard>.index.npy`, what
    the training input reads documents at random through), atomically; returns its manifest
    entry.

    Only one batch of documents is held in memory; lines stream into the temporary file.
    on_progress gets the number of input records consumed (scored or skipped) since last call.
    """
    started = time.perf_counter()
    relative = shard_path(shard.index)
    stats = corpus_summary.ShardStats(scorer.attributes, options.threshold)
    segmenter = Segmenter.parse(options.segment) if options.segment else None
    skipped: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    num_bytes = num_scored = num_read = num_reported = 0
    batch: list[corpora.Document] = []
    indexer = LineIndexer()
    path = fileio.join(output_dir, relative)
    with (
        _no_space_names_the_shard(path, shard, lambda: (num_bytes, num_scored)),
        AtomicFile(path) as out,
    ):
        for raw in corpus.read_shard(shard):
            num_read += 1
            try:
                batch.append(corpus.decode(raw))
            except BadRecordError as e:
                if options.on_bad_record == "error":
                    raise
                skipped[e.reason] += 1
                if len(examples) < corpus_summary.MAX_SKIPPED_EXAMPLES:
                    examples.append(e.to_json())
            if len(batch) == options.score_batch_size or (num_read == shard.num_records and batch):
                data, scores = _scored_lines(batch, scorer, segmenter)
                out.write(data)
                digest.update(data)
                indexer.add(data)
                stats.add(scores)
                num_bytes, num_scored, batch = num_bytes + len(data), num_scored + len(batch), []
                if on_progress is not None:
                    on_progress(num_read - num_reported)
                    num_reported = num_read
        if num_read != shard.num_records:
            raise InputError(
                f"shard {shard.index}: read {num_read} records, planned {shard.num_records}"
            )
        if on_progress is not None and num_read > num_reported:
            on_progress(num_read - num_reported)
        if options.shard_delay_s > 0:
            time.sleep(options.shard_delay_s)
        out.commit()
    # Before the manifest or a note lists the shard: a listed shard always has its index.
    write_atomic(path + INDEX_SUFFIX, index_bytes(indexer.index()))
    return {
        "index": shard.index,
        "path": relative,
        "first_record": shard.first_record,
        "num_input_records": shard.num_records,
        "num_records": num_scored,
        "num_skipped": sum(skipped.values()),
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": examples,
        "num_bytes": num_bytes,
        "sha256": digest.hexdigest(),
        "stats": stats.to_json(),
        "seconds": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------------------------------
# Whole runs.


@dataclasses.dataclass
class Run:
    corpus: Corpus
    plan: corpora.ShardPlan
    header: dict[str, Any]
    finished: dict[int, dict]

    @property
    def pending(self) -> list[ShardSpec]:
        return [shard for shard in self.plan.shards if shard.index not in self.finished]

    def commit(self, output_dir: str, entry: dict) -> None:
        """Records a finished shard: the manifest, rewritten atomically, lists it."""
        self.finished[entry["index"]] = entry
        write_manifest(output_dir, self.header, self.finished)


def plan_run(
    input_spec: str, scorer, options: ScoreOptions, *, progress: bool = False
) -> tuple[Corpus, corpora.ShardPlan, dict[str, Any]]:
    """Opens the input and plans its shards (reading only); returns them with the run header."""
    if options.attribute not in scorer.attributes:
        raise ConfigError(
            f"attribute {options.attribute!r} is not scored by {scorer.scorer_id} "
            f"(it scores {', '.join(scorer.attributes)})"
        )
    corpus = options.open_corpus(input_spec)
    try:
        plan = corpora.plan_shards(corpus, options.records_per_shard, progress=progress)
    except BaseException:
        corpus.close()
        raise
    return corpus, plan, run_header(plan, scorer, options)


def open_output(
    output_dir: str,
    corpus: Corpus,
    plan: corpora.ShardPlan,
    header: dict[str, Any],
    *,
    overwrite: bool,
) -> Run:
    """Checks the output directory against the planned run (its lock held), finds finished
    shards."""
    finished = prepare_output(output_dir, header, overwrite=overwrite)
    logging.info(
        "%s: %d records in %d shards; %d shards already done",
        plan.input_spec,
        plan.num_records,
        len(plan.shards),
        len(finished),
    )
    return Run(corpus, plan, header, finished)


def start_run(
    input_spec: str,
    output_dir: str,
    scorer,
    options: ScoreOptions,
    *,
    overwrite: bool,
    progress: bool = False,
) -> Run:
    """Plans the shards, checks the output directory against them, finds finished shards."""
    corpus, plan, header = plan_run(input_spec, scorer, options, progress=progress)
    return open_output(output_dir, corpus, plan, header, overwrite=overwrite)


def _restat(output_dir: str, entry: dict, attributes: list[str], threshold: float) -> dict:
    """Recomputes a shard's statistics from its file (the threshold changed since)."""
    stats = corpus_summary.ShardStats(attributes, threshold)
    records = [
        r for _, r in fileio.read_jsonl(fileio.join(output_dir, entry["path"]), allow_empty=True)
    ]
    if records:
        stats.add({a: np.asarray([r["scores"][a] for r in records]) for a in attributes})
    return {**entry, "stats": stats.to_json()}


def is_finalized(output_dir: str, manifest: Mapping[str, Any], options: ScoreOptions) -> bool:
    summary = manifest.get("summary") or {}
    return (
        manifest.get("complete", False)
        and summary.get("threshold") == options.threshold
        and summary.get("attribute") == options.attribute
        and all(fileio.exists(fileio.join(output_dir, name)) for name in (SUMMARY, HISTOGRAM))
    )


def finalize(
    output_dir: str, header: Mapping[str, Any], entries: Mapping[int, dict], options: ScoreOptions
) -> dict:
    """Writes summary.json, histogram.png and the complete manifest; removes Beam notes."""
    missing = header["num_shards"] - len(entries)
    if missing:
        raise RuntimeError(f"cannot finalize {output_dir}: {missing} shards are not scored")
    entries = {
        index: entry
        if entry["stats"]["threshold"] == options.threshold
        else _restat(output_dir, entry, header["attributes"], options.threshold)
        for index, entry in entries.items()
    }
    summary = corpus_summary.summarize(
        header, entries.values(), options.attribute, options.threshold
    )
    summary["histogram_png"] = HISTOGRAM
    write_atomic(fileio.join(output_dir, HISTOGRAM), corpus_summary.histogram_png(summary))
    write_atomic(fileio.join(output_dir, SUMMARY), json_bytes(summary, indent=2))
    manifest = write_manifest(output_dir, header, entries, summary)
    remove_shard_results(output_dir)
    return manifest


def finished_manifest(
    output_dir: str, header: Mapping[str, Any], options: ScoreOptions
) -> dict | None:
    """The manifest of a finished output of this very run, found by reading only: runs that
    share a finished output (parallel study jobs) use it without taking its lock."""
    manifest = complete_manifest(output_dir, header)
    return manifest if manifest and is_finalized(output_dir, manifest, options) else None


def score_shards(
    shards: Sequence[ShardSpec],
    corpus: Corpus,
    scorer,
    output_dir: str,
    options: ScoreOptions,
    on_done: Callable[[dict], None],
    *,
    progress: bool,
    total: int | None = None,
    initial: int = 0,
) -> None:
    """Scores `shards` in order; each entry goes to on_done (which records it: the manifest,
    or a note) before the next shard starts, so a killed run resumes after the last one."""
    from tqdm import tqdm

    with tqdm(
        total=sum(shard.num_records for shard in shards) if total is None else total,
        initial=initial,
        unit="docs",
        desc="scoring",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for shard in shards:
            on_done(score_shard(shard, corpus, scorer, output_dir, options, bar.update))


def score_pending(run: Run, scorer, output_dir: str, options: ScoreOptions, progress: bool):
    """Scores the run's unfinished shards in order, the manifest rewritten after each."""
    done = sum(entry["num_input_records"] for entry in run.finished.values())
    on_done = functools.partial(run.commit, output_dir)
    score_shards(
        run.pending,
        run.corpus,
        scorer,
        output_dir,
        options,
        on_done,
        progress=progress,
        total=run.plan.num_records,
        initial=done,
    )


def score_corpus(
    input_spec: str,
    output_dir: str,
    scorer,
    options: ScoreOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Scores `input_spec` into `output_dir` in this process; returns the final manifest.

    scorer: a Scorer or a scorer_specs.make_scorer spec ("offline", "detoxify-jax:original").
    overwrite discards an existing output of a different run instead of refusing it. The
    output directory is locked (toxjax.workdir_lock) before anything is written to it; a
    finished output of the same run is only read.

    In a multi-process JAX run this is process 0's alone (the study's scoring stage); for
    every process scoring a share of the shards see multiprocess_job.score_corpus.
    """
    options = options or ScoreOptions()
    scorer = scorer_specs.make_scorer(scorer) if isinstance(scorer, str) else scorer
    corpus, plan, header = plan_run(input_spec, scorer, options, progress=progress)
    try:
        finished = None if overwrite else finished_manifest(output_dir, header, options)
        if finished is not None:
            logging.info("%s is already complete: nothing to do", output_dir)
            return finished
        with workdir_lock.hold(output_dir, every_process=False):
            run = open_output(output_dir, corpus, plan, header, overwrite=overwrite)
            if not run.pending:
                manifest = load_manifest(output_dir)
                if is_finalized(output_dir, manifest, options):
                    return manifest
            score_pending(run, scorer, output_dir, options, progress)
            return finalize(output_dir, run.header, run.finished, options)
    finally:
        corpus.close()
