"""The persona adapter shipped for the default model (demos/lora-persona: its recipe and measured effect)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

from duplex.runtime.checkpoints import SHIPPED_ADAPTERS, ModelFiles, adapter_file, shipped_adapters
from duplex.runtime.engine import Engine, SamplingOptions


def test_the_persona_adapter_ships_in_kyutais_layout_and_loads_by_name():
    assert "persona" in shipped_adapters()
    path = adapter_file("persona")
    assert path == os.path.join(SHIPPED_ADAPTERS, "persona", "lora.safetensors")
    assert os.path.getsize(path) < 8_000_000  # small beside the 37 MB model it adapts
    config = json.loads(open(os.path.join(os.path.dirname(path), "config.json"), encoding="utf-8").read())
    assert config["lora"] is True and config["lora_rank"] > 0 and config["lora_scaling"] > 0


def test_the_persona_adapter_changes_what_the_default_model_says():
    files = ModelFiles.default()
    engine = Engine.from_files(dataclasses.replace(files, lora_adapters=(adapter_file("persona"),)), slots=2,
                               sampling=SamplingOptions(greedy=True))
    assert engine.adapters == ["persona"]
    persona, base = engine.open(adapter="persona"), engine.open(adapter="none")
    rng = np.random.default_rng(0)
    frames = (0.1 * rng.standard_normal((25, engine.frame_size))).astype(np.float32)
    tokens = {persona: [], base: []}
    for frame in frames:
        engine.step({persona: frame, base: frame})
        for slot in tokens:
            tokens[slot].append(engine.last_tokens[slot].clone())
    assert not torch.equal(torch.stack(tokens[persona]), torch.stack(tokens[base]))
