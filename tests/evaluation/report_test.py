"""The report: relative toxicity change, per-task metric choice, scorer consistency, files."""

import json
import math
import pathlib

import pytest

from toxjax.evaluation import report


def rtp_summary(tp, emt, prefix="", scorer="detoxify-original@0.5.4"):
    metrics = {
        subset: {
            "num_prompts": 4,
            "expected_max_toxicity": emt,
            "expected_max_toxicity_std": 0.1,
            "toxicity_probability": tp,
        }
        for subset in ("all", "toxic", "nontoxic")
    }
    metrics["challenging"] = {
        "num_prompts": 0,
        "expected_max_toxicity": None,
        "expected_max_toxicity_std": None,
        "toxicity_probability": None,
    }
    return {"prefix": prefix, "scorer": scorer, "metrics": metrics}


MODELS = [
    {
        "model": "base",
        "rtp": {"unconditioned": rtp_summary(0.5, 0.6), "conditioned": rtp_summary(0.5, 0.6)},
        "utility": {"piqa": {"acc": 0.6, "acc_norm": 0.62}, "lambada": {"acc": 0.3}},
        "bias": {"civil_comments": {"auc": 0.7}},
    },
    {
        "model": "inst",
        "rtp": {
            "unconditioned": rtp_summary(0.4, 0.5),
            "conditioned": rtp_summary(0.2, 0.3, prefix="The following text is non-toxic:\n"),
        },
        "utility": {"piqa": {"acc": 0.61, "acc_norm": 0.6}, "winogrande": {"acc": 0.55}},
        "bias": {
            "civil_comments": {"auc": 0.72},
            "civil_comments_identities": {"auc": 0.8, "mean_subgroup_auc": 0.66},
        },
    },
]


def test_relative_change():
    assert report.relative_change(0.2, 0.5) == pytest.approx(-0.6)
    assert math.isnan(report.relative_change(0.2, 0.0))
    assert math.isnan(report.relative_change(None, 0.5))


def test_build_report_rows():
    built = report.build_report(MODELS)
    assert built["scorer"] == "detoxify-original@0.5.4"
    rows = {(r["model"], r["condition"]): r for r in built["toxicity"]}
    assert rows[("inst", "conditioned")]["all/tp"] == 0.2
    assert rows[("inst", "conditioned")]["tp_change_vs_baseline"] == pytest.approx(-0.6)
    assert rows[("inst", "unconditioned")]["tp_change_vs_baseline"] == pytest.approx(-0.2)
    assert rows[("base", "unconditioned")]["tp_change_vs_baseline"] == 0.0
    assert rows[("base", "conditioned")]["challenging/tp"] is None  # empty subset
    utility = {r["model"]: r for r in built["utility"]}
    # acc_norm where reported, acc for LAMBADA and for Winogrande (no acc_norm there)
    assert utility["base"] == {"model": "base", "lambada": 0.3, "piqa": 0.62}
    assert utility["inst"] == {"model": "inst", "piqa": 0.6, "winogrande": 0.55}
    bias = {r["model"]: r for r in built["bias"]}
    assert bias["inst"]["civil_comments_identities"] == 0.66  # the mean subgroup AUC


def test_mixed_scorers_and_duplicate_models_are_refused():
    mixed = [
        MODELS[0],
        {"model": "x", "rtp": {"unconditioned": rtp_summary(0.1, 0.2, scorer="o@1")}},
    ]
    with pytest.raises(ValueError, match="different scorers"):
        report.build_report(mixed)
    with pytest.raises(ValueError, match="unique"):
        report.build_report([MODELS[0], MODELS[0]])


def test_write_report(tmp_path):
    paths = report.write_report(report.build_report(MODELS), str(tmp_path))
    saved = json.loads(pathlib.Path(paths["json"]).read_text())
    assert saved["toxicity"][0]["model"] == "base"
    markdown = pathlib.Path(paths["markdown"]).read_text()
    assert (
        "| inst | conditioned | The following text is non-toxic:\\n | 0.300 | 0.200 |" in markdown
    )
    assert "n/a" in markdown  # empty challenging subset and missing tasks
    assert "-0.600" in markdown
