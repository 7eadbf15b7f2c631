"""The demo task family: the embedded synthetic corpus, scored on first use.

A task module (list it in `config.data.task_modules`, the default does): importing it registers

    toxjax_demo_base     raw text (control)
    toxjax_demo_meda     "toxicity: 0.93\\n" + text
    toxjax_demo_inst     "The following text is toxic:\\n" / "...non-toxic:\\n" + text
    toxjax_demo_filter   raw text, documents scored above the threshold dropped
    toxjax_demo_inst_mix INST, with DEMO_UNTAGGED_RATE of the examples drawn untagged from BASE

The mixture follows Korbak et al. (2023), who leave a small share of pretraining data without
control tokens so the model keeps an unconditional mode (prompts with no signal still get
fluent text), and cf. MeCo's metadata-free cooldown. Unlike augment_fraction < 1 (which leaves
fixed documents untagged), the mixture draws untagged copies of any document at random.

Importing is cheap: the demo corpus is scored (offline scorer, about a second) the first time
a demo task is read, into $TOXJAX_DATA_DIR (default ~/.cache/toxjax), once per scorer version
and corpus content, guarded by a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterator

import seqio
from absl import logging

from toxjax import fileio
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.data.scored_data import MANIFEST
from toxjax.data.tasks import register_toxicity_tasks
from toxjax.datasets import template_corpus
from toxjax.scoring import job

DATA_DIR_ENV = "TOXJAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/toxjax"
DEMO_NAME = "toxjax_demo"
# Our reconstruction of the paper's formats (see toxjax.data.conditioning); the evaluation of the
# demo tasks must condition with this same object.
DEMO_FORMAT = ConditioningFormat()
# Share of the demo INST mixture drawn untagged from BASE (Korbak et al. leave 1% untagged; 5%
# keeps the untagged mode visible in a corpus of a few thousand documents).
DEMO_UNTAGGED_RATE = 0.05


def data_dir() -> str:
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _demo_fingerprint() -> str:
    """Changes when the demo corpus or the offline scorer changes, so a stale cache is unused."""
    digest = hashlib.sha256()
    for record in template_corpus.generate():
        digest.update(json.dumps(record, sort_keys=True).encode())
    digest.update(importlib.metadata.version("alt-profanity-check").encode())
    return digest.hexdigest()[:12]


def _is_complete(directory: str) -> bool:
    try:
        return fileio.read_json(fileio.join(directory, MANIFEST)).get("complete") is True
    except (OSError, ValueError):  # missing or unreadable: not complete
        return False


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """One process at a time (other processes of a test run, several trainings on one host)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def demo_scored_dir(root: str | None = None) -> str:
    """The scored demo corpus, scoring it with the offline scorer if it is not cached yet."""
    root = os.path.join(root or data_dir(), "demo")
    directory = os.path.join(root, f"offline-{_demo_fingerprint()}")
    if _is_complete(directory):
        return directory
    os.makedirs(root, exist_ok=True)
    with _file_lock(directory + ".lock"):
        if not _is_complete(directory):  # another process may have finished meanwhile
            logging.info("Scoring the demo corpus into %s (once)", directory)
            job.score_corpus("demo", directory, "offline", progress=False)
    return directory


def register_demo_tasks() -> dict[str, str]:
    """The demo family (see module docstring); called on import, safe to call again."""
    return register_toxicity_tasks(
        DEMO_NAME,
        demo_scored_dir,
        vocabulary=seqio.ByteVocabulary(),
        fmt=DEMO_FORMAT,
        mixture_with=[(f"{DEMO_NAME}_{Strategy.BASE.value}", DEMO_UNTAGGED_RATE)],
        mix_strategies=(Strategy.INST,),
    )


DEMO_TASKS = register_demo_tasks()
