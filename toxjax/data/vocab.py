"""Trains a SentencePiece vocabulary on which every conditioning signal tokenizes stably.

    python -m toxjax.data.vocab --input=demo --output=/tmp/toxjax_spm --vocab_size=1024
    python -m toxjax.data.vocab --input=gs://bucket/scored --output=gs://bucket/spm32k \\
        --vocab_size=32000

An inference prefix only steers a model if it produces the same tokens at inference (prefix
alone) as in training (prefix followed by text). SentencePiece would otherwise merge the end
of a signal with the text after it, so the trainer fixes:
- every fixed piece of every signal, and the separator, as user-defined pieces (always whole);
- split_digits, so a MEDA score is digit tokens whatever follows it;
- identity normalization without whitespace folding, so "\\n" and spacing survive a round trip;
- byte_fallback, so any text decodes back exactly.
Special ids follow seqio.SentencePieceVocabulary: pad 0, eos 1, unk 2, no bos.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sentencepiece as spm
from absl import logging
from tqdm import tqdm

from toxjax import fileio
from toxjax.data.conditioning import ConditioningFormat
from toxjax.data.scored_data import MANIFEST, iter_scored_records, load_scored_corpus

SPECIAL_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}
# The id every document starts from: seqio.LMFeatureConverter shifts a document's targets right
# and puts this id (its bos_id, here PAD) first, so the decoder reads it at position 0 of every
# training document. Scoring and sampling (toxjax.inference) put it before every context too;
# without it the model reads text at a position where it only ever saw this id.
START_ID = SPECIAL_IDS["pad_id"]
MODEL_TYPES = ("unigram", "bpe")
_WHITESPACE_PIECE = "\u2581"  # how SentencePiece writes a space inside a piece
_REQUIRED_CHARS = "0123456789."  # MEDA scores
_MAX_SENTENCE_BYTES = 1 << 16


def signal_pieces(fmt: ConditioningFormat, *, segment: bool = False) -> list[str]:
    """User-defined pieces for `fmt`: its fixed signal strings and its separator (and, with
    `segment`, SEGMENT's two control tokens; only then, so vocabularies of studies without
    SEGMENT stay as they were).

    A separator made only of spaces is left out: as a piece it would split every word from
    the space before it. Use a non-space separator (the default "\\n") for stable prefixes.
    """
    pieces = [*fmt.signal_strings(), *(fmt.segment_strings() if segment else ())]
    if fmt.separator.strip(" "):
        pieces.append(fmt.separator)
    unique: list[str] = []
    for piece in pieces:
        piece = piece.replace(" ", _WHITESPACE_PIECE)
        if piece and piece not in unique:
            unique.append(piece)
    return unique


def signal_token_ids(vocabulary: Any, fmt: ConditioningFormat) -> list[int]:
    """Ids of vocabulary pieces that spell a whole conditioning signal (SentencePiece only).

    `train_vocabulary` trains SentencePiece models with every signal as one user-defined piece;
    banning those ids keeps a model from writing a signal into its own continuation (the
    separator piece, e.g. a newline, stays allowed). Byte vocabularies have no such pieces.
    """
    tokenizer = getattr(vocabulary, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "piece_to_id"):
        return []
    separator = fmt.separator.replace(" ", "\u2581")  # as SentencePiece writes spaces
    # SEGMENT's control tokens too, wherever the vocabulary has them as pieces.
    pieces = [p for p in signal_pieces(fmt, segment=True) if p != separator]
    return sorted({tokenizer.piece_to_id(p) for p in pieces} - {tokenizer.unk_id()})


def _escape(piece: str) -> str:
    """A piece as one line of the .vocab listing (the separator piece is a newline)."""
    return piece.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def iter_texts(input_spec: str, *, text_field: str = "text") -> Iterator[str]:
    """Texts of a scored directory, or of any input the scoring job reads (demo, JSONL, ...)."""
    if fileio.exists(fileio.join(input_spec, MANIFEST)):
        corpus = load_scored_corpus(input_spec, attribute=None)
        for shard in corpus.shards:
            for text, _, _ in iter_scored_records(
                shard.path,
                attribute=None,
                text_field=corpus.text_field,
                expected_records=shard.num_records,
            ):
                yield text
        return
    from toxjax.scoring import corpora, readers

    corpus = readers.open_corpus(input_spec, text_field=text_field)
    try:
        for source in corpus.sources():
            num_records, _ = corpus.count(source, 0, 1 << 62)
            for raw in corpus.read(corpora.Segment(source, 0, num_records)):
                yield corpus.decode(raw).text
    finally:
        corpus.close()


def _training_sentences(texts: Iterable[str], max_docs: int | None) -> Iterator[str]:
    """Lines of each document: the separator "\\n" is a fixed piece, so nothing is learnt
    across lines, and short sentences keep SentencePiece's memory use bounded."""
    for index, text in enumerate(texts):
        if max_docs is not None and index >= max_docs:
            return
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_vocabulary(
    texts: Iterable[str],
    output_prefix: str,
    *,
    vocab_size: int,
    fmt: ConditioningFormat = ConditioningFormat(),
    extra_formats: Sequence[ConditioningFormat] = (),
    segment: bool = False,
    model_type: str = "unigram",
    max_docs: int | None = None,
    input_sentence_size: int = 2_000_000,
    character_coverage: float = 0.9995,
    num_threads: int = 2,
    progress: bool = True,
) -> str:
    """Trains on `texts`, writes PREFIX.model and PREFIX.vocab (local or gs://).

    Returns the .model path, loadable with seqio.SentencePieceVocabulary. SentencePiece keeps
    a random sample of at most `input_sentence_size` lines in memory. extra_formats: further
    formats whose signals must stay whole too (a study's ablation variants); segment: keep
    SEGMENT's control tokens whole too.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    sentences = _training_sentences(
        tqdm(texts, desc="vocab input", unit="docs", disable=not progress), max_docs
    )
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        user_defined_symbols=list(
            dict.fromkeys(
                p for f in (fmt, *extra_formats) for p in signal_pieces(f, segment=segment)
            )
        ),
        required_chars=_REQUIRED_CHARS,
        split_digits=True,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        num_threads=num_threads,
        minloglevel=1,
        **SPECIAL_IDS,
    )
    model_path = output_prefix + ".model"
    parent = os.path.dirname(model_path)
    if parent:
        fileio.make_dirs(parent)
    fileio.write_atomic(model_path, model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    listing = "".join(
        f"{_escape(processor.id_to_piece(i))}\t{processor.get_score(i)}\n"
        for i in range(processor.get_piece_size())
    )
    fileio.write_atomic(output_prefix + ".vocab", listing.encode("utf-8"))
    logging.info("Wrote %s (%d pieces)", model_path, processor.get_piece_size())
    return model_path
