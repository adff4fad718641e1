"""Split residual vector quantizer (docs/kyutai-compat.md §1.8).

One semantic codebook (``rvq_first``) and up to 31 acoustic codebooks (``rvq_rest``). Both quantizers project
the *same* latent (512-d in Mimi, ``quantizer.input_dimension``) with their own 1x1 convolution; the acoustic one runs a plain residual loop. Centroids are
``embedding_sum / clamp(cluster_usage, 1e-5)``, derived once from the stored EMA statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantizerConfig
from .linear import fast_linear
from .nest import Nest


class Codebook(nn.Module):
    """Euclidean codebook with the EMA statistics Mimi stores (``_initialized``, ``cluster_usage``,
    ``embedding_sum``) and the derived centroid table."""

    def __init__(self, dim: int, bins: int):
        super().__init__()
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(bins))
        self.register_buffer("embedding_sum", torch.zeros(bins, dim))
        self.register_buffer("centroids", torch.zeros(bins, dim), persistent=False)
        # [bins, dim + 2] = [e | 1 | |e|^2]: the right operand of the matrix-product form of the distances.
        self.register_buffer("_distance_table", torch.zeros(bins, dim + 2), persistent=False)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the centroid table from the EMA statistics (after loading or updating them)."""
        self.centroids = self.embedding_sum / self.cluster_usage.clamp(min=1e-5)[:, None]
        e = self.centroids
        self._distance_table = torch.cat([e, torch.ones_like(e[:, :1]), e.pow(2).sum(-1, keepdim=True)], dim=-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest centroid of each row of ``x`` [N, dim], first minimum on ties.

        Distances are ``sqrt(clamp(|x|^2 + |e|^2 - 2 x.e, 0))`` computed as one matrix product of
        ``[-2x | |x|^2 | 1]`` with ``[e | 1 | |e|^2]``, which is how torch.cdist computes them for large
        codebooks (so near-ties resolve the same way).
        """
        padded = torch.cat([x * -2, x.pow(2).sum(-1, keepdim=True), torch.ones_like(x[:, :1])], dim=-1)
        return fast_linear(padded, self._distance_table).clamp_min_(0).sqrt_().argmin(dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.centroids)


class _QuantizerLayer(nn.Module):
    def __init__(self, dim: int, bins: int):
        super().__init__()
        self._codebook = Codebook(dim, bins)


class ResidualVectorQuantizer(nn.Module):
    """Input projection, a residual loop over ``n_q`` codebooks, output projection (all 1x1, bias-free)."""

    def __init__(self, cfg: QuantizerConfig, n_q: int):
        super().__init__()
        self.input_proj = nn.Conv1d(cfg.input_dimension, cfg.dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(cfg.dimension, cfg.output_dimension, 1, bias=False)
        self.vq = Nest()
        self.vq.layers = nn.ModuleList([_QuantizerLayer(cfg.dimension, cfg.bins) for _ in range(n_q)])

    @property
    def codebooks(self) -> list:
        return [layer._codebook for layer in self.vq.layers]

    def encode(self, latent: torch.Tensor, n_q: int) -> torch.Tensor:
        """latent [B, C, T] -> codes int64 [B, n_q, T]."""
        b, _, t = latent.shape
        residual = F.conv1d(latent, self.input_proj.weight).transpose(1, 2).reshape(b * t, -1)
        codes = []
        for codebook in self.codebooks[:n_q]:
            c = codebook.encode(residual)
            residual = residual - codebook.decode(c)
            codes.append(c)
        return torch.stack(codes, dim=0).view(n_q, b, t).transpose(0, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> [B, C, T]: codebook vectors summed in layer order, then projected once."""
        total = None
        for codebook, c in zip(self.codebooks, codes.unbind(1)):
            e = codebook.decode(c)
            total = e if total is None else e + total
        return F.conv1d(total.transpose(1, 2), self.output_proj.weight)


class SplitResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.n_q = cfg.n_q
        self.bins = cfg.bins
        self.rvq_first = ResidualVectorQuantizer(cfg, cfg.n_q_semantic)
        self.rvq_rest = ResidualVectorQuantizer(cfg, cfg.n_q - cfg.n_q_semantic)

    def refresh(self) -> None:
        for codebook in self.rvq_first.codebooks + self.rvq_rest.codebooks:
            codebook.refresh()

    def encode(self, latent: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        semantic = self.rvq_first.encode(latent, 1)
        if num_codebooks == 1:
            return semantic
        return torch.cat([semantic, self.rvq_rest.encode(latent, num_codebooks - 1)], dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        latent = self.rvq_first.decode(codes[:, :1])
        if codes.shape[1] > 1:
            latent = latent + self.rvq_rest.decode(codes[:, 1:])
        return latent
