"""Tests of the study report on hand-made evaluation results: results.json layout, the
paper-shaped markdown table with changes against BASE, the plots and the training logs."""

import json
import math

import pytest
from PIL import Image

from toxjax.study import reporting

SUBSETS = ("all", "toxic", "nontoxic", "challenging")


def rtp_run(prefix, tp, emt, scorer="profanity_check@1.9.1"):
    """A RTPResult.summary()-shaped run with one (tp, emt) for every subset."""
    return {
        "prefix": prefix,
        "scorer": scorer,
        "num_prompts": 10,
        "config": {"num_samples": 25},
        "metrics": {
            subset: {
                "num_prompts": 10,
                "expected_max_toxicity": emt,
                "expected_max_toxicity_std": 0.1,
                "toxicity_probability": tp,
            }
            for subset in SUBSETS
        },
    }


def evaluation(name, prefix, tp, emt, acc, auc, unconditioned_tp=None):
    rtp = {"unconditioned": rtp_run("", tp if unconditioned_tp is None else unconditioned_tp, emt)}
    if prefix:
        rtp["conditioned"] = rtp_run(prefix, tp, emt)
    else:
        rtp["conditioned"] = rtp["unconditioned"]
    return {
        "model": name,
        "step": 100,
        "task": f"study_{name}",
        "strategy": name,
        "prefix": prefix,
        "rtp": rtp,
        "utility": {"demo_cloze": {"acc": acc, "acc_norm": acc - 0.1, "num_examples": 500}},
        "bias": {"demo_toxicity_detection": {"auc": auc, "num_examples": 500}},
        "perplexity": {"perplexity": 12.5},
    }


@pytest.fixture
def evaluations():
    return {
        "base": evaluation("base", "", tp=0.8, emt=0.6, acc=0.60, auc=0.70),
        "inst": evaluation(
            "inst",
            "The following text is non-toxic:\n",
            tp=0.4,
            emt=0.3,
            acc=0.61,
            auc=0.72,
            unconditioned_tp=0.6,
        ),
    }


def test_results_hold_every_metric_per_strategy(evaluations):
    logs = {"inst": [{"step": s, "loss": 5.0 - s / 100} for s in range(1, 101)]}
    results = reporting.build_results(evaluations, logs)
    assert list(results) == ["base", "inst"]
    inst = results["inst"]
    for field in ("toxicity", "toxicity_unconditioned"):
        assert set(inst[field]) == set(SUBSETS)
        for subset in SUBSETS:
            assert {"expected_max_toxicity", "toxicity_probability"} <= set(inst[field][subset])
    assert inst["toxicity"]["all"]["toxicity_probability"] == 0.4
    assert inst["toxicity_unconditioned"]["all"]["toxicity_probability"] == 0.6
    assert inst["utility"] == {"demo_cloze": {"acc": 0.61, "acc_norm": pytest.approx(0.51)}}
    assert inst["bias_auc"] == {"demo_toxicity_detection": 0.72}
    assert inst["prefix"] == "The following text is non-toxic:\n"
    # The mean of the last FINAL_LOSS_WINDOW logged losses (steps 91..100).
    assert inst["final_train_loss"] == pytest.approx(5.0 - 0.955)
    assert results["base"]["final_train_loss"] is None  # no log given
    json.dumps(results, allow_nan=False)  # strict JSON


def test_results_from_different_scorers_are_refused(evaluations):
    evaluations["inst"]["rtp"]["conditioned"]["scorer"] = "detoxify-original@0.5.4"
    evaluations["inst"]["rtp"]["unconditioned"]["scorer"] = "detoxify-original@0.5.4"
    with pytest.raises(ValueError, match="different scorers"):
        reporting.build_results(evaluations)


def test_markdown_shows_the_change_against_base(evaluations):
    text = reporting.to_markdown(reporting.build_results(evaluations))
    main = text.split("## Main table")[1].split("##")[0]
    header = next(line for line in main.splitlines() if line.startswith("| strategy"))
    assert header.split(" | ")[1:7] == [
        "EMT all",
        "EMT toxic",
        "EMT non-toxic",
        "TP all",
        "TP toxic",
        "TP non-toxic",
    ]
    assert "demo_cloze acc" in header and "demo_toxicity_detection AUC" in header
    base_row = next(line for line in main.splitlines() if line.startswith("| base |"))
    inst_row = next(line for line in main.splitlines() if line.startswith("| inst |"))
    # BASE carries plain values; INST its relative toxicity change and accuracy/AUC in points.
    assert "0.800" in base_row and "%" not in base_row
    assert "0.400 (-50%)" in inst_row  # TP 0.4 vs 0.8
    assert "0.300 (-50%)" in inst_row  # EMT 0.3 vs 0.6
    assert "51.0 (+1.0)" in inst_row  # acc_norm 0.51 vs 0.50, in points
    assert "72.0 (+2.0)" in inst_row  # AUC
    detail = text.split("## Toxicity on every subset")[1]
    assert '| inst | "" | unconditioned | 10 |' in detail
    assert "0.600 (-25%)" in detail  # INST without its prefix vs BASE


def test_markdown_without_baseline_or_results():
    assert "No strategy" in reporting.to_markdown({})
    results = reporting.build_results(
        {"inst": evaluation("inst", "x\n", tp=0.4, emt=0.3, acc=0.6, auc=0.7)}
    )
    text = reporting.to_markdown(results)
    assert "base (not evaluated" in text and "%" not in text.split("## Main table")[1]


def test_relative_change_handles_missing_values():
    assert reporting.relative_change(0.3, 0.6) == pytest.approx(-0.5)
    assert math.isnan(reporting.relative_change(None, 0.6))
    assert math.isnan(reporting.relative_change(0.3, 0.0))


def test_write_report_writes_json_markdown_and_plots(tmp_path, evaluations):
    logs = {
        "base": [{"step": s, "loss": 4.0 / s} for s in range(1, 20)],
        "inst": [{"step": s, "loss": 3.0 / s} for s in range(1, 20)],
    }
    results = reporting.build_results(evaluations, logs)
    paths = reporting.write_report(results, str(tmp_path), train_logs=logs)
    with open(paths["json"]) as f:
        assert json.load(f) == json.loads(json.dumps(results))
    with open(paths["markdown"]) as f:
        assert f.read() == reporting.to_markdown(results)
    for kind in ("toxicity", "utility", "loss"):
        with Image.open(paths[kind]) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_read_train_log_keeps_the_last_line_per_step_and_names_bad_lines(tmp_path):
    assert reporting.read_train_log(str(tmp_path)) == []
    lines = [
        {"step": 2, "loss": 3.0},
        {"step": 1, "loss": 4.0},
        {"step": 2, "loss": 2.5},  # logged again after a resume
    ]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    log = reporting.read_train_log(str(tmp_path))
    assert [(r["step"], r["loss"]) for r in log] == [(1, 4.0), (2, 2.5)]
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 4.0}\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"train_log.jsonl:2: field 'step' or 'loss'"):
        reporting.read_train_log(str(tmp_path))
