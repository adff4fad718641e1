"""The input buffer is held near its target depth (issue 23, deliverable 3): after a stall, or with a client whose
clock runs fast, the backlog would otherwise stay at the buffer's size for the rest of the call (800 ms between the
user speaking and the model hearing); a burst that drains by itself loses nothing."""

import numpy as np

from duplex.serving.options import ServerOptions
from duplex.serving.protocol import FRAME_SIZE, SAMPLE_RATE, SessionOptions
from duplex.serving.session import Session


def raw_session(**limits) -> Session:
    return Session(connection=None, slot=0, options=SessionOptions(raw=True), frame_size=FRAME_SIZE,
                   sample_rate=SAMPLE_RATE, server_options=ServerOptions(**limits))


def send(session: Session, frames: int, start: int) -> None:
    """``frames`` frames whose first sample is their number (to tell which ones the model got)."""
    pcm = np.zeros(frames * FRAME_SIZE, np.float32)
    pcm[::FRAME_SIZE] = (np.arange(start, start + frames) % 30000) / 32768
    session._frames_from(pcm)


def number(frame: np.ndarray) -> int:
    return int(round(frame[0] * 32768))


def test_a_standing_backlog_after_a_stall_is_dropped_down_to_the_target():
    options = ServerOptions()
    session = raw_session()
    sent = 0
    send(session, options.input_buffer_frames - 1, sent)  # a stall: the client's frames piled up meanwhile
    sent += options.input_buffer_frames - 1
    depths = []
    for _ in range(3 * options.input_drain_ticks):  # then one frame in, one frame out per tick, as in real time
        send(session, 1, sent)
        sent += 1
        depths.append(len(session.frames))
        session.next_frame()
    assert depths[0] == options.input_buffer_frames
    # Within one window the backlog is back at the target, and it stays there.
    assert max(depths[options.input_drain_ticks + 1:]) <= options.input_target_frames + 1
    assert session.stats.drained_in == options.input_buffer_frames - options.input_target_frames
    assert session.stats.dropped_in == session.stats.drained_in  # counted with the other input drops


def test_the_frames_kept_are_the_newest_in_order():
    session = raw_session(input_drain_ticks=4, input_target_frames=1)
    send(session, 8, 0)
    # The 4th tick ends the window: the depth never went below 5 in it, so 4 frames stood above the target: frames
    # 3-6 are dropped, the tick takes frame 7, and what comes next is heard at once.
    heard = [number(session.next_frame()) for _ in range(4)]
    send(session, 2, 8)
    heard += [number(session.next_frame()) for _ in range(3)]
    assert heard == [0, 1, 2, 7, 8, 9, 0]  # then an underrun (silence)
    assert session.stats.drained_in == 4


def test_a_burst_that_drains_by_itself_loses_nothing():
    options = ServerOptions()
    session = raw_session()
    sent = heard = 0
    for tick in range(4 * options.input_drain_ticks):
        if tick % 10 == 0:
            send(session, 5, sent)  # network jitter: nothing for a while, then several frames at once
            sent += 5
        if session.frames:
            heard += 1
        session.next_frame()
    assert session.stats.drained_in == 0 and session.stats.dropped_in == 0
    assert heard == sent


def test_a_frame_heard_later_than_the_target_is_counted():
    """``late_input``: ticks whose frame had waited behind more than the target depth (the user heard more than
    that many frames late); what a soak reads to say whether input latency stayed within its target."""
    session = raw_session(input_target_frames=2)
    send(session, 4, 0)
    session.next_frame()  # 3 frames arrived after it: heard 3 frames late
    session.next_frame()  # 2: within the target
    assert session.stats.late_input == 1
    send(session, 1, 4)
    session.next_frame()
    assert session.stats.late_input == 1
