"""The README's "Use toxjax on your corpus" section, run end to end as written.

Every command of the section runs as a subprocess in a scratch directory that stands in for a
user's project: `corpus/` holds a small JSONL corpus of real packaged text, the section's
Python block is written to the file its first line names (the user's task module), and
`toxjax` links to this checkout so that the section's relative `toxjax/configs/...` paths
resolve. What this machine needs is substituted, and nothing else: the offline scorer for
Detoxify (no download), a vocabulary size a small corpus can fill (and the model's to match),
and test-size flags appended to the training and evaluation commands.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTION = "## Use toxjax on your corpus"
NUM_DOCS = 800
SUBSTITUTIONS = {  # in order: the model's flag contains the vocabulary's
    "--scorer=detoxify:original": "--scorer=offline",
    # The model's embedding and softmax sized for the small vocabulary (50x fewer logits).
    "--config.model.vocab_size=32000": "--config.model.vocab_size=640",
    "--vocab_size=32000": "--vocab_size=600",
}
TRAIN_FLAGS = (
    "--config.train.num_steps=4 --config.train.checkpoint_every=4 "
    "--config.train.cpu_peak_flops=3.6e11"
)
EVAL_FLAGS = (
    "--config.eval.rtp_num_prompts=4 --config.eval.rtp.num_samples=2 "
    "--config.eval.rtp.max_new_tokens=4 --config.eval.utility_limit=8 "
    "--config.eval.bias_limit=8 --config.eval.perplexity_batches=1"
)


def section_blocks() -> list[tuple[str, str]]:
    """(language, body) of each fenced block of the section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end != -1 else len(text)]
    return re.findall(r"```(bash|python)\n(.*?)\n```", body, flags=re.S)


def shell_commands(block: str) -> list[str]:
    """One string per command: `\\` continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def for_this_machine(command: str) -> str:
    for written, here in SUBSTITUTIONS.items():
        command = command.replace(written, here)
    if "-m toxjax.main" in command:
        command += " " + TRAIN_FLAGS
        if "--mode=eval" in command:
            command += " " + EVAL_FLAGS
    return command


def write_corpus(directory: pathlib.Path) -> None:
    directory.mkdir()
    packaged = REPO / "toxjax" / "assets" / "real" / "corpus.jsonl.gz"
    with gzip.open(packaged, "rt", encoding="utf-8") as source:
        # Every 100th document: tweets, comments and book paragraphs alike.
        records = [json.loads(line) for line in itertools.islice(source, 0, 100 * NUM_DOCS, 100)]
    with open(directory / "part-0.jsonl", "w", encoding="utf-8") as out:
        for i, record in enumerate(records):
            out.write(json.dumps({"id": i, "text": record["text"]}) + "\n")


def test_the_section_is_score_vocabulary_tasks_train_evaluate_export():
    blocks = section_blocks()
    assert [language for language, _ in blocks] == ["bash", "bash", "python", "bash", "bash"]
    commands = [shell_commands(body) for language, body in blocks if language == "bash"]
    assert "-m toxjax.scoring" in commands[0][0]
    assert "-m toxjax.data.vocab_main" in commands[1][0]
    assert "--config.data.task_modules=" in commands[2][0] and "--mode=train" in commands[2][0]
    assert "--mode=eval" in commands[3][0] and "toxjax.interop.export_main" in commands[3][1]
    assert blocks[2][1].startswith("# my_tasks.py")
    for written in SUBSTITUTIONS:
        assert written in " ".join(sum(commands, [])), written


@pytest.mark.slow
def test_your_corpus_flow_runs_end_to_end(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "toxjax").symlink_to(REPO / "toxjax", target_is_directory=True)
    write_corpus(project / "corpus")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
    for language, body in section_blocks():
        if language == "python":
            (project / body.splitlines()[0].split()[1].rstrip(":")).write_text(body + "\n")
            continue
        for command in map(for_this_machine, shell_commands(body)):
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert result.returncode == 0, f"{command}\n{result.stderr[-4000:]}"

    assert json.loads((project / "scored" / "manifest.json").read_text())["complete"]
    assert (project / "spm" / "mycorpus.model").exists()
    run = project / "runs" / "mycorpus_inst"
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in logged][-1] == 4
    assert json.loads((run / "config.json").read_text())["data"]["task"] == "mycorpus_inst"
    (results_path,) = (run / "eval").glob("step_4.json")
    results = json.loads(results_path.read_text())
    # INST read from the user's task: sampled under its non-toxic and its toxic instruction.
    assert "toxic_signal" in results["rtp"] and len(results["rtp"]) >= 2, sorted(results["rtp"])
    export = project / "hf" / "mycorpus_inst"
    hf_config = json.loads((export / "config.json").read_text())
    assert hf_config["vocab_size"] == 640
    assert list(export.glob("*.safetensors")) and (export / "tokenizer.json").exists()
