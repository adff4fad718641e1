"""A small, varied grammar of user requests and the assistant answers they call for.

Answers depend on what was asked (the numbers of a sum, the word to spell, the day before or after another), so a
model trained on the corpus must listen to answer. Every exchange may have a follow-up that depends on the
previous answer ("and what is that times two?").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

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


def _arithmetic(rng: random.Random) -> Exchange:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    op = rng.choice(["plus", "minus", "times"])
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    q = rng.choice(["what is {a} {op} {b}", "can you tell me {a} {op} {b}", "how much is {a} {op} {b}"])
    q = q.format(a=number_words(a), op=op, b=number_words(b))

    def follow(r: random.Random) -> Exchange:
        k = r.randint(2, 3)
        return Exchange(f"and what is that times {number_words(k)}",
                        f"{number_words(value)} times {number_words(k)} is {number_words(value * k)}", "arithmetic")

    return Exchange(q, f"{number_words(a)} {op} {number_words(b)} is {number_words(value)}", "arithmetic", follow)


def _time_and_dates(rng: random.Random) -> Exchange:
    kind = rng.randrange(3)
    if kind == 0:
        i = rng.randrange(7)
        return Exchange(f"what day comes after {DAYS[i]}", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}", "dates")
    if kind == 1:
        i = rng.randrange(12)
        return Exchange(f"what month comes before {MONTHS[i]}", f"{MONTHS[i - 1]} comes before {MONTHS[i]}",
                        "dates")
    h, m = rng.randint(1, 12), rng.choice([0, 15, 30, 45])
    later = rng.choice([1, 2, 3])
    minutes = "o'clock" if m == 0 else number_words(m)
    h2 = (h + later - 1) % 12 + 1
    return Exchange(f"if it is {number_words(h)} {minutes} now, what time is it in {number_words(later)} hours",
                    f"it will be {number_words(h2)} {minutes}", "time")


def _spelling(rng: random.Random) -> Exchange:
    word = rng.choice(SPELL_WORDS)
    return Exchange(f"how do you spell {word}", f"{word} is spelled {', '.join(word)}", "spelling")


def _fact(rng: random.Random) -> Exchange:
    q, a = rng.choice(FACTS)
    return Exchange(q, a, "facts")


def _greeting(rng: random.Random) -> Exchange:
    q, a = rng.choice(GREETINGS)
    return Exchange(q, a, "greeting")


TOPICS = [_arithmetic, _time_and_dates, _spelling, _fact, _greeting]


def exchange(rng: random.Random) -> Exchange:
    return rng.choice(TOPICS)(rng)
