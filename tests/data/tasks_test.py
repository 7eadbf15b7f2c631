"""Demo tasks end to end (scored on first use, packed for an LM) and user registration."""

import importlib
import json
import os

import numpy as np
import pytest
import seqio

from toxjax.data import tasks
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.scoring import job
from toxjax.scoring.scorers import Scorer

DEMO_NAMES = [
    "toxjax_demo_base",
    "toxjax_demo_meda",
    "toxjax_demo_inst",
    "toxjax_demo_filter",
    "toxjax_demo_inst_mix",
]
LM_PACKED = seqio.LMFeatureConverter(pack=True)
MODEL_FEATURES = {
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A private TOXJAX_DATA_DIR for this module, so tests never touch ~/.cache."""
    directory = str(tmp_path_factory.mktemp("toxjax_data"))
    previous = os.environ.get(tasks.DATA_DIR_ENV)
    os.environ[tasks.DATA_DIR_ENV] = directory
    yield directory
    if previous is None:
        del os.environ[tasks.DATA_DIR_ENV]
    else:
        os.environ[tasks.DATA_DIR_ENV] = previous


@pytest.fixture(scope="module")
def demo(data_dir):
    """Demo tasks whose lazy source resolves under `data_dir` (re-registered after import)."""
    registered = tasks.register_demo_tasks()
    yield registered
    tasks.register_demo_tasks()  # leave fresh, unresolved demo tasks for other test modules


def test_import_registers_the_demo_family_cheaply_and_idempotently(data_dir):
    module = importlib.reload(tasks)  # re-runs the import-time registration
    module = importlib.reload(module)  # and again: replaces, never duplicates
    for name in DEMO_NAMES:
        assert name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()
    assert sorted(module.family_members("toxjax_demo")) == sorted(DEMO_NAMES)
    assert module.DEMO_TASKS == {
        "base": "toxjax_demo_base",
        "meda": "toxjax_demo_meda",
        "inst": "toxjax_demo_inst",
        "filter": "toxjax_demo_filter",
        "inst_mix": "toxjax_demo_inst_mix",
    }
    assert os.listdir(data_dir) == []  # nothing scored at import
    vocab = seqio.get_mixture_or_task("toxjax_demo_inst").output_features["targets"].vocabulary
    assert isinstance(vocab, seqio.ByteVocabulary)


def test_demo_is_scored_once_into_the_data_dir(demo, data_dir):
    directory = tasks.demo_scored_dir()
    assert directory.startswith(os.path.join(data_dir, "demo"))
    manifest_path = os.path.join(directory, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    assert manifest["complete"] and manifest["input"] == "demo"
    assert manifest["scorer"].startswith("profanity_check@")
    modified = os.path.getmtime(manifest_path)
    assert tasks.demo_scored_dir() == directory
    assert os.path.getmtime(manifest_path) == modified  # cached, not rescored


@pytest.mark.parametrize("strategy", ["base", "meda", "inst", "filter"])
def test_demo_task_text_is_the_conditioning_of_every_scored_record(demo, strategy):
    task = seqio.get_mixture_or_task(f"toxjax_demo_{strategy}")
    for split in ("validation",):  # train is the same code on 19x the data
        records = list(task.source.iter_split(split))
        expected = [tasks.DEMO_FORMAT.condition(strategy, *record) for record in records]
        expected = sorted(text for text in expected if text is not None)
        ds = task.get_dataset(None, split=split, shuffle=False)
        actual = sorted(
            t.decode() for t in ds.map(lambda ex: ex["targets_pretokenized"]).as_numpy_iterator()
        )
        assert actual == expected
    if strategy == "filter":  # the demo's offensive documents score far above 0.5
        train = list(task.source.iter_split("train"))
        assert 0 < len(actual) < len(train)


def test_demo_splits_are_disjoint(demo):
    source = seqio.get_mixture_or_task("toxjax_demo_base").source
    train = {key for *_, key in source.iter_split("train")}
    validation = {key for *_, key in source.iter_split("validation")}
    assert not train & validation
    assert len(train | validation) == 4000
    assert 120 <= len(validation) <= 280  # 5% of 4000


@pytest.mark.parametrize("name", DEMO_NAMES)
def test_demo_tasks_pack_for_an_lm(demo, name):
    ds = seqio.get_dataset(
        name,
        task_feature_lengths={"targets": 512},
        feature_converter=LM_PACKED,
        dataset_split="train",
        shuffle=True,
        seed=0,
    )
    examples = list(ds.take(4).as_numpy_iterator())
    assert len(examples) == 4
    assert any(ex["decoder_segment_ids"].max() >= 2 for ex in examples)  # documents are packed
    for ex in examples:
        assert set(ex) == MODEL_FEATURES
        assert all(v.shape == (512,) and v.dtype == np.int32 for v in ex.values())
        weights = ex["decoder_loss_weights"]
        np.testing.assert_array_equal(weights, ex["decoder_target_tokens"] > 0)
        first = ex["decoder_target_tokens"][ex["decoder_segment_ids"] == 1]
        assert first[-1] == 1  # each document ends with EOS
        text = seqio.ByteVocabulary().decode(first.tolist())
        if name.startswith("toxjax_demo_meda"):
            assert text.startswith("toxicity: ")
        if name == "toxjax_demo_inst":
            assert text.startswith("The following text is ")


def test_host_shards_of_a_demo_task_partition_it(demo):
    def count(shard_info=None):
        ds = seqio.get_dataset(
            "toxjax_demo_base",
            task_feature_lengths={"targets": 64},
            feature_converter=seqio.LMFeatureConverter(pack=False),
            dataset_split="validation",
            shard_info=shard_info,
        )
        return sum(1 for _ in ds)

    halves = [count(seqio.ShardInfo(i, 2)) for i in range(2)]
    assert sum(halves) == count() and min(halves) > 0


def test_inference_prefix_of_registered_tasks(demo):
    assert tasks.inference_prefix("toxjax_demo_inst") == "The following text is non-toxic:\n"
    assert tasks.inference_prefix("toxjax_demo_inst_mix") == "The following text is non-toxic:\n"
    assert tasks.inference_prefix("toxjax_demo_meda") == "toxicity: 0.00\n"
    assert tasks.inference_prefix("toxjax_demo_filter") == ""
    assert tasks.conditioning_for("toxjax_demo_meda") == (Strategy.MEDA, tasks.DEMO_FORMAT)
    with pytest.raises(ValueError, match="not a task or mixture registered by toxjax"):
        tasks.conditioning_for("no_such_task")


# ---------------------------------------------------------------------------------------------
# A user's corpus.

TOXIC = "You are an idiot and your cooking is disgusting."
CLEAN = "We walked along the canal and watched the boats go by."


class LookupScorer(Scorer):
    """Prescribed scores, so the expected strings are known exactly."""

    name, version, attributes = "lookup", "1", ("toxicity",)

    def __init__(self, table):
        self.table = table

    def score(self, texts):
        return {"toxicity": np.array([self.table[t] for t in texts], np.float32)}


@pytest.fixture(scope="module")
def user_scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    table = {TOXIC: 0.93, CLEAN: 0.07}
    for i in range(300):
        table[f"Filler document number {i}."] = (i % 10) / 10
    dirs = {}
    for split, texts in {"train": list(table), "validation": [TOXIC, CLEAN]}.items():
        jsonl = root / f"{split}.jsonl"
        jsonl.write_text(
            "".join(
                json.dumps({"id": f"{split}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)
            )
        )
        dirs[split] = str(root / f"scored_{split}")
        job.score_corpus(
            str(jsonl),
            dirs[split],
            LookupScorer(table),
            job.ScoreOptions(records_per_shard=100),
            progress=False,
        )
    return dirs


def test_user_registration_with_a_mixture(user_scored):
    names = tasks.register_toxicity_tasks(
        "toxjax_test_user",
        user_scored,
        vocabulary=seqio.ByteVocabulary(),
        strategies=["base", "inst", "meda", "filter"],
        mixture_with=[("toxjax_test_user_base", 0.25)],
    )
    try:
        assert names == {
            "base": "toxjax_test_user_base",
            "inst": "toxjax_test_user_inst",
            "meda": "toxjax_test_user_meda",
            "filter": "toxjax_test_user_filter",
            "meda_mix": "toxjax_test_user_meda_mix",
            "inst_mix": "toxjax_test_user_inst_mix",
        }
        expected = {
            "base": [TOXIC, CLEAN],
            "inst": [
                "The following text is toxic:\nYou are an idiot and your cooking is disgusting.",
                "The following text is non-toxic:\n"
                "We walked along the canal and watched the boats go by.",
            ],
            "meda": [
                "toxicity: 0.93\nYou are an idiot and your cooking is disgusting.",
                "toxicity: 0.07\nWe walked along the canal and watched the boats go by.",
            ],
            "filter": ["We walked along the canal and watched the boats go by."],
        }
        for strategy, texts in expected.items():
            ds = seqio.get_mixture_or_task(names[strategy]).get_dataset(
                None, "validation", shuffle=False
            )
            seqio.test_utils.assert_dataset(
                ds,
                [
                    {"targets_pretokenized": t, "targets": [b + 3 for b in t.encode()] + [1]}
                    for t in texts
                ],
            )
        mixture = seqio.get_mixture_or_task(names["inst_mix"])
        assert mixture.get_rate(seqio.get_mixture_or_task(names["inst"])) == pytest.approx(0.75)
        ds = seqio.get_dataset(
            names["inst_mix"],
            task_feature_lengths={"targets": 128},
            feature_converter=seqio.LMFeatureConverter(pack=False),
            num_epochs=None,
            shuffle=True,
            seed=0,
        )
        vocab = seqio.ByteVocabulary()
        texts = [
            vocab.decode(ex["decoder_target_tokens"].tolist())
            for ex in ds.take(1200).as_numpy_iterator()
        ]
        untagged = np.mean([not t.startswith("The following text is") for t in texts])
        assert 0.21 <= untagged <= 0.29
    finally:
        tasks.unregister_family("toxjax_test_user")
    assert tasks.family_members("toxjax_test_user") == []


def test_reregistering_replaces_the_whole_family(user_scored):
    try:
        tasks.register_toxicity_tasks(
            "toxjax_test_rereg",
            user_scored,
            vocabulary=seqio.ByteVocabulary(),
            strategies=["inst", "meda"],
            mixture_with=[("toxjax_test_rereg_meda", 0.1)],
            mix_strategies=["inst"],
        )
        names = tasks.register_toxicity_tasks(
            "toxjax_test_rereg",
            user_scored,
            vocabulary=seqio.ByteVocabulary(),
            fmt=ConditioningFormat(inst_toxic="TOXIC:", inst_nontoxic="CLEAN:"),
            strategies=["inst"],
        )
        assert names == {"inst": "toxjax_test_rereg_inst"}
        assert tasks.family_members("toxjax_test_rereg") == ["toxjax_test_rereg_inst"]
        assert "toxjax_test_rereg_inst_mix" not in seqio.MixtureRegistry.names()
        ds = seqio.get_mixture_or_task(names["inst"]).get_dataset(None, "validation", shuffle=False)
        assert [
            t.decode() for t in ds.map(lambda ex: ex["targets_pretokenized"]).as_numpy_iterator()
        ] == [
            "TOXIC:\n" + TOXIC,
            "CLEAN:\n" + CLEAN,
        ]
    finally:
        tasks.unregister_family("toxjax_test_rereg")


def test_a_name_owned_by_someone_else_is_an_error(user_scored):
    seqio.TaskRegistry.add(
        "toxjax_test_clash_base",
        source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["train"]),
        output_features={},
    )
    try:
        with pytest.raises(
            ValueError, match="'toxjax_test_clash_base' is already registered by someone"
        ):
            tasks.register_toxicity_tasks(
                "toxjax_test_clash", user_scored, vocabulary=seqio.ByteVocabulary()
            )
        assert tasks.family_members("toxjax_test_clash") == []
    finally:
        seqio.TaskRegistry.remove("toxjax_test_clash_base")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mixture_with": [("toxjax_test_bad_base", 1.0)]}, "rates sum to 1.0"),
        ({"mixture_with": [("toxjax_test_bad_base", 0.0)]}, "must be > 0"),
        ({"mixture_with": [("nowhere", 0.1)]}, "'nowhere' is neither a task of this family"),
        (
            {
                "strategies": ["base", "meda"],
                "mixture_with": [("toxjax_test_bad_base", 0.1)],
                "mix_strategies": ["inst"],
            },
            "mix_strategies: 'inst' is not in strategies",
        ),
        ({"strategies": ["inst", "INST"]}, "lists a strategy twice"),
        ({"strategies": ["instruct"]}, "unknown strategy 'instruct'"),
        ({"long_documents": "drop"}, "long_documents must be one of"),
    ],
)
def test_registration_errors(user_scored, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.register_toxicity_tasks(
            "toxjax_test_bad", user_scored, vocabulary=seqio.ByteVocabulary(), **kwargs
        )
    assert tasks.family_members("toxjax_test_bad") == []


def test_family_name_must_be_a_seqio_name(user_scored):
    with pytest.raises(ValueError, match="family name 'my corpus' must match"):
        tasks.register_toxicity_tasks("my corpus", user_scored, vocabulary=seqio.ByteVocabulary())
