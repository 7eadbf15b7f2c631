"""The scoring job on several JAX processes (a pod slice's workers, each with its devices).

    python -m toxjax.scoring --input=... --output_dir=gs://b/scored \
        --scorer=detoxify-jax:original --distributed=auto   # on every worker

Every process plans the same shards (the plan is deterministic) and scores its share of the
pending ones, process i of n the pending shards i, i+n, i+2n, ..., each committing its own
shard files atomically into the shared output directory. Process 0 holds the directory's lock,
prepares it as a 1-process run does and rewrites the manifest after each of its shards; the
other processes leave a note per finished shard (as Beam workers do) and never write the
manifest or summary. A killed run, rerun the same way, resumes from both: the manifest's
shards and the notes. After a barrier, process 0 alone adopts the notes and finalizes, so the
output (shards, indexes, manifest, summary, histogram) equals a 1-process run's, timings apart.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from absl import logging

from toxjax import workdir_lock
from toxjax.scoring import job, scorer_specs
from toxjax.scoring.corpora import Corpus, ShardPlan, ShardSpec
from toxjax.scoring.job import Run, ScoreOptions
from toxjax.scoring.run_manifest import load_manifest, shard_results, write_shard_result


class OtherProcessError(RuntimeError):
    """Another process of a multi-process run failed (its log has the error): all stop."""


_FAILED, _SCORE, _COMPLETE = 0, 1, 2  # what process 0 tells the others after opening


def _open_on_process_zero(
    output_dir: str,
    corpus: Corpus,
    plan: ShardPlan,
    header: dict[str, Any],
    options: ScoreOptions,
    *,
    overwrite: bool,
) -> tuple[Run | None, list[ShardSpec] | None]:
    """Process 0 checks and prepares the output as a 1-process run does and tells the others
    which shards are finished. Returns process 0's Run (None elsewhere) and, on every process,
    the pending shards (None: the output is already complete)."""
    import jax
    from jax.experimental import multihost_utils

    state = np.zeros(1 + len(plan.shards), np.int32)  # [_SCORE or _COMPLETE, finished mask]
    run, error = None, None
    if jax.process_index() == 0:
        try:
            if overwrite or job.finished_manifest(output_dir, header, options) is None:
                run = job.open_output(output_dir, corpus, plan, header, overwrite=overwrite)
                state[0] = _SCORE
                state[1 + np.asarray(sorted(run.finished), np.int64)] = 1
            else:
                state[0] = _COMPLETE
        except Exception as e:  # raised below, once the others know to stop
            error = e
    state = np.asarray(multihost_utils.broadcast_one_to_all(state))
    if error is not None:
        raise error
    if state[0] == _FAILED:
        raise OtherProcessError(f"{output_dir}: process 0 could not open it; see its log")
    if state[0] == _COMPLETE:
        return run, None
    return run, [shard for shard in plan.shards if not state[1 + shard.index]]


def _all_succeeded(error: Exception | None, what: str) -> None:
    """A barrier where every process says whether its part of `what` succeeded: all stop if
    one failed, instead of waiting for it until the heartbeat timeout."""
    from jax.experimental import multihost_utils

    oks = np.asarray(multihost_utils.process_allgather(np.int32(error is None))).reshape(-1)
    if error is not None:
        raise error
    failed = np.flatnonzero(oks == 0).tolist()
    if failed:
        raise OtherProcessError(f"{what} failed on process(es) {failed}; see their logs")


def _score_on_every_process(
    input_spec: str,
    output_dir: str,
    scorer,
    options: ScoreOptions,
    *,
    overwrite: bool,
    progress: bool,
) -> dict:
    """score_corpus on each process of a multi-process JAX run; output_dir must be shared.

    Every process plans the same shards; process i of n scores pending shards i, i+n, ...
    Process 0 holds the lock and keeps the manifest of its own shards; the others leave a
    note per shard (as Beam workers do), so a killed run resumes from both. After a barrier
    process 0 alone adopts the notes and finalizes: the output is the 1-process run's.
    """
    import jax

    index, count = jax.process_index(), jax.process_count()
    corpus, plan, header = job.plan_run(
        input_spec, scorer, options, progress=progress and index == 0
    )
    try:
        with workdir_lock.hold(output_dir):  # process 0 takes it for all, or all stop
            run, pending = _open_on_process_zero(
                output_dir, corpus, plan, header, options, overwrite=overwrite
            )
            if pending is None:
                logging.info("%s is already complete: nothing to do", output_dir)
                return load_manifest(output_dir)
            mine = pending[index::count]
            if run is not None:
                on_done = functools.partial(run.commit, output_dir)
            else:
                on_done = functools.partial(write_shard_result, output_dir, header)
            error = None
            try:
                job.score_shards(
                    mine, corpus, scorer, output_dir, options, on_done, progress=progress
                )
                logging.info(
                    "process %d of %d scored shards %s", index, count, [s.index for s in mine]
                )
            except Exception as e:  # raised by _all_succeeded, once the others know
                error = e
            _all_succeeded(error, f"scoring into {output_dir}")
            manifest = None
            if run is not None:
                try:
                    entries = {**shard_results(output_dir, header), **run.finished}
                    manifest = job.finalize(output_dir, header, entries, options)
                except Exception as e:
                    error = e
            _all_succeeded(error, f"finalizing {output_dir}")
            return manifest if manifest is not None else load_manifest(output_dir)
    finally:
        corpus.close()


def score_corpus(
    input_spec: str,
    output_dir: str,
    scorer,
    options: ScoreOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """job.score_corpus called by every process of a run together; they share the shards.

    One process (no jax.distributed, or a single process) is job.score_corpus itself.
    """
    import jax

    options = options or ScoreOptions()
    if jax.process_count() == 1:
        return job.score_corpus(
            input_spec, output_dir, scorer, options, overwrite=overwrite, progress=progress
        )
    scorer = scorer_specs.make_scorer(scorer) if isinstance(scorer, str) else scorer
    return _score_on_every_process(
        input_spec, output_dir, scorer, options, overwrite=overwrite, progress=progress
    )
