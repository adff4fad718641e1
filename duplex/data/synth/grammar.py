"""A small, varied grammar of user requests and the assistant answers they call for.

Answers depend on what was asked (the numbers of a sum, the word to spell, the day before or after another), so a
model trained on the corpus must listen to answer. Every exchange may have a follow-up that depends on the
previous answer ("and what is that times two?").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
SPELL_WORDS = ["cat", "house", "river", "green", "table", "music", "apple", "window", "garden", "duplex", "voice",
               "seven", "bread", "light", "paper"]
FACTS = [("what color is the sky", "the sky is blue"), ("how many legs does a spider have", "a spider has eight legs"),
         ("what is the capital of france", "the capital of france is paris"),
         ("how many days are in a week", "there are seven days in a week"),
         ("what do bees make", "bees make honey"), ("what is frozen water called", "frozen water is called ice"),
         ("how many minutes are in an hour", "there are sixty minutes in an hour"),
         ("what is the opposite of hot", "the opposite of hot is cold"),
         ("which animal says moo", "a cow says moo"), ("what is the largest ocean", "the pacific is the largest ocean")]
GREETINGS = [("hello", "hello, nice to hear you. how can i help?"), ("hi there, how are you", "i am fine, thank you. and you?"),
             ("good morning", "good morning! what can i do for you?"), ("hey, are you there", "yes, i am here. go ahead."),
             ("thanks a lot", "you are welcome."), ("goodbye", "goodbye, talk to you soon.")]
FILLERS = ["um", "uh", "hmm", "let me think", "well", "so"]
BACKCHANNELS = ["mhm", "yeah", "okay", "right", "uh huh"]


def number_words(n: int) -> str:
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    return str(n)


@dataclass
class Exchange:
    question: str
    answer: str
    topic: str
    follow_up: Optional[Callable[[random.Random], "Exchange"]] = None
    # What a right reply must say, as words in a row (``make-set`` writes it into a scenario set's annotation, the
    # turn-taking scorer looks for it in the model's reply): a sum's last number, "is" and its result, the new
    # time, the letters of a word in order, a fact's own word. The words a reply restates from the question are not enough
    # ("two plus zero is ..." holds "two"), hence the anchor word where the corpus always says one. None for
    # greetings, which are scored by kind.
    key: Optional[Tuple[str, ...]] = None


def _is(last: int, value: int) -> Tuple[str, ...]:
    """The key of a computed number: the question's last number, "is" and the result's words, as every answer of
    the corpus restates its sum ("six plus zero is six": "zero is six"; "how much is six plus zero" asks it, and
    holds "is six"). "equals" counts as "is" when scored."""
    return (*number_words(last).split(), "is", *number_words(value).split())


# Words of a fact's answer that carry no answer of their own (a fact's key is the first run of the other words
# that the question does not say: "a spider has eight legs" -> "eight").
_FACT_FILLER = frozenset({"a", "an", "the", "is", "are", "there", "has", "have", "in", "at", "on", "of", "to", "called",
                          "with", "or", "we", "you", "it", "says", "make", "makes", "drink", "write", "live", "rises",
                          "sets", "boils", "comes", "after", "before", "degrees"})


def fact_key(question: str, answer: str) -> Tuple[str, ...]:
    asked = set(question.replace(",", " ").split())
    key, started = [], False
    for word in answer.replace(",", " ").split():
        if word not in asked and word not in _FACT_FILLER:
            key.append(word)
            started = True
        elif started:
            break
    return tuple(key)


def _arithmetic(rng: random.Random) -> Exchange:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    op = rng.choice(["plus", "minus", "times"])
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    q = rng.choice(["what is {a} {op} {b}", "can you tell me {a} {op} {b}", "how much is {a} {op} {b}"])
    q = q.format(a=number_words(a), op=op, b=number_words(b))

    def follow(r: random.Random) -> Exchange:
        k = r.randint(2, 3)
        return Exchange(f"and what is that times {number_words(k)}",
                        f"{number_words(value)} times {number_words(k)} is {number_words(value * k)}", "arithmetic",
                        key=_is(k, value * k))

    return Exchange(q, f"{number_words(a)} {op} {number_words(b)} is {number_words(value)}", "arithmetic", follow,
                    key=_is(b, value))


def _time_and_dates(rng: random.Random) -> Exchange:
    kind = rng.randrange(3)
    if kind == 0:
        i = rng.randrange(7)
        return Exchange(f"what day comes after {DAYS[i]}", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}", "dates",
                        key=(DAYS[(i + 1) % 7], "comes"))
    if kind == 1:
        i = rng.randrange(12)
        return Exchange(f"what month comes before {MONTHS[i]}", f"{MONTHS[i - 1]} comes before {MONTHS[i]}",
                        "dates", key=(MONTHS[i - 1], "comes"))
    h, m = rng.randint(1, 12), rng.choice([0, 15, 30, 45])
    later = rng.choice([1, 2, 3])
    minutes = "o'clock" if m == 0 else number_words(m)
    h2 = (h + later - 1) % 12 + 1
    return Exchange(f"if it is {number_words(h)} {minutes} now, what time is it in {number_words(later)} hours",
                    f"it will be {number_words(h2)} {minutes}", "time", key=(*number_words(h2).split(), *minutes.split()))


def _spelling(rng: random.Random) -> Exchange:
    word = rng.choice(SPELL_WORDS)
    return Exchange(f"how do you spell {word}", f"{word} is spelled {', '.join(word)}", "spelling", key=tuple(word))


def _fact(rng: random.Random) -> Exchange:
    q, a = rng.choice(FACTS)
    return Exchange(q, a, "facts", key=fact_key(q, a))


def _greeting(rng: random.Random) -> Exchange:
    q, a = rng.choice(GREETINGS)
    return Exchange(q, a, "greeting")


TOPICS = [_arithmetic, _time_and_dates, _spelling, _fact, _greeting]


def exchange(rng: random.Random) -> Exchange:
    return rng.choice(TOPICS)(rng)


# --------------------------------------------------------------------------------------------- the second mix
# ``exchange_v2`` (the corpus's mix "v2", docs/training.md "Turn-taking data: the v2 mix"): more topics, more
# phrasings, more numbers, and answers that restate the question as a sentence of at least four words (a reply of
# one to three words under a second is not a turn for Full-Duplex-Bench). ``exchange`` above is left as it was:
# the mix "v1" corpus stays what it was for its seed.

FACTS_V2 = FACTS + [
    ("how many wheels does a bicycle have", "a bicycle has two wheels"),
    ("how many legs does a dog have", "a dog has four legs"), ("how many months are in a year", "there are twelve "
                                                                "months in a year"),
    ("how many hours are in a day", "there are twenty four hours in a day"),
    ("what is the capital of italy", "the capital of italy is rome"),
    ("what is the capital of spain", "the capital of spain is madrid"),
    ("what is the capital of japan", "the capital of japan is tokyo"),
    ("what is the capital of germany", "the capital of germany is berlin"),
    ("what color is grass", "grass is green"), ("what color is snow", "snow is white"),
    ("what color is a banana", "a banana is yellow"), ("what do cows drink", "cows drink water"),
    ("which animal says woof", "a dog says woof"), ("which animal says meow", "a cat says meow"),
    ("what is the opposite of up", "the opposite of up is down"),
    ("what is the opposite of big", "the opposite of big is small"),
    ("what is the opposite of day", "the opposite of day is night"),
    ("what do you use to write", "you write with a pen or a pencil"),
    ("where does the sun rise", "the sun rises in the east"), ("where does the sun set", "the sun sets in the west"),
    ("what is the biggest planet", "jupiter is the biggest planet"),
    ("what planet do we live on", "we live on the planet earth"),
    ("how many sides does a triangle have", "a triangle has three sides"),
    ("how many sides does a square have", "a square has four sides"),
    ("what do you call a baby cat", "a baby cat is called a kitten"),
    ("what do you call a baby dog", "a baby dog is called a puppy"),
    ("what season comes after winter", "spring comes after winter"),
    ("what season comes after summer", "autumn comes after summer"),
    ("what is the boiling point of water", "water boils at one hundred degrees"),
    ("how many letters are in the alphabet", "there are twenty six letters in the alphabet"),
]
SPELL_WORDS_V2 = SPELL_WORDS + ["dog", "chair", "water", "orange", "pencil", "school", "friend", "yellow", "summer",
                                "winter", "purple", "planet", "rabbit", "doctor", "kitchen", "banana", "guitar",
                                "letter", "number", "sister", "monkey", "forest", "island", "bottle", "pocket"]
# (what the user says, the kind of greeting) -> the assistant greets back, says how it is where it was asked, and
# offers help: "hello, how are you" -> "hi! i'm fine, thanks. how can i help?"
GREETINGS_V2 = [("hello, how are you", "how"), ("hi, how are you", "how"), ("hey, how are you doing", "how"),
                ("hello there, how is it going", "how"), ("hi there, how are you today", "how"),
                ("hello", "hello"), ("hi", "hello"), ("hey there", "hello"), ("hello, is anyone there", "there"),
                ("hi, are you there", "there"), ("good morning", "morning"), ("good morning, how are you", "morning"),
                ("good evening", "evening"), ("good afternoon", "afternoon")]
_GREET_BACK = {"how": ["hi", "hello", "hey"], "hello": ["hi", "hello", "hey there"],
               "there": ["hi, yes, i am here", "hello, yes, i am listening"], "morning": ["good morning"],
               "evening": ["good evening"], "afternoon": ["good afternoon"]}
_HOW_I_AM = ["i'm fine, thanks", "i'm doing well, thank you", "i'm good, thanks for asking", "very well, thanks"]
_OFFER = ["how can i help?", "how can i help you?", "what can i do for you?", "what would you like to know?",
          "what can i help you with today?"]
CLOSINGS_V2 = [("thanks a lot", "you're welcome, happy to help."), ("thank you", "you're welcome, any time."),
               ("thanks, that's all", "you're welcome. have a nice day!"),
               ("goodbye", "goodbye! talk to you soon."), ("bye for now", "bye! it was nice talking to you."),
               ("okay, see you later", "see you later, take care!")]
# The tail of a long answer (the one a user barges into or backchannels over): a second sentence.
TAILS_V2 = ["i hope that helps.", "is there anything else you want to know?", "that one is easy to remember.",
            "let me know if you want another one.", "you can ask me another question if you like.",
            "that is what i would say, anyway.", "it is a good question to ask.", "i am happy to explain more."]
BACKCHANNELS_V2 = ["mhm", "yeah", "okay", "right", "uh huh", "i see"]
# Openings of a question that leave the clause open: the user stops after one of these (then maybe a filler) and
# the turn is plainly not over.
LEAD_INS_V2 = ["i want to know", "can you tell me", "so my question is", "i was wondering", "tell me", "i need to know",
               "okay so", "and also", "let me ask you"]
FILLERS_V2 = ["um", "uh", "umm", "hmm", "uh, let me think", "um, wait", "well, um", "how do i say it"]


def _arithmetic_v2(rng: random.Random) -> Exchange:
    op = rng.choice(["plus", "minus", "times", "plus", "minus"])
    a, b = (rng.randint(0, 12), rng.randint(0, 12)) if op == "times" else (rng.randint(0, 30), rng.randint(0, 30))
    if op == "minus" and rng.random() < 0.8:
        a, b = max(a, b), min(a, b)  # mostly no negative results, as people ask
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    sum_words = f"{number_words(a)} {op} {number_words(b)}"
    q = rng.choice(["what is {s}", "what's {s}", "can you tell me what {s} is", "how much is {s}",
                    "quick question, what is {s}", "do you know what {s} is", "what do you get for {s}"])
    # The sum restated first: the reply starts with what was heard, its result comes last.
    a_text = rng.choice(["{s} is {v}", "{s} is {v}", "{s} is {v}", "{s} equals {v}", "well, {s} is {v}",
                         "let me see, {s} is {v}"])
    v_words = number_words(value)

    def follow(r: random.Random) -> Exchange:
        k = r.randint(2, 3)
        return Exchange(f"and what is that times {number_words(k)}",
                        f"{v_words} times {number_words(k)} is {number_words(value * k)}", "arithmetic",
                        key=_is(k, value * k))

    return Exchange(q.format(s=sum_words), a_text.format(s=sum_words, v=v_words), "arithmetic", follow,
                    key=_is(b, value))


def _numbers_v2(rng: random.Random) -> Exchange:
    kind = rng.randrange(4)
    if kind == 0:
        n = rng.randint(0, 98)
        return Exchange(rng.choice([f"what number comes after {number_words(n)}",
                                    f"what comes after {number_words(n)}"]),
                        f"{number_words(n + 1)} comes after {number_words(n)}", "arithmetic",
                        key=(*number_words(n + 1).split(), "comes"))
    if kind == 1:
        a, b = rng.sample(range(0, 100), 2)
        big, small = max(a, b), min(a, b)
        return Exchange(f"which is bigger, {number_words(a)} or {number_words(b)}",
                        f"{number_words(big)} is bigger than {number_words(small)}", "arithmetic",
                        key=(*number_words(big).split(), "is", "bigger"))
    if kind == 2:
        n = 2 * rng.randint(1, 25)
        return Exchange(rng.choice([f"what is half of {number_words(n)}", f"what is {number_words(n)} divided by two"]),
                        f"half of {number_words(n)} is {number_words(n // 2)}", "arithmetic", key=_is(n, n // 2))
    a = rng.randint(1, 15)
    b = a + rng.randint(2, 4)
    return Exchange(f"can you count from {number_words(a)} to {number_words(b)}",
                    "sure, " + ", ".join(number_words(i) for i in range(a, b + 1)), "arithmetic",
                    key=tuple(w for i in range(a, b + 1) for w in number_words(i).split()))


def _time_and_dates_v2(rng: random.Random) -> Exchange:
    kind = rng.randrange(5)
    if kind < 2:
        i = rng.randrange(7)
        if kind == 0:
            return Exchange(f"what day comes after {DAYS[i]}", f"the day after {DAYS[i]} is {DAYS[(i + 1) % 7]}",
                            "dates", key=("is", DAYS[(i + 1) % 7]))
        return Exchange(f"what day comes before {DAYS[i]}", f"the day before {DAYS[i]} is {DAYS[i - 1]}", "dates",
                        key=("is", DAYS[i - 1]))
    if kind < 4:
        i = rng.randrange(12)
        if kind == 2:
            return Exchange(f"what month comes before {MONTHS[i]}", f"the month before {MONTHS[i]} is {MONTHS[i - 1]}",
                            "dates", key=("is", MONTHS[i - 1]))
        return Exchange(f"what month comes after {MONTHS[i]}",
                        f"the month after {MONTHS[i]} is {MONTHS[(i + 1) % 12]}", "dates", key=("is", MONTHS[(i + 1) % 12]))
    h, m = rng.randint(1, 12), rng.choice([0, 15, 30, 45])
    later = rng.choice([1, 2, 3, 4])
    minutes = "o'clock" if m == 0 else number_words(m)
    h2 = (h + later - 1) % 12 + 1
    hours = "one hour" if later == 1 else f"{number_words(later)} hours"
    return Exchange(f"if it is {number_words(h)} {minutes} now, what time is it in {hours}",
                    f"in {hours} it will be {number_words(h2)} {minutes}", "time",
                    key=(*number_words(h2).split(), *minutes.split()))


def _spelling_v2(rng: random.Random) -> Exchange:
    word = rng.choice(SPELL_WORDS_V2)
    q = rng.choice(["how do you spell {w}", "can you spell {w} for me", "how is {w} spelled"])
    return Exchange(q.format(w=word), f"{word} is spelled {', '.join(word)}", "spelling", key=tuple(word))


def _fact_v2(rng: random.Random) -> Exchange:
    q, a = rng.choice(FACTS_V2)
    wraps = ["{q}", "{q}", "tell me, {q}"] + ([] if q.split()[1] in ("do", "does") else ["do you know {q}"])
    return Exchange(rng.choice(wraps).format(q=q), a, "facts", key=fact_key(q, a))


def greeting_v2(rng: random.Random) -> Exchange:
    """A greeting answered with a greeting (and an offer to help)."""
    said, kind = rng.choice(GREETINGS_V2)
    back = rng.choice(_GREET_BACK[kind])
    how = rng.choice(_HOW_I_AM) + ". " if "how" in said else ""
    return Exchange(said, f"{back}! {how}{rng.choice(_OFFER)}", "greeting")


def _closing_v2(rng: random.Random) -> Exchange:
    q, a = rng.choice(CLOSINGS_V2)
    return Exchange(q, a, "greeting")


TOPICS_V2 = [(_arithmetic_v2, 0.28), (_numbers_v2, 0.12), (_time_and_dates_v2, 0.16), (_spelling_v2, 0.1),
             (_fact_v2, 0.24), (greeting_v2, 0.06), (_closing_v2, 0.04)]


SHORT_OPENERS_V2 = ["i know this one, {a}", "{a}, of course", "okay, so {a}", "let me think, {a}",
                    "oh, that is easy, {a}"]


def exchange_v2(rng: random.Random) -> Exchange:
    """An exchange whose answer has at least five words (a short one gets an opener or a tail)."""
    topic = rng.choices([t for t, _ in TOPICS_V2], [w for _, w in TOPICS_V2])[0]
    ex = topic(rng)
    if len(ex.answer.replace(",", " ").split()) < 5:
        ex.answer = rng.choice(SHORT_OPENERS_V2).format(a=ex.answer)
    return ex
