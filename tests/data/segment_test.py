"""SEGMENT end to end: per-segment scores from the scoring job become a control token before
every segment of the SeqIO training text, and loss masking drops exactly those tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import seqio
from seqio import test_utils

from toxjax.data import input_pipeline, scored_data, signal_mask, tasks
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.data.preprocessors import condition_text
from toxjax.data.vocab import train_vocabulary
from toxjax.datasets import template_corpus
from toxjax.scoring import job
from toxjax.scoring.scorers import Scorer

RECORD = "You are a stupid idiot. The garden is lovely today. Thanks!"
EXPECTED = (
    "<|misaligned|>You are a stupid idiot. <|aligned|>The garden is lovely today. "
    "<|aligned|>Thanks!"
)
CLEAN = "We walked along the canal."


class InsultScorer(Scorer):
    """0.9 for text with an insult, 0.1 otherwise: known scores for known segments."""

    name, version, attributes = "insult-words", "1", ("toxicity",)

    def score(self, texts):
        return {"toxicity": np.asarray([0.9 if "idiot" in t else 0.1 for t in texts], np.float32)}


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("segment")
    path = directory / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate([RECORD, CLEAN]))
    )
    out = str(directory / "scored")
    job.score_corpus(
        str(path), out, InsultScorer(), job.ScoreOptions(segment="sentence"), progress=False
    )
    return out


def register(scored: str, fmt: ConditioningFormat, vocabulary: seqio.Vocabulary) -> str:
    names = tasks.register_toxicity_tasks(
        "toxjax_segment_test",
        {"train": scored},
        vocabulary=vocabulary,
        fmt=fmt,
        strategies=[Strategy.BASE, Strategy.SEGMENT],
    )
    return names["segment"]


def conditioned(name: str, fmt: ConditioningFormat):
    """The task's source read as training does, through the SEGMENT preprocessor."""
    source = seqio.get_mixture_or_task(name).source
    return condition_text(source.get_dataset("train", shuffle=False), fmt=fmt, strategy="segment")


def test_conditioned_text_is_exact(scored):
    fmt = ConditioningFormat()
    name = register(scored, fmt, seqio.ByteVocabulary())
    source_record = next(
        iter(
            scored_data.iter_segmented_records(
                f"{scored}/shards/scored-00000.jsonl", attribute="toxicity"
            )
        )
    )
    assert source_record[3:] == ([24, 52, 59], [0.9, 0.1, 0.1])
    ds = conditioned(name, fmt)
    # The Python and graph versions agree; a one-sentence record gets one token.
    assert (
        ConditioningFormat().condition_segments(RECORD, [24, 52, 59], [0.9, 0.1, 0.1], "0")
        == EXPECTED
    )
    test_utils.assert_dataset(ds, [{"targets": EXPECTED}, {"targets": "<|aligned|>" + CLEAN}])


def test_untagged_fraction_leaves_documents_raw(scored):
    fmt = ConditioningFormat(augment_fraction=0.0)
    name = register(scored, fmt, seqio.ByteVocabulary())
    test_utils.assert_dataset(conditioned(name, fmt), [{"targets": RECORD}, {"targets": CLEAN}])


def test_a_corpus_without_segment_scores_is_refused(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": RECORD}) + "\n")
    out = str(tmp_path / "scored")
    job.score_corpus(str(path), out, InsultScorer(), progress=False)
    name = register(out, ConditioningFormat(), seqio.ByteVocabulary())
    with pytest.raises(scored_data.ScoredDataError, match="--segment=sentence"):
        conditioned(name, ConditioningFormat())


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory) -> seqio.SentencePieceVocabulary:
    texts = [d["text"] for d in template_corpus.generate(300)] + [RECORD, CLEAN]
    prefix = str(tmp_path_factory.mktemp("spm") / "segment")
    model = train_vocabulary(
        texts, prefix, vocab_size=400, fmt=ConditioningFormat(), segment=True, progress=False
    )
    return seqio.SentencePieceVocabulary(model)


@pytest.mark.parametrize("masked", [False, True])
def test_loss_weights_token_by_token(scored, vocabulary, masked):
    fmt = ConditioningFormat(mask_signal_loss=masked)
    name = register(scored, fmt, vocabulary)
    control = [vocabulary.tokenizer.piece_to_id(p) for p in fmt.segment_strings()]
    assert vocabulary.tokenizer.unk_id() not in control  # whole pieces
    ds = seqio.get_dataset(
        name,
        task_feature_lengths={"targets": 64},
        dataset_split="train",
        shuffle=False,
        feature_converter=seqio.LMFeatureConverter(pack=False),
    )
    batch = {k: np.asarray(v)[None] for k, v in next(iter(ds.as_numpy_iterator())).items()}
    batch["decoder_segment_ids"] = (batch["decoder_target_tokens"] > 0).astype(np.int32)
    transform = input_pipeline.loss_transform(name)
    assert (transform is not None) == masked
    weights = (transform(batch) if masked else batch)["decoder_loss_weights"][0]
    targets = batch["decoder_target_tokens"][0]
    assert vocabulary.decode([t for t in targets.tolist() if t > 1]) == EXPECTED
    is_control = np.isin(targets, control)
    assert is_control.sum() == 3
    for token, weight, control_token in zip(targets, weights, is_control, strict=True):
        expected = 0 if token == 0 or (masked and control_token) else 1
        assert weight == expected, (vocabulary.tokenizer.id_to_piece(int(token)), weight)
    if masked:
        assert isinstance(transform, signal_mask.SignalLossMask)
