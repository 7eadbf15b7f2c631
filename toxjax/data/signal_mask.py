"""Loss masking of conditioning signals: signal tokens stay input, but are not targets.

MeCo (Gao et al. 2025) masks the loss over the metadata line: the model conditions on it but
spends no capacity predicting it (a signal is the score of text the model has not seen yet).
`ConditioningFormat.mask_signal_loss` turns it on for a task. Signals are found in the packed
token rows by their vocabulary pieces (toxjax.data.vocab keeps every signal string whole): a
signal runs from its first piece (an INST instruction, MEDA's "toxicity:") up to and including
the separator piece that ends it, within one packed segment. Applied per batch, after the packed
cache, so masked and unmasked runs share one cache and exact resume is unaffected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from toxjax.data.conditioning import ConditioningFormat


def signal_piece_ids(vocabulary: Any, fmt: ConditioningFormat) -> tuple[list[int], int]:
    """(ids of the pieces that start a signal, id of the separator piece) in a SentencePiece
    vocabulary trained by toxjax.data.vocab; a vocabulary without them cannot mask signals."""
    from toxjax.data import vocab

    tokenizer = getattr(vocabulary, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "piece_to_id"):
        raise ValueError(
            "mask_signal_loss needs a SentencePiece vocabulary with the signals as whole pieces "
            "(toxjax.data.vocab; config.study.vocabulary='spm'), not a byte vocabulary"
        )
    separator = fmt.separator.replace(" ", "\u2581")
    meda_start = fmt.meda_template.replace("{attribute}", fmt.attribute).partition("{score}")[0]
    starts = [meda_start.strip(), fmt.inst_toxic, fmt.inst_nontoxic, *fmt.inst_levels]
    pieces = vocab.signal_pieces(fmt)
    ids = {}
    for piece in [*(s.replace(" ", "\u2581") for s in starts if s), separator]:
        if piece not in pieces or tokenizer.piece_to_id(piece) == tokenizer.unk_id():
            raise ValueError(f"mask_signal_loss: the vocabulary has no whole piece {piece!r}")
        ids[piece] = int(tokenizer.piece_to_id(piece))
    return [ids[p] for p in ids if p != separator], ids[separator]


def segment_token_ids(vocabulary: Any, fmt: ConditioningFormat) -> list[int]:
    """Ids of SEGMENT's control tokens, each one whole piece of the vocabulary."""
    tokenizer = getattr(vocabulary, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "piece_to_id"):
        raise ValueError(
            "mask_signal_loss needs a SentencePiece vocabulary with the control tokens as whole "
            "pieces (toxjax.data.vocab; config.study.vocabulary='spm'), not a byte vocabulary"
        )
    ids = []
    for piece in fmt.segment_strings():
        if tokenizer.piece_to_id(piece) == tokenizer.unk_id():
            raise ValueError(f"mask_signal_loss: the vocabulary has no whole piece {piece!r}")
        ids.append(int(tokenizer.piece_to_id(piece)))
    return ids


def signal_positions(
    targets: np.ndarray, segment_ids: np.ndarray, start_ids: list[int], separator_id: int
) -> np.ndarray:
    """Boolean [rows, length]: target positions inside a signal (start piece .. separator).

    Vectorised: a position is inside when the latest signal start at or before it, in its own
    segment, comes after the latest separator strictly before it.
    """
    targets = np.asarray(targets)
    length = targets.shape[-1]
    index = np.broadcast_to(np.arange(length), targets.shape)
    is_start = np.isin(targets, start_ids)
    is_separator = targets == separator_id
    last_start = np.maximum.accumulate(np.where(is_start, index, -1), axis=-1)
    separator_at = np.where(is_separator, index, -1)
    last_separator_before = np.concatenate(
        [np.full(targets.shape[:-1] + (1,), -1), np.maximum.accumulate(separator_at, axis=-1)],
        axis=-1,
    )[..., :length]
    segment_start = np.maximum.accumulate(
        np.where(np.diff(segment_ids, prepend=-1, axis=-1) != 0, index, 0), axis=-1
    )
    return (last_start > last_separator_before) & (last_start >= segment_start)


class SignalLossMask:
    """Zeroes decoder_loss_weights on signal tokens of a batch of packed rows: spans from a
    start piece to the separator (MEDA, INST) and single control tokens (SEGMENT)."""

    def __init__(self, start_ids: list[int], separator_id: int, token_ids: list[int] = ()):
        self.start_ids, self.separator_id = list(start_ids), int(separator_id)
        self.token_ids = list(token_ids)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        targets = batch["decoder_target_tokens"]
        inside = signal_positions(
            targets, batch["decoder_segment_ids"], self.start_ids, self.separator_id
        ) | np.isin(targets, self.token_ids)
        weights = np.where(inside, 0, batch["decoder_loss_weights"]).astype(np.int32)
        return {**batch, "decoder_loss_weights": weights}
