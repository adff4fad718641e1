"""``Nest``: an empty level of module nesting, so that parameter names match the published checkpoints (Kyutai's
modules wrap a layer in another, e.g. ``conv.conv.weight``)."""

from torch import nn


class Nest(nn.Module):
    """An empty level of nesting that exists only so parameter names match the published files."""
