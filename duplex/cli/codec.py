"""``duplex codec encode | decode | roundtrip``: audio files <-> Mimi codes files."""

from __future__ import annotations

import os

import torch

from codec import Mimi
from codec.io.audio import load_audio, save_audio

from ..errors import UsageError
from .model_paths import config_hint, resolve_mimi_checkpoint

CODES_FORMAT = "duplex-codes/1"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a device name (cpu, cuda, cuda:N or auto)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: duplex runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_codec(args) -> Mimi:
    path, config = resolve_mimi_checkpoint(args.checkpoint, args.config)
    with config_hint(path, config):
        return Mimi.from_checkpoint(path, config=config, num_codebooks=getattr(args, "num_codebooks", 8),
                                    device=pick_device(args.device))


def _encode(mimi: Mimi, pcm: torch.Tensor, streaming: bool) -> torch.Tensor:
    x = pcm[None]  # [1, 1, T]
    if not streaming:
        return mimi.encode(x)
    pad = (-x.shape[-1]) % mimi.frame_size
    return mimi.stream(1).encode(torch.nn.functional.pad(x, (0, pad)))


def _decode(mimi: Mimi, codes: torch.Tensor, streaming: bool) -> torch.Tensor:
    return (mimi.stream(1).decode(codes) if streaming else mimi.decode(codes))[0]


def codec_fingerprint(mimi: Mimi) -> str:
    """Names the codec's configuration (not its weights): codes from a codec of another shape are refused."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(mimi.config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def save_codes(path: str, codes: torch.Tensor, mimi: Mimi, num_samples: int) -> None:
    from codec.io.checkpoint import write_safetensors

    # Codes are < 2048 (< 32768 for any codec we load), so int16 storage is exact and 4x smaller than int64.
    write_safetensors({"codes": codes.to(torch.int16).contiguous().cpu()}, path, metadata={
        "format": CODES_FORMAT, "sample_rate": str(mimi.sample_rate), "frame_rate": str(mimi.frame_rate),
        "num_samples": str(num_samples), "num_codebooks": str(codes.shape[1]), "codec": codec_fingerprint(mimi)})


def load_codes(path: str, mimi: Mimi):
    """(codes int64 [1, K, S], number of samples of the original audio or None), checked against ``mimi``, the
    codec that is to decode them: an integer tensor of one item, and metadata (written by ``save_codes``) that
    matches the codes and the codec."""
    from safetensors import safe_open

    if not os.path.exists(path):
        raise UsageError(f"codes file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if "codes" not in f.keys():
                raise UsageError(f"{path} is not a codes file (no 'codes' tensor; has {sorted(f.keys())})")
            codes = f.get_tensor("codes")
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"{path} is not a readable safetensors codes file ({e})") from None
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise UsageError(f"{path}: codes must be integers, got {str(codes.dtype).replace('torch.', '')}")
    if codes.dim() == 2:
        codes = codes[None]
    if codes.dim() != 3 or codes.shape[0] != 1:
        raise UsageError(f"{path}: codes must be [codebooks, frames] or [1, codebooks, frames], got "
                         f"{list(codes.shape)}" + (" (a batch: one file holds one item)" if codes.dim() == 3 else ""))

    def field(name: str, cast=str):
        if name not in metadata:
            return None
        try:
            return cast(metadata[name])
        except ValueError:
            raise UsageError(f"{path}: metadata {name}={metadata[name]!r} is not a valid value") from None

    if field("format") not in (None, CODES_FORMAT):
        raise UsageError(f"{path}: metadata format={metadata['format']!r}, expected {CODES_FORMAT!r}")
    for name, expected in (("sample_rate", mimi.sample_rate), ("frame_rate", mimi.frame_rate)):
        value = field(name, float)
        if value is not None and value != expected:
            raise UsageError(f"{path}: encoded at {name}={metadata[name]}, but this codec has {expected:g}: decode "
                             "it with the codec that encoded it")
    fingerprint = field("codec")
    if fingerprint is not None and fingerprint != codec_fingerprint(mimi):
        raise UsageError(f"{path} was encoded by a codec of another configuration: decode it with the codec "
                         "that encoded it (--checkpoint, --config)")
    frames = codes.shape[-1]
    num_samples = field("num_samples", int)
    if num_samples is not None and not (frames - 1) * mimi.frame_size < num_samples <= frames * mimi.frame_size:
        raise UsageError(f"{path}: metadata num_samples={num_samples} does not fit {frames} frames (audio of "
                         f"{(frames - 1) * mimi.frame_size + 1} to {frames * mimi.frame_size} samples)")
    return codes.long(), num_samples


def check_output_path(path: str, audio: bool) -> None:
    """Refuse an output path that cannot be written before any work is done: a folder, a missing folder, or
    (audio) an extension soundfile has no format for."""
    if os.path.isdir(path):
        raise UsageError(f"output {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"output folder {folder} does not exist")
    if audio:
        import soundfile as sf

        extension = os.path.splitext(path)[1].lstrip(".").upper()
        if extension not in sf.available_formats() or sf.default_subtype(extension) is None:
            raise UsageError(f"output {path}: unknown audio format {extension or '(no extension)'!r}; use .wav, "
                             ".flac or .ogg")


def conversion_note(path: str, sample_rate: int) -> str:
    """What loading did to the file, for the summary line: '' or e.g. ' (resampled from 16000 Hz, 2 channels
    mixed to mono)'."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # the file was read already; this is only a note
        return ""
    notes = []
    if info.samplerate != sample_rate:
        notes.append(f"resampled from {info.samplerate} Hz")
    if info.channels != 1:
        notes.append(f"{info.channels} channels mixed to mono")
    return f" ({', '.join(notes)})" if notes else ""


def run_encode(args) -> int:
    check_output_path(args.output, audio=False)
    mimi = load_codec(args)
    pcm = load_audio(args.input, mimi.sample_rate)
    codes = _encode(mimi, pcm, args.streaming)
    save_codes(args.output, codes, mimi, pcm.shape[-1])
    print(f"{args.input}: {pcm.shape[-1] / mimi.sample_rate:.2f} s{conversion_note(args.input, mimi.sample_rate)} "
          f"-> {codes.shape[-1]} frames x "
          f"{codes.shape[1]} codebooks -> {args.output}")
    return 0


def run_decode(args) -> int:
    check_output_path(args.output, audio=True)
    mimi = load_codec(args)
    codes, num_samples = load_codes(args.input, mimi)
    pcm = _decode(mimi, codes, args.streaming)
    if num_samples is not None:
        pcm = pcm[..., :num_samples]
    save_audio(args.output, pcm, mimi.sample_rate)
    print(f"{args.input}: {codes.shape[-1]} frames -> {pcm.shape[-1] / mimi.sample_rate:.2f} s -> {args.output}")
    return 0


def run_roundtrip(args) -> int:
    check_output_path(args.output, audio=True)
    mimi = load_codec(args)
    pcm = load_audio(args.input, mimi.sample_rate)
    codes = _encode(mimi, pcm, args.streaming)
    out = _decode(mimi, codes, args.streaming)[..., : pcm.shape[-1]]
    save_audio(args.output, out, mimi.sample_rate)
    kbps = mimi.frame_rate * codes.shape[1] * (mimi.cardinality - 1).bit_length() / 1000
    print(f"{args.input}: {pcm.shape[-1] / mimi.sample_rate:.2f} s{conversion_note(args.input, mimi.sample_rate)} "
          f"through {codes.shape[1]} codebooks "
          f"({kbps:.2f} kbps) -> {args.output}")
    return 0
