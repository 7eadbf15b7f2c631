"""The exported tokenizer encodes and decodes texts with signals exactly as seqio does."""

from __future__ import annotations

import pytest
import seqio

from toxjax.data import vocab
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.data.vocab import iter_texts, train_vocabulary
from toxjax.datasets import template_corpus
from toxjax.interop import hf_tokenizer

transformers = pytest.importorskip("transformers")

FMT = ConditioningFormat()
TRICKY = [
    "",
    " leading space",
    "  two leading spaces",
    "\nstarts with a newline",
    "line one\nline two\n\nline four",
    "0.93 starts with digits",
    ".5 starts with a dot",
    "toxicity: 0.50 inside the text",
    "The following text is toxic: quoted wording",
    "Ünïcödé ☃ snowman, 日本語, emoji 🙂",
    "tabs\tand   runs of   spaces",
    "trailing space ",
    "\u2581already escaped",
]


def texts_with_signals() -> list[str]:
    """Demo documents raw, conditioned by MEDA and INST, and behind every inference prefix."""
    docs = [d["text"] for d in template_corpus.generate(120, seed=5)]
    texts = TRICKY + docs
    texts += [
        FMT.condition(s, t, score, "k")
        for s in ("meda", "inst")
        for t, score in zip(docs[:60], [0.07, 0.93] * 30, strict=True)
    ]
    texts += [FMT.inference_prefix(s) + t for s in Strategy for t in TRICKY + docs[:10]]
    return texts


def _bpe_model(prefix: str) -> str:
    """A SentencePiece BPE model with toxjax's settings but no required_chars: the BPE trainer
    aborts the process on a required character the corpus lacks (so does
    toxjax.data.vocab.train_vocabulary(model_type="bpe") on the demo corpus)."""
    import sentencepiece as spm

    from toxjax.data import vocab

    sentences = [line for text in iter_texts("demo") for line in text.split("\n") if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences[:4000]),
        model_prefix=prefix,
        vocab_size=512,
        model_type="bpe",
        user_defined_symbols=vocab.signal_pieces(FMT),
        split_digits=True,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
        **vocab.SPECIAL_IDS,
    )
    return prefix + ".model"


@pytest.fixture(scope="module", params=["unigram", "bpe", "bytes"])
def vocabulary(request, tmp_path_factory):
    if request.param == "bytes":
        return seqio.ByteVocabulary()
    prefix = str(tmp_path_factory.mktemp("spm") / request.param)
    if request.param == "bpe":
        return seqio.SentencePieceVocabulary(_bpe_model(prefix))
    path = train_vocabulary(
        iter_texts("demo"), prefix, vocab_size=512, fmt=FMT, max_docs=400, progress=False
    )
    return seqio.SentencePieceVocabulary(path)


def test_ids_and_texts_match_seqio(vocabulary):
    tokenizer = hf_tokenizer.make_tokenizer(vocabulary)
    texts = texts_with_signals()
    assert hf_tokenizer.encoding_mismatches(vocabulary, tokenizer, texts) == []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == vocabulary.decode(ids), text


def test_signal_pieces_stay_whole(vocabulary):
    if hf_tokenizer.vocabulary_kind(vocabulary) == "bytes":
        pytest.skip("a byte vocabulary has no signal pieces")
    tokenizer = hf_tokenizer.make_tokenizer(vocabulary)
    for signal in [*FMT.signal_strings(), "\n"]:
        piece = signal.replace(" ", "\u2581")
        signal_id = vocabulary.tokenizer.piece_to_id(piece)
        for text in ("", "Hello", " x", "0.5"):
            ids = tokenizer.encode(signal + text, add_special_tokens=False).ids
            assert signal_id in ids, (signal, text)


def test_saved_files_load_with_auto_tokenizer(vocabulary, tmp_path):
    info = hf_tokenizer.save_tokenizer(vocabulary, str(tmp_path), model_max_length=128)
    assert info["size"] == vocabulary.vocab_size
    assert (tmp_path / "tokenizer.json").exists()
    assert (info["kind"] == "sentencepiece") == (tmp_path / "sentencepiece.model").exists()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.bos_token_id == vocab.START_ID
    for text in texts_with_signals()[::7]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # seqio's ids
        assert ids == vocabulary.encode(text), text
        # By default the start id comes first, as in every training document; no EOS.
        assert tokenizer(text)["input_ids"] == [vocab.START_ID, *ids]
        assert tokenizer.decode(ids, skip_special_tokens=True) == vocabulary.decode(ids)


def test_byte_alphabet_is_a_bijection():
    table = hf_tokenizer.bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"


def test_other_vocabularies_are_refused():
    with pytest.raises(ValueError, match="extra_ids=3"):
        hf_tokenizer.vocabulary_kind(seqio.ByteVocabulary(extra_ids=3))
    with pytest.raises(ValueError, match="no transformers tokenizer for PassThroughVocabulary"):
        hf_tokenizer.vocabulary_kind(seqio.PassThroughVocabulary(size=10))
