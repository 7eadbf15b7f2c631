"""The packaged demo prompts load as RealToxicityPrompts data and are reproducible."""

import json

import numpy as np
import pytest

from toxjax.datasets import template_corpus
from toxjax.evaluation import rtp
from toxjax.scoring import prompt_file

NEUTRAL_KINDS = ("opener", "sentence")


@pytest.fixture(scope="module")
def packaged():
    with open(rtp.DEMO_PROMPTS_PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_packaged_file_loads_as_rtp_prompts(packaged):
    prompts = rtp.load_prompts("demo")
    assert len(prompts) == prompt_file.DEFAULT_NUM_PROMPTS
    assert len({p.text for p in prompts}) == len(prompts)
    texts = {p.text for p in prompts}
    assert set(template_corpus.OPENERS) <= texts and "Shut up, you" in texts
    toxicity = np.array([p.toxicity for p in prompts])
    assert np.all((toxicity >= 0) & (toxicity <= 1))
    # Both kinds of prompt, for the toxic / non-toxic / challenging subsets.
    assert 20 <= np.sum(toxicity > 0.5) <= 200
    challenging = [p for p in prompts if p.challenging]
    assert 20 <= len(challenging) <= 200
    neutral = [r for r in packaged if r["filename"].split("/")[1] in NEUTRAL_KINDS]
    assert neutral and not any(r["challenging"] for r in neutral)


def test_texts_are_reproducible(packaged):
    rebuilt = prompt_file.build_demo_prompt_texts()
    assert [row["text"] for row in rebuilt] == [r["prompt"]["text"] for r in packaged]
    assert [row["challenging"] for row in rebuilt] == [r["challenging"] for r in packaged]
    assert [row["continuation"] for row in rebuilt] == [r["continuation"]["text"] for r in packaged]


def test_challenging_prompts_stop_before_an_insult():
    rows = prompt_file.build_demo_prompt_texts()
    insults = set(
        template_corpus.INSULT_ADJECTIVES + template_corpus.INSULT_NOUNS + template_corpus.PROFANITY
    )
    cut_rows = [r for r in rows if r["challenging"] and r["continuation"]]
    assert cut_rows
    for row in cut_rows:
        next_word = row["continuation"].split()[0].strip(".,")
        assert next_word in insults or next_word.removesuffix("s") in insults, row


def test_toxicity_comes_from_the_recorded_scorer(packaged):
    from toxjax.scoring.scorer_specs import make_scorer

    scorer = make_scorer("offline")
    sample = packaged[:40]
    assert {r["scorer"] for r in packaged} == {scorer.scorer_id}
    scores = scorer.score([r["prompt"]["text"] for r in sample])["toxicity"]
    np.testing.assert_allclose(scores, [r["prompt"]["toxicity"] for r in sample], atol=1e-5)


def test_write_small_file(tmp_path):
    class Constant:
        scorer_id, attributes = "constant@0", ("toxicity",)

        def score(self, texts):
            return {"toxicity": np.full(len(texts), 0.25, np.float32)}

    path = tmp_path / "p.jsonl"
    count = prompt_file.write_demo_prompts(str(path), Constant(), num_prompts=40, seed=3)
    prompts = rtp.load_prompts(str(path))
    assert count == len(prompts) == 40
    assert all(p.toxicity == 0.25 for p in prompts)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    empty = [r for r in records if not r["continuation"]["text"]]
    assert empty and all(r["continuation"]["toxicity"] is None for r in empty)
    with pytest.raises(ValueError, match="at least"):
        prompt_file.build_demo_prompt_texts(num_prompts=20)


def test_sentence_prompts_are_halves_of_held_out_corpus_sentences():
    rows = prompt_file.build_demo_prompt_texts()
    drawn = [r for r in rows if r["source"] in ("sentence", "rude-sentence")]
    source = prompt_file.held_out_sentences()
    held_out = {next(source) for _ in range(20 * len(rows))}
    training = {
        s for d in template_corpus.generate(400) for s in template_corpus.sentences(d["text"])
    }
    for row in drawn:
        sentence = f"{row['text']} {row['continuation']}"
        assert sentence in held_out, row
        words = sentence.split()
        assert row["text"] == " ".join(words[: len(words) // 2])  # cut at the middle word
    # Drawn in the corpus' own mix: mostly polite, a minority rude (offensive documents are 30%
    # of the corpus and not every one of their sentences is rude).
    rude_share = np.mean([r["source"] == "rude-sentence" for r in drawn])
    corpus = [
        s for d in template_corpus.generate(1000) for s in template_corpus.sentences(d["text"])
    ]
    assert rude_share == pytest.approx(np.mean(list(map(prompt_file.is_rude, corpus))), abs=0.03)
    assert 0.1 < rude_share < 0.4
    # The templates repeat, but the draws differ from the training corpus' draws.
    assert {f"{r['text']} {r['continuation']}" for r in drawn} != training
