"""The scoring job as an Apache Beam pipeline: the same shards and manifest, on many workers.

The launcher plans the shards (the plan is deterministic) and checks the output directory
exactly as the local path does; the pipeline then scores the pending shards in parallel with
the local path's own `job.score_shard`, and its last step gathers the shard entries and
writes the manifest, summary and histogram. So a Beam run and a local run of the same input
produce the same shard files and the same manifest (apart from timings).

Each worker also writes a small note next to every shard it finishes; if the job dies, a rerun
(local or Beam) adopts those shards instead of scoring them again.

    python -m toxjax.scoring --runner=DataflowRunner --input='gs://b/c4/*.json.gz' \
        --output_dir=gs://b/scored --scorer=detoxify:original --records_per_shard=20000 \
        --project=P --region=R --temp_location=gs://b/tmp --setup_file=./setup.py

Every argument that is not a toxjax flag is passed to Beam's PipelineOptions. Workers need
toxjax installed (--setup_file) and TensorFlow for gs:// paths. Reading shard i of a `.gz`
or TFRecord file decompresses or skips the records before it, so prefer many input files or
large shards for those formats.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from toxjax import workdir_lock
from toxjax.scoring import corpora, job, run_manifest

_METRICS_NAMESPACE = "toxjax.scoring.job"


class ScoreShardFn(beam.DoFn):
    """Scores whole shards; the scorer and the corpus reader are built once per worker."""

    def __init__(
        self,
        input_spec: str,
        output_dir: str,
        scorer_spec: str,
        scorer_kwargs: Mapping[str, Any],
        options: job.ScoreOptions,
        header: Mapping[str, Any],
    ):
        self.input_spec, self.output_dir = input_spec, output_dir
        self.scorer_spec, self.scorer_kwargs = scorer_spec, dict(scorer_kwargs)
        self.options, self.header = options, dict(header)
        self.scored = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "docs_scored")
        self.skipped = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "docs_skipped")

    def setup(self) -> None:
        from toxjax.scoring import scorer_specs

        self._scorer = scorer_specs.make_scorer(self.scorer_spec, **self.scorer_kwargs)
        if self._scorer.scorer_id != self.header["scorer"]:
            raise RuntimeError(
                f"worker scorer {self._scorer.scorer_id} differs from the launcher's "
                f"{self.header['scorer']}: install the same versions on the workers"
            )
        self._corpus = self.options.open_corpus(self.input_spec)

    def process(self, shard: corpora.ShardSpec) -> Iterator[dict]:
        entry = job.score_shard(shard, self._corpus, self._scorer, self.output_dir, self.options)
        run_manifest.write_shard_result(self.output_dir, self.header, entry)
        self.scored.inc(entry["num_records"])
        self.skipped.inc(entry["num_skipped"])
        yield entry

    def teardown(self) -> None:
        corpus = getattr(self, "_corpus", None)
        if corpus is not None:
            corpus.close()


def _finalize(
    new_entries: list[dict],
    output_dir: str,
    header: Mapping[str, Any],
    finished: Mapping[int, dict],
    options: job.ScoreOptions,
) -> None:
    entries = {**finished, **{entry["index"]: entry for entry in new_entries}}
    job.finalize(output_dir, header, entries, options)


def build_pipeline(
    pipeline: beam.Pipeline,
    run: job.Run,
    input_spec: str,
    output_dir: str,
    scorer_spec: str,
    scorer_kwargs: Mapping[str, Any],
    options: job.ScoreOptions,
) -> None:
    """Create(pending shards) | Reshuffle | score each | gather | write manifest."""
    _ = (
        pipeline
        | "PendingShards" >> beam.Create(run.pending)
        | "Spread" >> beam.Reshuffle()
        | "ScoreShard"
        >> beam.ParDo(
            ScoreShardFn(input_spec, output_dir, scorer_spec, scorer_kwargs, options, run.header)
        )
        | "Gather" >> beam.combiners.ToList()
        | "WriteManifest"
        >> beam.Map(_finalize, output_dir, run.header, dict(run.finished), options)
    )


def score_corpus_beam(
    input_spec: str,
    output_dir: str,
    scorer: str,
    options: job.ScoreOptions | None = None,
    *,
    runner: str = "DirectRunner",
    pipeline_args: Sequence[str] = (),
    scorer_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict:
    """Scores like job.score_corpus, on a Beam runner; returns the final manifest.

    scorer must be a make_scorer spec (workers build their own scorer from it);
    """
    from toxjax.scoring import scorer_specs

    if not isinstance(scorer, str):
        raise TypeError("score_corpus_beam needs a scorer spec string that workers can rebuild")
    options = options or job.ScoreOptions()
    scorer_kwargs = dict(scorer_kwargs or {})
    launcher_scorer = scorer_specs.make_scorer(scorer, **scorer_kwargs)
    # This launcher holds the output's lock until the pipeline has finished (its workers write).
    with workdir_lock.hold(output_dir, every_process=False):
        run = job.start_run(input_spec, output_dir, launcher_scorer, options, overwrite=overwrite)
        run.corpus.close()
        if not run.pending:
            manifest = run_manifest.load_manifest(output_dir)
            if job.is_finalized(output_dir, manifest, options):
                return manifest
            return job.finalize(output_dir, run.header, run.finished, options)
        pipeline_options = PipelineOptions([f"--runner={runner}", *pipeline_args])
        with beam.Pipeline(options=pipeline_options) as pipeline:
            build_pipeline(pipeline, run, input_spec, output_dir, scorer, scorer_kwargs, options)
        return run_manifest.load_manifest(output_dir)
