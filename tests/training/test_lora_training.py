"""``duplex train lm --lora``: one fresh adapter on a frozen base (moshi-finetune's initialisation), gradient
checkpointing, exact resume, the export in moshi-finetune's layout, which Kyutai's loader applies unfused and fused
with the same greedy tokens as duplex; a step of it at Moshi 7B's widths."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from duplex.bench.lora import adapter_parameters, random_lm
from duplex.cli import main
from duplex.errors import UsageError
from duplex.model import lora
from duplex.model.config import LMConfig
from duplex.model.lm import MoshiLM
from duplex.training.lm import (
    LMTrainer,
    LMTrainingOptions,
    _model,
    fresh_adapter,
    resolve_init,
    train_lm,
)
from tests.helpers import kyutai_greedy
from tests.training.test_lm_training import TINY, write_dataset

CPU = torch.device("cpu")
RANK = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, small_tokenizer_path):
    return write_dataset(tmp_path_factory.mktemp("lora") / "data", small_tokenizer_path)


@pytest.fixture(scope="module")
def base(dataset):
    """A random tiny LM saved as a run would (model.safetensors + config.json): the base the adapters adapt."""
    folder = dataset.parent / "base"
    MoshiLM.random(LMConfig.load(TINY), seed=5).save(folder)
    return folder / "model.safetensors"


def options(dataset, base, out, **kw):
    defaults = dict(data=str(dataset), out=str(out), init=str(base), lora=True, lora_rank=RANK, steps=6,
                    batch_size=2, segment_seconds=2.0, lr=2e-2, eval_every=3, save_every=3)
    return LMTrainingOptions(**{**defaults, **kw})


def log_of(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def greedy(lm, user):
    gen = lm.generator(user.shape[0], greedy=True)
    return torch.stack([gen.step(user[:, :, s]) for s in range(user.shape[-1])], dim=-1)


def user_codes(steps=16):
    return torch.randint(0, TINY["card"], (2, 8, steps), generator=torch.Generator().manual_seed(3))


def test_a_fresh_adapter_is_moshi_finetunes_init_and_starts_as_the_base(base):
    lm = MoshiLM.from_checkpoint(base, dtype=torch.float32, config=base.parent / "config.json")
    adapter = fresh_adapter(lm, RANK, 2.0, seed=1)
    assert set(adapter.pairs) == set(lora.adapted_weights(lm)) and len(adapter.pairs) == 43
    for a, b in adapter.pairs.values():
        fan_in = a.shape[-1]
        assert a.abs().max() <= fan_in ** -0.5 and a.abs().max() > 0.8 * fan_in ** -0.5  # kaiming_uniform(a=sqrt 5)
        assert not b.any() and a.shape[1] == b.shape[2] == RANK
    again = fresh_adapter(lm, RANK, 2.0, seed=1)
    assert all(torch.equal(again.pairs[k][0], adapter.pairs[k][0]) for k in adapter.pairs)
    codes = user_codes()
    before = greedy(lm, codes)
    lm.add_adapter(adapter)
    assert torch.equal(greedy(lm, codes), before)  # B = 0: the adapted model is the base


def test_gradient_checkpointing_gives_the_same_values(base):
    lm = MoshiLM.from_checkpoint(base, dtype=torch.float32, config=base.parent / "config.json")
    lm.add_adapter(fresh_adapter(lm, RANK, 2.0))
    params = lora.trainable(lm)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    lm.train()
    codes = torch.randint(0, TINY["card"], (2, 17, 12), generator=torch.Generator().manual_seed(1))
    codes[:, 0] = codes[:, 0] % 50
    grads = []
    for checkpoint in (False, True):
        out = lm.forward_train(codes, checkpoint=checkpoint)
        loss = out.logits[out.mask].logsumexp(-1).mean() + out.text_logits[out.text_mask].logsumexp(-1).mean()
        grads.append([g.clone() for g in torch.autograd.grad(loss, params)] + [loss.detach()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_lora_trains_only_the_adapter_and_writes_moshi_finetunes_layout(dataset, base, tmp_path):
    train_lm(options(dataset, base, tmp_path / "run"), CPU)
    run = tmp_path / "run"
    for name in ("lora.safetensors", "config.json", "tokenizer.model", "lora-train.safetensors", "trainer.pt",
                 "base.json", "log.jsonl", "loss.png", "best/lora.safetensors", "best/config.json",
                 "best/tokenizer.model", "best/step.json"):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists() and not (run / "lm.safetensors").exists()
    config = json.loads((run / "config.json").read_text())
    assert config == {**json.loads((base.parent / "config.json").read_text()), "lora": True, "lora_rank": RANK,
                      "lora_scaling": 2.0}
    lm = MoshiLM.from_checkpoint(base, dtype=torch.float32, config=base.parent / "config.json")
    with safe_open(str(run / "lora.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in keys)
        assert f.metadata() is None  # as moshi-finetune writes it
    modules = {k.rsplit(".lora_", 1)[0] for k in keys}
    assert len(keys) == 2 * len(modules) == 2 * 57  # 43 adapted weights, the depth attention's per step
    assert "transformer.layers.0.self_attn.in_projs.0.lora_A.weight" in keys
    assert "depformer.layers.0.gating.7.linear_out.lora_B.weight" in keys and "text_linear.lora_A.weight" in keys
    log = log_of(run)
    assert len(log) == 6 and sum(r["loss"] for r in log[-2:]) < sum(r["loss"] for r in log[:2])
    assert [r["step"] for r in log if "heldout" in r] == [3, 6]
    # the base is never changed: the model a LoRA run trains keeps the base's tensors exactly
    model, _ = _model(options(dataset, base, tmp_path / "x"), lm.config, CPU, resolve_init(str(base)))
    trainer = LMTrainer(model, options(dataset, base, tmp_path / "x"))
    batch = torch.randint(0, TINY["card"], (2, 17, 20), generator=torch.Generator().manual_seed(0))
    batch[:, 0] %= 50
    for _ in range(2):
        trainer.train_step(batch)
    trained = model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in lm.state_dict().items())
    assert len(trainer.params) == 2 * 43 and all(p.dtype == torch.float32 for p in trainer.params)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.slow
def test_lora_resume_is_exact(dataset, base, tmp_path):
    train_lm(options(dataset, base, tmp_path / "straight"), CPU)
    train_lm(options(dataset, base, tmp_path / "split", stop_at=3), CPU)
    # on resume the base and the adapter's shape are the run's (nor --init nor --lora needed)
    train_lm(options(dataset, base, tmp_path / "split", resume=True, init=None, lora=False, lora_rank=99), CPU)
    straight, split = log_of(tmp_path / "straight"), log_of(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 7)) and [r["loss"] for r in split] == [r["loss"] for r in
                                                                                              straight]
    a, b = (load_file(tmp_path / run / "lora.safetensors") for run in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    train_lm(LMTrainingOptions(data=str(dataset), out=str(tmp_path / "full"), config=str(dataset / "tiny.json"),
                               steps=1, batch_size=1, segment_seconds=1.0, eval_every=0), CPU)
    with pytest.raises(UsageError, match="full training run, not a LoRA run"):
        train_lm(LMTrainingOptions(data=str(dataset), out=str(tmp_path / "full"), resume=True, lora=True), CPU)


@pytest.fixture(scope="module")
def trained(dataset, base, tmp_path_factory):
    """A LoRA run exported in float32 (the round trip is then exact): its folder."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train_lm(options(dataset, base, run, export_dtype="float32", eval_every=0), CPU)
    return run


def kyutai():
    loaders = pytest.importorskip("moshi.models.loaders")
    lm_module = pytest.importorskip("moshi.models.lm")
    if "fuse_lora" not in loaders.get_moshi_lm.__code__.co_varnames:
        pytest.skip("not Kyutai's moshi with LoRA support")
    torch.set_num_threads(1)  # the model is tiny (conftest restores the thread count)
    return loaders, lm_module.LMGen


def test_duplex_loads_its_adapter_back_as_trained(trained, base):
    adapter = trained / "lora.safetensors"
    lm = MoshiLM.from_checkpoint(base, dtype=torch.float32, config=base.parent / "config.json")
    assert lm.add_adapter(adapter) == 1 and lm.adapters == ["run"]  # rank and scaling from its config.json
    banks = load_file(trained / "lora-train.safetensors")  # the trained float32 adapter (a training bank: it alone)
    ours = dict(lm.named_parameters())
    assert all(v.shape[0] == 1 and torch.equal(ours[k][1], v[0]) for k, v in banks.items())
    # the model the run trained, rebuilt from its checkpoint, gives the same tokens as base + adapter file
    resumed = LMTrainingOptions(data="", out=str(trained), resume=True, lora=True, lora_rank=RANK)
    model, _ = _model(resumed, lm.config, CPU, resolve_init(str(base)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in banks:
                p.copy_(banks[name])
    model.eval()
    user = user_codes()
    out = greedy(lm, user)
    assert torch.equal(out, greedy(model, user))
    plain = MoshiLM.from_checkpoint(base, dtype=torch.float32, config=base.parent / "config.json")
    assert (out != greedy(plain, user))[:, :, 1:].float().mean() > 0.2  # the adapter matters


@pytest.mark.parametrize("fuse", [False, True])
def test_kyutais_loader_applies_the_adapter_with_duplexs_tokens(trained, base, fuse):
    loaders, lmgen_cls = kyutai()
    config = json.loads((trained / "config.json").read_text())
    theirs = loaders.get_moshi_lm(str(base), lm_kwargs=config, device="cpu", dtype=torch.float32,
                                  lora_weights=str(trained / "lora.safetensors"), fuse_lora=fuse)
    ours = MoshiLM.from_checkpoint(base, dtype=torch.float32, config=base.parent / "config.json")
    ours.add_adapter(trained / "lora.safetensors")
    if fuse:
        ours.fuse_adapter_()
    user = user_codes()
    expected = kyutai_greedy(lmgen_cls, theirs, user)
    assert torch.equal(greedy(ours, user), expected)
    plain = loaders.get_moshi_lm(str(base), lm_kwargs=json.loads((base.parent / "config.json").read_text()),
                                 device="cpu", dtype=torch.float32)
    assert not torch.equal(kyutai_greedy(lmgen_cls, plain, user), expected)


def test_the_bf16_export_loads_in_kyutais_loader(dataset, base, tmp_path):
    """The default export (bfloat16, as moshi-finetune's param_dtype) loads strictly and the rank is the config's."""
    loaders, lmgen_cls = kyutai()
    train_lm(options(dataset, base, tmp_path / "run", steps=2, eval_every=0), CPU)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    theirs = loaders.get_moshi_lm(str(base), lm_kwargs=config, device="cpu", dtype=torch.float32,
                                  lora_weights=str(tmp_path / "run" / "lora.safetensors"))
    ours = MoshiLM.from_checkpoint(base, dtype=torch.float32, config=base.parent / "config.json")
    ours.add_adapter(tmp_path / "run" / "lora.safetensors")
    user = user_codes(8)
    assert torch.equal(greedy(ours, user), kyutai_greedy(lmgen_cls, theirs, user))


def test_lora_options_are_checked_in_one_line(dataset, base, tmp_path, capsys):
    common = ["train", "lm", "--data", str(dataset), "--steps", "1", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "a"), "--lora"]) == 2
    assert "--lora adapts a model: name it with --init" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "b"), "--config", str(dataset / "tiny.json"), "--quantize",
                          "int8"]) == 2
    assert "--quantize freezes the base's weights" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "c"), "--init", str(tmp_path / "nowhere.safetensors"),
                          "--lora"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_init_default_is_the_shipped_model_with_its_tokenizer():
    from duplex.runtime.checkpoints import SHIPPED_LM, SHIPPED_LM_CONFIG, SHIPPED_TOKENIZER

    base = resolve_init("default")
    assert (base.lm, base.config, base.tokenizer) == (SHIPPED_LM, SHIPPED_LM_CONFIG, SHIPPED_TOKENIZER)


def test_a_quantized_base_trains_its_adapter(dataset, base, tmp_path):
    """--quantize int8: the base's linear weights frozen as int8 codes, the adapter learns (CLI, checkpointing on)."""
    code = main(["train", "lm", "--data", str(dataset), "--out", str(tmp_path / "q"), "--init", str(base), "--lora",
                 "--lora-rank", "4", "--lora-scaling", "1.5", "--quantize", "int8", "--steps", "4", "--batch-size",
                 "2", "--segment-seconds", "2", "--lr", "2e-2", "--eval-every", "0", "--device", "cpu"])
    assert code == 0
    assert json.loads((tmp_path / "q" / "base.json").read_text())["quantize"] == "int8"
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert (config["lora_rank"], config["lora_scaling"]) == (4, 1.5)
    adapter = load_file(tmp_path / "q" / "lora.safetensors")
    assert adapter["text_linear.lora_A.weight"].shape == (4, TINY["dim"])
    assert any(v.any() for k, v in adapter.items() if "lora_B" in k)
    log = log_of(tmp_path / "q")
    assert all(math.isfinite(r["loss"]) for r in log) and log[-1]["loss"] < log[0]["loss"]


def adapter_parameters_per_rank(cfg: LMConfig) -> int:
    """sum of (in + out) over the linears Kyutai adapts (per step for the depth transformer's)."""
    d, dd, hidden = cfg.dim, cfg.depformer_dim, cfg.hidden_dim
    dhidden = cfg.depformer_hidden_dim
    temporal = (d + 3 * d) + (d + d) + (d + 2 * hidden) + (hidden + d)
    depth = (dd + 3 * dd) + (dd + dd) + (dd + 2 * dhidden) + (dhidden + dd)
    return (cfg.num_layers * temporal + cfg.depformer_num_layers * cfg.dep_q * depth + cfg.dep_q * (d + dd)
            + cfg.dep_q * (dd + cfg.card) + (d + cfg.text_card))


def seven_b_width_model(num_layers: int = 1, depformer_layers: int = 1) -> MoshiLM:
    """A random LM of Moshi 7B's widths and vocabularies with fewer layers, its linear weights int8, the rest
    bfloat16: ``bench.lora.random_lm`` builds it directly in that form (a float32 copy would need 3.2 GB and a
    bfloat16 randn half a minute on this CPU)."""
    cfg = LMConfig.moshi_7b()
    cfg.num_layers, cfg.depformer_num_layers = num_layers, depformer_layers
    return random_lm(cfg, "int8", CPU, torch.bfloat16)


@pytest.mark.slow
def test_a_lora_step_at_moshi_7b_widths():
    """One LoRA training step on a random model of Moshi 7B's widths (1 temporal layer, 1 depth layer), its base
    frozen in int8 as on a 24 GB card, bfloat16 compute with float32 adapters, gradient checkpointing: the shapes,
    the gradients and the update, not the speed (about 10 s and 3 GB here)."""
    assert adapter_parameters_per_rank(LMConfig.moshi_7b()) == 3_030_272  # docs/training.md: the 7B's, per rank
    assert adapter_parameters(LMConfig.moshi_7b(), 64) == 64 * 3_030_272  # what duplex bench lora computes with
    lm = seven_b_width_model()
    assert lm.quantization == "int8" and lm.dtype == torch.bfloat16 and lm.config.dim == 4096
    lora.attach(lm, fresh_adapter(lm, 4, 2.0), training=True)  # a training bank: the adapter alone, no "none"
    params = lora.trainable(lm)
    for p in params:
        p.data = p.data.float()
    assert all(p.shape[0] == 1 for p in params)
    assert sum(p.numel() for p in params) == 4 * adapter_parameters_per_rank(lm.config)
    trainer = LMTrainer(lm, LMTrainingOptions(data="", out="", lora=True, lr=1e-3, steps=1, warmup=0.0))
    assert trainer.checkpointing
    codes = torch.randint(0, lm.config.card, (1, 17, 3), generator=torch.Generator().manual_seed(0))
    codes[:, 0] = torch.randint(0, lm.config.text_card, (1, 3), generator=torch.Generator().manual_seed(1))
    record = trainer.train_step(codes)
    assert math.isfinite(record["loss"]) and record["grad_norm"] > 0
    banks = [p for name, p in lm.named_parameters() if name.endswith(".B")]
    # Kyutai's 53 linears (4 temporal, 4 x 8 depth, 8 + 8 heads and inputs, text_linear); the depth attention's
    # per-step projections are one weight with a step axis here
    assert len(banks) == len(lora.adapted_weights(lm)) == 39 and len(lora.adapter_state(lm)) == 2 * 53
    assert all(b[0].any() for b in banks)  # every adapter learnt


def test_a_personaplex_shaped_base_trains_on_both_channels(dataset, tmp_path):
    """dep_q = n_q = 16 (PersonaPlex's depth transformer predicts both speakers): the dataset's 8 codebooks per
    channel feed it, the loss covers all 16, the adapter has one per step for the 16 steps."""
    MoshiLM.random(LMConfig.load(dict(TINY, dep_q=16)), seed=2).save(tmp_path / "pp")
    train_lm(options(dataset, tmp_path / "pp" / "model.safetensors", tmp_path / "run", steps=2, eval_every=0), CPU)
    adapter = load_file(tmp_path / "run" / "lora.safetensors")
    assert "depformer.layers.0.gating.15.linear_in.lora_A.weight" in adapter and "linears.15.lora_B.weight" in adapter
    assert all(math.isfinite(r["loss"]) for r in log_of(tmp_path / "run"))


def test_init_takes_a_repository_in_the_hugging_face_cache(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    from duplex.runtime.checkpoints import KYUTAI_MIMI
    from tests.helpers import fake_repo

    snap = fake_repo(tmp_path, "kyutai/moshiko-pytorch-bf16", {"model.safetensors": b"lm", KYUTAI_MIMI: b"mimi",
                                                               "tokenizer_spm_32k_3.model": b"spm"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    base = resolve_init("kyutai/moshiko-pytorch-bf16")
    assert (base.lm, base.config, base.tokenizer) == (str(snap / "model.safetensors"), "moshi_7b",
                                                      str(snap / "tokenizer_spm_32k_3.model"))
    with pytest.raises(UsageError, match="no files of kyutai/moshika-pytorch-bf16"):
        resolve_init("kyutai/moshika-pytorch-bf16")
