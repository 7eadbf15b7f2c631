"""The real-text report: what a run's eval json becomes, seed pooling, the markdown marks and
the plot, on hand-made eval results."""

import pytest

from toxjax.study import real_report, reporting


def interval(estimate, low, high, n=4):
    return {"estimate": estimate, "low": low, "high": high, "n": n}


def spans(any_toxic, tp, emt, fraction=None):
    """One condition of evaluator's rtp_intervals (controllability.run_intervals)."""
    return {
        "all": {
            "toxicity_probability": tp,
            "expected_max_toxicity": emt,
            "toxic_fraction": fraction,
        },
        "toxic": {},
        "per_prompt": {
            "any_toxic": any_toxic,
            "max_toxicity": [0.1] * len(any_toxic),
            "toxic_fraction": [value / 2 for value in any_toxic],  # 1 of 2 samples
        },
    }


def evaluation(any_toxic, *, tp, control=None, gap=None, detection=None):
    """An eval json of a run with real-text results, shaped as the evaluator writes it."""
    return {
        "step": 3,
        "rtp_intervals": {
            "conditioned": spans(any_toxic, tp, interval(0.4, 0.3, 0.5), interval(0.1, 0.05, 0.15)),
            "toxic_signal": spans(
                any_toxic,
                interval(0.75, 0.5, 1.0),
                interval(0.6, 0.5, 0.7),
                interval(0.3, 0.2, 0.4),
            ),
            "unconditioned": spans(any_toxic, interval(0.5, 0.25, 0.75), None),
        },
        "controllability": {
            "vs_toxic_signal": {
                "toxicity_probability_relative": control,
                "toxic_fraction_relative": interval(-0.67, -0.8, -0.5),
                "toxic_prompts": {"toxic_fraction_relative": interval(-0.4, -0.7, 0.1)},
            },
            "vs_unconditioned": {"toxicity_probability_relative": interval(-0.5, -1.0, 0.0)},
        },
        "real_text": {
            "steerability": {
                "num_usable": 7,
                "comparisons": {
                    "toxic": {"gap": gap, "auc": interval(0.8, 0.6, 0.95)},
                    "none": {"gap": interval(0.1, -0.1, 0.3), "auc": interval(0.55, 0.4, 0.7)},
                },
            },
            "heldout_clean": {
                "perplexity": 42.0,
                "perplexity_interval": interval(42.0, 40.0, 44.0),
            },
            "cloze": {"acc": 0.25, "acc_interval": interval(0.25, 0.0, 0.5)},
            "detection": detection or {},
        },
    }


INST = evaluation(
    [0, 1, 0, 0],
    tp=interval(0.25, 0.0, 0.5),  # includes zero
    control=interval(-0.6, -0.9, -0.2),  # excludes zero
    gap=interval(0.5, 0.2, 0.8),
    detection={
        "tweets": {
            "generative": {"auc": interval(0.7, 0.6, 0.8)},
            "prompted_auc_interval": interval(0.5, 0.4, 0.6),
        },
        "paradetox": {"generative": None, "prompted_auc_interval": interval(0.6, 0.5, 0.7)},
    },
)


def test_run_summary_keeps_every_figure():
    summary = real_report.run_summary(INST)
    assert summary["tp"] == interval(0.25, 0.0, 0.5)
    assert summary["emt"] == interval(0.4, 0.3, 0.5)
    assert summary["tp_toxic_signal"] == interval(0.75, 0.5, 1.0)
    assert summary["tp_no_signal"] == interval(0.5, 0.25, 0.75)
    assert summary["control_vs_toxic"] == interval(-0.6, -0.9, -0.2)
    assert summary["control_vs_none"] == interval(-0.5, -1.0, 0.0)
    assert summary["steer_gap_vs_toxic"] == interval(0.5, 0.2, 0.8)
    assert summary["steer_auc_vs_toxic"] == interval(0.8, 0.6, 0.95)
    assert summary["steer_gap_vs_none"] == interval(0.1, -0.1, 0.3)
    assert summary["steer_auc_vs_none"] == interval(0.55, 0.4, 0.7)
    assert summary["steer_num_prompts"] == 7
    assert summary["heldout_perplexity"] == interval(42.0, 40.0, 44.0)
    assert summary["cloze_acc"] == interval(0.25, 0.0, 0.5)
    assert summary["detection"] == {  # sorted by task; BASE/FILTER have no generative AUC
        "paradetox": {"generative": None, "prompted": interval(0.6, 0.5, 0.7)},
        "tweets": {"generative": interval(0.7, 0.6, 0.8), "prompted": interval(0.5, 0.4, 0.6)},
    }
    assert list(summary["detection"]) == ["paradetox", "tweets"]
    assert summary["any_toxic"] == [0, 1, 0, 0]
    assert summary["toxic_fraction"] == interval(0.1, 0.05, 0.15)
    assert summary["toxic_fraction_toxic_signal"] == interval(0.3, 0.2, 0.4)
    assert summary["toxic_fraction_no_signal"] is None  # that condition has no fraction here
    assert summary["fraction_vs_toxic"] == interval(-0.67, -0.8, -0.5)
    assert summary["fraction_toxic_prompts_vs_toxic"] == interval(-0.4, -0.7, 0.1)
    assert summary["fraction_vs_none"] is None
    assert summary["toxic_fraction_per_prompt"] == [0, 0.5, 0, 0]


def test_run_summary_without_real_text():
    assert real_report.run_summary({"rtp": {}, "utility": {}}) is None
    # RTP intervals alone (config.eval.real_text off): the real-text figures are None.
    only_rtp = real_report.run_summary({"rtp_intervals": INST["rtp_intervals"]})
    assert only_rtp["tp"] == interval(0.25, 0.0, 0.5)
    assert only_rtp["heldout_perplexity"] is None and only_rtp["steer_gap_vs_toxic"] is None
    assert only_rtp["control_vs_toxic"] is None and only_rtp["detection"] == {}


def test_model_name_drops_the_seed_suffix_only():
    assert real_report.model_name("inst_seed2") == "inst"
    assert real_report.model_name("inst") == "inst"
    assert real_report.model_name("inst@threshold_quantile=0.3_seed1") == (
        "inst@threshold_quantile=0.3"
    )
    assert real_report.model_name("inst_seed1x") == "inst_seed1x"  # not a seed suffix


def test_seed_comparisons_pool_seeds_by_model():
    summaries = {
        "base": {"any_toxic": [1, 1, 0, 0]},
        "inst": {"any_toxic": [0, 0, 0, 1]},
        "base_seed1": {"any_toxic": [1, 0, 0, 0]},
        "inst_seed1": {"any_toxic": [0, 1, 0, 0]},
        "meda": None,  # evaluated without real-text results
        "filter": {"any_toxic": [1, 0]},  # other prompts: no paired comparison
        "inst@untagged_rate=0.1": {"any_toxic": None},
    }
    out = real_report.seed_comparisons(summaries, baseline="base")
    assert list(out) == ["inst"]
    inst = out["inst"]
    assert (inst["num_seeds_a"], inst["num_seeds_b"], inst["num_units"]) == (2, 2, 4)
    assert inst["per_seed_mean_a"] == [0.25, 0.25]
    assert inst["per_seed_mean_b"] == [0.5, 0.25]  # the baseline's two seeds
    # Pooled TP 0.25 against 0.375: -1/3, for both intervals.
    assert inst["relative_change"]["estimate"] == pytest.approx(-1 / 3)
    assert inst["unit_only"]["estimate"] == pytest.approx(-1 / 3)
    assert real_report.seed_comparisons(summaries, baseline="rlhf") == {}  # no baseline runs
    # The same pooling on the toxic fraction (runs evaluated before it existed have none).
    fractions = {
        "base": {"toxic_fraction_per_prompt": [0.5, 0.5, 0, 0]},
        "inst": {"toxic_fraction_per_prompt": [0, 0, 0, 0.25]},
        "inst_seed1": {"any_toxic": [0, 1, 0, 0]},
    }
    out = real_report.seed_comparisons(fractions, "base", "toxic_fraction_per_prompt")
    assert (out["inst"]["num_seeds_a"], out["inst"]["num_seeds_b"]) == (1, 1)
    assert out["inst"]["relative_change"]["estimate"] == pytest.approx(0.0625 / 0.25 - 1)


def table_row(markdown, name, header_start):
    """The cells of `name`'s row in the table whose header starts with header_start."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    for line in lines[start:]:
        if line.startswith(f"| {name} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {name!r} under {header_start!r}")


def test_markdown_marks_intervals_including_zero_as_not_significant():
    base = evaluation(
        [1, 1, 0, 0],
        tp=interval(0.5, 0.25, 0.75),
        control=interval(0.0, 0.0, 0.0),  # collapsed at zero: no interval to call n.s.
        gap=interval(float("nan"), float("nan"), float("nan")),
    )
    base["real_text"]["heldout_clean"]["perplexity_interval"] = interval(40.0, 38.0, 42.0)
    summaries = {"base": real_report.run_summary(base), "inst": real_report.run_summary(INST)}
    markdown = real_report.to_markdown(summaries, {}, "base")
    inst = table_row(markdown, "inst", "| run | TP (non-toxic signal)")
    assert inst[1] == "0.250 [0.000, 0.500]"  # a level, not a change: never marked
    assert inst[2] == "0.750 [0.500, 1.000]"  # toxic signal TP: clear of zero
    assert inst[4] == "-60% [-90, -20]"  # control vs toxic signal excludes zero
    assert inst[5] == "-50% [-100, 0] n.s."  # control vs no signal reaches zero
    assert inst[6] == "n/a / n/a"  # evaluated without the toxic-prompt contrast
    assert inst[8] == "42.0 [40.0, 44.0]" and inst[9] == "+5.0%"  # 42 / 40 - 1
    assert inst[10] == "0.250 [0.000, 0.500]"
    base_row = table_row(markdown, "base", "| run | TP (non-toxic signal)")
    assert base_row[4] == "0% [0, 0] n.s." and base_row[9] == "+0.0%"  # no change at all
    steer = table_row(markdown, "inst", "| run | steer gap vs toxic")
    assert steer[1:4] == [
        "0.500 [0.200, 0.800]",
        "0.800 [0.600, 0.950]",
        "0.100 [-0.100, 0.300] n.s.",
    ]
    assert steer[4:] == [  # AUC intervals that include chance (0.5) are marked
        "n/a / 0.600 [0.500, 0.700] n.s.",
        "0.700 [0.600, 0.800] / 0.500 [0.400, 0.600] n.s.",
    ]
    assert table_row(markdown, "base", "| run | steer gap vs toxic")[1] == "n/a"  # NaN gap
    fraction = table_row(markdown, "inst", "| run | toxic fraction (non-toxic signal)")
    assert fraction[1:] == [
        "0.100 [0.050, 0.150]",
        "0.300 [0.200, 0.400]",
        "n/a",
        "-67% [-80, -50]",
        "n/a",
        "-40% [-70, 10] n.s. / n/a",
    ]
    assert "Across models" not in markdown  # no seed comparisons given


def test_markdown_seed_table_and_empty_report():
    summaries = {
        "base": {"any_toxic": [1, 1, 0, 0]},
        "inst": {"any_toxic": [0, 0, 0, 1]},
        "inst_seed1": {"any_toxic": [0, 1, 0, 0]},
    }
    comparisons = real_report.seed_comparisons(summaries, "base")
    lines = real_report.seeds_table(comparisons, "base")
    assert lines[0].startswith("| model | seeds | TP vs base, seeds and prompts |")
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert row[:2] == ["inst", "2 vs 1"] and row[2].startswith("-50%")  # 0.25 / 0.5 - 1
    assert row[4] == "0.250, 0.250 vs 0.500"
    assert row[5:] == ["n/a", "n/a"]  # no toxic-fraction comparison given
    fractions = {"inst": {**comparisons["inst"], "per_seed_mean_a": [0.1, 0.2]}}
    row = real_report.seeds_table(comparisons, "base", fractions)[2].strip("|").split("|")
    assert row[5].strip().startswith("-50%") and row[6].strip() == "0.100, 0.200 vs 0.500"
    assert real_report.to_markdown({"base": None, "inst": None}, {}, "base") == ""


def test_plot_writes_a_png(tmp_path):
    summaries = {
        "inst": real_report.run_summary(INST),
        "base": {"tp": interval(0.5, 0.25, 0.75)},  # a run missing most figures
        "meda": None,
    }
    path = str(tmp_path / "real_text.png")
    real_report.plot(summaries, path, reporting._figure, reporting._save)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_results_pool_seeds_into_each_models_first_run():
    """build_results attaches the seed-pooled comparison to the model's first run and
    results.md shows it; the baseline gets none."""
    evaluations = {
        "base": evaluation([1, 1, 0, 0], tp=interval(0.5, 0.25, 0.75)),
        "base_seed1": evaluation([1, 0, 0, 0], tp=interval(0.25, 0.0, 0.5)),
        "inst": evaluation([0, 0, 0, 1], tp=interval(0.25, 0.0, 0.5)),
        "inst_seed1": evaluation([0, 1, 0, 0], tp=interval(0.25, 0.0, 0.5)),
    }
    results = reporting.build_results(evaluations, baseline="base")
    pooled = results["inst"]["real_text"]["tp_vs_baseline_seeds"]
    assert pooled["num_seeds_a"] == pooled["num_seeds_b"] == 2
    assert pooled["relative_change"]["estimate"] == pytest.approx(0.25 / 0.375 - 1)
    assert "tp_vs_baseline_seeds" not in results["base"]["real_text"]
    assert "tp_vs_baseline_seeds" not in results["inst_seed1"]["real_text"]
    assert "## Across models, training-seed variance included (vs base)" in (
        reporting.to_markdown(results)
    )
