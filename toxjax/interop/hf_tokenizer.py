"""A task's seqio vocabulary as a transformers tokenizer (tokenizer.json, `tokenizers` library).

The files load with `AutoTokenizer.from_pretrained(dir)` as a `PreTrainedTokenizerFast` that
puts the start id (`vocab.START_ID`, 0, spelled "<pad>") first, as every training
document starts, adds no EOS, and otherwise encodes text to the ids seqio encodes it to
(`add_special_tokens=False`: exactly seqio's ids):

- SentencePiece (`seqio.SentencePieceVocabulary`, e.g. trained by toxjax.data.vocab): the
  model's own pieces and scores as a `tokenizers` Unigram (or BPE, merges ranked by score)
  model, with SentencePiece's normalization replayed: spaces -> "\u2581", the dummy prefix
  always added (also before a leading space, as SentencePiece does), byte fallback, and every
  user-defined piece - the conditioning signals and the separator - isolated before the model
  runs, so each stays one token whatever text follows it. The .model file is copied alongside
  (sentencepiece.model) for tools that want it.
- Bytes (`seqio.ByteVocabulary`): ids 0-2 are <pad>, </s>, <unk> and byte b is id b + 3. The
  tokenizer is a byte-level BPE without merges over GPT-2's byte-to-character alphabet, with
  each byte's character at id b + 3, so every UTF-8 byte is one token, as in seqio.

Known difference (transformers' convention): text containing a special token's literal
spelling ("</s>", "<pad>", "<unk>", and for SentencePiece a byte piece such as "<0x41>")
encodes to that token, where seqio spells it out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from toxjax import fileio
from toxjax.data import vocab

SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")  # seqio ids 0, 1, 2
START_PIECE = SPECIAL_PIECES[vocab.START_ID]  # put first, as training did
_UNIGRAM, _BPE = 1, 2  # sentencepiece TrainerSpec.ModelType
_USER_DEFINED = 4  # sentencepiece ModelProto.SentencePiece.Type
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SENTENCEPIECE_COPY = "sentencepiece.model"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel uses)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer() -> Any:
    """seqio.ByteVocabulary as a `tokenizers.Tokenizer` (see module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = bytes_to_unicode()
    piece_ids = {piece: index for index, piece in enumerate(SPECIAL_PIECES)}
    piece_ids.update({chars[byte]: byte + len(SPECIAL_PIECES) for byte in range(256)})
    tokenizer = Tokenizer(models.BPE(vocab=piece_ids, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _bpe_merges(proto: Any) -> list[tuple[str, str]]:
    """Merges of a SentencePiece BPE model: pairs forming a normal piece, ranked by its score."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
    ranked = []
    for piece, (score, index) in normal.items():
        for split in range(1, len(piece)):
            left, right = piece[:split], piece[split:]
            if left in normal and right in normal:
                ranked.append((-score, index, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def sentencepiece_tokenizer(model_proto: bytes) -> Any:
    """A SentencePiece model (serialized ModelProto) as a `tokenizers.Tokenizer`."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    byte_fallback = trainer.byte_fallback
    if trainer.model_type == _UNIGRAM:
        scored_pieces = [(p.piece, p.score) for p in proto.pieces]
        model = models.Unigram(scored_pieces, unk_id=trainer.unk_id, byte_fallback=byte_fallback)
    elif trainer.model_type == _BPE:
        vocab_ids = {p.piece: i for i, p in enumerate(proto.pieces)}
        model = models.BPE(
            vocab=vocab_ids,
            merges=_bpe_merges(proto),
            unk_token=trainer.unk_piece,
            fuse_unk=True,
            byte_fallback=byte_fallback,
            ignore_merges=True,
        )
    else:
        raise ValueError(
            f"SentencePiece model type {trainer.model_type} is not supported (unigram or bpe)"
        )
    tokenizer = Tokenizer(model)
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    if spec.add_dummy_prefix:
        # Metaspace adds no prefix to a text already starting with "\u2581"; SentencePiece does.
        steps.append(normalizers.Replace(Regex("\\A\u2581"), "\u2581\u2581"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    splitters = []
    if spec.add_dummy_prefix:
        splitters.append(
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
        )
    user_defined = [p.piece for p in proto.pieces if p.type == _USER_DEFINED]
    if user_defined:
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        splitters.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    if splitters:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(splitters)
    steps = [decoders.Replace("\u2581", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def vocabulary_kind(vocabulary: Any) -> str:
    """ "sentencepiece" or "bytes"; ValueError for other seqio vocabularies."""
    import seqio

    if int(getattr(vocabulary, "extra_ids", 0) or 0):
        raise ValueError(
            f"{type(vocabulary).__name__} with extra_ids={vocabulary.extra_ids} is not supported"
        )
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return "sentencepiece"
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return "bytes"
    raise ValueError(
        f"no transformers tokenizer for {type(vocabulary).__name__}: SentencePiece and byte "
        "vocabularies are supported"
    )


def make_tokenizer(vocabulary: Any) -> Any:
    """The `tokenizers.Tokenizer` of a seqio vocabulary, special tokens marked."""
    from tokenizers import AddedToken, processors

    if vocabulary_kind(vocabulary) == "sentencepiece":
        tokenizer = sentencepiece_tokenizer(vocabulary.sp_model)
    else:
        tokenizer = byte_tokenizer()
    for index, piece in enumerate(SPECIAL_PIECES):
        if tokenizer.token_to_id(piece) != index:
            raise ValueError(f"the vocabulary's id {index} is not {piece!r} (seqio's layout)")
    tokenizer.add_special_tokens(
        [AddedToken(p, special=True, normalized=False) for p in SPECIAL_PIECES]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START_PIECE} $A",
        pair=f"{START_PIECE} $A $B",
        special_tokens=[(START_PIECE, vocab.START_ID)],
    )
    return tokenizer


def save_tokenizer(vocabulary: Any, directory: str, *, model_max_length: int) -> dict[str, Any]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json (plus the .model
    file of a SentencePiece vocabulary); returns what was written, for the model card."""
    kind = vocabulary_kind(vocabulary)
    tokenizer = make_tokenizer(vocabulary)
    fileio.make_dirs(directory)
    fileio.write_atomic(fileio.join(directory, "tokenizer.json"), tokenizer.to_str().encode())
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "bos_token": START_PIECE,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(model_max_length),
        "padding_side": "right",
    }
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        text = json.dumps(content, indent=2) + "\n"
        fileio.write_atomic(fileio.join(directory, name), text.encode())
    files = list(TOKENIZER_FILES)
    if kind == "sentencepiece":
        fileio.write_atomic(fileio.join(directory, SENTENCEPIECE_COPY), vocabulary.sp_model)
        files.append(SENTENCEPIECE_COPY)
    return {"kind": kind, "size": int(vocabulary.vocab_size), "files": files}


def encoding_mismatches(
    vocabulary: Any, tokenizer: Any, texts: Sequence[str], limit: int = 5
) -> list[str]:
    """Texts a `tokenizers.Tokenizer` encodes to other ids than the seqio vocabulary (at most
    `limit` described)."""
    found = []
    for text in texts:
        ours = [int(i) for i in vocabulary.encode(text)]
        theirs = tokenizer.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            found.append(f"{text!r}: seqio {ours[:12]}..., tokenizer {theirs[:12]}...")
            if len(found) >= limit:
                break
    return found
