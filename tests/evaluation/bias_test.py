"""Bias detection: AUC values, the yes/no prompt and score, every task end to end, local files."""

import math

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.metrics import roc_auc_score
from tensorflow_datasets.text.civil_comments import IDENTITY_LABELS

from toxjax.evaluation import bias
from toxjax.inference.requests import LoglikelihoodResult


def count_a_engine(requests):
    """log P(" Yes") grows with the number of "a"s in the context; log P(" No") is fixed.

    The template's own "a"s add the same constant to every score, which AUC ignores.
    """
    count_a_engine.calls.append(list(requests))
    return [
        LoglikelihoodResult(
            logprob=-100.0 + r.context.count("a") if r.continuation == " Yes" else -50.0,
            is_greedy=False,
            num_tokens=1,
        )
        for r in requests
    ]


count_a_engine.calls = []


def test_auc_hand_computed_and_sklearn():
    # Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4.
    assert bias.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels * 0.5 + rng.normal(size=200)
    assert bias.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_one_class_auc_is_nan_and_says_why():
    assert math.isnan(bias.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(bias.auc([], []))
    report = bias.auc_report(np.array([0, 0]), np.array([0.2, 0.1]))
    assert report["num_negative"] == 2 and "single class" in report["note"]


def test_yes_no_score_and_prompt_layout():
    examples = [bias.LabeledText("banana", 1), bias.LabeledText("kiwi", 0)]
    count_a_engine.calls = []
    scores = bias.yes_no_scores(
        examples, count_a_engine, question="Is this text toxic?", config=bias.BiasPromptConfig()
    )
    (requests,) = count_a_engine.calls  # one engine call
    assert requests[0].context == (
        "Text: banana\nQuestion: Is this text toxic? Answer Yes or No.\nAnswer:"
    )
    assert [r.continuation for r in requests] == [" Yes", " No", " Yes", " No"]
    template_a = requests[1].context.count("a") - "banana".count("a")
    np.testing.assert_allclose(scores, [-50.0 + 3 + template_a, -50.0 + template_a])


def test_few_shot_examples_are_balanced_seeded_and_in_the_prompt():
    pool = [bias.LabeledText(f"pos {i}", 1) for i in range(5)] + [
        bias.LabeledText(f"neg {i}", 0) for i in range(5)
    ]
    shots = bias.select_shots(pool, 3, seed=1)
    assert shots == bias.select_shots(pool, 3, seed=1)
    assert sorted(s.label for s in shots) == [0, 1, 1]
    config = bias.BiasPromptConfig(num_shots=3)
    prompt = bias.build_prompt("query", "Q?", config, shots)
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4 and blocks[-1].startswith("Text: query")
    for shot, block in zip(shots, blocks, strict=False):
        assert block.startswith(f"Text: {shot.text}")
        assert block.endswith(" Yes" if shot.label else " No")
    with pytest.raises(ValueError, match="pool holds 10"):
        bias.select_shots(pool, 11, seed=0)


def raw_examples(name, split, limit):
    return list(tfds.as_numpy(tfds.builder(name).as_dataset(split=split).take(limit)))


@pytest.mark.parametrize("name", ["civil_comments", "wikipedia_toxicity"])
def test_tfds_tasks_end_to_end_on_mock_data(name):
    task = bias.TASKS[name]
    with tfds.testing.mock_data(num_examples=24):
        raw = raw_examples(task.tfds_name, task.split, 24)
        report = bias.evaluate_task(name, count_a_engine, limit=24)
    labels = [int(x["toxicity"] >= 0.5) for x in raw]
    expected = roc_auc_score(labels, [x["text"].decode().count("a") for x in raw])
    assert report["num_examples"] == 24
    assert report["num_positive"] == sum(labels)
    assert report["auc"] == pytest.approx(expected)
    assert report["source"] == f"tfds:{task.tfds_name}:test"


def test_identity_subgroup_auc_on_mock_data():
    task = bias.TASKS["civil_comments_identities"]
    with tfds.testing.mock_data(num_examples=30):
        raw = raw_examples(task.tfds_name, "test", 30)
        report = bias.evaluate_task("civil_comments_identities", count_a_engine, limit=30)
    labels = np.array([int(x["toxicity"] >= 0.5) for x in raw])
    scores = np.array([x["text"].decode().count("a") for x in raw])
    assert set(report["subgroup_auc"]) == set(IDENTITY_LABELS)
    defined = []
    for identity in IDENTITY_LABELS:
        mask = np.array([x[identity] >= 0.5 for x in raw])
        sub = report["subgroup_auc"][identity]
        assert sub["num_examples"] == mask.sum()
        if len(set(labels[mask])) == 2:
            expected = roc_auc_score(labels[mask], scores[mask])
            assert sub["auc"] == pytest.approx(expected)
            defined.append(expected)
        else:
            assert math.isnan(sub["auc"])
    assert defined
    assert report["mean_subgroup_auc"] == pytest.approx(np.mean(defined))
    assert report["num_subgroups_with_auc"] == len(defined)


def test_tfds_few_shot_draws_from_the_train_split():
    config = bias.BiasPromptConfig(num_shots=2, shot_pool_size=10)
    count_a_engine.calls = []
    with tfds.testing.mock_data(num_examples=10):
        train = raw_examples("civil_comments/CivilComments", "train", 10)
        report = bias.evaluate_task("civil_comments", count_a_engine, limit=5, config=config)
    assert report["num_shots"] == 2
    context = count_a_engine.calls[0][0].context
    assert context.count("Text: ") == 3
    shot_text = context.split("Text: ")[1].split("\n")[0]
    assert shot_text in {x["text"].decode() for x in train}


TOXIGEN_CSV = (
    "text,target_group,toxicity_ai,toxicity_human\n"
    "all of them are criminals,immigrants,4.6,4.666\n"
    '"a friendly, kind neighbour",asian,1.0,1.0\n'
    "they are lazy and aggressive,black,4.1,2.6\n"
    "the food was great,mexican,1.2,2.5\n"
)


def test_toxigen_csv_and_jsonl(tmp_path):
    path = tmp_path / "annotated.csv"
    path.write_text(TOXIGEN_CSV)
    examples = bias.read_toxigen(str(path))
    assert [x.label for x in examples] == [1, 0, 1, 0]  # > 2.5: 4.666 and 2.6 only
    assert examples[1].text == "a friendly, kind neighbour"
    jsonl = tmp_path / "annotated.jsonl"
    jsonl.write_text(
        '{"text": "x y", "toxicity_human": 3.0}\n\n{"text": "z", "toxicity_human": 1}\n'
    )
    assert [x.label for x in bias.read_toxigen(str(jsonl))] == [1, 0]
    report = bias.evaluate_task("toxigen", count_a_engine, path=str(path))
    expected = roc_auc_score([1, 0, 1, 0], [x.text.count("a") for x in examples])
    assert report["auc"] == pytest.approx(expected)


def test_local_few_shot_is_disjoint_from_evaluated_examples(tmp_path):
    path = tmp_path / "annotated.csv"
    path.write_text(TOXIGEN_CSV)
    count_a_engine.calls = []
    config = bias.BiasPromptConfig(num_shots=2, shot_seed=4)
    report = bias.evaluate_task("toxigen", count_a_engine, path=str(path), config=config)
    assert report["num_examples"] == 2
    requests = count_a_engine.calls[0]
    shot_texts = {
        block.split("\n")[0][len("Text: ") :] for block in requests[0].context.split("\n\n")[:2]
    }
    queries = {r.context.split("\n\n")[-1].split("\n")[0][len("Text: ") :] for r in requests}
    assert len(shot_texts) == 2 and not shot_texts & queries


def test_social_bias_frames_aggregates_annotations(tmp_path):
    path = tmp_path / "SBIC.v2.tst.csv"
    path.write_text(
        "whoTarget,post,offensiveYN,annotatorGender\n"
        ",post one,1.0,man\n"
        ",post one,0.0,woman\n"
        ",post two,0.0,man\n"
        ',"post, three",0.5,man\n'
        ",post two,0.5,woman\n"
    )
    examples = bias.read_social_bias_frames(str(path))
    # means: post one 0.5 -> 1; post two 0.25 -> 0; post three 0.5 -> 1
    assert [(x.text, x.label) for x in examples] == [
        ("post one", 1),
        ("post two", 0),
        ("post, three", 1),
    ]
    report = bias.evaluate_task("social_bias_frames", count_a_engine, path=str(path))
    assert report["num_examples"] == 3 and "offensive" in count_a_engine.calls[-1][0].context


@pytest.mark.parametrize(
    "reader, content, message",
    [
        (
            bias.read_toxigen,
            "text,toxicity_human\nok,2\nbad,high\n",
            r"line 3: field 'toxicity_human'",
        ),
        (bias.read_toxigen, "text,toxicity_human\nok,7\n", r"line 2: .*1-5 scale"),
        (bias.read_toxigen, "text,toxicity_ai\nok,2\n", r"line 1 \(header\).*toxicity_human"),
        (bias.read_toxigen, "text,toxicity_human\n,2\n", r"line 2: field 'text'"),
        (
            bias.read_social_bias_frames,
            'post,offensiveYN\na,1\n"b\nc",0\nd,\n',
            r"line 5: field 'offensiveYN'",
        ),
        (bias.read_social_bias_frames, "post,offensiveYN\na,1,extra\n", r"line 2: more cells"),
    ],
)
def test_malformed_local_files_name_file_line_field(tmp_path, reader, content, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        reader(str(path))
    assert str(path) in str(error.value)


def test_malformed_jsonl_and_missing_path(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "toxicity_human": 2}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"line 2: missing field 'toxicity_human'"):
        bias.read_toxigen(str(path))
    with pytest.raises(ValueError, match="pass path="):
        bias.evaluate_task("toxigen", count_a_engine)
    with pytest.raises(ValueError, match="unknown bias task"):
        bias.evaluate_task("dynahate", count_a_engine)
