"""The text stream built from word timings follows Kyutai's rules (../shared/spec/training.md §2)."""

from duplex.data.text_stream import text_stream

PAD, EPAD = 3, 0
PIECES = {"hi": [10], "there": [11, 12], "everybody": [13, 14, 15, 16], "a": [17], "b": [18]}


def stream(words, frames=12):
    return text_stream(words, frames, PIECES.__getitem__, 12.5)  # Moshi's frame rate


def test_tokens_go_one_per_frame_from_the_start_frame_with_epad_before_and_pad_between():
    # frame = floor(start * 12.5): 0.16 s -> 2, 0.50 s -> 6
    assert stream([("hi", 0.16, 0.3), ("there", 0.50, 0.7)]) == \
        [PAD, EPAD, 10, PAD, PAD, EPAD, 11, 12, PAD, PAD, PAD, PAD]


def test_a_word_at_frame_zero_has_no_epad_and_a_word_right_after_another_gets_none():
    # "there" starts in the frame after "hi": the frame before it holds a token, not PAD, so no EPAD
    assert stream([("hi", 0.0, 0.08), ("there", 0.08, 0.2)], 5) == [10, 11, 12, PAD, PAD]


def test_a_long_word_is_cut_by_the_next_word_start():
    # "everybody" (4 tokens) from frame 1; "a" starts at frame 3: the last two tokens are dropped
    assert stream([("everybody", 0.08, 0.5), ("a", 0.24, 0.3)], 6) == [EPAD, 13, 14, 17, PAD, PAD]


def test_of_two_words_in_one_frame_only_the_second_is_kept():
    assert stream([("a", 0.25, 0.3), ("b", 0.30, 0.4)], 6) == [PAD, PAD, EPAD, 18, PAD, PAD]


def test_words_are_sorted_and_bad_or_outside_words_dropped():
    words = [("there", 0.5, 0.7), ("hi", 0.16, 0.3), ("a", 0.4, 0.4), ("b", -0.2, 0.1), ("a", 2.0, 2.2)]
    assert stream(words) == [PAD, EPAD, 10, PAD, PAD, EPAD, 11, 12, PAD, PAD, PAD, PAD]


def test_tokens_past_the_segment_end_are_cut():
    assert stream([("everybody", 0.16, 0.5)], 4) == [PAD, EPAD, 13, 14]
