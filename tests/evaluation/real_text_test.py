"""Real-text metrics on hand-made files and a table-driven fake engine: the readers' skip counts,
where the data lives, and perplexity, cloze accuracy, steerability and detection AUCs against
values computed by hand."""

import json
import logging
import math

import pytest

from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.datasets import real_corpus
from toxjax.evaluation import bias, real_text
from toxjax.evaluation.bias import LabeledText
from toxjax.evaluation.rtp import Prompt
from toxjax.inference.requests import LoglikelihoodRequest, LoglikelihoodResult

FMT = ConditioningFormat()
N, T = FMT.inference_prefix("inst"), FMT.toxic_prefix("inst")  # INST's two signals


class TableEngine:
    """A LoglikelihoodFn answering from tables, recording every request. Yes/no questions
    (bias prompts) are answered by the text they ask about (the line after "Text: "), so the
    question's wording is not baked in; everything else by (context, continuation):
    (logprob, num_tokens) or (logprob, num_tokens, is_greedy)."""

    def __init__(self, table, yes_no=None):
        self.table, self.yes_no, self.requests = table, yes_no or {}, []

    def answer(self, request):
        if request.continuation in (" Yes", " No"):
            text = request.context.split("Text: ", 1)[1].split("\n", 1)[0]
            return self.yes_no[text][request.continuation == " No"], 1, False
        row = self.table[(request.context, request.continuation)]
        return (*row, False) if len(row) == 2 else row

    def __call__(self, requests):
        self.requests += requests
        return [LoglikelihoodResult(lp, greedy, n) for lp, n, greedy in map(self.answer, requests)]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ----- readers -----


def test_read_labelled_counts_and_logs_bad_records(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "a", "label": 1},
            {"text": " ", "label": 0},  # line 2: empty text
            {"text": "b", "label": 2},  # line 3: label outside {0, 1}
            {"text": "c", "label": True},  # a bool is not a label
            {"label": 1},  # missing text
            {"text": "d", "label": "0"},  # a string is not a label
            {"text": "e", "label": 0},
        ],
    )
    with caplog.at_level(logging.WARNING):
        examples, skipped = real_text.read_labelled(path)
    assert examples == [LabeledText("a", 1), LabeledText("e", 0)]
    assert skipped == {"empty or missing 'text'": 2, "'label' not 0 or 1": 3}
    assert (
        f"{path}:2: field 'text'" in caplog.text and f"{path}:3: field 'label' is 2" in caplog.text
    )


def test_read_texts_and_read_cloze_count_empty_records(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"text": "x"}, {"text": ""}, {"body": "y"}, {"text": 3}]
    )
    assert real_text.read_texts(path) == (["x"], {"empty or missing 'text'": 3})
    assert real_text.read_texts(path, field="body") == (["y"], {"empty or missing 'body'": 3})
    cloze = write_jsonl(
        tmp_path / "c.jsonl",
        [{"context": "a b", "target": "c"}, {"context": "a", "target": " "}, {"target": "z"}],
    )
    pairs, skipped = real_text.read_cloze(cloze)
    assert pairs == [("a b", "c")] and skipped == {"empty or missing 'context' or 'target'": 2}


# ----- data paths -----


def test_data_paths_packaged_and_a_directory(tmp_path):
    packaged = real_text.data_paths("packaged")
    assert packaged == {
        "heldout_clean": real_corpus.packaged_path("heldout_clean.jsonl"),
        "cloze": real_corpus.packaged_path("cloze.jsonl"),
        **{
            f"detection_{t}": real_corpus.packaged_path(f"detection_{t}.jsonl")
            for t in ("paradetox", "tweets", "wikipedia")
        },
    }
    for name in ("heldout_clean.jsonl", "cloze.jsonl", "detection_tweets.jsonl"):
        write_jsonl(tmp_path / name, [])
    # Detection sets are optional: only those present are evaluated.
    assert real_text.data_paths(str(tmp_path)) == {
        "heldout_clean": str(tmp_path / "heldout_clean.jsonl"),
        "cloze": str(tmp_path / "cloze.jsonl"),
        "detection_tweets": str(tmp_path / "detection_tweets.jsonl"),
    }
    (tmp_path / "cloze.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.eval.real_text=.*missing.*cloze.jsonl"):
        real_text.data_paths(str(tmp_path))


def test_signal_prefixes_per_strategy():
    assert real_text.signal_prefixes(Strategy.BASE, FMT) is None
    assert real_text.signal_prefixes(Strategy.FILTER, FMT) is None
    assert real_text.signal_prefixes(Strategy.MEDA, FMT) == {
        "nontoxic": "toxicity: 0.00\n",
        "toxic": "toxicity: 1.00\n",
        "none": "",
    }
    assert real_text.signal_prefixes(Strategy.INST, ConditioningFormat(inst_toxic="Rude:")) == {
        "nontoxic": "The following text is non-toxic:\n",
        "toxic": "Rude:\n",
        "none": "",
    }


# ----- metrics -----


def test_heldout_perplexity_is_summed_nll_over_summed_tokens():
    engine = TableEngine({(N, "a b c"): (-4.0, 3), (N, "d"): (-2.0, 1)})
    result = real_text.heldout_clean(engine, ["a b c", "d"], N)
    # Documents are continuations of the prefix, cut to the model's window if too long.
    assert engine.requests == [
        LoglikelihoodRequest(N, "a b c", truncate=True),
        LoglikelihoodRequest(N, "d", truncate=True),
    ]
    # exp((4 + 2) / (3 + 1)), not the mean of per-document perplexities.
    assert result["perplexity"] == pytest.approx(math.exp(1.5))
    interval = result["perplexity_interval"]
    assert interval["estimate"] == result["perplexity"] and interval["n"] == 2
    assert interval["low"] <= result["perplexity"] <= interval["high"]
    assert (result["num_documents"], result["num_tokens"], result["prefix"]) == (2, 4, N)


def test_cloze_accuracy_and_target_perplexity():
    engine = TableEngine(
        {
            (N + "the cat sat on the", " mat"): (-1.0, 1, True),  # greedy: correct
            (N + "a dark and stormy", " night"): (-3.0, 2, False),
        }
    )
    pairs = [("the cat sat on the", "mat"), ("a dark and stormy", "night")]
    result = real_text.cloze(engine, pairs, N)
    assert not any(r.truncate for r in engine.requests)  # a target word is scored whole
    assert result["acc"] == 0.5 and result["num_examples"] == 2
    assert result["perplexity"] == pytest.approx(math.exp(4.0 / 3.0))  # per token
    assert result["perplexity_per_target"] == pytest.approx(math.exp(2.0))
    assert result["acc_interval"]["estimate"] == 0.5 and result["acc_interval"]["n"] == 2


EXAMPLES = [
    LabeledText("bad", 1),
    LabeledText("nice", 0),
    LabeledText("awful", 1),
    LabeledText("fine", 0),
]
# Prompted: log P(Yes) - log P(No) = 2, 0, -1, -2; pairs with the positive ahead: 3 of 4.
YES_NO = {"bad": (-1.0, -3.0), "nice": (-1.0, -1.0), "awful": (-2.0, -1.0), "fine": (-3.0, -1.0)}
# Generative: per-token ll(T) - ll(N) = 2, 0, 0.5, -1 (bad's and nice's over 2 tokens): AUC 1.
GENERATIVE = {
    (T, "bad"): (-2.0, 2),
    (N, "bad"): (-6.0, 2),
    (T, "nice"): (-4.0, 2),
    (N, "nice"): (-4.0, 2),
    (T, "awful"): (-2.0, 1),
    (N, "awful"): (-2.5, 1),
    (T, "fine"): (-3.0, 1),
    (N, "fine"): (-2.0, 1),
}


def test_detection_prompted_and_generative_aucs_by_hand():
    engine = TableEngine(GENERATIVE, YES_NO)
    signals = real_text.signal_prefixes(Strategy.INST, FMT)
    report = real_text.detection(
        engine,
        EXAMPLES,
        task="tweets",
        signals=signals,
        prompted_config=bias.BiasPromptConfig(),
    )
    assert (report["task"], report["num_examples"], report["num_positive"]) == ("tweets", 4, 2)
    assert report["prompted_auc"] == pytest.approx(0.75)
    assert report["prompted_auc_interval"]["estimate"] == pytest.approx(0.75)
    generative = report["generative"]
    assert generative["auc"]["estimate"] == 1.0
    assert (generative["toxic_signal"], generative["nontoxic_signal"]) == (T, N)


def test_detection_without_signals_is_prompted_only():
    engine = TableEngine({}, YES_NO)  # any generative request would miss the table
    report = real_text.detection(
        engine, EXAMPLES, task="t", signals=None, prompted_config=bias.BiasPromptConfig()
    )
    assert report["generative"] is None and report["prompted_auc"] == pytest.approx(0.75)
    assert all(r.continuation in (" Yes", " No") for r in engine.requests)


# ----- everything at once -----


def real_dir(tmp_path):
    """A directory in the packaged layout, one bad record in each file."""
    write_jsonl(tmp_path / "heldout_clean.jsonl", [{"text": "a b c"}, {"text": ""}, {"text": "d"}])
    write_jsonl(
        tmp_path / "cloze.jsonl",
        [
            {"context": "the cat sat on the", "target": "mat"},
            {"context": "x"},
            {"context": "a dark and stormy", "target": "night"},
        ],
    )
    examples = [{"text": x.text, "label": x.label} for x in EXAMPLES]
    write_jsonl(
        tmp_path / "detection_tweets.jsonl", [examples[0], {"text": "z", "label": 5}, *examples[1:]]
    )
    return real_text.data_paths(str(tmp_path))


# Steerability: A's continuation is toxic, B's is not. ll(N) - ll(T): A -4 - -2 = -2, B 1: gap 3.
PROMPTS = [
    Prompt("A", 0.9, True, "id-A", {}, " bad", 0.9),
    Prompt("B", 0.1, False, "id-B", {}, " nice", 0.1),
]
STEER = {
    (N + "A", " bad"): (-4.0, 1),
    (T + "A", " bad"): (-2.0, 1),
    ("A", " bad"): (-3.0, 1),
    (N + "B", " nice"): (-1.0, 1),
    (T + "B", " nice"): (-2.0, 1),
    ("B", " nice"): (-1.5, 1),
}


def table_for(prefix):
    return {
        (prefix, "a b c"): (-4.0, 3),
        (prefix, "d"): (-2.0, 1),
        (prefix + "the cat sat on the", " mat"): (-1.0, 1, True),
        (prefix + "a dark and stormy", " night"): (-3.0, 2, False),
        **STEER,
        **GENERATIVE,
    }


def test_evaluate_real_text_every_metric_by_hand(tmp_path):
    engine = TableEngine(table_for(N), YES_NO)
    out = real_text.evaluate_real_text(
        engine, strategy=Strategy.INST, fmt=FMT, prompts=PROMPTS, paths=real_dir(tmp_path)
    )
    assert out["strategy"] == "inst" and out["signals"] == {"nontoxic": N, "toxic": T, "none": ""}
    assert out["skipped"] == {
        "heldout_clean": {"empty or missing 'text'": 1},
        "cloze": {"empty or missing 'context' or 'target'": 1},
        "detection_tweets": {"'label' not 0 or 1": 1},
    }
    # The inference prefix is context of every scored text: the same tokens for every model.
    assert out["heldout_clean"]["perplexity"] == pytest.approx(math.exp(1.5))
    assert out["heldout_clean"]["prefix"] == N
    assert out["cloze"]["acc"] == 0.5
    assert out["steerability"]["num_usable"] == 2
    assert out["steerability"]["gap"]["estimate"] == pytest.approx(3.0)
    tweets = out["detection"]["tweets"]
    assert tweets["num_examples"] == 4 and tweets["prompted_auc"] == pytest.approx(0.75)
    assert tweets["generative"]["auc"]["estimate"] == 1.0
    assert list(out["detection"]) == ["tweets"]


def test_evaluate_real_text_limit_and_a_strategy_without_signals(tmp_path):
    paths = real_dir(tmp_path)
    engine = TableEngine(table_for(""), YES_NO)
    out = real_text.evaluate_real_text(
        engine, strategy=Strategy.BASE, fmt=FMT, prompts=PROMPTS, paths=paths, limit=2
    )
    # BASE: no prefix, no signals, so no steerability and no generative classifier.
    assert out["signals"] is None and out["steerability"] is None
    assert out["heldout_clean"]["perplexity"] == pytest.approx(math.exp(1.5))
    assert out["detection"]["tweets"]["generative"] is None
    assert out["detection"]["tweets"]["num_examples"] == 2  # bad (1), nice (0): prompted AUC 1
    assert out["detection"]["tweets"]["prompted_auc"] == 1.0
    # The limit caps every set, the steerability prompts included.
    one = real_text.evaluate_real_text(
        TableEngine(table_for(N), YES_NO),
        strategy=Strategy.INST,
        fmt=FMT,
        prompts=PROMPTS,
        paths=paths,
        limit=1,
    )
    assert one["heldout_clean"]["num_documents"] == 1 and one["cloze"]["num_examples"] == 1
    assert one["steerability"]["num_prompts"] == 1
    assert one["detection"]["tweets"]["num_examples"] == 1
