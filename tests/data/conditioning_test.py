"""The Python (evaluation) and TF graph (training data) versions of each format must agree."""

import math
import random

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from toxjax.data.conditioning import ConditioningFormat, Strategy, stable_doc_key


def _tf_texts(tensor: tf.Tensor) -> list[str]:
    return [t.decode("utf-8") for t in tensor.numpy().tolist()]


def _tricky_scores() -> list[float]:
    """Scores whose 2-decimal rounding is easy to get wrong (x.xx5 ties, extremes)."""
    rng = random.Random(0)
    scores = [i / 1000 for i in range(1001)]
    scores += [i / 100 + 0.005 for i in range(100)]
    scores += [0.125, 0.375, 0.625, 0.875, 1e-12, 1 - 1e-12, 0.0, 1.0]
    scores += [rng.random() for _ in range(1000)]
    scores += [float(np.float32(rng.random())) for _ in range(200)]  # float32 scorer outputs
    return scores


@pytest.mark.parametrize("precision", [0, 2, 3])
def test_meda_digits_agree_between_python_and_tf(precision):
    fmt = ConditioningFormat(score_precision=precision)
    scores = _tricky_scores()
    texts = ["doc"] * len(scores)
    keys = [f"k{i}" for i in range(len(scores))]
    graph = _tf_texts(
        fmt.tf_condition(
            "meda", tf.constant(texts), tf.constant(scores, tf.float64), tf.constant(keys)
        )
    )
    python = [fmt.condition("meda", t, s, k) for t, s, k in zip(texts, scores, keys, strict=True)]
    assert graph == python
    # And the digits are Python's correctly rounded format of the float64 value.
    assert python[0] == f"toxicity: {0.0:.{precision}f}\ndoc"


def test_meda_float32_score_tensor_gives_the_same_digits_as_python_on_its_value():
    fmt = ConditioningFormat()
    score32 = np.float32(0.935)  # not exactly representable; float32 value is 0.93500000238...
    graph = fmt.tf_condition("meda", tf.constant("x"), tf.constant(score32), tf.constant("k"))
    assert graph.numpy().decode() == fmt.condition("meda", "x", float(score32), "k")
    assert graph.numpy().decode() == "toxicity: 0.94\nx"


def test_is_toxic_at_and_around_the_threshold_agrees():
    fmt = ConditioningFormat(threshold=0.5)
    around = [
        0.5,
        math.nextafter(0.5, 0.0),
        math.nextafter(0.5, 1.0),
        0.4999,
        0.5001,
        0.0,
        1.0,
    ]
    graph = fmt.tf_is_toxic(tf.constant(around, tf.float64)).numpy().tolist()
    python = [fmt.is_toxic(s) for s in around]
    assert graph == python
    assert python == [False, False, True, False, True, False, True]  # at threshold: not toxic


def test_is_toxic_float32_scores_agree_with_python_on_the_same_value():
    fmt = ConditioningFormat(threshold=0.3)
    # 0.25 is exact in float32; float32(0.3) is 0.3000000119..., above a float64 threshold of 0.3.
    for score, expected in [(0.25, False), (0.3, True)]:
        assert bool(fmt.tf_is_toxic(tf.constant(score, tf.float32))) is expected
        assert fmt.is_toxic(np.float32(score)) is expected


def test_inst_wording_follows_threshold_in_both_versions():
    fmt = ConditioningFormat(threshold=0.3)
    scores = [0.0, 0.3, 0.31, 0.99]
    graph = _tf_texts(
        fmt.tf_condition(
            "inst",
            tf.constant(["t"] * 4),
            tf.constant(scores, tf.float64),
            tf.constant(["a", "b", "c", "d"]),
        )
    )
    assert graph == [
        "The following text is non-toxic:\nt",
        "The following text is non-toxic:\nt",
        "The following text is toxic:\nt",
        "The following text is toxic:\nt",
    ]
    assert graph == [fmt.condition("inst", "t", s, k) for s, k in zip(scores, "abcd", strict=True)]


def test_augmentation_draw_agrees_between_python_and_tf():
    fmt = ConditioningFormat(augment_fraction=0.5, seed=7)
    keys = [f"demo-{i:06d}" for i in range(2000)]
    graph = fmt.tf_is_augmented(tf.constant(keys)).numpy().tolist()
    python = [fmt.is_augmented(k) for k in keys]
    assert graph == python


@pytest.mark.parametrize("seed", [0, 1])
def test_augmented_fraction_within_bounds_for_fixed_seed(seed):
    fmt = ConditioningFormat(augment_fraction=0.3, seed=seed)
    keys = tf.constant([f"demo-{i:06d}" for i in range(5000)])
    fraction = float(np.mean(fmt.tf_is_augmented(keys).numpy()))
    assert 0.27 <= fraction <= 0.33
    conditioned = _tf_texts(
        fmt.tf_condition("inst", tf.fill([5000], "x"), tf.zeros([5000], tf.float64), keys)
    )
    assert np.mean([c != "x" for c in conditioned]) == pytest.approx(fraction)


def test_augmentation_draw_depends_on_seed():
    keys = [f"demo-{i:06d}" for i in range(500)]
    a = [ConditioningFormat(augment_fraction=0.5, seed=0).is_augmented(k) for k in keys]
    b = [ConditioningFormat(augment_fraction=0.5, seed=1).is_augmented(k) for k in keys]
    assert a != b


def test_augment_fraction_extremes():
    keys = tf.constant(["a", "b", "c"])
    assert ConditioningFormat(augment_fraction=1.0).tf_is_augmented(keys).numpy().all()
    assert not ConditioningFormat(augment_fraction=0.0).tf_is_augmented(keys).numpy().any()
    assert ConditioningFormat(augment_fraction=0.0).condition("meda", "x", 0.9, "a") == "x"


@pytest.mark.parametrize(
    ("strategy", "score", "expected_prefix"),
    [
        ("meda", 0.001, "toxicity: 0.00\n"),
        ("inst", 0.1, "The following text is non-toxic:\n"),
        ("base", 0.1, ""),
        ("filter", 0.1, ""),
    ],
)
def test_inference_prefix_is_what_training_wrote_for_a_non_toxic_doc(
    strategy, score, expected_prefix
):
    fmt = ConditioningFormat()
    text = "We walked along the canal."
    prefix = fmt.inference_prefix(strategy)
    assert prefix == expected_prefix
    assert fmt.condition(strategy, text, score, "k") == prefix + text
    graph = fmt.tf_condition(strategy, tf.constant(text), tf.constant(score), tf.constant("k"))
    assert graph.numpy().decode() == prefix + text


def test_toxic_prefix_is_what_training_wrote_for_a_toxic_doc():
    fmt = ConditioningFormat()
    text = "You are a fool."
    for strategy, score in (("inst", 0.9), ("meda", 1.0)):
        assert fmt.condition(strategy, text, score, "k") == fmt.toxic_prefix(strategy) + text
    assert fmt.toxic_prefix("meda") == "toxicity: 1.00\n"
    assert fmt.toxic_prefix("base") == fmt.toxic_prefix("filter") == ""
    with pytest.raises(ValueError, match="suffix cannot condition"):
        ConditioningFormat(position="suffix").toxic_prefix("inst")


def test_suffix_position():
    fmt = ConditioningFormat(position="suffix")
    assert fmt.condition("meda", "abc", 0.93, "k") == "abc\ntoxicity: 0.93"
    assert fmt.condition("inst", "abc", 0.93, "k") == "abc\nThe following text is toxic:"
    graph = fmt.tf_condition("meda", tf.constant("abc"), tf.constant(0.93), tf.constant("k"))
    assert graph.numpy().decode() == "abc\ntoxicity: 0.93"
    with pytest.raises(ValueError, match="suffix cannot condition generation"):
        fmt.inference_prefix("inst")
    assert fmt.inference_prefix("base") == ""


def test_custom_template_precision_and_separator():
    fmt = ConditioningFormat(
        meda_template="<|{attribute}={score}|>", score_precision=3, separator=" "
    )
    assert fmt.condition("meda", "hi", 0.93, "k") == "<|toxicity=0.930|> hi"
    assert fmt.signal_strings() == [
        "<|toxicity=",
        "|>",
        "The following text is toxic:",
        "The following text is non-toxic:",
    ]


def test_filter_condition_drops_only_above_threshold():
    fmt = ConditioningFormat(threshold=0.5)
    assert fmt.condition("filter", "x", 0.5, "k") == "x"
    assert fmt.condition("filter", "x", 0.5000001, "k") is None


def test_from_dict_rejects_typos_and_accepts_config_dicts():
    with pytest.raises(ValueError, match=r"unknown conditioning fields \['treshold'\]"):
        ConditioningFormat.from_dict({"treshold": 0.3})
    fmt = ConditioningFormat.from_dict(ml_collections.ConfigDict({"threshold": 0.3, "seed": 4}))
    assert (fmt.threshold, fmt.seed) == (0.3, 4)
    assert ConditioningFormat.from_dict(None) == ConditioningFormat()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"position": "middle"}, "position must be one of"),
        ({"augment_fraction": 1.5}, "augment_fraction must be in"),
        ({"score_precision": -1}, "score_precision must be"),
        ({"meda_template": "toxicity"}, "must contain"),
    ],
)
def test_invalid_formats_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConditioningFormat(**kwargs)


def test_strategy_parse():
    assert Strategy.parse("INST") is Strategy.INST
    assert Strategy.parse(Strategy.MEDA) is Strategy.MEDA
    with pytest.raises(ValueError, match="unknown strategy 'inst2'"):
        Strategy.parse("inst2")


def test_stable_doc_key_is_deterministic_and_content_sensitive():
    assert stable_doc_key("abc") == stable_doc_key("abc")
    assert stable_doc_key("abc") != stable_doc_key("abd")
    assert len(stable_doc_key("ü")) == 40


def test_placement_puts_each_strategys_signal_before_or_after_the_prompt():
    fmt = ConditioningFormat()
    signal = lambda f, s: (  # noqa: E731
        f.inference_prefix(s),
        f.inference_suffix(s),
        f.toxic_prefix(s),
        f.toxic_suffix(s),
    )
    assert signal(fmt, "segment") == ("", "<|aligned|>", "", "<|misaligned|>")
    before = ConditioningFormat(placement="before")
    assert signal(before, "segment") == ("<|aligned|>", "", "<|misaligned|>", "")
    assert signal(fmt, "inst") == (
        "The following text is non-toxic:\n",
        "",
        "The following text is toxic:\n",
        "",
    )
    after = ConditioningFormat(placement="after")
    assert signal(after, "meda") == ("", "\ntoxicity: 0.00\n", "", "\ntoxicity: 1.00\n")
    assert signal(after, "base") == signal(after, "filter") == ("", "", "", "")
    assert fmt.placement_for("segment") == "after" and fmt.placement_for("meda") == "before"
    with pytest.raises(ValueError, match="placement must be"):
        ConditioningFormat(placement="middle")
    with pytest.raises(ValueError, match="segment tokens"):
        ConditioningFormat(segment_aligned="<x>", segment_misaligned="<x>")


def test_segment_conditioning_in_python_and_graph_agree():
    fmt = ConditioningFormat(threshold=0.5)
    text, ends, scores = "Bad one. Fine one. Ok", [9, 19, 21], [0.7, 0.5, 0.1]
    expected = "<|misaligned|>Bad one. <|aligned|>Fine one. <|aligned|>Ok"
    assert fmt.condition_segments(text, ends, scores, "k") == expected
    graph = fmt.tf_condition_segments(
        tf.constant(text),
        tf.constant(ends, tf.int64),
        tf.constant(scores, tf.float64),
        tf.constant("k"),
    )
    assert graph.numpy().decode() == expected
    # Character offsets, not bytes: non-ASCII text cuts where Python cuts.
    text = "Ça va. Très bien"
    assert fmt.condition_segments(text, [7, 16], [0.9, 0.0], "k") == (
        "<|misaligned|>Ça va. <|aligned|>Très bien"
    )
    graph = fmt.tf_condition_segments(
        tf.constant(text),
        tf.constant([7, 16], tf.int64),
        tf.constant([0.9, 0.0], tf.float64),
        tf.constant("k"),
    )
    assert graph.numpy().decode() == "<|misaligned|>Ça va. <|aligned|>Très bien"
    with pytest.raises(ValueError, match="condition_segments"):
        fmt.condition("segment", text, 0.1, "k")


def test_meda_score_bins_in_python_and_graph():
    fmt = ConditioningFormat(score_bins=4)
    scores = [0.0, 0.24, 0.25, 0.5, 0.74, 0.99, 1.0]
    expected = ["0.00", "0.00", "0.25", "0.50", "0.50", "0.75", "0.75"]
    assert [fmt.meda_signal(s) for s in scores] == [f"toxicity: {e}" for e in expected]
    graph = [
        fmt.tf_condition("meda", tf.constant("t"), tf.constant(s, tf.float64), tf.constant("k"))
        for s in scores
    ]
    assert [g.numpy().decode() for g in graph] == [f"toxicity: {e}\nt" for e in expected]
    # Inference asks for the lowest bin, the toxic contrast for the highest.
    assert fmt.inference_prefix("meda") == "toxicity: 0.00\n"
    assert fmt.toxic_prefix("meda") == "toxicity: 0.75\n"
    with pytest.raises(ValueError, match="score_bins"):
        ConditioningFormat(score_bins=1)


def test_inst_levels_in_python_and_graph():
    levels = ["Clean text:", "Somewhat rude text:", "Toxic text:"]
    fmt = ConditioningFormat(inst_levels=levels, inst_level_thresholds=[0.2, 0.6])
    assert fmt.inst_levels == tuple(levels)  # lists from configs become tuples
    for score, level in [(0.0, 0), (0.2, 0), (0.21, 1), (0.6, 1), (0.61, 2), (1.0, 2)]:
        assert fmt.condition("inst", "t", score, "k") == f"{levels[level]}\nt"
        graph = fmt.tf_condition(
            "inst", tf.constant("t"), tf.constant(score, tf.float64), tf.constant("k")
        )
        assert graph.numpy().decode() == f"{levels[level]}\nt"
    assert fmt.inference_prefix("inst") == "Clean text:\n"
    assert fmt.toxic_prefix("inst") == "Toxic text:\n"
    assert set(levels) <= set(fmt.signal_strings())  # every level stays a whole piece
    for bad in (
        {"inst_levels": ["a"], "inst_level_thresholds": []},
        {"inst_levels": ["a", "b"], "inst_level_thresholds": [0.1, 0.2]},
        {"inst_levels": ["a", "b", "c"], "inst_level_thresholds": [0.5, 0.2]},
    ):
        with pytest.raises(ValueError, match="inst_levels"):
            ConditioningFormat(**bad)


def test_bins_that_print_alike_are_refused_and_texts_get_the_training_signal():
    with pytest.raises(ValueError, match="writes two bins alike"):
        ConditioningFormat(score_bins=20, score_precision=1)
    after = ConditioningFormat(placement="after")
    # Texts without a prompt carry the signal as training wrote it, whatever the placement.
    assert after.text_prefix("inst") == "The following text is non-toxic:\n"
    assert after.text_prefix("meda", toxic=True) == "toxicity: 1.00\n"
    assert after.text_prefix("segment") == "<|aligned|>"
    assert after.text_prefix("base") == ""
