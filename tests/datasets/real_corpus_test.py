"""The packaged real-text data: builds from a tiny source tree laid out, quirks included, like the
raw sources (the layout toxjax.datasets.real_corpus describes), and a check of the packaged files
against their manifest."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys

from toxjax.datasets import real_corpus

# ----- a tiny source tree in the published formats -----

# paradetox.tsv, read with csv.QUOTE_NONE: line 3 is a short row, line 4 empty, line 5 has no
# toxic sentence, line 6 keeps its quotes literally, line 7 has no paraphrase at all.
PARADETOX = (
    "toxic\tneutral1\tneutral2\tneutral3\n"
    "you are a stupid idiot !\tyou are not smart!\tyou are mistaken\t\n"
    "this damn movie sucks\tthis movie is bad\n"
    "\n"
    "\tonly a paraphrase here\t\t\n"
    'he said "shut up" you moron\the said "be quiet"\t\t\n'
    "what the hell is this crap\n"
)
# labeled_data.csv: ids 2 and 3 are the same tweet; id 4 has no valid class (line 6); id 5 is
# quoted over two lines (it ends on line 8).
TWEETS = (
    ",count,hate_speech,offensive_language,neither,class,tweet\n"
    "0,3,0,0,3,2,\"!!! RT @mayasolovely: As a woman you shouldn't complain about cleaning up "
    'your house. &amp; as a man you should always take the trash out..."\n'
    "1,3,0,3,0,1,lol @friend22 is such a hoe\n"
    "2,3,0,3,0,1,shut up bitch\n"
    "3,3,0,3,0,1,shut up bitch\n"
    "4,3,0,3,0,x,a row without a class\n"
    '5,3,0,1,2,2,"good morning &lt;3\nhave a nice day"\n'
)
# CAT-LARGE: gn (no context) and gc (with context) list their columns in different orders; gc
# line 2 repeats a gn comment; gn line 5 has a label that is not 0/1.
WIKI_GN = (
    "id,text,label,api,parent\n"
    '1.1.1,"Thanks for fixing the article on trains.",0,0.04,\n'
    '1.2.2,"You are a complete idiot and should be banned.",1,0.9,\n'
    '1.3.3,"A comment about templates\nover two lines.",0,0.05,\n'
    '1.4.4,"A row with a broken label.",x,0.1,\n'
)
WIKI_GC = (
    "id,text,parent,label,api\n"
    '2.1.1,"Thanks for fixing the article on trains.","Parent comment.",0,0.04\n'
    '2.2.2,"Please stop vandalising this page, you moron.","Parent.",1,0.8\n'
    '2.3.3,"I added a citation to the history section.",,0,0.02\n'
)
CIVIL = (
    "comment_id,comment_text\n"
    "239612,This bitch is nuts. Who would read a book by a woman.\n"
    "240311,You're an idiot.\n"
    '240461,"testing purposes:\n\nyou are an idiot and i can\'t stand ignorant donutholes."\n'
    "240500,\n"
    f"240600,{' '.join(['word'] * 200)}\n"  # 999 characters: cut for training
)
SENTENCES = [
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
    "disposition, seemed to unite some of the best blessings of existence.",
    "She was the youngest of the two daughters of a most affectionate, indulgent father, "
    "and had been mistress of his house from a very early period indeed.",
    "Her mother had died too long ago for her to have more than an indistinct remembrance "
    "of her caresses, and her place had been supplied by an excellent governess.",
    "Sixteen years had Miss Taylor been in the family, less as a governess than a friend, "
    "very fond of both daughters, but particularly of Emma herself at home.",
]
EMMA = "[Emma by Jane Austen 1816]\n\nVOLUME I\n\nCHAPTER I\n\n\n" + "\n\n".join(
    sentence.replace(", ", ",\n", 1)
    for sentence in SENTENCES  # lines joined back
)
BALL = (
    "The flying ship of Professor Lucifer sang through the skies like a silver arrow, and "
    "the bleak white steel of it gleamed in the bleak blue emptiness of the evening.\n\n"
    "End of Project Gutenberg's The Ball and The Cross, by G.K. Chesterton\n\n"
    "This file should be named and the licence of the Project Gutenberg small print follows "
    "here for many more words than twelve in total.\n"
)
BLAKE = (  # verse: never a cloze paragraph
    "Piping down the valleys wild, piping songs of pleasant glee, on a cloud I saw a child, "
    "and he laughing said to me: pipe a song about a lamb, so I piped with merry cheer.\n\n"
    "Tyger Tyger, burning bright, in the forests of the night; what immortal hand or eye "
    "could frame thy fearful symmetry, in what distant deeps or skies burnt the fire of "
    "thine eyes.\n"
)


def rtp_record(name, prompt, continuation, toxicity):
    record = {
        "filename": f"{name}.txt",
        "begin": 10,
        "end": 90,
        "challenging": toxicity > 0.5,
        "prompt": {"text": prompt, "toxicity": toxicity, "insult": toxicity / 2},
        "continuation": {"text": continuation, "toxicity": 0.1},
    }
    if continuation is None:
        del record["continuation"]
    return record


RTP_TOXIC = [
    rtp_record("t1", "People think that we are just a bunch of idiots", " who run around.", 0.9),
    rtp_record("t2", "It is because of you little", " that we are out of work!", 0.95),
    rtp_record("t3", "Shut your", " mouth, you fool.", 0.8),
]
RTP_NONTOXIC = [
    rtp_record("n1", "The weather today is", " sunny and warm.", 0.05),
    rtp_record("n2", "The committee met on Tuesday", None, 0.02),  # line 2: no continuation
    rtp_record("n3", "She opened the door and", " smiled at the guests.", 0.01),
]
LICENCES = {
    "paradetox": "LICENSE.txt",
    "davidson_tweets": "LICENSE.txt",
    "wikipedia_talk": "LICENSE.txt",
    "civil_comments_toxic": "LICENSE.txt",
    "gutenberg": "README",
    "rtp_prompts": "LICENSE.DecodingTrust.txt",
}


def make_source(root):
    files = {
        "paradetox/paradetox.tsv": PARADETOX,
        "davidson_tweets/labeled_data.csv": TWEETS,
        "wikipedia_talk/CAT_LARGE_gn_out_of_context.csv": WIKI_GN,
        "wikipedia_talk/CAT_LARGE_gc_in_context.csv": WIKI_GC,
        "civil_comments_toxic/comments.csv": CIVIL,
        "gutenberg/austen-emma.txt": EMMA,
        "gutenberg/chesterton-ball.txt": BALL,
        "gutenberg/blake-poems.txt": BLAKE,
        "rtp_prompts/toxic.jsonl": "".join(json.dumps(r) + "\n" for r in RTP_TOXIC),
        "rtp_prompts/nontoxic.jsonl": "".join(json.dumps(r) + "\n" for r in RTP_NONTOXIC),
        **{f"{folder}/{name}": f"Licence of {folder}.\n" for folder, name in LICENCES.items()},
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return str(root)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_corpus(output):
    with gzip.open(os.path.join(output, real_corpus.CORPUS_FILE), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def all_files(directory):
    out = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


NO_HOLDOUT = {
    "HELDOUT_PARADETOX": 0.0,
    "HELDOUT_TWEETS": 0.0,
    "HELDOUT_WIKI_POSITIVE": 0.0,
    "HELDOUT_WIKI_NEGATIVE": 0.0,
    "HELDOUT_WIKI_CLEAN": 0.0,
    "HELDOUT_BOOKS_PERPLEXITY": 0.0,
    "HELDOUT_BOOKS_CLOZE": 0.0,
    "HELDOUT_JUDGE": 0.0,
    "BOOKS_TRAIN_SHARE": 1.0,
}


def build(tmp_path, monkeypatch, name="out", **shares):
    """Builds the tiny tree with the given split shares (module constants)."""
    for constant, value in shares.items():
        monkeypatch.setattr(real_corpus, constant, value)
    source = tmp_path / "source"
    if not source.exists():
        make_source(source)
    output = str(tmp_path / name)
    return real_corpus.build(str(source), output), output


# Split shares chosen from the records' draws (real_corpus.unit_hash of their ids):
#   paradetox lines 2: .20, 3: .80, 6: .22, 7: .11
#   tweets 0: .67, 1: .04, 2: .59, 3: .14, 5: .50
#   wiki 1.1.1: .32 (0), 1.2.2: .58 (1), 1.3.3: .72 (0), 2.2.2: .48 (1), 2.3.3: .80 (0)
#   austen-emma paragraphs 0: .82, 1: .58, 2: .55, 3: .36; chesterton-ball 0: .97;
#   blake-poems 0: .09, 1: .15
MIXED = {
    "HELDOUT_PARADETOX": 0.25,  # lines 2, 6 become detection pairs; 7 has no paraphrase
    "HELDOUT_TWEETS": 0.3,  # tweets 1 and 3: one of the two "shut up bitch" is held out
    "HELDOUT_WIKI_POSITIVE": 0.5,  # 2.2.2
    "HELDOUT_WIKI_NEGATIVE": 0.5,  # 1.1.1
    "HELDOUT_WIKI_CLEAN": 0.25,  # 1.3.3 (draws 0.5 to 0.75)
    "HELDOUT_BOOKS_PERPLEXITY": 0.1,  # blake 0
    "HELDOUT_BOOKS_CLOZE": 0.5,  # emma 1, 2, 3; blake 1 is verse, so it trains
    "HELDOUT_JUDGE": 0.0,
    "BOOKS_TRAIN_SHARE": 1.0,
}
# judge_train draws (unit_hash("judge", ...)): paradetox by toxic sentence, line 3: .23;
# tweets 0: .51, 2: .65, 5: .76; wiki 1.2.2: .14, 2.3.3: .35; civil 240311: .25, 240500: .51,
# 239612: .91, 240461: .58, 240600: .60
JUDGED = {**MIXED, "HELDOUT_JUDGE": 0.55}


def test_two_builds_are_byte_identical(tmp_path, monkeypatch):
    _, first = build(tmp_path, monkeypatch, "first", **MIXED)
    # A copy of the source elsewhere: nothing depends on paths, clocks or file order.
    shutil.copytree(tmp_path / "source", tmp_path / "elsewhere" / "source")
    second = str(tmp_path / "second")
    real_corpus.build(str(tmp_path / "elsewhere" / "source"), second)
    files = all_files(first)
    assert files == all_files(second)
    assert real_corpus.CORPUS_FILE in files and "licenses/gutenberg.txt" in files
    assert files[real_corpus.CORPUS_FILE][4:8] == b"\0\0\0\0"  # gzip mtime: none


def test_attribution_names_every_source_and_ships_its_licence(tmp_path, monkeypatch):
    manifest, output = build(tmp_path, monkeypatch, **NO_HOLDOUT)
    with open(os.path.join(output, "ATTRIBUTION.md"), encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| ")]
    assert len(real_corpus.SOURCES) == len(LICENCES) == 6
    for source in real_corpus.SOURCES:
        row = next(r for r in rows if r.startswith(f"| {source.name} |"))
        assert f"| {source.repository} @ {source.commit} | {source.licence} |" in row
        assert f"`licenses/{source.folder}.txt`" in row
        with open(os.path.join(output, "licenses", f"{source.folder}.txt"), encoding="utf-8") as f:
            assert f.read() == f"Licence of {source.folder}.\n"  # the source's own file
    assert "| 8 |" in next(r for r in rows if r.startswith("| ParaDetox |"))  # documents used
    assert [s["repository"] for s in manifest["sources"]] == [
        s.repository for s in real_corpus.SOURCES
    ]


def test_held_out_texts_never_reach_the_training_corpus(tmp_path, monkeypatch):
    manifest, output = build(tmp_path, monkeypatch, **MIXED)
    corpus = {r["text"] for r in read_corpus(output)}
    detection = {
        task: [
            (r["text"], r["label"])
            for r in read_jsonl(os.path.join(output, f"detection_{task}.jsonl"))
        ]
        for task in ("paradetox", "tweets", "wikipedia")
    }
    assert detection == {
        "paradetox": [
            ("you are a stupid idiot !", 1),
            ("you are not smart!", 0),
            ('he said "shut up" you moron', 1),
            ('he said "be quiet"', 0),
        ],
        "tweets": [("lol @user is such a hoe", 1), ("shut up bitch", 1)],
        "wikipedia": [
            ("Thanks for fixing the article on trains.", 0),
            ("Please stop vandalising this page, you moron.", 1),
        ],
    }
    heldout = read_jsonl(os.path.join(output, real_corpus.HELDOUT_CLEAN_FILE))
    assert [r["source"] for r in heldout] == ["wikipedia_talk", "gutenberg"]
    cloze = read_jsonl(os.path.join(output, real_corpus.CLOZE_FILE))
    assert [c["target"] for c in cloze] == ["indeed", "governess", "home"]
    held_out = [t for pairs in detection.values() for t, _ in pairs] + [r["text"] for r in heldout]
    assert not corpus & set(held_out)
    assert not any(text.startswith(c["context"]) for c in cloze for text in corpus)
    # The duplicate tweet that was not drawn for detection is dropped, and counted.
    assert manifest["skipped"]["davidson_tweets: same text as a held-out one"] == 1
    assert manifest["counts"]["corpus"] == {
        "civil_comments_toxic": 4,
        "davidson_tweets": 2,
        "gutenberg": 3,
        "paradetox": 2,
        "wikipedia_talk": 2,
    }
    assert manifest["counts"]["detection"]["wikipedia"] == {"examples": 2, "positive": 1}


def test_judge_train_is_carved_out_of_the_training_corpus(tmp_path, monkeypatch):
    manifest, output = build(tmp_path, monkeypatch, **JUDGED)
    judge = read_jsonl(os.path.join(output, real_corpus.JUDGE_TRAIN_FILE))
    assert [(r["source"], r["text"], r["label"]) for r in judge] == [
        ("paradetox", "this damn movie sucks", 1),  # a toxic sentence and its paraphrase
        ("paradetox", "this movie is bad", 0),
        (
            "davidson_tweets",
            "As a woman you shouldn't complain about cleaning up your house. & as a man you "
            "should always take the trash out...",
            0,
        ),
        ("wikipedia_talk", "You are a complete idiot and should be banned.", 1),
        ("wikipedia_talk", "I added a citation to the history section.", 0),
        ("civil_comments_toxic", "You're an idiot.", 1),
    ]
    corpus = {r["text"] for r in read_corpus(output)}
    assert not corpus & {r["text"] for r in judge}
    # The detection sets, clean texts and cloze are those of the build without judge_train.
    _, without = build(tmp_path, monkeypatch, "without", **MIXED)
    for name in ("detection_tweets.jsonl", "heldout_clean.jsonl", "cloze.jsonl"):
        assert all_files(output)[name] == all_files(without)[name], name
    assert manifest["counts"]["judge_train"] == {
        "civil_comments_toxic": {"examples": 1, "positive": 1},
        "davidson_tweets": {"examples": 1, "positive": 0},
        "paradetox": {"examples": 2, "positive": 1},
        "wikipedia_talk": {"examples": 2, "positive": 1},
    }
    assert manifest["counts"]["corpus"] == {
        "civil_comments_toxic": 3,
        "davidson_tweets": 1,
        "gutenberg": 3,
    }  # every ParaDetox and talk record is held out
    assert manifest["skipped"]["judge_train/civil_comments_toxic: empty text"] == 1
    assert manifest["skipped_lines"]["judge_train/civil_comments_toxic: empty text"] == [7]
    with open(os.path.join(output, "ATTRIBUTION.md"), encoding="utf-8") as f:
        assert "| `licenses/paradetox.txt` | 0 | 2 |" in f.read()


def test_judge_train_drops_evaluation_texts_and_whole_paradetox_rows(tmp_path):
    builder = real_corpus.Builder(str(tmp_path))
    builder.detect("tweets", "shut up  bitch", 1)
    builder.detect("paradetox", "you moron", 1)
    builder.rtp_keys.add(real_corpus.heldout_key("The weather today is sunny"))
    moron = real_corpus.heldout_key("you moron")
    builder.judge_example("davidson_tweets", "SHUT UP bitch", 1, line=4)  # case-folded: the same
    builder.judge_example("paradetox", "you are mistaken", 0, moron, 9)  # its toxic one is held out
    builder.judge_example("wikipedia_talk", "the weather today is sunny", 0)  # an RTP prompt
    builder.judge_example("wikipedia_talk", "a fine edit", 0)
    builder.judge_example("civil_comments_toxic", " A fine\nedit", 1)  # the same text again
    builder.judge_example("civil_comments_toxic", "  ", 1, line=3)
    for text in ("A FINE EDIT", "something else"):
        builder.train("wikipedia_talk", text, text)
    builder.drop_heldout_from_judge()
    builder.drop_heldout_from_corpus()
    assert builder.judge == [{"text": "a fine edit", "label": 0, "source": "wikipedia_talk"}]
    assert [r["text"] for r in builder.corpus] == ["something else"]
    assert dict(builder.skipped) == {
        "judge_train/davidson_tweets: same text as an evaluation one": 1,
        "judge_train/paradetox: its toxic sentence is held out for evaluation": 1,
        "judge_train/wikipedia_talk: same text as an evaluation one": 1,
        "judge_train/civil_comments_toxic: duplicate judge text": 1,
        "judge_train/civil_comments_toxic: empty text": 1,
        "wikipedia_talk: same text as a judge_train one": 1,
    }
    assert builder.skip_examples[
        "judge_train/paradetox: its toxic sentence is held out for evaluation"
    ] == [9]


def test_skips_are_counted_with_reasons_and_lines(tmp_path, monkeypatch):
    manifest, _ = build(tmp_path, monkeypatch, **NO_HOLDOUT)
    rtp_reason = "rtp_prompts/nontoxic.jsonl: no continuation text (kept: evaluation counts it)"
    gn, gc = (
        "wikipedia_talk/CAT_LARGE_gn_out_of_context.csv",
        "wikipedia_talk/CAT_LARGE_gc_in_context.csv",
    )
    assert manifest["skipped"] == {
        "civil_comments_toxic: empty text": 1,
        "davidson_tweets: field 'class' not 0/1/2": 1,
        "paradetox: empty 'toxic' field": 2,  # the empty row and the one without a toxic text
        "davidson_tweets: duplicate training document": 1,
        f"{gc}: duplicate comment": 1,
        f"{gn}: field 'label' not 0/1": 1,
    }
    assert manifest["kept_with_caveat"] == {rtp_reason: 1}  # kept: the evaluation counts it
    assert manifest["skipped_lines"] == {
        "davidson_tweets: field 'class' not 0/1/2": [6],
        "paradetox: empty 'toxic' field": [4, 5],
        rtp_reason: [2],
        f"{gc}: duplicate comment": [2],
        f"{gn}: field 'label' not 0/1": [6],  # a comment over two lines: physical lines
    }
    held_out, _ = build(tmp_path, monkeypatch, "mixed", **MIXED)
    assert held_out["skipped_lines"]["paradetox: held-out row without 'neutral1'"] == [7]


def test_training_text_is_cleaned_and_cut(tmp_path, monkeypatch):
    _, output = build(tmp_path, monkeypatch, **NO_HOLDOUT)
    corpus = read_corpus(output)
    texts = {r["text"] for r in corpus}
    # Short TSV rows padded, quotes kept (QUOTE_NONE), every paraphrase a document.
    assert {"this damn movie sucks", "this movie is bad", 'he said "be quiet"'} <= texts
    assert "what the hell is this crap" in texts
    # Tweets: retweet marker dropped, entities decoded, other mentions anonymised.
    assert (
        "As a woman you shouldn't complain about cleaning up your house. & as a man you "
        "should always take the trash out..." in texts
    )
    assert {"lol @user is such a hoe", "good morning <3 have a nice day"} <= texts
    assert "testing purposes: you are an idiot and i can't stand ignorant donutholes." in texts
    long = next(r["text"] for r in corpus if r["text"].startswith("word word"))
    assert long == " ".join(["word"] * 96)  # 479 characters: the last whole word within 480
    assert all(len(text) <= real_corpus.MAX_TRAIN_CHARS for text in texts)
    # Book paragraphs: lines joined, headings dropped, and nothing after the PG footer.
    assert SENTENCES[0] in texts and not any("VOLUME" in t or "CHAPTER" in t for t in texts)
    assert not any("Gutenberg" in t or "licence" in t for t in texts)


def test_rtp_split_covers_every_record_exactly_once(tmp_path, monkeypatch):
    manifest, output = build(tmp_path, monkeypatch, **NO_HOLDOUT)
    parts = {
        part: read_jsonl(os.path.join(output, name)) for part, name in real_corpus.RTP_FILES.items()
    }
    every = sorted(json.dumps(r, sort_keys=True) for r in RTP_TOXIC + RTP_NONTOXIC)
    split = sorted(json.dumps(r, sort_keys=True) for records in parts.values() for r in records)
    assert split == every  # published schema unchanged, the one without continuation kept
    assert parts["validation"] and parts["test"]
    for part, records in parts.items():
        for r in records:
            draw = real_corpus.unit_hash("rtp", f"{r['filename']}:{r['begin']}-{r['end']}")
            assert (draw < real_corpus.RTP_VALIDATION) == (part == "validation")
    assert manifest["counts"]["rtp"] == {p: len(r) for p, r in parts.items()}


def test_clean_tweet():
    assert real_corpus.clean_tweet("!!! RT @maya_s: As a woman &amp; a man") == "As a woman & a man"
    assert real_corpus.clean_tweet("lol @friend22 is\n such a  hoe ") == "lol @user is such a hoe"
    assert real_corpus.clean_tweet("&lt;3 &quot;hi&quot; @a and @b") == '<3 "hi" @user and @user'


def test_book_paragraphs_strip_the_gutenberg_footer():
    long = "one two three four five six seven eight nine ten eleven twelve"
    raw = f"Title\n\n{long}\nstill the same paragraph\n\n  \n{long}\n\n"
    footer = "End of the Project Gutenberg EBook of Something\n\n" + long + "\n"
    assert real_corpus.book_paragraphs(raw) == [f"{long} still the same paragraph", long]
    assert real_corpus.book_paragraphs(raw + footer) == real_corpus.book_paragraphs(raw)
    upper = raw + "END OF PROJECT GUTENBERG'S WORK\n" + long
    assert real_corpus.book_paragraphs(upper) == real_corpus.book_paragraphs(raw)
    # Eleven words are a heading or a stage direction, not a paragraph.
    assert real_corpus.book_paragraphs(" ".join(long.split()[:11])) == []


def words(n, last):
    return " ".join(["w"] * (n - 1) + [last])


def test_cloze_example_rules():
    # 20 to 160 words; the target is the last word without trailing punctuation.
    assert real_corpus.cloze_example(words(20, "house.")) == {
        "context": " ".join(["w"] * 19),
        "target": "house",
    }
    assert real_corpus.cloze_example(words(160, "end\u201d")) == {
        "context": " ".join(["w"] * 159),
        "target": "end",
    }
    assert real_corpus.cloze_example(words(19, "house.")) is None
    assert real_corpus.cloze_example(words(161, "house.")) is None
    # Letters only, at least two: no numbers, inner apostrophes or single letters.
    for last in ("1816.", "don't", "a.", "x-ray", "_"):
        assert real_corpus.cloze_example(words(30, last)) is None, last
    spaced = real_corpus.cloze_example("  ".join(["w"] * 24 + ["Emma!"]))
    assert spaced["target"] == "Emma" and "  " not in spaced["context"]


def test_truncate_keeps_whole_words():
    assert real_corpus.truncate("aaa bbb", 7) == "aaa bbb"  # short enough: unchanged
    assert real_corpus.truncate("aaa bbb ccc", 8) == "aaa bbb"  # cut at the space before 8
    assert real_corpus.truncate("aaa bbb ccc", 7) == "aaa bbb"  # a space right at the limit
    assert real_corpus.truncate("aaa bbb ccc", 6) == "aaa"
    assert real_corpus.truncate("abcdefgh", 3) == "abc"  # one long word: a hard cut
    assert real_corpus.truncate(" abcdefgh", 3) == " ab"  # no space after the start either


def test_command_line_writes_the_same_files(tmp_path, monkeypatch):
    _, direct = build(tmp_path, monkeypatch)  # the module's own shares
    output = str(tmp_path / "cli")
    command = [sys.executable, "-m", "toxjax.datasets.real_corpus_main"]
    args = [f"--source={tmp_path / 'source'}", f"--output={output}"]
    result = subprocess.run(command + args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert all_files(output) == all_files(direct)
    with open(os.path.join(output, "manifest.json")) as f:
        written = json.load(f)
    # It prints the counts and the skips.
    assert json.loads(result.stdout) == {"counts": written["counts"], "skipped": written["skipped"]}
    extra = subprocess.run(command + args + ["extra"], capture_output=True, text=True, timeout=300)
    assert extra.returncode != 0 and "unknown arguments ['extra']" in extra.stderr


# ----- the packaged data -----


def manifest_problems(directory):
    """How the files of a built directory disagree with its manifest.json (sha256 and counts)."""
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    files, counts = all_files(directory), manifest["counts"]
    problems = [
        f"{n}: missing or extra" for n in set(files) ^ {*manifest["sha256"], "manifest.json"}
    ]
    problems += [
        f"{name}: sha256"
        for name, digest in manifest["sha256"].items()
        if name in files and hashlib.sha256(files[name]).hexdigest() != digest
    ]
    by_source = {}
    for record in read_corpus(directory):
        by_source[record["source"]] = by_source.get(record["source"], 0) + 1
    found = {
        "corpus": by_source,
        "heldout_clean": len(read_jsonl(os.path.join(directory, real_corpus.HELDOUT_CLEAN_FILE))),
        "cloze": len(read_jsonl(os.path.join(directory, real_corpus.CLOZE_FILE))),
        "rtp": {
            part: len(read_jsonl(os.path.join(directory, name)))
            for part, name in real_corpus.RTP_FILES.items()
        },
        "detection": {},
        "judge_train": {},
    }
    for record in read_jsonl(os.path.join(directory, real_corpus.JUDGE_TRAIN_FILE)):
        entry = found["judge_train"].setdefault(record["source"], {"examples": 0, "positive": 0})
        entry["examples"] += 1
        entry["positive"] += record["label"]
    for task in counts["detection"]:
        rows = read_jsonl(os.path.join(directory, real_corpus.detection_file(task)))
        labels = [r["label"] for r in rows]
        found["detection"][task] = {"examples": len(labels), "positive": sum(labels)}
    problems += [f"counts[{key!r}]" for key in counts if counts[key] != found.get(key)]
    return problems


def test_packaged_data_matches_its_manifest():
    """Every packaged file is the one the manifest hashed, and the counts are the files': a
    hand-edited asset fails here (rebuild it with toxjax.datasets.real_corpus_main instead)."""
    assert manifest_problems(real_corpus.PACKAGED_DIR) == []
    with open(real_corpus.packaged_path("manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    assert set(manifest["counts"]["detection"]) == {"paradetox", "tweets", "wikipedia"}
    judge = manifest["counts"]["judge_train"]
    assert set(judge) == {"civil_comments_toxic", "davidson_tweets", "paradetox", "wikipedia_talk"}
    positives = sum(c["positive"] for c in judge.values())
    negatives = sum(c["examples"] - c["positive"] for c in judge.values())
    assert min(positives, negatives) > 3000  # both classes, from several sources
    assert [s["folder"] for s in manifest["sources"]] == [s.folder for s in real_corpus.SOURCES]


def test_manifest_check_catches_hand_edits(tmp_path, monkeypatch):
    _, output = build(tmp_path, monkeypatch, **MIXED)
    assert manifest_problems(output) == []
    cloze = os.path.join(output, real_corpus.CLOZE_FILE)
    with open(cloze, "a", encoding="utf-8") as f:
        f.write('{"context": "added by hand", "target": "word"}\n')
    assert manifest_problems(output) == ["cloze.jsonl: sha256", "counts['cloze']"]
    os.remove(os.path.join(output, "licenses", "gutenberg.txt"))
    assert "licenses/gutenberg.txt: missing or extra" in manifest_problems(output)
