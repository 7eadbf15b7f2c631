"""Tests for toxjax.scoring.segments: segmentations that lose no character."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toxjax.scoring import segments

TEXT = "  You are an idiot!! What?\n\nThe garden, Mr. Smith, is lovely. Done"


def test_sentences_keep_every_character_and_abbreviations():
    sentence = segments.Segmenter.parse("sentence")
    pieces = sentence.split(TEXT)
    assert pieces == [
        "  You are an idiot!! ",
        "What?\n\n",  # the paragraph break joins the sentence before it
        "The garden, Mr. Smith, is lovely. ",  # "Mr." does not end a sentence
        "Done",
    ]
    assert "".join(pieces) == TEXT


def test_chunks_cut_after_whitespace_when_they_can():
    chunk = segments.Segmenter.parse("chunk:10")
    assert chunk.split("one two three four five six") == ["one two ", "three ", "four five ", "six"]
    assert chunk.split("abcdefghijklmnopqrstuvwxyz") == ["abcdefghij", "klmnopqrst", "uvwxyz"]
    assert chunk.spec == "chunk:10"


@pytest.mark.parametrize("spec", ["sentence", "chunk:7"])
@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab .!?\n\tä")), max_size=80))
def test_every_segmentation_is_valid_and_lossless(spec, text):
    segmenter = segments.Segmenter.parse(spec)
    ends = segmenter.ends(text)
    assert segments.check_ends(ends, len(text)) is None
    pieces = segmenter.split(text)
    assert "".join(pieces) == text
    assert len(pieces) == 1 or all(piece.strip() for piece in pieces)


@pytest.mark.parametrize("spec", ["", "paragraph", "chunk", "chunk:0", "chunk:x", "sentence:3"])
def test_bad_specs_are_rejected(spec):
    with pytest.raises(ValueError, match="expected 'sentence' or 'chunk:<chars>'"):
        segments.Segmenter.parse(spec)


@pytest.mark.parametrize(
    "ends, length, problem",
    [
        ([], 3, "non-empty list"),
        ([2, 2, 3], 3, "not increasing"),
        ([0, 3], 3, "not increasing"),
        ([1, 2], 3, "ends at 2"),
        ([1.5, 3], 3, "non-integer"),
    ],
)
def test_check_ends_names_the_problem(ends, length, problem):
    assert problem in segments.check_ends(ends, length)
