"""The CLIP model and its loss, each against OpenAI's layout or a plain reference (the tokenizer: test_tokenizer.py)."""

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from clipforge.trainer.loss import clip_loss
from clipforge.trainer.model import (CLIP, CONFIGS, CLIPConfig, SelfAttention, TextConfig, VisionConfig,
                                     config_from_openai_state_dict, load_openai_state_dict, model_config)
from clipforge.trainer.train import backward_batch, cosine_lr, param_groups

# Parameter counts of OpenAI's released models (as printed for `model.parameters()` in CLIP's
# own notebooks) and a sample of their state-dict names with shapes.
OPENAI_PARAMS = {"RN50": 102_007_137, "ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737, "ViT-L-14": 427_616_513}
OPENAI_SHAPES = {
    "ViT-B-32": {
        "positional_embedding": (77, 512), "text_projection": (512, 512), "logit_scale": (),
        "token_embedding.weight": (49408, 512), "ln_final.weight": (512,),
        "transformer.resblocks.0.attn.in_proj_weight": (1536, 512),
        "transformer.resblocks.11.attn.out_proj.weight": (512, 512),
        "transformer.resblocks.11.mlp.c_fc.weight": (2048, 512),
        "visual.class_embedding": (768,), "visual.positional_embedding": (50, 768), "visual.proj": (768, 512),
        "visual.conv1.weight": (768, 3, 32, 32), "visual.ln_pre.weight": (768,), "visual.ln_post.bias": (768,),
        "visual.transformer.resblocks.0.attn.in_proj_bias": (2304,),
        "visual.transformer.resblocks.11.mlp.c_proj.weight": (768, 3072),
        "visual.transformer.resblocks.5.ln_2.weight": (768,),
    },
    "ViT-L-14": {"visual.positional_embedding": (257, 1024), "visual.conv1.weight": (1024, 3, 14, 14),
                 "visual.proj": (1024, 768), "text_projection": (768, 768), "positional_embedding": (77, 768),
                 "visual.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024)},
    "RN50": {
        "visual.conv1.weight": (32, 3, 3, 3), "visual.conv3.weight": (64, 32, 3, 3), "visual.bn3.running_var": (64,),
        "visual.layer1.0.downsample.0.weight": (256, 64, 1, 1), "visual.layer1.0.downsample.1.num_batches_tracked": (),
        "visual.layer4.2.bn3.weight": (2048,), "visual.attnpool.positional_embedding": (50, 2048),
        "visual.attnpool.q_proj.weight": (2048, 2048), "visual.attnpool.c_proj.weight": (1024, 2048),
        "text_projection": (512, 1024),
    },
}


def _meta_model(name):
    with torch.device("meta"):
        return CLIP(model_config(name))


@pytest.mark.parametrize("name", sorted(OPENAI_PARAMS))
def test_parameter_layout_matches_openai(name):
    model = _meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == OPENAI_PARAMS[name]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in OPENAI_SHAPES.get(name, {}).items():
        assert shapes[key] == shape, key
    # The architecture is recoverable from the names and shapes alone, as OpenAI's build_model does.
    assert config_from_openai_state_dict(model.state_dict()) == model_config(name)


@pytest.mark.parametrize("name,size", [pytest.param("ViT-B-32", 224, marks=pytest.mark.slow),
                                       pytest.param("RN50", 224, marks=pytest.mark.slow), ("tiny", 64), ("tiny-vit", 64)])
def test_tower_output_shapes(name, size):
    torch.manual_seed(0)
    model = CLIP(model_config(name)).eval()
    cfg = model.config
    images = torch.randn(2, 3, size, size)
    texts = torch.randint(0, cfg.text.vocab_size - 1, (2, cfg.text.context_length))
    texts[:, 5] = cfg.text.vocab_size - 1   # end-of-text: the highest id
    with torch.no_grad():
        img, txt, scale = model(images, texts)
        raw = model.encode_image(images)
    assert img.shape == txt.shape == (2, cfg.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(F.normalize(raw, dim=-1), img, atol=1e-6)
    assert math.isclose(float(scale), 1 / 0.07, rel_tol=1e-6)


def test_text_feature_is_read_at_end_of_text_and_ignores_later_tokens():
    torch.manual_seed(0)
    model = CLIP(model_config("tiny").with_vocab(600)).eval()
    a = torch.zeros(1, 32, dtype=torch.long)
    a[0, :4] = torch.tensor([598, 10, 20, 599])
    b = a.clone()
    b[0, 6:9] = torch.tensor([33, 44, 55])   # after the end token: masked out by causality
    with torch.no_grad():
        assert torch.allclose(model.encode_text(a), model.encode_text(b), atol=1e-6)


def test_text_features_do_not_depend_on_how_far_the_batch_is_trimmed():
    """encode_text runs only up to the batch's last end-of-text (rounded up to 8): a caption's
    feature is the same beside a short caption (4 columns run, 8 after rounding) as beside one
    that fills the whole context (nothing trimmed)."""
    torch.manual_seed(0)
    model = CLIP(model_config("tiny").with_vocab(600)).eval()
    short = torch.zeros(2, 32, dtype=torch.long)
    short[:, 0], short[0, 1:3], short[0, 3] = 598, torch.tensor([10, 20]), 599
    short[1, 1], short[1, 2] = 30, 599
    full = short.clone()
    full[1] = torch.cat([torch.tensor([598]), torch.randint(1, 598, (30,)), torch.tensor([599])])
    both = model.encode_text(torch.stack([short[0], full[1]]))
    alone = model.encode_text(short)
    assert torch.allclose(both[0], alone[0], atol=1e-6)
    assert not torch.allclose(both[1], alone[1], atol=1e-3)   # the long caption was read to its end
    assert model.encode_text(short[:0]).shape == (0, 128)        # an empty batch stays empty


def test_attention_equals_torch_multihead_attention():
    """OpenAI's blocks use nn.MultiheadAttention; ours takes its weights and gives its outputs."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    ours = SelfAttention(64, 4)
    ours.load_state_dict(mha.state_dict())
    x = torch.randn(3, 10, 64)
    causal = torch.triu(torch.full((10, 10), float("-inf")), 1)
    with torch.no_grad():
        assert torch.allclose(ours(x), mha(x, x, x, need_weights=False)[0], atol=1e-5)
        assert torch.allclose(ours(x, causal=True), mha(x, x, x, attn_mask=causal, need_weights=False)[0], atol=1e-5)


def test_openai_state_dict_loads_strictly_and_gives_the_same_embeddings():
    torch.manual_seed(1)
    src = CLIP(CLIPConfig(64, VisionConfig(32, 2, 64, 8), TextConfig(16, 700, 64, 1, 2))).eval()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd.update(input_resolution=32, context_length=16, vocab_size=700)   # what OpenAI's archives add
    loaded = load_openai_state_dict(sd).eval()
    images, texts = torch.randn(2, 3, 32, 32), torch.randint(0, 699, (2, 16))
    with torch.no_grad():
        assert torch.equal(src.encode_image(images), loaded.encode_image(images))
        assert torch.equal(src.encode_text(texts), loaded.encode_text(texts))


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = CLIP(model_config("tiny").with_vocab(600))
    images, texts = torch.randn(4, 3, 64, 64), torch.randint(0, 599, (4, 32))
    grads = []
    for on in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(on)
        backward_batch(model, images, texts)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


# --- loss --------------------------------------------------------------------------------------

def _reference_loss(img, txt, scale):
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _features(n=16, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_loss_equals_reference_in_one_process():
    img, txt = _features()
    img.requires_grad_(), txt.requires_grad_()
    ours = clip_loss(img, txt, torch.tensor(10.0))
    ours.backward()
    g_ours = img.grad.clone()
    img.grad = None
    ref = _reference_loss(img, txt, torch.tensor(10.0))
    ref.backward()
    assert torch.allclose(ours, ref) and torch.allclose(g_ours, img.grad, atol=1e-7)
    # Perfectly aligned features give a small loss; the loss is symmetric in its two inputs.
    assert clip_loss(img.detach(), img.detach(), torch.tensor(100.0)) < 0.01
    assert torch.allclose(clip_loss(img, txt, torch.tensor(5.0)), clip_loss(txt, img, torch.tensor(5.0)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_loss(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    img, txt = _features()
    n = len(img) // world
    mine_i = img[rank * n:(rank + 1) * n].clone().requires_grad_()
    mine_t = txt[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss = clip_loss(mine_i, mine_t, torch.tensor(10.0))
    loss.backward()
    torch.save({"loss": loss.detach(), "g_img": mine_i.grad, "g_txt": mine_t.grad}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_loss_across_two_processes_equals_full_batch_reference(tmp_path):
    """Local loss + gather with gradients, averaged over ranks as DDP does = the full-batch loss."""
    world = 2
    torch.multiprocessing.spawn(_two_rank_loss, args=(world, _free_port(), tmp_path), nprocs=world)
    img, txt = _features()
    img.requires_grad_(), txt.requires_grad_()
    ref = _reference_loss(img, txt, torch.tensor(10.0))
    ref.backward()
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert torch.allclose(sum(p["loss"] for p in parts) / world, ref, atol=1e-6)
    # DDP averages gradients over ranks: the features' gradient / world is the reference gradient.
    assert torch.allclose(torch.cat([p["g_img"] for p in parts]) / world, img.grad, atol=1e-7)
    assert torch.allclose(torch.cat([p["g_txt"] for p in parts]) / world, txt.grad, atol=1e-7)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_large_batch():
    # A ViT: batch norm (the ResNets) takes its statistics per micro-batch, so it cannot be exact.
    torch.manual_seed(0)
    model = CLIP(model_config("tiny-vit").with_vocab(600))
    images, texts = torch.randn(16, 3, 64, 64), torch.randint(0, 599, (16, 32))
    results = []
    for accum in (1, 4):
        model.zero_grad()
        loss = backward_batch(model, images, texts, accum_steps=accum)
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss1, g1), (loss4, g4) = results
    assert torch.allclose(loss1, loss4, atol=1e-6)
    for name in g1:
        assert torch.allclose(g1[name], g4[name], atol=1e-6, rtol=1e-4), name
    with pytest.raises(ValueError, match="micro-batches"):
        backward_batch(model, images[:10], texts[:10], accum_steps=4)


def test_weight_decay_groups_and_schedule():
    model = CLIP(model_config("tiny-vit").with_vocab(600))
    no_decay, decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in nd and "ln_final.weight" in nd and "visual.class_embedding" in nd
    assert "transformer.resblocks.0.attn.in_proj_bias" in nd
    assert {names[id(p)] for p in decay["params"]} >= {"visual.proj", "text_projection", "token_embedding.weight"}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    lrs = [cosine_lr(s, 1.0, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.001


def test_named_configs_are_complete():
    assert {"RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14", "tiny", "tiny-vit"} <= set(CONFIGS)
    with pytest.raises(ValueError, match="unknown model"):
        model_config("ViT-Z-99")
