"""A trained vocabulary keeps every conditioning signal stable and round-trips every text."""

import json
import os
import subprocess
import sys

import pytest
import seqio
import tensorflow as tf

from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.data.vocab import iter_texts, signal_pieces, signal_token_ids, train_vocabulary
from toxjax.datasets import template_corpus

FMT = ConditioningFormat()
TRICKY_TEXTS = [
    "",
    " leading space",
    "  two leading spaces",
    "\nstarts with a newline",
    "line one\nline two\n\nline four",
    "0.93 starts with digits",
    "12345",
    ".5 starts with a dot",
    ": colon first",
    "-toxic: hyphen first",
    "toxicity: 0.50 inside the text",
    "The following text is toxic: quoted wording",
    "Ünïcödé ☃ snowman, 日本語, emoji 🙂",
    "tabs\tand   runs of   spaces",
    "trailing space ",
]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> seqio.SentencePieceVocabulary:
    prefix = str(tmp_path_factory.mktemp("spm") / "demo")
    path = train_vocabulary(iter_texts("demo"), prefix, vocab_size=512, fmt=FMT, progress=False)
    assert path == prefix + ".model"
    assert os.path.exists(prefix + ".vocab")
    return seqio.SentencePieceVocabulary(path)


def all_prefixes(fmt: ConditioningFormat) -> list[str]:
    """Every strategy's inference prefix and every training-time signal + separator."""
    prefixes = [fmt.inference_prefix(s) for s in Strategy]
    prefixes += [fmt.meda_signal(i / 100) + fmt.separator for i in range(101)]
    prefixes += [fmt.inst_signal(t) + fmt.separator for t in (True, False)]
    return prefixes


def test_seqio_special_ids(vocab):
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.vocab_size == 512


def test_signal_pieces_are_single_tokens(vocab):
    for piece in ["toxicity:", FMT.inst_toxic, FMT.inst_nontoxic, "\n"]:
        ids = vocab.encode(piece)
        assert len([i for i in ids if vocab.tokenizer.id_to_piece(i) != "\u2581"]) == 1, piece


@pytest.mark.parametrize("prefix", all_prefixes(FMT))
def test_prefix_tokens_do_not_depend_on_the_text_after_them(vocab, prefix):
    texts = [d["text"] for d in template_corpus.generate(150, seed=1)] + TRICKY_TEXTS
    prefix_ids = vocab.encode(prefix)
    for text in texts:
        ids = vocab.encode(prefix + text)
        assert ids[: len(prefix_ids)] == prefix_ids, (prefix, text)
        assert vocab.decode(ids) == prefix + text


def test_round_trip_and_tf_tokenizer_agree(vocab):
    texts = TRICKY_TEXTS + [FMT.condition("meda", t, 0.93, "k") for t in TRICKY_TEXTS]
    for text in texts:
        assert vocab.decode(vocab.encode(text)) == text
    graph_ids = vocab.encode_tf(tf.constant(texts)).to_list()
    assert graph_ids == [vocab.encode(t) for t in texts]


def test_signal_pieces_for_custom_formats():
    assert signal_pieces(FMT) == [
        "toxicity:",
        "The\u2581following\u2581text\u2581is\u2581toxic:",
        "The\u2581following\u2581text\u2581is\u2581non-toxic:",
        "\n",
    ]
    spaced = ConditioningFormat(meda_template="<{attribute} {score}>", separator=" ")
    assert signal_pieces(spaced)[:2] == ["<toxicity", ">"]  # a space separator is left out
    assert " " not in "".join(signal_pieces(spaced))


def test_custom_format_prefixes_are_stable(tmp_path):
    fmt = ConditioningFormat(
        meda_template="<|{attribute}={score}|>",
        score_precision=3,
        inst_toxic="[toxic]",
        inst_nontoxic="[clean]",
        separator=" || ",
    )
    texts = [d["text"] for d in template_corpus.generate(300)]
    path = train_vocabulary(
        texts, str(tmp_path / "custom"), vocab_size=400, fmt=fmt, progress=False
    )
    vocab = seqio.SentencePieceVocabulary(path)
    for prefix in all_prefixes(fmt)[::7] + [fmt.inference_prefix("meda")]:
        for text in texts[:30] + TRICKY_TEXTS:
            assert vocab.encode(prefix + text)[: len(vocab.encode(prefix))] == vocab.encode(prefix)


def test_extra_formats_keep_every_variant_signal_whole(tmp_path):
    variant = ConditioningFormat(inst_toxic="Offensive text:", inst_nontoxic="Respectful text:")
    texts = [d["text"] for d in template_corpus.generate(300)]
    path = train_vocabulary(
        texts,
        str(tmp_path / "both"),
        vocab_size=400,
        fmt=FMT,
        extra_formats=[variant],
        progress=False,
    )
    vocab = seqio.SentencePieceVocabulary(path)
    for fmt in (FMT, variant):
        for signal in (fmt.inst_toxic, fmt.inst_nontoxic):
            pieces = vocab.tokenizer.encode_as_pieces(signal)
            assert signal.replace(" ", "▁") in pieces, pieces  # one piece, whole


def test_iter_texts_reads_scored_dirs_and_jsonl(tmp_path):
    shard = tmp_path / "scored" / "shards" / "scored-00000.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text(
        "".join(json.dumps({"body": t, "scores": {"toxicity": 0.1}}) + "\n" for t in ["a", "b"])
    )
    manifest = {
        "complete": True,
        "attributes": ["toxicity"],
        "text_field": "body",
        "shards": [{"path": "shards/scored-00000.jsonl", "num_records": 2}],
    }
    (tmp_path / "scored" / "manifest.json").write_text(json.dumps(manifest))
    assert list(iter_texts(str(tmp_path / "scored"))) == ["a", "b"]
    (tmp_path / "raw.jsonl").write_text('{"t": "x"}\n{"t": "y"}\n')
    assert list(iter_texts(str(tmp_path / "raw.jsonl"), text_field="t")) == ["x", "y"]
    with pytest.raises(ValueError, match=r"raw\.jsonl:1: field 'text'"):
        list(iter_texts(str(tmp_path / "raw.jsonl")))


def test_command_line(tmp_path):
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"text": d["text"]}) + "\n" for d in template_corpus.generate(400))
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "toxjax.data.vocab_main",
            f"--input={tmp_path}/*.jsonl",
            f"--output={tmp_path}/out/spm",
            "--vocab_size=400",
            '--conditioning={"inst_toxic": "[toxic]"}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(f"{tmp_path}/out/spm.model")
    vocab = seqio.SentencePieceVocabulary(f"{tmp_path}/out/spm.model")
    assert vocab.vocab_size == 400
    assert vocab.tokenizer.piece_to_id("[toxic]") != vocab.unk_id


def test_signal_token_ids_are_the_whole_signal_pieces(tmp_path):
    fmt = ConditioningFormat()
    texts = [doc["text"] for doc in template_corpus.generate(300)]
    path = train_vocabulary(texts, str(tmp_path / "spm"), vocab_size=400, progress=False)
    spm = seqio.SentencePieceVocabulary(path)
    ids = signal_token_ids(spm, fmt)
    pieces = {spm.tokenizer.id_to_piece(i) for i in ids}
    # Every signal string is banned; the separator ("\n") is not a signal and stays allowed.
    assert pieces == {s.replace(" ", "\u2581") for s in fmt.signal_strings()}
    assert "\n" in signal_pieces(fmt) and "\n" not in pieces
    assert signal_token_ids(seqio.ByteVocabulary(), fmt) == []
    # A SEGMENT study's vocabulary has the control tokens as pieces: both are banned too.
    path = train_vocabulary(
        texts, str(tmp_path / "spm_segment"), vocab_size=400, segment=True, progress=False
    )
    spm = seqio.SentencePieceVocabulary(path)
    pieces = {spm.tokenizer.id_to_piece(i) for i in signal_token_ids(spm, fmt)}
    assert {"<|aligned|>", "<|misaligned|>"} <= pieces
