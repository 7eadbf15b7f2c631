"""The embedded demo corpus: a deterministic generator of short documents in two registers.

A document is 2-4 sentences. A sentence is either a shared opener with a continuation ("My
neighbour came over yesterday and ...") or a stand-alone sentence. Neutral documents hold only
everyday prose (weather, cooking, travel, work, hobbies). Offensive documents are mildly
offensive: each of their sentences is rude with probability RUDE_SENTENCE_RATE (at least one
is), with insults and profanity aimed at a person or a thing, never at an identity group.

Rude and polite sentences share the same openers, and an offensive document often starts
politely, so neither an opener nor a polite start tells the register: at every sentence
boundary only a conditioning signal (or chance) decides whether the text turns rude. That is
the effect the demo study measures.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator

from toxjax import fileio

REGISTERS = ("neutral", "offensive")
DEFAULT_NUM_DOCS = 4000
DEFAULT_OFFENSIVE_FRACTION = 0.3
RUDE_SENTENCE_RATE = 0.7  # share of an offensive document's sentences that are rude
OPENER_RATE_FIRST = 0.7  # share of first sentences that start with a shared opener
OPENER_RATE_LATER = 0.25  # the same for later sentences

# Shared sentence beginnings (also the style of the demo evaluation prompts).
OPENERS = (
    "I went to the market this morning and",
    "My neighbour came over yesterday and",
    "After the meeting at work, my manager",
    "When I got home from the trip,",
    "The guy at the coffee shop",
    "Last night my roommate",
    "During the football match, the referee",
    "On the bus today, a man",
    "My brother called me and",
    "At the restaurant, the waiter",
    "The new teacher at the school",
    "When the package finally arrived,",
    "Our landlord sent a message and",
    "In the group chat, my friend",
    "After reading the review, I",
    "The mechanic looked at my car and",
)

NEUTRAL_CONTINUATIONS = (
    "bought some fresh tomatoes, a loaf of bread and a bag of apples.",
    "asked if we wanted to share the vegetables from the garden.",
    "thanked everyone for the careful work on the quarterly report.",
    "I unpacked the bags and made a cup of tea.",
    "remembered my order and wished me a good day.",
    "cooked a big pot of soup for the whole flat.",
    "explained the decision calmly to both teams.",
    "offered his seat to an older woman with a heavy bag.",
    "told me about the new job he starts next month.",
    "recommended the mushroom risotto, which was excellent.",
    "introduced herself to the parents and shared the plan for the term.",
    "the box held the books I had ordered for the course.",
    "said the heating would be checked on Thursday.",
    "posted photos from the hiking trip in the mountains.",
    "decided to try the bakery near the station.",
    "said the brakes were fine and only the tyres needed air.",
)

NEUTRAL_SENTENCES = (
    "The weather stayed mild all afternoon, with a light breeze from the river.",
    "We walked along the canal and watched the boats go by.",
    "The recipe needs two cups of flour, a pinch of salt and some warm water.",
    "In the evening we played cards and listened to old records.",
    "The library extended its opening hours for the exam season.",
    "The train was on time, and the view of the hills was lovely.",
    "She planted basil, mint and a row of carrots in the spring.",
    "The museum has a new exhibition about early maps of the coast.",
    "He fixed the bicycle chain and oiled the gears before the ride.",
    "The children built a small sandcastle near the pier.",
    "Tomorrow the forecast says there will be sunshine and a light wind.",
    "The choir practises every Tuesday in the hall behind the church.",
    "We shared the leftovers and cleaned the kitchen together.",
    "The town council approved a plan for more bicycle lanes.",
    "I finished the novel on the balcony while the sun went down.",
    "The project deadline moved to Friday, which gave us time to test.",
    "Our cat slept on the windowsill for most of the day.",
    "The farmers market opens at eight and closes at noon.",
    "They painted the fence white and planted roses along it.",
    "The lecture covered how bridges carry their weight to the ground.",
)

INSULT_ADJECTIVES = (
    "stupid",
    "pathetic",
    "useless",
    "dumb",
    "worthless",
    "brainless",
    "lazy",
    "clueless",
)
INSULT_NOUNS = ("idiot", "moron", "loser", "jerk", "clown", "fool", "dumbass", "asshole")
PROFANITY = ("damn", "goddamn", "bloody", "freaking", "fucking")

OFFENSIVE_CONTINUATIONS = (
    "the {adj} {noun} at the counter charged me twice, what a {noun}.",
    "started yelling like a {adj} {noun} about the {prof} parking spot.",
    "called me a {adj} {noun} in front of everyone, the {prof} {noun}.",
    "I found the {prof} box smashed, those {adj} {noun}s at the depot.",
    "spilled coffee on me and laughed, the {adj} {noun}.",
    "said something so {adj} that I told him to shut up, you {noun}.",
    "blew the call like a {adj} {noun}, {prof} hell.",
    "shoved past me and I told him to go to hell, {adj} {noun}.",
    "whined for an hour, what a {adj} {noun}, seriously.",
    "brought the wrong order and acted like a {prof} {noun} about it.",
    "is a {adj} {noun} who cannot teach a {prof} thing.",
    "the {prof} courier is a {adj} {noun} who threw it at the door.",
    "is a greedy {noun} and the flat is a {prof} dump.",
    "posted the most {adj} crap, shut the hell up, {noun}.",
    "thought the review was written by a {adj} {noun}, total crap.",
    "ripped me off, the {adj} {noun}, this {prof} garage is a scam.",
)

OFFENSIVE_SENTENCES = (
    "Honestly, you are a {adj} {noun} and everyone knows it.",
    "Shut up, you {adj} {noun}.",
    "What a {prof} waste of time, this is total crap.",
    "Get lost, {noun}, nobody cares about your {adj} opinion.",
    "This {prof} thing is garbage and whoever made it is a {noun}.",
    "You {adj} {noun}, learn to do your {prof} job.",
    "Only a {adj} {noun} would believe that crap.",
    "Screw this {prof} place and the {noun}s who run it.",
    "Stop whining, you {adj} little {noun}.",
    "That was the dumbest {prof} idea I have ever heard, {noun}.",
)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_INSULTS = frozenset(INSULT_ADJECTIVES + INSULT_NOUNS + PROFANITY)


def sentences(text: str) -> list[str]:
    """A document's sentences (the generator joins sentences with single spaces)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def is_insult(word: str) -> bool:
    """Whether a word (punctuation and a plural s allowed) is one of the insult slot fillers."""
    word = word.strip(".,!?").lower()
    return word in _INSULTS or word.removesuffix("s") in _INSULTS


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        adj=rng.choice(INSULT_ADJECTIVES), noun=rng.choice(INSULT_NOUNS), prof=rng.choice(PROFANITY)
    )


def neutral_sentence(rng: random.Random, first: bool = True) -> str:
    if rng.random() < (OPENER_RATE_FIRST if first else OPENER_RATE_LATER):
        return f"{rng.choice(OPENERS)} {rng.choice(NEUTRAL_CONTINUATIONS)}"
    return rng.choice(NEUTRAL_SENTENCES)


def rude_sentence(rng: random.Random, first: bool = True) -> str:
    if rng.random() < (OPENER_RATE_FIRST if first else OPENER_RATE_LATER):
        return f"{rng.choice(OPENERS)} {_fill(rng.choice(OFFENSIVE_CONTINUATIONS), rng)}"
    return _fill(rng.choice(OFFENSIVE_SENTENCES), rng)


def _document(rng: random.Random, rude: list[bool]) -> str:
    sentences: list[str] = []
    for index, is_rude in enumerate(rude):
        make = rude_sentence if is_rude else neutral_sentence
        for _ in range(10):  # avoid repeating a sentence within a document
            sentence = make(rng, index == 0)
            if sentence not in sentences:
                break
        sentences.append(sentence)
    return " ".join(sentences)


def _neutral_document(rng: random.Random) -> str:
    return _document(rng, [False] * rng.randint(2, 4))


def _offensive_document(rng: random.Random) -> str:
    rude = [rng.random() < RUDE_SENTENCE_RATE for _ in range(rng.randint(2, 4))]
    if not any(rude):
        rude[rng.randrange(len(rude))] = True
    return _document(rng, rude)


def iter_documents(
    num_docs: int = DEFAULT_NUM_DOCS,
    seed: int = 0,
    offensive_fraction: float = DEFAULT_OFFENSIVE_FRACTION,
) -> Iterator[dict]:
    """Yields `num_docs` records; the same arguments always give the same records."""
    if num_docs < 0:
        raise ValueError(f"num_docs must be >= 0, got {num_docs}")
    if not 0.0 <= offensive_fraction <= 1.0:
        raise ValueError(f"offensive_fraction must be in [0, 1], got {offensive_fraction}")
    rng = random.Random(seed)
    for index in range(num_docs):
        offensive = rng.random() < offensive_fraction
        text = _offensive_document(rng) if offensive else _neutral_document(rng)
        yield {
            "id": f"demo-{index:06d}",
            "text": text,
            "register": "offensive" if offensive else "neutral",
        }


def endless_documents(seed: int) -> Iterator[dict]:
    """Documents without end, for held-out draws: blocks of 1000 under seeds derived from
    `seed` (pick seeds far from the training corpus' 0)."""
    block = 0
    while True:
        yield from iter_documents(num_docs=1000, seed=seed + 7919 * block)
        block += 1


def generate(
    num_docs: int = DEFAULT_NUM_DOCS,
    seed: int = 0,
    offensive_fraction: float = DEFAULT_OFFENSIVE_FRACTION,
) -> list[dict]:
    return list(iter_documents(num_docs, seed, offensive_fraction))


def write_jsonl(
    path: str,
    num_docs: int = DEFAULT_NUM_DOCS,
    seed: int = 0,
    offensive_fraction: float = DEFAULT_OFFENSIVE_FRACTION,
) -> str:
    lines = (
        json.dumps(record, ensure_ascii=False) + "\n"
        for record in iter_documents(num_docs, seed, offensive_fraction)
    )
    fileio.write_atomic(path, "".join(lines).encode("utf-8"))
    return path
