"""PersonaPlex system prompts (docs/kyutai-compat.md, "PersonaPlex"): a voice prompt and a text role prompt, turned
into the frames NVIDIA's ``LMGen.step_system_prompts`` steps through the model before the user speaks.

The procedure, in NVIDIA's order; every frame gives the user's stream the "sine" tokens (the codes of a 440 Hz
tone) and forces the model's own stream:

1. the voice prompt: an audio file read as its first channel at 24 kHz, normalised to -24 LUFS (ITU-R BS.1770-4,
   as ``pyloudnorm``), cut into 1920-sample frames (the last zero-padded), each encoded by a fresh streaming Mimi
   and forced as the model's audio with the text token ``zero_text_code`` (3, PAD); or NVIDIA's voice-embedding
   ``.pt`` (``{"embeddings": [N - 1, 1, 1, dim], "cache": [1, 17, 4]}``): one frame of placeholder tokens, then one
   frame per embedding whose step input is that embedding, after which the token cache is replaced by the saved one;
2. ``silence_frames`` (6: 0.5 s) frames of the "silence" codes with ``zero_text_code``;
3. the text prompt's tokens (``<system> TEXT <system>`` as NVIDIA wraps it), one per frame, with the silence codes;
4. ``silence_frames`` frames as in 2.

The tokens of the sine and silence frames are NVIDIA's constants for the real Mimi (2048-entry codebooks); they are
fields of ``PromptConstants`` so a model on another codec can use its own. Nothing here runs the model: the frames
are data (``PromptFrames``), stepped by ``LMGenerator.step_prompt`` or the engine.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from codec.io.audio import read_audio, resample

from ..errors import PromptError

NVIDIA_SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
NVIDIA_SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
NVIDIA_CODEBOOK_SIZE = 2048  # the real Mimi's codebooks, which NVIDIA's token constants index
SYSTEM_TAG = "<system>"
# NVIDIA's assistant role: the default of its offline runner and web client, and the prompt its README gives for
# Full-Duplex-Bench ("Use this prompt for the QA assistant focused 'User Interruption' evaluation category").
NVIDIA_ASSISTANT_PROMPT = ("You are a wise and friendly teacher. Answer questions or provide advice in a clear and "
                           "engaging way.")


@dataclass(frozen=True)
class PromptConstants:
    """The constants of NVIDIA's prompt frames (``moshi/models/lm.py``: ``SILENCE_TOKENS``, ``SINE_TOKENS``,
    ``LMGen.zero_text_code``, the server's ``audio_silence_frame_cnt = int(0.5 * frame_rate)``, and the -24 LUFS
    of ``load_voice_prompt``)."""

    silence_tokens: Tuple[int, ...] = NVIDIA_SILENCE_TOKENS
    sine_tokens: Tuple[int, ...] = NVIDIA_SINE_TOKENS
    zero_text_code: int = 3
    silence_frames: int = 6
    target_lufs: float = -24.0

    def check(self, cfg) -> None:
        for name in ("silence_tokens", "sine_tokens"):
            tokens = getattr(self, name)
            if len(tokens) != cfg.model_codebooks or not all(0 <= int(t) < cfg.card for t in tokens):
                raise PromptError(f"prompt constants: {name} must be {cfg.model_codebooks} codes in [0, "
                                  f"{cfg.card}) for this model, got {list(tokens)} (NVIDIA's are for Mimi's 2048-entry "
                                  "codebooks: give a small model its own)")
        if not 0 <= self.zero_text_code < cfg.text_card or self.silence_frames < 0:
            raise PromptError("prompt constants: zero_text_code must be a text token and silence_frames >= 0")


NVIDIA_SINE_HZ, NVIDIA_SINE_AMPLITUDE = 440.0, 0.5  # NVIDIA's ``create_sinewave``: one frame, phase 0


def codec_prompt_constants(mimi, num_codebooks: int = 8, frames: int = 25) -> PromptConstants:
    """PromptConstants for a model on another codec than the real Mimi (duplex's default model): the codes that
    codec gives NVIDIA's two prompt frames, as NVIDIA's constants are Mimi's codes of them: an all-zero frame
    ("silence") and one frame of a 440 Hz sine of amplitude 0.5 from phase 0 ("sine"). Each frame is fed
    ``frames`` times (2 s) to a fresh streaming encoder, as a prompt feeds it frame after frame; per codebook the
    code seen most often in the second half is taken (the smallest on a tie): the fine codebooks of silence
    quantize a residual of almost nothing and wander from frame to frame, so no single frame stands for it.
    Deterministic: a function of the codec's weights."""
    size = mimi.frame_size
    t = np.arange(size, dtype=np.float64) / mimi.sample_rate
    sine = (NVIDIA_SINE_AMPLITUDE * np.sin(2 * np.pi * NVIDIA_SINE_HZ * t)).astype(np.float32)
    found = []
    for frame in (np.zeros(size, dtype=np.float32), sine):
        state = mimi.new_encoder_state(1)
        audio = torch.from_numpy(frame).to(mimi.device).view(1, 1, -1)
        with torch.no_grad():
            codes = torch.cat([mimi.encode_step(audio, state, None, num_codebooks) for _ in range(frames)], dim=-1)
        steady = codes[0, :, frames // 2:].long().cpu()  # [num_codebooks, frames - frames // 2]
        found.append(tuple(int(torch.bincount(row).argmax()) for row in steady))
    return PromptConstants(silence_tokens=found[0], sine_tokens=found[1])


@dataclass(frozen=True)
class VoicePrompt:
    """A voice prompt: the codes of a recording (``codes`` int64 [8, N]), or NVIDIA's replayable form (``embeddings``
    [N - 1, dim] and the token ``cache`` [17, 4] saved after its frames)."""

    codes: Optional[torch.Tensor] = None
    embeddings: Optional[torch.Tensor] = None
    cache: Optional[torch.Tensor] = None
    source: str = ""

    def digest(self, h) -> None:
        for t in (self.codes, self.embeddings, self.cache):
            h.update(b"-" if t is None else str(tuple(t.shape)).encode() + t.detach().cpu().contiguous().numpy().tobytes())


@dataclass
class PromptFrames:
    """A system prompt as frames: ``user`` int64 [N, user_codebooks], ``model`` int64 [N, 1 + model_codebooks]
    (text token, then audio codes: forced), ``use_embedding`` bool [N] with ``embedding`` [N, dim] (the step input
    where set), and ``cache`` (NVIDIA's token cache [K, CT]) to put in place after frame ``cache_after`` (0: none).
    ``key`` identifies the content (prompt states are cached by it)."""

    user: torch.Tensor
    model: torch.Tensor
    use_embedding: torch.Tensor
    embedding: torch.Tensor
    cache: Optional[torch.Tensor] = None
    cache_after: int = 0
    key: str = ""
    text_tokens: Tuple[int, ...] = field(default=())
    voice_frames: int = 0  # the frames of the voice prompt, first

    def __len__(self) -> int:
        return self.user.shape[0]

    def to(self, device) -> "PromptFrames":
        return PromptFrames(self.user.to(device), self.model.to(device), self.use_embedding.to(device),
                            self.embedding.to(device), None if self.cache is None else self.cache.to(device),
                            self.cache_after, self.key, self.text_tokens, self.voice_frames)


def wrap_with_system_tags(text: str) -> str:
    """``<system> TEXT <system>``, as NVIDIA's server and offline runner wrap a role prompt (unless already
    wrapped), stripped."""
    cleaned = text.strip()
    if cleaned.startswith(SYSTEM_TAG) and cleaned.endswith(SYSTEM_TAG):
        return cleaned
    return f"{SYSTEM_TAG} {cleaned} {SYSTEM_TAG}"


def text_prompt_tokens(tokenizer, text: Optional[str]) -> Tuple[int, ...]:
    """The token ids of a role prompt as NVIDIA makes them (wrapped, then the SentencePiece ids); () for none."""
    if not text:
        return ()
    return tuple(tokenizer.encode(wrap_with_system_tags(text)))


# ------------------------------------------------------------------------------------------------ loudness
def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: float) -> tuple:
    """RBJ cookbook biquad coefficients (b, a), normalised by a0: the two stages of BS.1770's K-weighting."""
    a = 10 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * fc / rate
    alpha, cos = math.sin(w0) / (2.0 * q), math.cos(w0)
    if kind == "high_shelf":
        b = [a * ((a + 1) + (a - 1) * cos + 2 * math.sqrt(a) * alpha), -2 * a * ((a - 1) + (a + 1) * cos),
             a * ((a + 1) + (a - 1) * cos - 2 * math.sqrt(a) * alpha)]
        den = [(a + 1) - (a - 1) * cos + 2 * math.sqrt(a) * alpha, 2 * ((a - 1) - (a + 1) * cos),
               (a + 1) - (a - 1) * cos - 2 * math.sqrt(a) * alpha]
    else:  # high pass
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        den = [1 + alpha, -2 * cos, 1 - alpha]
    return np.array(b) / den[0], np.array(den) / den[0]


def integrated_loudness(pcm: np.ndarray, rate: int) -> float:
    """Integrated loudness (LUFS) of mono ``pcm``, ITU-R BS.1770-4: K-weighting (a 4 dB shelf at 1.5 kHz, a 38 Hz
    high-pass), 400 ms blocks every 100 ms, an absolute gate at -70 LUFS and a relative one 10 dB below; block
    bounds and counts as ``pyloudnorm`` computes them (NVIDIA's choice)."""
    from scipy.signal import lfilter  # noqa: PLC0415 - scipy takes ~1 s to load; only voice prompts need it

    x = np.asarray(pcm, dtype=np.float64)
    block = 0.4
    if x.ndim != 1 or x.shape[0] < block * rate:
        raise PromptError(f"a voice prompt must be at least {block} s of mono audio to measure its loudness")
    for stage in (_biquad("high_shelf", 4.0, 1 / math.sqrt(2), 1500.0, rate), _biquad("high_pass", 0.0, 0.5, 38.0,
                                                                                        rate)):
        x = lfilter(stage[0], stage[1], x)
    step = 0.25
    count = int(np.round((x.shape[0] / rate - block) / (block * step))) + 1
    z = np.array([np.sum(np.square(x[int(block * j * step * rate):int(block * (j * step + 1) * rate)]))
                  / (block * rate) for j in range(count)])
    with np.errstate(divide="ignore"):
        levels = -0.691 + 10.0 * np.log10(z)
        gated = z[levels >= -70.0]
        relative = -0.691 + 10.0 * np.log10(np.mean(gated)) - 10.0 if gated.size else -np.inf
        kept = z[(levels > relative) & (levels > -70.0)]
        return float(-0.691 + 10.0 * np.log10(np.mean(kept) if kept.size else 0.0))


def normalize_loudness(pcm: np.ndarray, rate: int, target_lufs: float = -24.0) -> np.ndarray:
    """``pcm`` scaled to ``target_lufs`` integrated loudness (float64, as NVIDIA's ``normalize_audio``)."""
    level = integrated_loudness(pcm, rate)
    if not math.isfinite(level):
        raise PromptError("a voice prompt must not be silent (its loudness cannot be normalised)")
    return np.power(10.0, (target_lufs - level) / 20.0) * np.asarray(pcm, dtype=np.float64)


# --------------------------------------------------------------------------------------------- voice files
def read_voice_audio(path: Union[str, os.PathLike], sample_rate: int) -> np.ndarray:
    """A recording as NVIDIA reads a voice prompt: its first channel, at ``sample_rate`` (float64 [T])."""
    try:
        pcm, rate = read_audio(path)
    except Exception as e:  # soundfile's errors for missing, unreadable or unknown files
        raise PromptError(f"voice prompt {os.fspath(path)}: cannot read it as audio ({e})") from None
    pcm = pcm[:1]  # NVIDIA encodes the first channel
    if rate != sample_rate:
        pcm = resample(pcm, rate, sample_rate)
    return pcm.reshape(-1).double().numpy()


def encode_voice(mimi, pcm: np.ndarray, num_codebooks: int = 8) -> torch.Tensor:
    """Voice-prompt audio (already normalised) -> codes int64 [num_codebooks, N]: 1920-sample frames, the last
    zero-padded, through a fresh streaming encoder one frame per call, as NVIDIA encodes them."""
    size = mimi.frame_size
    frames = max(1, math.ceil(len(pcm) / size))
    padded = np.zeros(frames * size, dtype=np.float32)
    padded[:len(pcm)] = pcm
    state = mimi.new_encoder_state(1)
    audio = torch.from_numpy(padded).to(mimi.device).view(1, 1, -1)
    with torch.no_grad():
        codes = [mimi.encode_step(audio[:, :, i * size:(i + 1) * size], state, None, num_codebooks)
                 for i in range(frames)]
    return torch.cat(codes, dim=-1)[0].long().cpu()


def voice_from_audio(path: Union[str, os.PathLike], mimi, num_codebooks: int = 8,
                     constants: PromptConstants = PromptConstants()) -> VoicePrompt:
    """A voice prompt from any recording: read, normalised to -24 LUFS, encoded (NVIDIA's ``load_voice_prompt``
    and ``_encode_voice_prompt_frames``)."""
    pcm = normalize_loudness(read_voice_audio(path, mimi.sample_rate), mimi.sample_rate, constants.target_lufs)
    return VoicePrompt(codes=encode_voice(mimi, pcm, num_codebooks), source=os.fspath(path))


def load_voice_embeddings(path: Union[str, os.PathLike]) -> VoicePrompt:
    """NVIDIA's voice-embedding file (``NATF0.pt``...: ``{"embeddings": [N - 1, 1, 1, dim], "cache": [1, 17, CT]}``,
    made from PersonaPlex's weights; it only suits the model it was made with)."""
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        embeddings, cache = state["embeddings"], state["cache"]
    except Exception as e:  # missing file, not a torch file, other layout
        raise PromptError(f"voice prompt {os.fspath(path)}: not a voice-embedding file in NVIDIA's layout "
                          f"({type(e).__name__}: {e})") from None
    return VoicePrompt(embeddings=embeddings.reshape(embeddings.shape[0], -1), cache=cache.reshape(cache.shape[-2:]),
                       source=os.fspath(path))


def load_voice(path: Union[str, os.PathLike], mimi=None, num_codebooks: int = 8,
               constants: PromptConstants = PromptConstants()) -> VoicePrompt:
    """A voice prompt file as NVIDIA picks the reader: ``.pt`` is a voice-embedding file, anything else audio."""
    if os.fspath(path).endswith(".pt"):
        return load_voice_embeddings(path)
    if mimi is None:
        raise PromptError(f"voice prompt {os.fspath(path)}: an audio voice prompt needs the codec")
    return voice_from_audio(path, mimi, num_codebooks, constants)


def save_voice_embeddings(path: Union[str, os.PathLike], embeddings: torch.Tensor, cache: torch.Tensor) -> None:
    """Write NVIDIA's voice-embedding layout: ``embeddings`` [N - 1, 1, 1, dim] and ``cache`` [1, K, CT] (what its
    ``save_voice_prompt_embeddings`` writes, and its ``load_voice_prompt_embeddings`` reads)."""
    torch.save({"embeddings": embeddings.detach().reshape(embeddings.shape[0], 1, 1, -1).cpu(),
                "cache": cache.detach().reshape(1, *cache.shape[-2:]).cpu()}, os.fspath(path))


# ---------------------------------------------------------------------------------------------------- frames
def prompt_frames(cfg, voice: Optional[VoicePrompt] = None, text_tokens: Sequence[int] = (),
                  constants: PromptConstants = PromptConstants(), dtype: torch.dtype = torch.float32
                  ) -> PromptFrames:
    """The frames of NVIDIA's ``step_system_prompts`` for model config ``cfg`` (module docstring). ``text_tokens``:
    the role prompt's ids (``text_prompt_tokens``); empty for none."""
    constants.check(cfg)
    m, u = cfg.model_codebooks, cfg.user_codebooks
    sine = torch.tensor(constants.sine_tokens, dtype=torch.long)[:u]
    silence = torch.tensor(constants.silence_tokens, dtype=torch.long)
    zero = constants.zero_text_code
    user, model, embeds = [], [], []

    def frame(user_codes, text, audio, embedding=None):
        user.append(user_codes)
        model.append(torch.cat([torch.tensor([int(text)]), audio]))
        embeds.append(embedding)

    cache, cache_after = None, 0
    if voice is not None and voice.codes is not None:
        codes = voice.codes.long()
        if codes.dim() != 2 or codes.shape[0] < m or not bool(((codes >= 0) & (codes < cfg.card)).all()):
            raise PromptError(f"voice prompt {voice.source}: expected codes [>= {m}, N] in [0, {cfg.card})")
        for n in range(codes.shape[1]):
            frame(sine, zero, codes[:m, n])
    elif voice is not None:
        emb, cache = voice.embeddings, voice.cache.long()
        if emb is None or emb.dim() != 2 or emb.shape[1] != cfg.dim or cache.shape[0] != cfg.num_streams:
            raise PromptError(f"voice prompt {voice.source}: its embeddings are {tuple(emb.shape)} and its cache "
                              f"{tuple(cache.shape)}; this model needs [N, {cfg.dim}] and [{cfg.num_streams}, C]: it "
                              "was made for another model")
        placeholder = torch.full((m,), cfg.card, dtype=torch.long)  # NVIDIA's dummy: initial tokens
        frame(torch.full((u,), cfg.card, dtype=torch.long), zero, placeholder)
        for n in range(emb.shape[0]):
            frame(torch.full((u,), cfg.card, dtype=torch.long), zero, placeholder, emb[n])
        cache_after = len(user)
    for _ in range(constants.silence_frames):
        frame(sine, zero, silence)
    for token in text_tokens:
        if not 0 <= int(token) < cfg.text_card:
            raise PromptError(f"text prompt: token {token} is not in this model's vocabulary")
        frame(sine, token, silence)
    for _ in range(constants.silence_frames):
        frame(sine, zero, silence)

    voice_frames = cache_after if cache is not None else (0 if voice is None else voice.codes.shape[1])
    n = len(user)
    use = torch.tensor([e is not None for e in embeds], dtype=torch.bool)
    embedding = torch.stack([torch.zeros(cfg.dim) if e is None else e.float() for e in embeds]).to(dtype)
    h = hashlib.sha256(repr((constants, tuple(int(t) for t in text_tokens), cfg.dim, cfg.card,
                             cfg.personaplex)).encode())
    if voice is not None:
        voice.digest(h)
    frames = PromptFrames(torch.stack(user), torch.stack(model), use, embedding.reshape(n, cfg.dim), cache,
                          cache_after, h.hexdigest(), tuple(int(t) for t in text_tokens), voice_frames)
    return frames if cfg.personaplex else kyutai_steps(frames, cfg.delays)


def kyutai_steps(frames: PromptFrames, delays: Sequence[int]) -> PromptFrames:
    """NVIDIA's prompt frames re-timed for a Moshi-style model (Kyutai's step; duplex's extension, docs/offline.md).

    PersonaPlex's call ``i`` writes frame ``i`` at ``i + delay`` and (from ``i = 1``) runs the model on column
    ``i - 1`` with column ``i`` as its target; Kyutai's step ``s`` writes the user's codes at ``s + delay`` and runs
    on column ``s`` with target ``s + 1``. So step ``s`` is call ``s + 1``: it takes user frame ``s``, forces model
    stream ``k`` of the target to frame ``s + 1 - delay[k]``'s value, and takes the input embedding of frame
    ``s + 1``. N frames become N - 1 steps (call 0 runs nothing, in both). ``delays``: the model's, all streams.

    A replayed voice (``cache``): NVIDIA's call writes its inputs before it runs, so its saved ring already holds
    the last voice frame's; Kyutai's step after the ring is put in place writes them, so that step takes its user
    codes and forced target from the saved ring (where ``voice_embedding_file`` records them for such a model)."""
    n = len(frames) - 1
    if n < 1:
        raise PromptError("a system prompt needs at least two frames")
    m = frames.model.shape[1]
    delays = torch.tensor(list(delays))
    index = torch.arange(n)[:, None] + 1 - delays[None, :m]  # [n, 1 + dep_q]
    model = frames.model.gather(0, index.clamp(min=0))
    user = frames.user[:n].clone()
    cache_after = max(0, frames.cache_after - 1)
    if frames.cache is not None and cache_after < n:
        saved = frames.cache.long()
        columns = saved.shape[-1]
        at = (cache_after + delays[m:]) % columns
        user[cache_after] = saved[m:].gather(1, at[:, None])[:, 0]
        model[cache_after] = saved[:m, (cache_after + 1) % columns]
    return PromptFrames(user, model, frames.use_embedding[1:].clone(), frames.embedding[1:].clone(), frames.cache,
                        cache_after, frames.key, frames.text_tokens, max(0, frames.voice_frames - 1))
