"""lm-evaluation-harness on a toxjax run: `python -m toxjax.interop.lm_eval_main`.

    python -m toxjax.interop.lm_eval_main --checkpoint=WORKDIR --tasks=piqa,hellaswag \\
        [--model_args=step=2000,conditioning=trained] [--num_fewshot=0] [--limit=500] \\
        [--include_path=DIR] [--output_path=results.json]

lm_eval 0.4.13 finds models only among modules imported in its process, so its own command
line cannot name "toxjax"; this command imports the adapter (toxjax.interop.lm_eval_adapter)
and calls `lm_eval.simple_evaluate`. Any lm_eval option beyond these flags: call
simple_evaluate from Python after `import toxjax.interop.lm_eval_adapter`.

Generation tasks (generate_until) decode with self-guided decoding when the model args ask for
it, e.g. --model_args=guidance_scale=2,guidance_form=cfg (MEDA/INST/SEGMENT runs: the context
under the non-toxic signal, steered away from the same context under the toxic one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from toxjax.commands import run_command

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The training run's workdir.")
_TASKS = flags.DEFINE_list("tasks", None, "lm_eval task names (comma-separated).")
_MODEL_ARGS = flags.DEFINE_string(
    "model_args",
    "",
    "More model arguments, 'key=value,...': step, batch_size, max_length, max_gen_toks, "
    "conditioning (''/trained/meda/inst/...), vocabulary, strategy, seed, guidance_scale, "
    "guidance_form.",
)
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples; default the task's.")
_LIMIT = flags.DEFINE_float("limit", None, "Examples per task (a fraction if < 1).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Sequences per log-likelihood call.")
_INCLUDE_PATH = flags.DEFINE_string("include_path", None, "Directory of extra task YAML files.")
_OUTPUT_PATH = flags.DEFINE_string("output_path", None, "Write the results JSON here.")
_LOG_SAMPLES = flags.DEFINE_bool("log_samples", False, "Keep per-request outputs in the JSON.")
flags.mark_flags_as_required(["checkpoint", "tasks"])


def task_manager(tasks: Sequence[str], include_path: str | None) -> Any:
    """lm_eval's task index. Indexing its built-in tasks reads thousands of YAML files (a run on
    one local task: 24 s with them, 12 s without, on 2 cores): skipped when every task asked for
    is a task of include_path (not a group or tag, which may name built-in tasks)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):
            return local
    return TaskManager(include_path=include_path)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    import lm_eval

    from toxjax import fileio
    from toxjax.interop import lm_eval_adapter

    model_args = f"checkpoint={_CHECKPOINT.value},batch_size={_BATCH_SIZE.value}"
    if _MODEL_ARGS.value:
        model_args += "," + _MODEL_ARGS.value
    results = lm_eval.simple_evaluate(
        model=lm_eval_adapter.MODEL_NAME,
        model_args=model_args,
        tasks=list(_TASKS.value),
        num_fewshot=_NUM_FEWSHOT.value,
        limit=_LIMIT.value,
        log_samples=_LOG_SAMPLES.value,
        task_manager=task_manager(_TASKS.value, _INCLUDE_PATH.value),
    )
    print(json.dumps(results["results"], indent=2, default=str))
    if _OUTPUT_PATH.value:
        text = json.dumps(results, indent=2, default=str)
        fileio.write_atomic(_OUTPUT_PATH.value, text.encode())


def run() -> None:
    """Entry point (no console script: run it with python -m)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
