"""Offline analogues of the utility and bias evaluations, over the embedded demo corpus.

The demo study runs without downloads, so it cannot read PIQA or CivilComments. These tasks
draw documents from `toxjax.datasets.template_corpus` with HELD-OUT seeds (the training corpus
uses seed 0), and go through the same metric code as the real tasks:

- demo_cloze (utility, multiple choice): the context is a neutral document up to the middle
  of one of its sentences; the choices are the true rest of that sentence and the rests of 3
  other corpus sentences (cut the same way), at a seeded random position. acc / acc_norm come
  from `utility_tasks.score_multiple_choice`. A model that learnt the corpus' prose picks the
  true ending; chance is 1/4.
- demo_toxicity_detection (bias, AUC): held-out sentences drawn the way the corpus draws a
  document's first sentence (mostly a shared opener, then a polite or rude continuation),
  balanced, label 1 for a rude sentence; scored by `bias.evaluate_examples`
  (log P(" Yes") - log P(" No") under `bias.BiasPromptConfig`, ROC AUC).

The corpus is generated from templates, so a held-out document may repeat a training text
word for word; the seeds keep the draws independent of training, not the vocabulary of
sentences. This is a demo-scale stand-in, not a benchmark.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from toxjax.datasets import template_corpus
from toxjax.evaluation import bias, utility_tasks
from toxjax.inference.requests import LoglikelihoodFn

CLOZE_SEED = 1_000_003  # held-out draws; training uses template_corpus seed 0
DETECTION_SEED = 1_000_033
SHOT_SEED_OFFSET = 1  # few-shot examples come from yet another seed (disjoint from the query)
DEFAULT_NUM_EXAMPLES = 200
NUM_CHOICES = 4
MAX_TEXT_CHARS = 120  # detection texts are cut at a word boundary to fit small context windows


def split_sentence(sentence: str) -> tuple[str, str]:
    """(beginning, ending) at the middle word; both non-empty for sentences of >= 2 words."""
    words = sentence.split()
    cut = max(1, len(words) // 2)
    return " ".join(words[:cut]), " ".join(words[cut:])


def _ending_pool() -> list[str]:
    """Every distinct sentence ending of neutral corpus text (distractors come from here)."""
    texts = list(template_corpus.NEUTRAL_SENTENCES)
    texts += [
        f"{o} {c}" for o in template_corpus.OPENERS for c in template_corpus.NEUTRAL_CONTINUATIONS
    ]
    return sorted({split_sentence(t)[1] for t in texts})


def cloze_examples(
    num_examples: int = DEFAULT_NUM_EXAMPLES, seed: int = CLOZE_SEED
) -> list[utility_tasks.MultipleChoiceExample]:
    """`num_examples` 4-way sentence-completion questions (same seed, same questions)."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    rng = random.Random(seed)
    pool = _ending_pool()
    examples = []
    documents = (d for d in template_corpus.endless_documents(seed) if d["register"] == "neutral")
    source = f"demo_cloze(seed={seed})"
    while len(examples) < num_examples:
        doc = next(documents)
        parts = template_corpus.sentences(doc["text"])
        index = rng.randrange(len(parts))
        beginning, ending = split_sentence(parts[index])
        context = " ".join([*parts[:index], beginning])
        distractors = rng.sample([e for e in pool if e != ending], NUM_CHOICES - 1)
        gold = rng.randrange(NUM_CHOICES)
        choices = [*distractors[:gold], ending, *distractors[gold:]]
        examples.append(
            utility_tasks.choice_example(
                context, choices, gold, source=source, record=len(examples)
            )
        )
    return examples


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0]
    return cut or text[:max_chars]


def detection_examples(
    num_examples: int = DEFAULT_NUM_EXAMPLES,
    seed: int = DETECTION_SEED,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> list[bias.LabeledText]:
    """Distinct held-out sentences, labels alternating 0, 1, 0, ... (so half are rude, rounded
    down). Labels are per sentence: an offensive document may open politely."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    rng = random.Random(seed)
    make = {0: template_corpus.neutral_sentence, 1: template_corpus.rude_sentence}
    seen: set[str] = set()
    examples = []
    for index in range(num_examples):
        label = index % 2
        for _ in range(10_000):  # bounded: the neutral pool holds a few hundred sentences
            text = _truncate(make[label](rng), max_text_chars)
            if text not in seen:
                break
        else:
            raise ValueError(f"cannot draw {num_examples} distinct detection sentences")
        seen.add(text)
        examples.append(bias.LabeledText(text, label))
    return examples


def evaluate_cloze(
    loglikelihood_fn: LoglikelihoodFn, *, limit: int | None = None, seed: int = CLOZE_SEED
) -> dict[str, Any]:
    """acc / acc_norm of demo_cloze on `limit` questions (default DEFAULT_NUM_EXAMPLES)."""
    examples = cloze_examples(DEFAULT_NUM_EXAMPLES if limit is None else limit, seed)
    metrics = utility_tasks.score_multiple_choice(examples, loglikelihood_fn, task="demo_cloze")
    source = f"toxjax.datasets.template_corpus seed={seed}"
    return {"task": "demo_cloze", "source": source, **metrics}


def evaluate_toxicity_detection(
    loglikelihood_fn: LoglikelihoodFn,
    *,
    limit: int | None = None,
    config: bias.BiasPromptConfig = bias.BiasPromptConfig(),
    seed: int = DETECTION_SEED,
) -> dict[str, Any]:
    """AUC of demo_toxicity_detection; few-shot examples come from a disjoint seed."""
    examples = detection_examples(DEFAULT_NUM_EXAMPLES if limit is None else limit, seed)
    shots: list[bias.LabeledText] = []
    if config.num_shots:
        queries = {x.text for x in examples}
        pool = [
            x
            for x in detection_examples(4 * config.num_shots + 8, seed + SHOT_SEED_OFFSET)
            if x.text not in queries
        ]
        shots = bias.select_shots(pool, config.num_shots, config.shot_seed)
    report = bias.evaluate_examples(
        examples,
        loglikelihood_fn,
        question=bias.TOXIC_QUESTION,
        config=config,
        shots=shots,
        task="demo_toxicity_detection",
    )
    return {**report, "source": f"toxjax.datasets.template_corpus seed={seed}"}


UTILITY_TASKS: dict[str, Callable[..., dict[str, Any]]] = {"demo_cloze": evaluate_cloze}
BIAS_TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "demo_toxicity_detection": evaluate_toxicity_detection
}
