"""Documents cut into segments for per-segment scores (the SEGMENT strategy's input).

    sentence         sentences by sentencex (Wikimedia's maintained segmenter; keeps every
                     character, so the segments concatenate back to the document)
    chunk:<chars>    consecutive chunks of at most <chars> characters, cut after whitespace
                     where a chunk has some, so words stay whole

A segmentation is stored as the end offset (in characters) of every segment: the segments
are text[0:ends[0]], text[ends[0]:ends[1]], ... and ends[-1] == len(text).
"""

from __future__ import annotations

import dataclasses

MODES = ("sentence", "chunk")


@dataclasses.dataclass(frozen=True)
class Segmenter:
    """A parsed --segment spec; `ends(text)` applies it."""

    mode: str
    chunk_chars: int = 0
    language: str = "en"

    @classmethod
    def parse(cls, spec: str, language: str = "en") -> Segmenter:
        mode, _, size = spec.partition(":")
        if mode == "sentence" and not size:
            return cls("sentence", language=language)
        if mode == "chunk" and size.isdigit() and int(size) > 0:
            return cls("chunk", chunk_chars=int(size), language=language)
        raise ValueError(f"segment spec {spec!r}: expected 'sentence' or 'chunk:<chars>' (> 0)")

    @property
    def spec(self) -> str:
        return self.mode if self.mode == "sentence" else f"chunk:{self.chunk_chars}"

    def ends(self, text: str) -> list[int]:
        """End offsets of the segments of `text`; an empty text is one empty segment."""
        if not text:
            return [0]
        raw = self._sentence_ends(text) if self.mode == "sentence" else self._chunk_ends(text)
        return merge_blank_segments(text, raw)

    def split(self, text: str) -> list[str]:
        return split_at(text, self.ends(text))

    def _sentence_ends(self, text: str) -> list[int]:
        import sentencex

        ends = []
        for boundary in sentencex.get_sentence_boundaries(self.language, text):
            start, end = int(boundary["start_index"]), int(boundary["end_index"])
            if text[start:end] != boundary["text"]:  # offsets that do not cut where they say
                raise ValueError(
                    f"sentencex offsets [{start}, {end}) do not match its sentence "
                    f"{boundary['text']!r}; use --segment=chunk:<chars> for this corpus"
                )
            ends.append(end)
        if not ends or ends[-1] != len(text):  # never lose a trailing character
            ends.append(len(text))
        return ends

    def _chunk_ends(self, text: str) -> list[int]:
        ends, start = [], 0
        while len(text) - start > self.chunk_chars:
            window = text[start : start + self.chunk_chars]
            cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            end = start + (cut + 1 if cut > 0 else self.chunk_chars)
            ends.append(end)
            start = end
        return [*ends, len(text)]


def merge_blank_segments(text: str, ends: list[int]) -> list[int]:
    """Whitespace-only segments (paragraph breaks) join the segment before them (or, at the
    start, the one after): a control token in front of blank space steers nothing."""
    merged: list[int] = []
    start = 0
    for end in ends:
        if end <= start:
            continue
        if text[start:end].strip() or not merged:
            merged.append(end)
        else:
            merged[-1] = end
        start = end
    if len(merged) > 1 and not text[: merged[0]].strip():
        merged.pop(0)
    return merged or [len(text)]


def split_at(text: str, ends: list[int]) -> list[str]:
    starts = [0, *ends[:-1]]
    return [text[start:end] for start, end in zip(starts, ends, strict=True)]


def check_ends(ends: object, text_length: int) -> str | None:
    """Why `ends` is not a segmentation of a text of this length (None when it is one)."""
    if not isinstance(ends, list) or not ends:
        return "not a non-empty list"
    if any(isinstance(e, bool) or not isinstance(e, int) for e in ends):
        return "holds a non-integer"
    if any(b <= a for a, b in zip(ends, ends[1:], strict=False)) or ends[0] < min(1, text_length):
        return "is not increasing"
    if ends[-1] != text_length:
        return f"ends at {ends[-1]}, the text has {text_length} characters"
    return None
