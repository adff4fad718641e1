"""What a right answer says (``grammar.Exchange.key``), for every kind of question of both mixes: words in a row of
the corpus's own answer, so the corpus's reply is right by its own key; the computed part (the sum's last number,
"is" and its result; the new time; the letters in order), never words the question holds in a row; none for
greetings."""

import random

from duplex.bench.turntaking.score import holds, said_words
from duplex.data.synth.grammar import exchange, exchange_v2, fact_key, number_words

KNOWN = ("arithmetic", "dates", "time", "spelling", "facts")


def _exchanges(make, n=3000):
    rng = random.Random(5)
    for _ in range(n):
        ex = make(rng)
        yield ex
        if ex.follow_up is not None:
            yield ex.follow_up(rng)


def test_every_known_answer_has_a_key_its_own_reply_holds_and_greetings_have_none():
    seen = set()
    for make in (exchange, exchange_v2):
        for ex in _exchanges(make):
            seen.add(ex.topic)
            if ex.topic == "greeting":
                assert ex.key is None, ex
                continue
            assert ex.topic in KNOWN and ex.key, ex
            assert holds(said_words(ex.answer), list(ex.key)), ex
    assert seen == {*KNOWN, "greeting"}


def test_a_sums_key_is_its_restated_end_and_result_so_restating_the_question_is_not_an_answer():
    for make in (exchange, exchange_v2):
        for ex in _exchanges(make):
            if ex.topic == "arithmetic" and (" plus " in ex.question or " minus " in ex.question
                                             or " times " in ex.question):
                assert "is" in ex.key and ex.key[-1] == ex.answer.split()[-1], ex
                # the question's own words in its own order never hold the key
                assert not holds(said_words(ex.question), list(ex.key)), ex
    assert not holds(said_words("two plus zero is zero"), ["zero", "is", *number_words(2).split()])
    assert holds(said_words("well, two plus 0 equals 2"), ["zero", "is", "two"])


def test_a_facts_key_is_the_first_run_of_its_own_words():
    assert fact_key("how many legs does a spider have", "a spider has eight legs") == ("eight",)
    assert fact_key("what is the boiling point of water", "water boils at one hundred degrees") == ("one", "hundred")
    assert fact_key("what do you use to write", "you write with a pen or a pencil") == ("pen",)


def test_the_v1_mix_draws_the_same_exchanges_as_before_keys():
    """The key is computed, never drawn: the corpus of a seed is the conversation it was (its questions and
    answers from the same random draws)."""
    rng = random.Random(0)
    got = [(ex.question, ex.answer) for ex in (exchange(rng) for _ in range(4))]
    assert got[0][0] and len({q for q, _ in got}) > 1
    again = random.Random(0)
    assert got == [(ex.question, ex.answer) for ex in (exchange(again) for _ in range(4))]
