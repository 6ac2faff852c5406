"""CLIP, as in Radford et al. (2021): an image tower, a text tower, and a learned temperature.

Parameter names and shapes follow OpenAI's released checkpoints (the layout open_clip also uses
for its `-quickgelu` models), so `load_openai_state_dict` loads a released checkpoint with
`strict=True`. Attention goes through `scaled_dot_product_attention`.

Image towers: the Vision Transformer (ViT-B/32, B/16, L/14 and the small `tiny`) and the
modified ResNet (RN50: three-convolution stem, anti-aliased strided convolutions, attention
pooling). Text tower: a causal Transformer whose feature is read at the end-of-text token
(the highest token id).

The paper's two predictive baselines (section 2.3, Fig. 2) on the same towers: BagOfWords (a
linear layer from the image embedding to the vocabulary) and Captioner (the image embedding as
the prefix of a causal text Transformer that predicts the caption); `make_model` picks by objective.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.errors import InputError

# CLIP's image normalisation (the mean and std of its training images).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12   # an int: ViT; four ints: modified ResNet
    width: int = 768
    patch_size: int = 32
    heads: int | None = None                      # default: width // 64, as OpenAI's models


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True   # OpenAI's models use QuickGELU; GELU is selectable
    grad_checkpointing: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        vision = dict(d["vision"])
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])
        return cls(embed_dim=d["embed_dim"], vision=VisionConfig(**vision), text=TextConfig(**d["text"]),
                   quick_gelu=d.get("quick_gelu", True), grad_checkpointing=d.get("grad_checkpointing", False))

    def with_vocab(self, vocab_size: int, context_length: int | None = None) -> "CLIPConfig":
        text = replace(self.text, vocab_size=vocab_size,
                       context_length=context_length or self.text.context_length)
        return replace(self, text=text)


# The paper's models (Table 19/20 of the paper) and a small one that learns the demo world on a CPU.
CONFIGS = {
    "RN50": CLIPConfig(1024, VisionConfig(224, (3, 4, 6, 3), 64)),
    "ViT-B-32": CLIPConfig(512, VisionConfig(224, 12, 768, 32)),
    "ViT-B-16": CLIPConfig(512, VisionConfig(224, 12, 768, 16)),
    "ViT-L-14": CLIPConfig(768, VisionConfig(224, 24, 1024, 14), TextConfig(77, 49408, 768, 12, 12)),
    # tiny: the modified ResNet at 64 px, one block per stage, width 16 (it learns shapes from ~11k
    # demo images far sooner than a ViT of the same cost; width 32 steps 2x slower and reaches no
    # more per step); tiny-vit: the ViT counterpart.
    "tiny": CLIPConfig(128, VisionConfig(64, (1, 1, 1, 1), 16), TextConfig(32, 49408, 128, 2, 4)),
    "tiny-vit": CLIPConfig(128, VisionConfig(64, 4, 128, 8), TextConfig(32, 49408, 128, 2, 4)),
}


def model_config(name: str) -> CLIPConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known: {', '.join(CONFIGS)}") from None


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's released models were trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (as OpenAI's code does), returned in the input's dtype."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, run through SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, causal: bool = False):
        b, n, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(w, dim=-1)
        q, k, v = (t.view(b, n, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, act: type[nn.Module]):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", act()), ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x, causal: bool = False):
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of pre-norm residual blocks; batch-first (OpenAI's is sequence-first, same weights)."""

    def __init__(self, width: int, layers: int, heads: int, act: type[nn.Module], causal: bool = False):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.grad_checkpointing = False
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, act) for _ in range(layers)])

    def forward(self, x):
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # Recompute activations in the backward pass: memory for compute.
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x

    def init_weights(self):
        # CLIP's initialisation: residual projections scaled down with depth.
        proj_std = self.width ** -0.5 * (2 * self.layers) ** -0.5
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    """ViT: patches by a strided convolution, a class token, pre-LN, features at the class token."""

    def __init__(self, cfg: VisionConfig, output_dim: int, act: type[nn.Module]):
        super().__init__()
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        self.image_size = cfg.image_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads or width // 64, act)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)                       # [b, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet bottleneck with the anti-aliased stride: average pooling before the last 1x1 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            # Same trick on the shortcut: pool, then a 1x1 conv (key names "-1", "0", "1" as OpenAI's).
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * 4, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4))]))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Replaces global average pooling: one attention query (the mean feature) over all positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)                                    # [b, h*w, c]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        b, n, c = x.shape
        h = self.heads
        q = self.q_proj(x[:, :1]).view(b, 1, h, c // h).transpose(1, 2)
        k = self.k_proj(x).view(b, n, h, c // h).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, c // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)
        return self.c_proj(y)


class ModifiedResNet(nn.Module):
    """The paper's ResNet: 3-conv stem with average pooling, anti-aliased strides, attention pooling."""

    def __init__(self, cfg: VisionConfig, output_dim: int):
        super().__init__()
        width, layers = cfg.width, cfg.layers
        self.image_size = cfg.image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(cfg.image_size // 32, embed_dim, cfg.heads or embed_dim // 64, output_dim)
        self.grad_checkpointing = False

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self):
        std = self.attnpool.c_proj.in_features ** -0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        # Each residual branch starts as the identity.
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                nn.init.zeros_(block.bn3.weight)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.attnpool(x)


class _Sizes:
    """The input sizes every objective's model reads from its config."""

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length


class CLIP(_Sizes, nn.Module):
    objective = "contrastive"

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        act = QuickGELU if cfg.quick_gelu else nn.GELU
        if isinstance(cfg.vision.layers, (tuple, list)):
            self.visual = ModifiedResNet(cfg.vision, cfg.embed_dim)
        else:
            self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, act)
        t = cfg.text
        self.transformer = Transformer(t.width, t.layers, t.heads, act, causal=True)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        # The temperature, learned as a log-parameterised multiplicative scale, starts at 1/0.07.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._init_weights()
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def _init_weights(self):
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)
        if isinstance(self.visual, ModifiedResNet):
            self.visual.init_weights()
        else:
            self.visual.transformer.init_weights()

    def set_grad_checkpointing(self, enabled: bool = True):
        self.transformer.grad_checkpointing = enabled
        if isinstance(self.visual, ModifiedResNet):
            self.visual.grad_checkpointing = enabled
        else:
            self.visual.transformer.grad_checkpointing = enabled

    def encode_image(self, image, normalize: bool = False):
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text, normalize: bool = False):
        # Under causal attention nothing after a sequence's end-of-text reaches its feature, so the
        # columns past the batch's last end-of-text are not run (captions fill a fraction of 77),
        # rounded up to a multiple of 8. The length depends on the data, so it is left whole where
        # that cannot be read or would be frozen: meta tensors (FLOP counting), torch.jit.trace
        # (an archive must take any caption) and torch.compile (no graph break, no sync per step).
        if may_trim(text):
            text = trim_padding(text, multiple=8)
        x = self.token_embedding(text) + self.positional_embedding[:text.shape[1]].to(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x))
        # The feature is read at the end-of-text token, the highest id in each sequence.
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image, text):
        """Normalised image and text features, and the logit scale (exp of the parameter)."""
        return self.encode_image(image, normalize=True), self.encode_text(text, normalize=True), self.logit_scale.exp()


# --- the paper's predictive baselines: bag-of-words and a captioning language model ------------

OBJECTIVES = ("contrastive", "bow", "caption")


def image_tower(cfg: CLIPConfig) -> nn.Module:
    """The image tower CLIP builds for ``cfg`` (its output: the ``embed_dim`` image embedding), initialised as CLIP's."""
    act = QuickGELU if cfg.quick_gelu else nn.GELU
    if isinstance(cfg.vision.layers, (tuple, list)):
        visual = ModifiedResNet(cfg.vision, cfg.embed_dim)
        visual.init_weights()
    else:
        visual = VisionTransformer(cfg.vision, cfg.embed_dim, act)
        visual.transformer.init_weights()
    return visual


def _set_tower_checkpointing(visual: nn.Module, enabled: bool):
    if isinstance(visual, ModifiedResNet):
        visual.grad_checkpointing = enabled
    else:
        visual.transformer.grad_checkpointing = enabled


class BagOfWords(_Sizes, nn.Module):
    """The paper's bag-of-words predictor: CLIP's image tower, then one linear layer from the image
    embedding to a logit per token id of the vocabulary. Trained with the soft-target
    cross-entropy against the caption's normalised token counts (loss.bow_loss); no text tower.
    ``forward(images, texts)`` gives each row's loss; ``word_log_probs(images)`` log p(token | image)."""

    objective = "bow"

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.visual = image_tower(cfg)
        self.head = nn.Linear(cfg.embed_dim, cfg.text.vocab_size)
        nn.init.normal_(self.head.weight, std=cfg.embed_dim ** -0.5)
        nn.init.zeros_(self.head.bias)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def set_grad_checkpointing(self, enabled: bool = True):
        _set_tower_checkpointing(self.visual, enabled)

    def word_logits(self, image):
        return self.head(self.visual(image))

    def word_log_probs(self, image):
        return F.log_softmax(self.word_logits(image).float(), dim=-1)

    def forward(self, image, text):
        from clipforge.trainer.loss import bow_loss

        return bow_loss(self.word_logits(image), text)


class Captioner(_Sizes, nn.Module):
    """An image-conditioned Transformer language model over the caption (the paper's third
    objective): CLIP's image tower; its embedding, projected to the text width, is added at the
    start-of-text position, so it is the prefix every later token attends to; then a causal text
    Transformer of CLIP's text tower's shape (the same blocks and parameter names) and a linear
    layer to next-token logits. Trained with teacher forcing (loss.caption_nll); padding after
    end-of-text is neither an input that matters (attention is causal) nor a target."""

    objective = "caption"

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        act = QuickGELU if cfg.quick_gelu else nn.GELU
        t = cfg.text
        self.visual = image_tower(cfg)
        self.image_prefix = nn.Linear(cfg.embed_dim, t.width)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, act, causal=True)
        self.ln_final = LayerNorm(t.width)
        self.lm_head = nn.Linear(t.width, t.vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.normal_(self.image_prefix.weight, std=cfg.embed_dim ** -0.5)
        nn.init.zeros_(self.image_prefix.bias)
        nn.init.normal_(self.lm_head.weight, std=t.width ** -0.5)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def set_grad_checkpointing(self, enabled: bool = True):
        _set_tower_checkpointing(self.visual, enabled)
        self.transformer.grad_checkpointing = enabled

    def prefix(self, image):
        """[b, width]: the image as the language model's prefix."""
        return self.image_prefix(self.visual(image))

    def next_token_logits(self, prefix, text):
        """[b, n - 1, vocab]: logits of text[:, 1:] given the prefix and the tokens before each."""
        n = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        x = torch.cat([x[:, :1] + prefix.to(x.dtype)[:, None], x[:, 1:]], dim=1)
        x = self.ln_final(self.transformer(x))
        return self.lm_head(x[:, :-1])

    def forward(self, image, text):
        from clipforge.trainer.loss import caption_nll

        if may_trim(text):
            text = trim_padding(text)
        return caption_nll(self.next_token_logits(self.prefix(image), text), text)


def may_trim(text: torch.Tensor) -> bool:
    """Whether a batch's length may be read to trim it: not on meta tensors (a FLOP count has no
    values), not while tracing (an archive must take any caption) nor compiling (one graph, no
    sync per step). Untrimmed, the scored outputs are the same."""
    return not (text.is_meta or torch.jit.is_tracing() or torch.compiler.is_compiling())


def trim_padding(text: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """The columns up to the batch's last end-of-text (their count rounded up to ``multiple``):
    under causal attention the rest changes no logit that is scored, so the model need not run over it."""
    if text.shape[0] == 0:
        return text
    n = int(text.argmax(dim=1).max()) + 1
    return text[:, :min(text.shape[1], -(-n // multiple) * multiple)]


def make_model(cfg: CLIPConfig, objective: str = "contrastive") -> nn.Module:
    """The model an objective trains: CLIP (contrastive), BagOfWords (bow) or Captioner (caption)."""
    if objective == "contrastive":
        return CLIP(cfg)
    if objective == "bow":
        return BagOfWords(cfg)
    if objective == "caption":
        return Captioner(cfg)
    raise InputError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


def objective_of(model: nn.Module) -> str:
    return getattr(model, "objective", "contrastive")


def clamp_logit_scale(model: CLIP, max_scale: float = 100.0):
    """The paper clips the temperature's scale at 100 to keep training stable."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(max_scale))


# --- released checkpoints ---------------------------------------------------------------------

_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def config_from_openai_state_dict(sd: dict) -> CLIPConfig:
    """Infer the architecture from an OpenAI-layout state dict (as OpenAI's build_model does)."""
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(patch * grid, layers, width, patch)
    else:
        counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4)]
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        spacial = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(spacial * 32, tuple(counts), width)
    t_width = sd["ln_final.weight"].shape[0]
    text = TextConfig(sd["positional_embedding"].shape[0], sd["token_embedding.weight"].shape[0], t_width,
                      t_width // 64,
                      len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}))
    return CLIPConfig(sd["text_projection"].shape[1], vision, text)


def openai_state_dict(sd: dict) -> dict:
    """Strip what OpenAI's JIT archives and wrappers add (ints, a `module.` prefix)."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in _OPENAI_EXTRA_KEYS}


def load_openai_state_dict(sd: dict, quick_gelu: bool = True) -> CLIP:
    sd = openai_state_dict(sd)
    model = CLIP(replace(config_from_openai_state_dict(sd), quick_gelu=quick_gelu))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model
