"""toxjax-export: a run's checkpoint becomes a transformers model, tokenizer and model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio

from toxjax.data import tasks, vocab
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.interop import export, hf_checkpoint
from toxjax.model import decoder
from toxjax.testing import tiny_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A GPT-style INST run (demo task, byte vocabulary) and its export."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_run.tiny_config("gpt")
    config.data.task = "toxjax_demo_inst"
    params = tiny_run.write_run(workdir, config, step=2, seed=3)
    output = str(tmp_path_factory.mktemp("export"))
    info = export.export_run(workdir, output)
    return config, params, output, info


def test_files_and_facts(exported):
    _, _, output, info = exported
    names = set(os.listdir(output))
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert expected | {export.MODEL_CARD, export.EXPORT_INFO} <= names
    assert info["step"] == 2
    assert info["strategy"] == "inst"
    assert info["inference_prefix"] == tasks.inference_prefix("toxjax_demo_inst")
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["tokenizer"]["kind"] == "bytes"
    with open(os.path.join(output, export.EXPORT_INFO)) as f:
        assert json.load(f)["conditioning_format"]["inst_nontoxic"] == (
            "The following text is non-toxic:"
        )


def test_model_card_names_strategy_format_and_prefix(exported):
    _, _, output, info = exported
    with open(os.path.join(output, export.MODEL_CARD)) as f:
        card = f.read()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "strategy: **INST**" in card
    assert json.dumps(info["inference_prefix"]) in card  # "The following text is non-toxic:\n"
    assert "The following text is toxic:" in card
    assert "Embedding rows 259..383 are padding" in card
    assert "suppress = [0, *range(259, 384)]" in card
    assert info["suppress_tokens"] == [0, *range(259, 384)]


def test_model_card_says_guided_decoding_is_a_toxjax_feature_of_conditioned_runs(exported):
    _, _, output, info = exported
    with open(os.path.join(output, export.MODEL_CARD)) as f:
        card = f.read()
    assert "Guided (contrastive) decoding" in card
    assert '(`"The following text is toxic:\\n"` before it)' in card  # c-: the toxic signal
    assert "--model_args=guidance_scale=1.5,guidance_form=cfg" in card
    base = export.model_card(
        {**info, "strategy": "base", "inference_prefix": ""}, ConditioningFormat()
    )
    assert "Guided (contrastive) decoding" not in base  # no signals, nothing to contrast


def test_transformers_computes_our_logits_on_tokenized_conditioned_text(exported):
    config, params, output, info = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(output)
    model = transformers.AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval()
    text = info["inference_prefix"] + "Mild weather, busy market."
    vocabulary = seqio.ByteVocabulary()
    ids = tokenizer(text)["input_ids"]
    assert ids == [vocab.START_ID, *vocabulary.encode(text)]  # as training read it
    cfg = decoder.ModelConfig.from_config(config.model)
    ours = np.asarray(decoder.Decoder(cfg).apply({"params": params}, np.asarray([ids])))
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-4


def test_llama_meda_export_in_bfloat16(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_run.tiny_config("llama")
    config.data.task = "toxjax_demo_meda"
    params = tiny_run.write_run(workdir, config, step=1, seed=4)
    info = export.export_run(workdir, str(tmp_path / "out"), dtype="bfloat16")
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["inference_prefix"] == "toxicity: 0.00\n"
    checkpoint = hf_checkpoint.Checkpoint(str(tmp_path / "out"))
    assert checkpoint.config["num_key_value_heads"] == 2
    assert set(checkpoint.dtypes.values()) == {"BF16"}
    embedding = checkpoint.read("model.embed_tokens.weight").astype(np.float32)
    checkpoint.close()
    np.testing.assert_allclose(embedding, params["token_embedding"], rtol=1e-2, atol=1e-3)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert model.dtype == torch.bfloat16


def test_configs_without_an_architecture_fail_before_writing_weights(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_run.tiny_config("gpt", positions="rope")  # rope + LayerNorm + GELU
    tiny_run.write_run(workdir, config)
    with pytest.raises(ValueError, match="no transformers architecture"):
        export.export_run(workdir, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "config.json").exists()


def test_command_line(exported, tmp_path):
    _, _, output, _ = exported
    workdir = os.path.dirname(output)  # not a run: the command must name the problem
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run_dir = str(tmp_path / "run")
    config = tiny_run.tiny_config("gpt")
    config.data.task = "toxjax_demo_base"
    tiny_run.write_run(run_dir, config, step=5)
    args = [sys.executable, "-m", "toxjax.interop.export_main", f"--workdir={run_dir}"]
    result = subprocess.run(
        [*args, f"--output_dir={tmp_path / 'out'}", "--step=5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 5 and summary["strategy"] == "base"
    assert summary["inference_prefix"] == ""
    bad = subprocess.run(
        [sys.executable, "-m", "toxjax.interop.export_main", f"--workdir={workdir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert bad.returncode != 0 and "output_dir" in bad.stderr


def test_segment_card_names_the_tokens_and_the_suffix():
    fmt = ConditioningFormat()
    lines = export._conditioning_lines(
        Strategy.SEGMENT, fmt, fmt.inference_prefix("segment"), fmt.inference_suffix("segment")
    )
    text = "\n".join(lines)
    assert "`<|aligned|>` before every segment scored <= 0.5" in text
    assert "`<|misaligned|>` before the others" in text
    assert 'then the prompt, then `"<|aligned|>"`' in text
