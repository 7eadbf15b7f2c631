"""One checkpoint, the same requests: our engine, lm-eval through the adapter, and lm-eval's
transformers model (HFLM) on the export agree per request within 1e-3 nats, with equal
acc / acc_norm; rolling log-likelihoods and greedy generations agree too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from toxjax.data import vocab
from toxjax.evaluation import template_tasks, utility_tasks
from toxjax.inference import loglik
from toxjax.inference.requests import LoglikelihoodRequest
from toxjax.interop import export, trained_run
from toxjax.testing import tiny_run

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from toxjax.interop import lm_eval_adapter  # noqa: E402

NATS = 1e-3
NUM_QUESTIONS = 12
TASK = "toxjax_demo_cloze_local"


def _sentencepiece_task(directory: str) -> str:
    """The demo INST task over a SentencePiece vocabulary trained here (signals kept whole)."""
    import seqio

    from toxjax.data import demo_tasks, tasks
    from toxjax.data.vocab import iter_texts, train_vocabulary

    path = train_vocabulary(
        iter_texts("demo"), f"{directory}/spm", vocab_size=512, max_docs=400, progress=False
    )
    registered = tasks.register_toxicity_tasks(
        "interop_spm",
        demo_tasks.demo_scored_dir,
        vocabulary=seqio.SentencePieceVocabulary(path),
        strategies=("inst",),
    )
    return registered["inst"]


@pytest.fixture(scope="module", params=["bytes", "sentencepiece"])
def setup(request, tmp_path_factory):
    """A GPT-style INST run, its export, our engine, the adapter and HFLM on the export."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_run.tiny_config("gpt", max_len=128)
    config.data.task = "toxjax_demo_inst"
    if request.param == "sentencepiece":
        config.data.task = _sentencepiece_task(str(tmp_path_factory.mktemp("spm")))
        config.model.vocab_size = 512
    tiny_run.write_run(workdir, config, step=1, seed=11)
    output = str(tmp_path_factory.mktemp("export"))
    info = export.export_run(workdir, output)
    run = trained_run.load_run(workdir)
    if request.param == "sentencepiece":  # signal pieces are never sampled, so suppressed
        signal_id = run.vocabulary.tokenizer.piece_to_id(
            "The\u2581following\u2581text\u2581is\u2581toxic:"
        )
        assert {0, signal_id} <= set(info["suppress_tokens"])
    ours = loglik.make_loglikelihood_fn(
        run.params,
        run.model_config,
        run.vocabulary,
        run.mesh,
        run.rules,
        batch_size=8,
        progress=False,
    )
    adapter = lm_eval_adapter.ToxjaxLM(checkpoint=workdir, batch_size=8)
    hf = HFLM(pretrained=output, device="cpu", dtype="float32", batch_size=8)
    return workdir, output, ours, adapter, hf


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i, (TASK, i, 1)) for i, a in enumerate(args)]


def test_loglikelihood_agrees_per_request_and_in_accuracy(setup):
    _, _, ours, adapter, hf = setup
    questions = template_tasks.cloze_examples(NUM_QUESTIONS)
    requests = [r for q in questions for r in q.requests]
    pairs = [(r.context, r.continuation) for r in requests]
    # A context ending in a newline: all trailing whitespace moves, as in the harness.
    pairs.append(("Question: is it raining?\n", "Answer: no"))
    requests.append(LoglikelihoodRequest(*pairs[-1]))
    engine = [r.logprob for r in ours(requests)]
    through_adapter = [lp for lp, _ in adapter.loglikelihood(_instances("loglikelihood", pairs))]
    through_hf = [lp for lp, _ in hf.loglikelihood(_instances("loglikelihood", pairs))]
    adapter_delta = np.abs(np.subtract(engine, through_adapter)).max()
    hf_delta = np.abs(np.subtract(engine, through_hf))
    print(
        f"\n{adapter.run.config.data.task}: per-request |delta nats| over {len(pairs)} "
        f"requests: adapter {adapter_delta:.2g}, "
        f"transformers on the export max {hf_delta.max():.2g} mean {hf_delta.mean():.2g}"
    )
    assert adapter_delta == 0.0  # the adapter is our engine
    assert hf_delta.max() < NATS
    metrics = []
    for scores in (engine, through_hf):
        per_question = [scores[4 * i : 4 * i + 4] for i in range(NUM_QUESTIONS)]
        metrics.append(utility_tasks.multiple_choice_metrics(questions, per_question))
    print(f"acc / acc_norm: ours {metrics[0]}, transformers {metrics[1]}")
    assert metrics[0]["acc"] == metrics[1]["acc"]
    assert metrics[0]["acc_norm"] == metrics[1]["acc_norm"]


def _local_task(directory: str) -> str:
    """demo_cloze as an lm-eval multiple-choice task over a local JSON-lines file."""
    data = os.path.join(directory, "cloze.jsonl")
    with open(data, "w") as f:
        for q in template_tasks.cloze_examples(NUM_QUESTIONS):
            choices = [r.continuation[1:] for r in q.requests]  # without the delimiter space
            f.write(
                json.dumps({"context": q.requests[0].context, "choices": choices, "gold": q.gold})
            )
            f.write("\n")
    yaml = f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {os.path.join(directory, "hf_datasets")}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""
    with open(os.path.join(directory, f"{TASK}.yaml"), "w") as f:
        f.write(yaml)
    return directory


def test_simple_evaluate_through_the_adapter_and_on_the_export(setup, tmp_path):
    _, _, ours, adapter, hf = setup
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=_local_task(str(tmp_path)), include_defaults=False)
    results = {}
    for name, model in (("adapter", adapter), ("hf", hf)):
        out = lm_eval.simple_evaluate(
            model=model, tasks=[TASK], task_manager=manager, log_samples=True
        )
        results[name] = out
    ours_metrics = template_tasks.evaluate_cloze(ours, limit=NUM_QUESTIONS)
    for name, out in results.items():
        metrics = out["results"][TASK]
        assert metrics["acc,none"] == pytest.approx(ours_metrics["acc"]), name
        assert metrics["acc_norm,none"] == pytest.approx(ours_metrics["acc_norm"]), name
    samples = [results[n]["samples"][TASK] for n in ("adapter", "hf")]
    deltas = [
        abs(a[0][0] - b[0][0])
        for x, y in zip(*samples, strict=True)
        for a, b in zip(x["resps"], y["resps"], strict=True)
    ]
    print(f"\nsimple_evaluate: per-request max |delta nats| adapter vs hf {max(deltas):.2g}")
    assert max(deltas) < NATS


def test_rolling_loglikelihood_agrees(setup):
    _, _, _, adapter, hf = setup
    texts = [
        "A short text.",
        "A longer text that needs more than one window of the model's context, since the "
        "byte vocabulary spends a token on every character of it, and the context is short.",
    ]
    instances = _instances("loglikelihood_rolling", [(t,) for t in texts])
    ours = adapter.loglikelihood_rolling(instances)
    # The harness' rolling windows score every token of tok_encode(text); with the start id
    # the tokenizer adds, that would include the start id itself. Without it, the start id is
    # only the windows' prefix token (the tokenizer's BOS), as in our adapter.
    hf = HFLM(pretrained=hf.pretrained, device="cpu", dtype="float32", add_bos_token=False)
    assert hf.prefix_token_id == vocab.START_ID
    theirs = hf.loglikelihood_rolling(instances)
    delta = np.abs(np.subtract(ours, theirs)).max()
    print(f"\nrolling log-likelihood: max |delta nats| {delta:.2g} (totals {np.round(ours, 2)})")
    assert delta < NATS
    windows = lm_eval_adapter.rolling_windows(list(range(10, 310)), [], 128)
    assert [count for _, count in windows] == [128, 128, 44]
    assert all(len(sequence) <= 129 for sequence, _ in windows)
    assert windows[0][0][0] == vocab.START_ID


def test_greedy_generation_agrees(setup):
    _, _, _, adapter, hf = setup
    gen_kwargs = {"until": ["."], "max_gen_toks": 24, "do_sample": False}
    prompts = ["The market", "Weather report:"]
    vocabulary = adapter.run.vocabulary
    # Our sampler never emits PAD or the embedding's padding rows (ids past the vocabulary);
    # transformers is told the same (the model card says so too).
    suppress = [0, *range(vocabulary.vocab_size, adapter.run.model_config.vocab_size)]
    generator = adapter._generator(gen_kwargs)
    for prompt in prompts:
        ids = generator.encode(prompt)
        assert ids == hf.tokenizer(prompt)["input_ids"]  # both start from the start id
        ours = generator.generate_ids([ids], 1, [0])[0][0]
        with torch.no_grad():
            out = hf.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),  # id 0 is PAD too
                do_sample=False,
                max_new_tokens=24,
                suppress_tokens=suppress,
            )
        theirs = out[0, len(ids) :].tolist()
        eos = int(vocabulary.eos_id)
        assert ours == (theirs[: theirs.index(eos)] if eos in theirs else theirs), prompt
    # Through lm_eval's interface: the same text, cut at the stop sequence.
    texts = adapter.generate_until(
        _instances("generate_until", [(p, dict(gen_kwargs)) for p in prompts])
    )
    assert all("." not in text for text in texts)
    if adapter.run.config.data.task == "toxjax_demo_inst":  # byte vocabulary
        theirs = hf.generate_until(
            _instances(
                "generate_until",
                [(p, {**gen_kwargs, "suppress_tokens": suppress}) for p in prompts],
            )
        )
        # Bytes that form no UTF-8 character are dropped by seqio's decoder and become U+FFFD
        # in transformers' (SentencePiece byte pieces too, but grouped differently).
        assert texts == [text.replace("\ufffd", "") for text in theirs]


def test_conditioning_prefix_goes_in_front_of_every_context(setup):
    workdir, _, ours, _, _ = setup
    conditioned = lm_eval_adapter.ToxjaxLM(checkpoint=workdir, batch_size=8, conditioning="trained")
    assert conditioned.prefix == "The following text is non-toxic:\n"
    pairs = [("The market", " was busy"), ("", "Hello")]
    got = [lp for lp, _ in conditioned.loglikelihood(_instances("loglikelihood", pairs))]
    expected = [
        r.logprob for r in ours([LoglikelihoodRequest(conditioned.prefix + c, x) for c, x in pairs])
    ]
    assert got == expected
    assert lm_eval_adapter.cut_at_stops("abc.def\nx", [".", "\n"]) == "abc"


def test_guided_generation_decodes_under_both_signals(setup):
    """guidance_scale > 0: each context under the non-toxic instruction (c+) and the toxic one
    (c-), guided with the adapter's scale and form; base refuses guidance."""
    workdir, _, _, adapter, _ = setup
    if adapter.run.config.data.task != "toxjax_demo_inst":
        pytest.skip("once is enough")
    guided = lm_eval_adapter.ToxjaxLM(
        checkpoint=workdir, batch_size=8, guidance_scale=2.0, guidance_form="dexperts"
    )
    gen_kwargs = {"until": ["."], "max_gen_toks": 16, "do_sample": False}
    contexts = ["The market", "Weather report:"]
    texts = guided.generate_until(
        _instances("generate_until", [(c, dict(gen_kwargs)) for c in contexts])
    )
    generator = guided._generator(gen_kwargs)
    assert (generator.config.guidance_scale, generator.config.guidance_form) == (2.0, "dexperts")
    positives = ["The following text is non-toxic:\n" + c for c in contexts]
    negatives = ["The following text is toxic:\n" + c for c in contexts]
    direct = generator(positives, 1, negatives=negatives)
    assert texts == [lm_eval_adapter.cut_at_stops(samples[0], ["."]) for samples in direct]
    with pytest.raises(ValueError, match="'base' has none"):
        lm_eval_adapter.ToxjaxLM(checkpoint=workdir, conditioning="base", guidance_scale=1.0)
    with pytest.raises(ValueError, match="form"):
        lm_eval_adapter.ToxjaxLM(checkpoint=workdir, guidance_scale=1.0, guidance_form="x")


def test_the_model_is_registered():
    from lm_eval.api.registry import get_model

    assert get_model("toxjax") is lm_eval_adapter.ToxjaxLM


@pytest.mark.slow
def test_command_line(setup, tmp_path):
    workdir = setup[0]
    if setup[3].run.config.data.task != "toxjax_demo_inst":
        pytest.skip("once is enough")
    include = _local_task(str(tmp_path))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "toxjax.interop.lm_eval_main",
            f"--checkpoint={workdir}",
            f"--tasks={TASK}",
            f"--include_path={include}",
            f"--output_path={tmp_path / 'results.json'}",
            "--batch_size=8",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        assert "acc,none" in json.load(f)["results"][TASK]
