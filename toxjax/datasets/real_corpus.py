"""The real-text embedded default: a packaged corpus, RTP prompts and detection sets built from
raw, permissively licensed files.

    python -m toxjax.datasets.real_corpus_main --source=RAW_DIR --output=toxjax/assets/real

RAW_DIR holds one folder per source of SOURCES (repository and commit of each in
toxjax/assets/real/ATTRIBUTION.md), each with the source's licence file and its files unedited:
    paradetox/               paradetox.tsv, LICENSE.txt
    davidson_tweets/         labeled_data.csv, LICENSE.txt
    wikipedia_talk/          CAT_LARGE_gn_out_of_context.csv, CAT_LARGE_gc_in_context.csv,
                             LICENSE.txt
    civil_comments_toxic/    comments.csv, LICENSE.txt
    gutenberg/               <book>.txt (NLTK's Gutenberg selection), README
    rtp_prompts/             toxic.jsonl, nontoxic.jsonl, LICENSE.DecodingTrust.txt

Deterministic: every split is a SHA-1 hash of (source, record id), never a random draw or a file
order, and gzip members carry no timestamp, so the same inputs give byte-identical outputs.
What is held out for evaluation (RTP continuations, detection sets, clean perplexity text, the
cloze paragraphs) is never in the training corpus.

judge_train.jsonl is a second held-out split, for a toxicity judge that never labelled training
data (toxjax.scoring.judge_classifier): HELDOUT_JUDGE (10%) of each human-labelled source that
is not already held out, drawn by unit_hash("judge", ...) so it is independent of the other
draws. Labels are the humans': Davidson class 0/1 (hate, offensive) -> 1, 2 -> 0; CAT-LARGE
`label`; ParaDetox toxic sentence -> 1, its paraphrases -> 0 (drawn by the toxic sentence, so
a sentence and its paraphrases are always on one side); Civil Comments -> 1 (all toxic by
raters). Its texts are cut like the detection sets, then dropped when equal to a detection,
clean-perplexity, cloze or RTP text (prompt, continuation or both) or to an earlier judge text;
a ParaDetox row goes whole when its toxic sentence is held out elsewhere. Texts are compared by
`heldout_key` (whitespace collapsed, cut to MAX_HELDOUT_CHARS, case-folded), and the corpus
drops every document whose key is that of any held-out text, judge_train's included.

Outputs (OUTPUT/):
    corpus.jsonl.gz               training documents {"text", "source"} (scored by the study)
    heldout_clean.jsonl           raw clean documents: held-out perplexity, the same for every model
    cloze.jsonl                   held-out book paragraphs, LAMBADA style {"context", "target"}
    rtp_validation.jsonl          RealToxicityPrompts (published schema) for choosing defaults
    rtp_test.jsonl                the rest, for reporting
    detection_<name>.jsonl        held-out human-labelled {"text", "label"} sets
    judge_train.jsonl             held-out human-labelled {"text", "label", "source"}: trains the
                                  independent judge, never scored into or evaluated on
    ATTRIBUTION.md, licenses/     source, commit and licence of every file used
    manifest.json                 counts, skipped records with reasons, sha256 of every output
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import html
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from toxjax import fileio

PACKAGED_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "real")
CORPUS_FILE = "corpus.jsonl.gz"
HELDOUT_CLEAN_FILE = "heldout_clean.jsonl"
CLOZE_FILE = "cloze.jsonl"
JUDGE_TRAIN_FILE = "judge_train.jsonl"
RTP_FILES = {"validation": "rtp_validation.jsonl", "test": "rtp_test.jsonl"}


def packaged_path(name: str) -> str:
    """A file of the packaged real-text data (toxjax/assets/real/)."""
    return os.path.join(PACKAGED_DIR, name)


def detection_file(task: str) -> str:
    return f"detection_{task}.jsonl"


@dataclasses.dataclass(frozen=True)
class Source:
    """One raw source folder and where it came from."""

    folder: str
    name: str
    repository: str
    commit: str
    licence: str
    licence_file: str


SOURCES = (
    Source("paradetox", "ParaDetox", "s-nlp/paradetox", "d97b17d", "CC0 1.0", "LICENSE.txt"),
    Source(
        "davidson_tweets",
        "Davidson et al. 2017 tweets",
        "t-davidson/hate-speech-and-offensive-language",
        "cb50f7e",
        "MIT",
        "LICENSE.txt",
    ),
    Source(
        "wikipedia_talk",
        "CAT-LARGE Wikipedia talk comments (Pavlopoulos et al. 2020)",
        "ipavlopoulos/context_toxicity",
        "5df49c2",
        "Apache-2.0",
        "LICENSE.txt",
    ),
    Source(
        "civil_comments_toxic",
        "Civil Comments (toxic side, via ToxicSpans)",
        "ipavlopoulos/toxic_spans",
        "beaf170",
        "CC0 1.0",
        "LICENSE.txt",
    ),
    Source(
        "gutenberg", "NLTK Gutenberg selection", "nltk/nltk", "4dc39fb", "public domain", "README"
    ),
    Source(
        "rtp_prompts",
        "RealToxicityPrompts (DecodingTrust subset)",
        "AI-secure/DecodingTrust",
        "161ae83",
        "repository CC BY-SA 4.0; RTP data Apache-2.0",
        "LICENSE.DecodingTrust.txt",
    ),
)

# Held-out shares (of each source's records, by hash).
HELDOUT_PARADETOX = 0.03  # rows whose toxic sentence and paraphrase become a detection pair
HELDOUT_TWEETS = 0.03  # tweets for detection (class 0/1 toxic, 2 not)
HELDOUT_WIKI_POSITIVE = 0.4  # of the few (~210) toxic-labelled talk comments
HELDOUT_WIKI_NEGATIVE = 0.04  # of the clean ones: detection negatives
HELDOUT_WIKI_CLEAN = 0.02  # further clean comments for held-out perplexity
HELDOUT_BOOKS_PERPLEXITY = 0.03  # book paragraphs for held-out perplexity
HELDOUT_BOOKS_CLOZE = 0.06  # book paragraphs for the cloze task (prose books only)
HELDOUT_JUDGE = 0.1  # of each human-labelled source's records not held out above: judge_train
RTP_VALIDATION = 0.5  # share of prompts used to choose defaults; the rest is the test part
PROSE_BOOKS = ("austen", "chesterton", "melville")  # cloze only from prose (not verse, drama)
# Training documents are cut (at a space) to this many characters: the demo trains on 128-token
# sequences (~400 characters with its 768-piece vocabulary), so longer text would only be trimmed
# away; the wheel stays small.
MAX_TRAIN_CHARS = 480
# Held-out texts (clean perplexity documents, detection examples) are cut to this many
# characters: the model scores them as one continuation of at most its max_len (128) tokens.
MAX_HELDOUT_CHARS = 300
BOOKS_TRAIN_SHARE = 0.6  # of the remaining book paragraphs (books would otherwise dominate)
MIN_PARAGRAPH_WORDS = 12  # shorter book "paragraphs" are headings and stage directions
CLOZE_WORDS = (20, 160)  # cloze paragraphs: word count range
_GUTENBERG_FOOTER = re.compile(r"^\s*End of (the )?Project Gutenberg", re.IGNORECASE | re.MULTILINE)
_RETWEET = re.compile(r"\bRT\s+@\w+:?")
_MENTION = re.compile(r"@\w+")
_SPACES = re.compile(r"\s+")


def unit_hash(*parts: str) -> float:
    """A record's place in [0, 1): the deterministic draw behind every split."""
    digest = hashlib.sha1("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def truncate(text: str, max_chars: int) -> str:
    """At most max_chars, cut at the last space before the limit (words stay whole)."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > 0 else max_chars]


class Builder:
    """Collects outputs and skip counts while the readers run."""

    def __init__(self, source_dir: str):
        self.source_dir = source_dir
        self.corpus: list[dict[str, str]] = []
        self.heldout_clean: list[dict[str, str]] = []
        self.cloze: list[dict[str, str]] = []
        self.detection: dict[str, list[dict[str, object]]] = {}
        self.rtp: dict[str, list[dict]] = {"validation": [], "test": []}
        self.skipped: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()  # kept records with a caveat
        self.skip_examples: dict[str, list[int]] = {}  # reason -> first lines skipped for it
        self.used: Counter[str] = Counter()
        self.heldout_keys: set[str] = set()  # evaluation texts, as `heldout_key` writes them
        self.rtp_keys: set[str] = set()  # RTP prompts and continuations: judge_train avoids them
        # judge_train candidates: (record, key of its group, line); dropped as a group.
        self.judge_candidates: list[tuple[dict[str, Any], str, int | None]] = []
        self.judge: list[dict[str, Any]] = []  # what drop_heldout_from_judge keeps
        self.judge_keys: set[str] = set()

    def path(self, folder: str, name: str) -> str:
        return os.path.join(self.source_dir, folder, name)

    def skip(self, where: str, reason: str, line: int | None = None) -> None:
        """Counted per reason; the first few records of each are named in the manifest."""
        key = f"{where}: {reason}"
        self.skipped[key] += 1
        if line is not None and len(self.skip_examples.setdefault(key, [])) < 5:
            self.skip_examples[key].append(line)

    def note(self, where: str, reason: str, line: int | None = None) -> None:
        """A kept record worth reporting (e.g. an RTP prompt without its continuation)."""
        key = f"{where}: {reason}"
        self.notes[key] += 1
        if line is not None and len(self.skip_examples.setdefault(key, [])) < 5:
            self.skip_examples[key].append(line)

    def train(self, source: str, record_id: str, text: str) -> None:
        text = truncate(_clean(text), MAX_TRAIN_CHARS)
        if not text:
            self.skip(source, "empty text")
            return
        # No id field: the record id only decides splits here; the study keys documents by a
        # digest of their text (toxjax.data.scored_data), and ids would cost ~1 MB compressed.
        del record_id
        self.corpus.append({"text": text, "source": source})
        self.used[source] += 1

    def hold_out(self, text: str) -> None:
        """Marks a held-out text: a training document that equals it is dropped at the end (a
        duplicate record, say one tweet posted twice, would otherwise carry it into training)."""
        self.heldout_keys.add(heldout_key(text))

    def hold_out_clean(self, text: str, source: str, line: int | None = None) -> None:
        text = truncate(_clean(text), MAX_HELDOUT_CHARS)
        if not text:
            self.skip(f"heldout_clean/{source}", "empty text", line)
            return
        self.heldout_clean.append({"text": text, "source": source})
        self.hold_out(text)

    def detect(self, task: str, text: str, label: int) -> None:
        text = truncate(_clean(text), MAX_HELDOUT_CHARS)
        if not text:
            self.skip(f"detection_{task}", "empty text")
            return
        self.detection.setdefault(task, []).append({"text": text, "label": int(label)})
        self.hold_out(text)

    def judge_example(
        self, source: str, text: str, label: int, group: str | None = None, line: int | None = None
    ) -> None:
        """A judge_train candidate. `group` (a ParaDetox row: its toxic sentence's key) goes
        whole when that key is held out for evaluation, so no paraphrase of it trains the judge."""
        text = truncate(_clean(text), MAX_HELDOUT_CHARS)
        if not text:
            self.skip(f"judge_train/{source}", "empty text", line)
            return
        record = {"text": text, "label": int(label), "source": source}
        self.judge_candidates.append((record, group or heldout_key(text), line))

    def drop_heldout_from_judge(self) -> None:
        """judge_train keeps the candidates that equal no evaluation text (detection, clean,
        cloze, RTP) and no earlier candidate; the rest are counted. Run after every reader."""
        evaluation = self.heldout_keys | self.rtp_keys
        for record, group, line in self.judge_candidates:
            key, reason = heldout_key(record["text"]), None
            if key in evaluation:
                reason = "same text as an evaluation one"
            elif group in evaluation:
                reason = "its toxic sentence is held out for evaluation"
            elif key in self.judge_keys:
                reason = "duplicate judge text"
            if reason:
                self.skip(f"judge_train/{record['source']}", reason, line)
            else:
                self.judge_keys.add(key)
                self.judge.append(record)

    def drop_heldout_from_corpus(self) -> None:
        """Training documents equal to a held-out text (judge_train's included), or to an
        earlier training document, are dropped and counted."""
        kept, seen = [], set()
        for record in self.corpus:
            key, reason = heldout_key(record["text"]), None
            if key in self.heldout_keys:
                reason = "same text as a held-out one"
            elif key in self.judge_keys:
                reason = "same text as a judge_train one"
            elif record["text"] in seen:
                reason = "duplicate training document"
            if reason:
                self.skip(record["source"], reason)
                self.used[record["source"]] -= 1
            else:
                seen.add(record["text"])
                kept.append(record)
        self.corpus = kept


def heldout_key(text: str) -> str:
    """What a held-out text and a training document are compared by: their start (held-out
    texts are cut to MAX_HELDOUT_CHARS, training ones to MAX_TRAIN_CHARS), case-folded so a
    shouted copy of a held-out tweet is the same text."""
    return truncate(_clean(text), MAX_HELDOUT_CHARS).casefold()


def _read_csv(path: str, **kwargs) -> Iterator[tuple[int, dict[str, str]]]:
    """(physical line where the record ends, row): errors and skips name the line. A short row
    lacks its missing fields and an empty row is {} (csv.DictReader would drop it silently),
    so the callers count them."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, **kwargs)
        header = next(reader, [])
        for values in reader:
            yield reader.line_num, dict(zip(header, values, strict=False))


def add_paradetox(builder: Builder) -> None:
    """Toxic sentences and their human paraphrases; held-out rows become detection pairs or
    judge_train examples (drawn by the toxic sentence)."""
    path = builder.path("paradetox", "paradetox.tsv")
    fields = ("toxic", "neutral1", "neutral2", "neutral3")
    for line, row in _read_csv(path, delimiter="\t", quoting=csv.QUOTE_NONE):
        values = {field: (row.get(field) or "") for field in fields}  # short rows are padded
        if not values["toxic"].strip():
            builder.skip("paradetox", "empty 'toxic' field", line)
            continue
        record_id = f"paradetox:{line}"
        if unit_hash(record_id) < HELDOUT_PARADETOX:
            if not values["neutral1"].strip():
                builder.skip("paradetox", "held-out row without 'neutral1'", line)
                continue
            builder.detect("paradetox", values["toxic"], 1)
            builder.detect("paradetox", values["neutral1"], 0)
            continue
        group = heldout_key(values["toxic"])
        if unit_hash("judge", "paradetox", group) < HELDOUT_JUDGE:  # the row stays together
            for field in fields:
                if values[field].strip():
                    label = int(field == "toxic")
                    builder.judge_example("paradetox", values[field], label, group, line)
            continue
        for field in fields:
            if values[field].strip():
                builder.train("paradetox", f"{record_id}:{field}", values[field])


def clean_tweet(text: str) -> str:
    """HTML entities decoded, "RT @user:" markers dropped (the retweeter's own words before
    them stay), other @mentions anonymised, leading "!!!" runs stripped."""
    text = _RETWEET.sub(" ", html.unescape(text))
    return _clean(_MENTION.sub("@user", text)).lstrip('!" ').strip()


def add_tweets(builder: Builder) -> None:
    path = builder.path("davidson_tweets", "labeled_data.csv")
    for line, row in _read_csv(path):
        klass = (row.get("class") or "").strip()
        if klass not in ("0", "1", "2"):
            builder.skip("davidson_tweets", "field 'class' not 0/1/2", line)
            continue
        text = clean_tweet(row.get("tweet") or "")
        record_id = f"davidson:{(row.get('') or str(line)).strip()}"
        if unit_hash(record_id) < HELDOUT_TWEETS:
            builder.detect("tweets", text, int(klass != "2"))
        elif unit_hash("judge", record_id) < HELDOUT_JUDGE:
            builder.judge_example("davidson_tweets", text, int(klass != "2"), line=line)
        else:
            builder.train("davidson_tweets", record_id, text)


def add_wikipedia_talk(builder: Builder) -> None:
    """Both CAT-LARGE files; comments seen twice are used once (first occurrence)."""
    seen: set[str] = set()
    for name in ("CAT_LARGE_gn_out_of_context.csv", "CAT_LARGE_gc_in_context.csv"):
        for line, row in _read_csv(builder.path("wikipedia_talk", name)):
            text, label = _clean(row.get("text") or ""), (row.get("label") or "").strip()
            if label not in ("0", "1"):
                builder.skip(f"wikipedia_talk/{name}", "field 'label' not 0/1", line)
                continue
            if text in seen:
                builder.skip(f"wikipedia_talk/{name}", "duplicate comment", line)
                continue
            seen.add(text)
            record_id = f"wikipedia_talk:{row.get('id') or line}"
            draw = unit_hash(record_id)
            if label == "1":
                if draw < HELDOUT_WIKI_POSITIVE:
                    builder.detect("wikipedia", text, 1)
                    continue
            elif draw < HELDOUT_WIKI_NEGATIVE:
                builder.detect("wikipedia", text, 0)
                continue
            elif draw < HELDOUT_WIKI_NEGATIVE + HELDOUT_WIKI_CLEAN:
                builder.hold_out_clean(text, "wikipedia_talk", line)
                continue
            if unit_hash("judge", record_id) < HELDOUT_JUDGE:
                builder.judge_example("wikipedia_talk", text, int(label), line=line)
                continue
            builder.train("wikipedia_talk", record_id, text)


def add_civil_comments(builder: Builder) -> None:
    for line, row in _read_csv(builder.path("civil_comments_toxic", "comments.csv")):
        record_id = f"civil_comments:{(row.get('comment_id') or str(line)).strip()}"
        text = row.get("comment_text") or ""
        if unit_hash("judge", record_id) < HELDOUT_JUDGE:  # every comment is toxic by raters
            builder.judge_example("civil_comments_toxic", text, 1, line=line)
        else:
            builder.train("civil_comments_toxic", record_id, text)


def book_paragraphs(raw: str) -> list[str]:
    """Blank-line separated paragraphs, lines joined, Project Gutenberg footer stripped."""
    footer = _GUTENBERG_FOOTER.search(raw)
    if footer:
        raw = raw[: footer.start()]
    paragraphs = (_clean(block) for block in re.split(r"\n\s*\n", raw))
    return [p for p in paragraphs if len(p.split()) >= MIN_PARAGRAPH_WORDS]


def cloze_example(paragraph: str) -> dict[str, str] | None:
    """LAMBADA style: the paragraph without its last word, and that word (letters only)."""
    words = paragraph.split()
    if not CLOZE_WORDS[0] <= len(words) <= CLOZE_WORDS[1]:
        return None
    target = words[-1].rstrip(".!?;:,'\"\u201d\u2019)_")
    if not target.isalpha() or len(target) < 2:
        return None
    return {"context": " ".join(words[:-1]), "target": target}


def add_books(builder: Builder) -> None:
    folder = os.path.join(builder.source_dir, "gutenberg")
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".txt")):
        with open(os.path.join(folder, name), encoding="latin-1") as f:
            paragraphs = book_paragraphs(f.read())
        book = name[: -len(".txt")]
        for index, paragraph in enumerate(paragraphs):
            record_id = f"gutenberg:{book}:{index}"
            draw = unit_hash(record_id)
            if draw < HELDOUT_BOOKS_PERPLEXITY:
                builder.hold_out_clean(paragraph, "gutenberg")
                continue
            if draw < HELDOUT_BOOKS_PERPLEXITY + HELDOUT_BOOKS_CLOZE:
                example = cloze_example(paragraph) if book.startswith(PROSE_BOOKS) else None
                if example is not None:
                    builder.cloze.append({**example, "source": f"gutenberg:{book}"})
                    builder.hold_out(paragraph)
                    continue
            if unit_hash("train", record_id) < BOOKS_TRAIN_SHARE:
                builder.train("gutenberg", record_id, paragraph)


def add_rtp(builder: Builder) -> None:
    """Prompts kept in their published schema, split by hash into validation and test."""
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        path = builder.path("rtp_prompts", name)
        for line, record in fileio.read_jsonl(path):
            continuation = (record.get("continuation") or {}).get("text")
            if not isinstance(continuation, str) or not continuation.strip():
                builder.note(
                    f"rtp_prompts/{name}", "no continuation text (kept: evaluation counts it)", line
                )
            prompt = (record.get("prompt") or {}).get("text")
            texts = [t for t in (prompt, continuation) if isinstance(t, str)]
            builder.rtp_keys.update(heldout_key(t) for t in [*texts, "".join(texts)])
            key = f"{record.get('filename')}:{record.get('begin')}-{record.get('end')}"
            part = "validation" if unit_hash("rtp", key) < RTP_VALIDATION else "test"
            builder.rtp[part].append(record)


def _jsonl_bytes(records: Iterable[dict]) -> bytes:
    return "".join(
        json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records
    ).encode()


def _gzip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buffer.getvalue()


def attribution_markdown(builder: Builder) -> str:
    judged = Counter(record["source"] for record in builder.judge)
    lines = [
        "# Attribution of the packaged real-text data",
        "",
        "Built by `python -m toxjax.datasets.real_corpus_main` (toxjax/datasets/real_corpus.py)"
        " from the",
        "raw files below, unedited except for the cleaning that module documents. Each licence",
        "text is in `licenses/`.",
        "",
        "| source | repository @ commit | licence | licence file | training documents |"
        " judge_train examples |",
        "|---|---|---|---|---|---|",
    ]
    for source in SOURCES:
        lines.append(
            f"| {source.name} | {source.repository} @ {source.commit} | {source.licence} | "
            f"`licenses/{source.folder}.txt` | {builder.used.get(source.folder, 0)} | "
            f"{judged.get(source.folder, 0)} |"
        )
    return "\n".join(lines) + "\n"


def _label_counts(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{source: {"examples", "positive"}}: what the manifest says of judge_train."""
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        entry = counts.setdefault(record["source"], {"examples": 0, "positive": 0})
        entry["examples"] += 1
        entry["positive"] += record["label"]
    return dict(sorted(counts.items()))


def build(source_dir: str, output_dir: str) -> dict:
    """Builds every output; returns the manifest (also written as manifest.json)."""
    builder = Builder(source_dir)
    for add in (add_paradetox, add_tweets, add_wikipedia_talk, add_civil_comments, add_books):
        add(builder)
    add_rtp(builder)
    builder.drop_heldout_from_judge()  # before the corpus: it drops what judge_train keeps
    builder.drop_heldout_from_corpus()
    builder.corpus.sort(key=lambda r: unit_hash("order", r["source"], r["text"]))  # interleaved
    outputs = {
        CORPUS_FILE: _gzip_bytes(_jsonl_bytes(builder.corpus)),
        HELDOUT_CLEAN_FILE: _jsonl_bytes(builder.heldout_clean),
        CLOZE_FILE: _jsonl_bytes(builder.cloze),
        JUDGE_TRAIN_FILE: _jsonl_bytes(builder.judge),
        **{RTP_FILES[part]: _jsonl_bytes(records) for part, records in builder.rtp.items()},
        **{
            detection_file(task): _jsonl_bytes(examples)
            for task, examples in sorted(builder.detection.items())
        },
        "ATTRIBUTION.md": attribution_markdown(builder).encode(),
    }
    for source in SOURCES:
        with open(builder.path(source.folder, source.licence_file), "rb") as f:
            outputs[f"licenses/{source.folder}.txt"] = f.read()
    counts = {
        "corpus": dict(sorted(builder.used.items())),
        "heldout_clean": len(builder.heldout_clean),
        "cloze": len(builder.cloze),
        "rtp": {part: len(records) for part, records in builder.rtp.items()},
        "detection": {
            task: {"examples": len(ex), "positive": sum(int(e["label"]) for e in ex)}
            for task, ex in sorted(builder.detection.items())
        },
        "judge_train": _label_counts(builder.judge),
    }
    manifest = {
        "sources": [dataclasses.asdict(source) for source in SOURCES],
        "counts": counts,
        "skipped": dict(sorted(builder.skipped.items())),
        "kept_with_caveat": dict(sorted(builder.notes.items())),
        "skipped_lines": dict(sorted(builder.skip_examples.items())),
        "sha256": {
            name: hashlib.sha256(data).hexdigest() for name, data in sorted(outputs.items())
        },
    }
    outputs["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    for name, data in outputs.items():
        path = os.path.join(output_dir, name)
        fileio.make_dirs(os.path.dirname(path))
        fileio.write_atomic(path, data)
    return manifest
