"""The Moshi language model (docs/kyutai-compat.md §2): temporal transformer over 17 token streams + depth transformer.

Stream layout (K = 1 + n_q): row 0 text, rows 1..dep_q the model's audio codebooks, the rest the user's audio.
Parameter names are those of the published checkpoints (file form), so a Moshi 7B file loads without renaming.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from codec.errors import CheckpointError
from codec.io.checkpoint import check_and_load, normalize_keys, read_tensors, write_safetensors
from codec.io.files import write_json
from codec.modules.linear import fast_linear, own_kernels_for, use_wide_weight_layout
from codec.modules.nest import Nest
from codec.modules.quantized import (
    MODES,
    SCB,
    cat_rows,
    mode_of,
    quantize_rows,
    refresh_scales,
    set_quantized,
    weight_of,
)
from codec.modules.rope import rope_frequencies, rope_tables
from codec.modules.transformer import Attention

from . import lora
from .checks import check_lm_codes
from .config import LMConfig
from .depformer import DepthAttention, DepthTransformer
from .generator import LMGenerator
from .layers import ZERO_TOKEN, RMSNorm, ScaledEmbedding, TemporalLayer, make_norm

ConfigLike = Union[None, LMConfig, dict, str, os.PathLike]


@dataclass
class LMOutput:
    logits: torch.Tensor  # [B, dep_q, T, card] float32, NaN where mask is False
    mask: torch.Tensor  # [B, dep_q, T] bool: positions with a valid target
    text_logits: torch.Tensor  # [B, 1, T, text_card]
    text_mask: torch.Tensor  # [B, 1, T]


def default_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """The LM's dtype when none is asked for: bfloat16 on CUDA (as Kyutai runs it), float32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _contiguous_state(module, state_dict, prefix, local_metadata):
    """A state_dict hook: tensors re-laid for inference (``prepare_for_inference``) are given back contiguous,
    as loaded; the others are returned as they are (no copy)."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()
    return state_dict


def _check_dtype(dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch dtype (torch.float32, torch.bfloat16, torch.float16), "
                        f"got {dtype!r}")


class MoshiLM(nn.Module):
    def __init__(self, config: ConfigLike = None):
        super().__init__()
        cfg = LMConfig.load(config)
        self.config = cfg
        self._register_state_dict_hook(_contiguous_state)  # the inference layout never leaks into saved files
        d, dd = cfg.dim, cfg.depformer_dim
        self.text_emb = ScaledEmbedding(cfg.text_card + 1, d)
        self.emb = nn.ModuleList([ScaledEmbedding(cfg.card + 1, d) for _ in range(cfg.n_q)])
        self.transformer = Nest()
        self.transformer.layers = nn.ModuleList([
            TemporalLayer(d, cfg.num_heads, cfg.context, cfg.hidden_dim, cfg.num_kv_heads)
            for _ in range(cfg.num_layers)])
        self.out_norm = RMSNorm(d)
        self.text_linear = nn.Linear(d, cfg.text_card, bias=False)
        self.depformer_in = nn.ModuleList([nn.Linear(d, dd, bias=False)
                                           for _ in range(cfg.dep_q if cfg.depformer_multi_linear else 1)])
        rank = cfg.depformer_low_rank_embeddings
        self.depformer_text_emb = ScaledEmbedding(cfg.text_card + 1, dd, rank)
        self.depformer_emb = nn.ModuleList([ScaledEmbedding(cfg.card + 1, dd, rank) for _ in range(cfg.dep_q - 1)])
        self.depformer = DepthTransformer(dd, cfg.depformer_num_heads, cfg.depformer_num_layers, cfg.dep_q,
                                          cfg.depformer_hidden_dim, cfg.depformer_kv_heads)
        # Kyutai's depformer_norm: a norm per codebook between the depth transformer and its output head (None:
        # none, as in Moshi 7B; Kyutai's identity modules hold no weights).
        self.depformer_norms = (nn.ModuleList([make_norm(cfg.depformer_norm, dd) for _ in range(cfg.dep_q)])
                                if cfg.depformer_norm else None)
        self.linears = nn.ModuleList([nn.Linear(dd, cfg.card, bias=False) for _ in range(cfg.dep_q)])
        self.register_buffer("freqs", rope_frequencies(cfg.head_dim, cfg.max_period), persistent=False)
        self.register_buffer("initial_tokens", self._initial_tokens(), persistent=False)
        self.register_buffer("delays", torch.tensor(cfg.delays, dtype=torch.long), persistent=False)

    def _initial_tokens(self) -> torch.Tensor:
        """[K]: text_card for the text stream, card for the audio streams (learnt embedding rows, never output)."""
        cfg = self.config
        return torch.tensor([cfg.text_card] + [cfg.card] * cfg.n_q, dtype=torch.long)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.text_linear.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (its norms'; quantized weights hold codes of another dtype)."""
        return self.out_norm.alpha.dtype

    @property
    def quantization(self) -> str:
        """``"none"``, ``"int8"`` or ``"fp8"``: the format of the linear layers' weights."""
        weight = self.text_linear._buffers.get("weight")
        return "none" if weight is None else mode_of(weight.dtype)

    def linear_weights(self):
        """(module, name) of every weight a quantized model holds as codes: the weights of Kyutai's ``nn.Linear``
        layers, which its q8 files quantize (attention projections, feed-forwards, output heads, depth inputs,
        low-rank embedding projections); never the embedding tables or the norms."""
        for module in self.modules():
            if isinstance(module, (Attention, DepthAttention)):
                yield module, "in_proj_weight"
            elif isinstance(module, nn.Linear):
                yield module, "weight"

    def quantize_(self, mode: str) -> "MoshiLM":
        """Quantize the linear weights in place to ``mode`` (``"int8"``: per-row int8, Kyutai's q8 layout;
        ``"fp8"``: per-row float8 e4m3), each weight replaced as soon as it is converted (one copy of one matrix
        more at a time). Inference only: the embeddings and norms stay in the model's dtype. Returns the model."""
        if mode not in MODES:
            raise ValueError(f"quantization {mode!r}: expected one of {', '.join(MODES)}")
        if self.quantization != "none":
            raise ValueError(f"the model is already quantized ({self.quantization})")
        compute = self.dtype
        for module, name in list(self.linear_weights()):
            codes, scb = quantize_rows(getattr(module, name), MODES[mode])
            set_quantized(module, name, codes, scb, compute)
        return self

    # ----------------------------------------------------------------------------------------------- adapters
    @property
    def adapters(self) -> list:
        """The names of the LoRA adapters on the model, in index order (index i + 1; 0 is none)."""
        return lora.adapter_names(self)

    def add_adapter(self, adapter: "Union[str, os.PathLike, lora.LoRAFile]", rank: Optional[int] = None,
                    scaling: Optional[float] = None) -> int:
        """Add a LoRA adapter (a file in Kyutai's layout, rank and scaling from the ``config.json`` beside it, or a
        ``lora.LoRAFile``) beside the weights; returns its index. Unfused: the weights stay as they are (quantized
        or not) and several adapters can share them (``route_adapters``)."""
        if not isinstance(adapter, lora.LoRAFile):
            adapter = lora.read_lora(adapter, rank, scaling, targets=lora.adapted_weights(self))
        return lora.attach(self, adapter)

    def route_adapters(self, rows: Optional[torch.Tensor]) -> None:
        """Each batch row's adapter (int64 [batch], 0: none; kept by reference), or None: adapter 1 on every row."""
        lora.route(self, rows)

    def fuse_adapter_(self) -> "MoshiLM":
        """Merge the one adapter into the weights (Kyutai's ``fuse_lora``); returns the model."""
        lora.fuse(self)
        return self

    def _quantized_layout(self, mode: str) -> None:
        """On the meta device: the buffers a quantized file of ``mode`` fills (codes and row maxima)."""
        for module, name in list(self.linear_weights()):
            out, inner = getattr(module, name).shape
            set_quantized(module, name, torch.empty(out, inner, dtype=MODES[mode], device="meta"),
                          torch.empty(out, device="meta"), torch.float32)

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.layers

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], config: ConfigLike = None,
                        device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.bfloat16,
                        quantize: Optional[str] = None) -> "MoshiLM":
        """Load a Moshi checkpoint strictly: built on the meta device, tensors cast to ``dtype`` and assigned,
        so a 7B load never holds two copies of the weights.

        A quantized file (Kyutai's q8, or one ``save`` wrote from a quantized model) loads as it is; ``quantize``
        (``"int8"``, ``"fp8"``) quantizes a plain file on the host before anything goes to ``device``, so the
        device never holds the full-precision weights. Asking for another format than a quantized file's is an
        error (codes are not converted twice)."""
        _check_dtype(dtype)
        if quantize not in (None, "none", *MODES):
            raise ValueError(f"quantize={quantize!r}: expected none, {', '.join(MODES)}")
        cfg = LMConfig.load(config)
        tensors = normalize_keys(read_tensors(path, containers=(("fsdp_best_state", "model"), ("model",))))
        stored = file_quantization(tensors)
        if stored and quantize not in (None, "none", stored):
            raise CheckpointError(f"{os.fspath(path)} holds {stored} weights: it cannot be loaded as {quantize} "
                                  f"(load it as it is, or quantize the full-precision file)")
        if stored and quantize == "none":
            raise CheckpointError(f"{os.fspath(path)} holds {stored} weights: it cannot be loaded unquantized")
        with torch.device("meta"):
            model = cls(cfg)
        if stored:
            model._quantized_layout(stored)
        check_and_load(model, tensors, "Moshi LM", source=os.fspath(path), dtype=dtype)
        del tensors
        if stored:
            refresh_scales(model, dtype)
        elif quantize not in (None, "none"):
            model.quantize_(quantize)
        model._rebuild_buffers()
        return model.to(device).eval()

    @classmethod
    def random(cls, config: ConfigLike = None, seed: int = 0, device: Union[str, torch.device] = "cpu",
               dtype: torch.dtype = torch.float32) -> "MoshiLM":
        """Random weights (deterministic in ``seed`` for a device type) with output scales that keep activations
        O(1), created directly on ``device`` in ``dtype`` (a random 7B never exists in float32 on the host)."""
        _check_dtype(dtype)
        cfg = LMConfig.load(config)
        device = torch.device(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.device("meta"):
            model = cls(cfg)
        state = {}
        for name, t in model.state_dict().items():
            if name.endswith("alpha") or (name.startswith("depformer_norms.") and name.endswith("weight")):
                state[name] = torch.ones(t.shape, device=device, dtype=dtype)
            elif name.startswith("depformer_norms."):  # a layer norm's bias
                state[name] = torch.zeros(t.shape, device=device, dtype=dtype)
            else:
                w = torch.randn(t.shape, generator=generator, device=device, dtype=dtype)
                state[name] = w if "emb" in name and "low_rank" not in name else w.mul_(t.shape[-1] ** -0.5)
        model.load_state_dict(state, assign=True)
        model._rebuild_buffers()
        return model.eval()

    def save(self, folder_or_path: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None) -> str:
        """Write the model as Kyutai's code reads it: the weights (safetensors, Kyutai's key layout, ``dtype`` or
        the model's own) and ``config.json`` beside them in Kyutai's keyword layout (what ``from_checkpoint`` and
        ``lm_config_beside`` read back). ``folder_or_path``: a folder (``model.safetensors`` is written in it) or
        the ``.safetensors`` path itself. Returns the weights' path."""
        path = os.fspath(folder_or_path)
        if not path.endswith(".safetensors"):
            path = os.path.join(path, "model.safetensors")
        if dtype is not None:
            _check_dtype(dtype)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        # Quantized codes and their row maxima keep their own dtypes (``dtype`` applies to the other weights).
        state = {k: v.detach().to(dtype or v.dtype if _plain_float(k, v) else v.dtype).contiguous().cpu()
                 for k, v in self.state_dict().items()}
        write_safetensors(state, path, metadata={"format": "pt"})
        config = self.config.to_dict()
        if self.quantization == "int8":  # what Kyutai's exporter writes for its q8 repositories
            config["quantize"] = True
        write_json(os.path.join(folder, "config.json"), config)
        return path

    def _rebuild_buffers(self) -> None:
        cfg, device = self.config, self.device
        self.freqs = rope_frequencies(cfg.head_dim, cfg.max_period, device=device)
        self.initial_tokens = self._initial_tokens().to(device)
        self.delays = torch.tensor(cfg.delays, dtype=torch.long, device=device)

    def generator(self, batch_size: int, greedy: bool = False, temperature: float = 0.8, top_k: int = 250,
                  text_temperature: float = 0.7, text_top_k: int = 25, seed: Optional[int] = None,
                  kv_dtype: Optional[torch.dtype] = None):
        """A streaming generator with ``batch_size`` independent slots (see ``duplex.model.generator``); ``kv_dtype``:
        its KV rings' dtype (default the model's; ``torch.float8_e4m3fn``: the fp8 ring)."""
        self.prepare_for_inference()
        return LMGenerator(self, batch_size, greedy=greedy, temperature=temperature, top_k=top_k,
                           text_temperature=text_temperature, text_top_k=text_top_k, seed=seed, kv_dtype=kv_dtype)

    # ---------------------------------------------------------------------------------------------- pieces
    def embed(self, tokens: torch.Tensor, zero_token: bool = True) -> torch.Tensor:
        """tokens [B, K, T] -> [B, T, D]: audio embeddings summed in stream order, then the text embedding.

        ``zero_token=False`` skips the handling of -1 (generation never feeds it) for fewer operations."""
        lookup = (lambda emb, ids: emb(ids)) if zero_token else (lambda emb, ids: F.embedding(ids, emb.weight))
        x = None
        for k, emb in enumerate(self.emb):
            e = lookup(emb, tokens[:, k + 1])
            x = e if x is None else x + e
        t = lookup(self.text_emb, tokens[:, 0])
        return t if x is None else x + t

    def heads_input(self, x: torch.Tensor) -> tuple:
        """Temporal output -> (normalised output feeding both heads, text logits [B, T, text_card])."""
        out = self.out_norm(x)
        return out, fast_linear(out, weight_of(self.text_linear))

    def depformer_embedding(self, k: int) -> ScaledEmbedding:
        """Embedding of the token that precedes depth position k: the text token for k = 0, else codebook k-1."""
        return self.depformer_text_emb if k == 0 else self.depformer_emb[k - 1]

    def depformer_input(self, k: int, transformer_out: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Input of depth position k: projection of the temporal output + embedding of the previous token."""
        proj = self.depformer_in[k if self.config.depformer_multi_linear else 0]
        return fast_linear(transformer_out, weight_of(proj)) + self.depformer_embedding(k)(previous)

    def audio_logits(self, k: int, depth_out: torch.Tensor) -> torch.Tensor:
        """Logits of codebook k from the depth transformer's output at position k (its norm first, if any)."""
        if self.depformer_norms is not None:  # [N, D] seen as [N, 1, D]: the RMS norms' scale is [1, 1, D]
            depth_out = self.depformer_norms[k](depth_out.unsqueeze(-2)).squeeze(-2)
        return fast_linear(depth_out, weight_of(self.linears[k]))

    def depformer_in_all(self, steps: Optional[int] = None) -> torch.Tensor:
        """The projections of the first ``steps`` depth positions (default all dep_q) stacked, [steps *
        depformer_dim, dim] (one product per step)."""
        stacked = cat_rows([weight_of(self.depformer_in[k if self.config.depformer_multi_linear else 0])
                            for k in range(self.config.dep_q if steps is None else steps)])
        if isinstance(stacked, torch.Tensor) and not own_kernels_for(stacked):
            use_wide_weight_layout([stacked])
        return stacked

    def prepare_for_inference(self) -> None:
        """The explicit inference step: on CPU in float32, store the wide linear weights (text head, fused q/k/v,
        FFN inputs, audio heads) column-major, which oneDNN streams faster for a few rows
        (``codec.modules.linear``); where our own one-row kernel is loaded (``own_kernels_for``), only the text
        head, and the others stay row-major for that kernel. Values, shapes and Parameter objects are unchanged,
        and ``state_dict()`` still gives contiguous tensors (safetensors saves it as it is). ``generator()`` and
        ``Engine`` call this. A no-op when training, on other devices and dtypes, and when already done."""
        if self.training:
            return
        weights = [self.text_linear.weight]
        if not own_kernels_for(self.text_linear.weight):
            weights += [head.weight for head in self.linears]
            for layer in self.layers:
                weights += [layer.self_attn.in_proj_weight, layer.gating.linear_in.weight]
            for layer in self.depformer.layers:
                weights += [ffn.linear_in.weight for ffn in layer.gating]
        use_wide_weight_layout(weights)

    # ----------------------------------------------------------------------------------------- training view
    def forward_train(self, codes: torch.Tensor, kv_dtype: Optional[torch.dtype] = None,
                      checkpoint: bool = False) -> LMOutput:
        """Teacher-forced forward on codes [B, K, T] (delays applied inside; docs/kyutai-compat.md §2.7, the
        training-time view). ``kv_dtype`` float8_e4m3fn: keys and values rounded as the fp8 ring stores them.
        ``checkpoint``: gradient checkpointing, as Kyutai's ``gradient_checkpointing``: each temporal and depth layer
        keeps only its input for the backward pass and runs again there (the same values; less memory, more time)."""
        codes = check_lm_codes(codes, self.config, "forward_train", allow_zero_token=True).to(self.device)
        cfg = self.config
        b, k, t = codes.shape
        initial = self.initial_tokens.view(1, k, 1).expand(b, k, 1)
        delayed = torch.stack([_shift_right(codes[:, i], d, initial[:, i]) for i, d in enumerate(cfg.delays)], 1)
        delayed = torch.cat([initial, delayed], dim=2)  # [B, K, T + 1], an all-initial column first
        x = self.embed(delayed[:, :, :-1])
        rotation = rope_tables(torch.arange(t, device=x.device).expand(b, t), self.freqs)
        for layer in self.layers:
            x = _checkpointed(layer, x, rotation, kv_dtype) if checkpoint else layer(x, rotation, kv_dtype)
        transformer_out, text_logits = self.heads_input(x)

        # Depth transformer, teacher-forced with the tokens of position t + 1.
        target = delayed[:, :, 1:]
        inputs = [self.depformer_input(i, transformer_out, target[:, i])
                  for i in range(cfg.dep_q)]
        dep = self.depformer(torch.stack(inputs, dim=2).view(b * t, cfg.dep_q, -1), checkpoint=checkpoint)
        logits = [self.audio_logits(i, dep[:, i]).view(b, t, -1).float() for i in range(cfg.dep_q)]

        logits, mask = _undelay(logits, cfg.delays[1:1 + cfg.dep_q])
        mask &= codes[:, 1:1 + cfg.dep_q] != ZERO_TOKEN
        text_logits, text_mask = _undelay([text_logits.float()], cfg.delays[:1])
        text_mask &= codes[:, :1] != ZERO_TOKEN
        return LMOutput(logits, mask, text_logits, text_mask)


def _checkpointed(layer: nn.Module, *inputs):
    """``layer(*inputs)``, its activations recomputed in the backward pass (when gradients are being recorded)."""
    if not torch.is_grad_enabled():
        return layer(*inputs)
    return torch.utils.checkpoint.checkpoint(layer, *inputs, use_reentrant=False)


def file_quantization(tensors) -> Optional[str]:
    """``"int8"`` or ``"fp8"`` when canonical-form ``tensors`` hold quantized linear weights (codes beside
    ``*_scb`` row maxima), else None."""
    for key in tensors:
        if key.endswith(SCB):
            codes = tensors.get(key[:-len(SCB)])
            if codes is None or codes.dtype not in MODES.values():
                raise CheckpointError(f"{key}: row maxima without int8 or float8 codes beside them")
            return mode_of(codes.dtype)
    return None


def _plain_float(key: str, value: torch.Tensor) -> bool:
    return value.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and not key.endswith(SCB)


def _shift_right(stream: torch.Tensor, delay: int, fill: torch.Tensor) -> torch.Tensor:
    """[B, T] shifted right by ``delay`` steps, the vacated first steps set to ``fill`` [B, 1]."""
    if delay == 0:
        return stream
    return torch.cat([fill.expand(-1, min(delay, stream.shape[1])), stream[:, :-delay]], dim=1)[:, :stream.shape[1]]


def _undelay(lines, delays) -> tuple:
    """Streams' logits [B, T, V] each -> [B, S, T, V] shifted back by each stream's delay; the last ``delay`` steps
    are NaN and masked. (Shifted one by one before stacking: slicing a stacked tensor per stream would cost the
    backward pass a zero-filled copy of the whole stack per stream.)"""
    b, t, _ = lines[0].shape
    out, mask = [], torch.ones(b, len(lines), t, dtype=torch.bool, device=lines[0].device)
    for i, (line, d) in enumerate(zip(lines, delays)):
        line = line.roll(-d, dims=1)
        if d > 0:
            line[:, -d:] = float("nan")
            mask[:, i, -d:] = False
        out.append(line)
    return torch.stack(out, dim=1), mask
