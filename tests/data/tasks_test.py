"""A user's corpus registered as a task family, and task modules imported by name."""

import json

import ml_collections
import numpy as np
import pytest
import seqio

from toxjax.data import tasks
from toxjax.data.conditioning import ConditioningFormat
from toxjax.scoring import job
from toxjax.scoring.scorers import Scorer

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


def test_task_modules_must_import_and_be_a_tuple():
    missing = ml_collections.ConfigDict({"data": {"task_modules": ("no_such_module_here",)}})
    with pytest.raises(ImportError, match=r"task_modules.*'no_such_module_here'"):
        tasks.import_task_modules(missing)
    as_string = ml_collections.ConfigDict({"data": {"task_modules": "toxjax.data.demo_tasks"}})
    with pytest.raises(TypeError, match="tuple of module names"):
        tasks.import_task_modules(as_string)


def test_an_unregistered_task_names_the_config_field_to_fix():
    from toxjax.data import input_pipeline

    with pytest.raises(ValueError, match=r"(?s)no_such_task.*config.data.task_modules"):
        input_pipeline.get_task("no_such_task")
