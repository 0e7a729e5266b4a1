#!/usr/bin/env python3
"""Build dataminer model packages: TorchScript towers + tokenizer.json + manifest.json.

A package is the directory <out>/<name>/ (see scripts/models/README.md for the contract):

  image-text-scorer: image.pt  forward(pixel_values f32 [B,3,H,W]) -> f32 [B,D]  (not normalised)
                     text.pt   forward(input_ids i64 [N,L])         -> f32 [N,D]  (not normalised)
                     tokenizer.json
  image-embedder:    image.pt  forward(pixel_values f32 [B,3,H,W]) -> (pooler f32 [B,D],
                                                                       last_hidden_state f32 [B,T,D])

Modes:
  --from <hf checkpoint dir> --kind siglip2|dinov2|dinov3   real weights copied onto disk
  --random-init --kind siglip2|dinov2|dinov3 --size tiny|mid|full --seed N
  --oracle meancolour|thumbnail
  --ci-packages                                             the four CI packages in one go

Every tower is traced with torch.jit.trace on CPU with a batch of 2 and checked against eager
outputs for batches of 1 and 5 (dynamic batch). Nothing here touches the network.
--dtype bfloat16 (SigLIP2/DINO): the weights are bfloat16 and each tower casts its float32
input to bfloat16 and its outputs back to float32 inside the traced graph, so a package's I/O is
float32 whatever it computes in (GPU agents: bf16 packages; CPU agents and CI: float32).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import warnings

import torch
from torch import nn

# Shapes other than the batch are fixed per package, so the tracer's "treated as a constant"
# warnings are expected; trace_checked verifies the traced graph on other batch sizes.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

FORMAT = 1
RESCALE = 1.0 / 255.0
RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling codes in HF processor configs
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# --------------------------------------------------------------------------------------------
# Built-in English word list for the offline tokenizer of random-init text towers.
# Colour words first (the oracle and tests use them), then common nouns, then function words.
COLOUR_WORDS = """red green blue yellow cyan magenta white black grey gray orange purple pink
brown lime aqua fuchsia violet gold silver dark light bright""".split()
NOUN_WORDS = """person people man woman child boy girl baby face hand dog cat bird horse cow sheep
fish animal car truck bus bicycle bike motorcycle train boat ship plane airplane road street
highway bridge building house home city town tree forest grass flower field garden park
mountain hill river lake sea ocean beach sand water sky cloud sun moon star night day rain
snow fire smoke light lamp window door wall floor room kitchen table chair bed sofa desk
computer phone screen television camera book paper sign text logo letter number food fruit
apple banana bread cake pizza cup glass bottle plate bowl ball game sport football soccer
tennis player team crowd stage music guitar piano concert shop store market office school
street sidewalk traffic vehicle wheel engine robot machine tool box bag shirt dress hat shoe
frame image photo picture video scene shot view background foreground object thing nothing
anything something everything blur noise pattern color colour shape line circle square
triangle""".split()
FUNCTION_WORDS = """a an the of in on at to from with without and or not no is are was
this that these those it its there here some many one two three four five very more less
big small large little tall short long old new young good bad empty full open closed inside
outside front back left right top bottom up down over under near far close away""".split()
PUNCTUATION = list(".,!?;:'\"-()/&")


def word_list() -> list[str]:
    seen: dict[str, None] = {}
    for w in COLOUR_WORDS + NOUN_WORDS + FUNCTION_WORDS + PUNCTUATION:
        seen.setdefault(w.lower(), None)
    return list(seen)


def build_wordlevel_tokenizer(words: list[str]):
    """[PAD]=0, [UNK]=1, then the words. Lower-case normaliser, whitespace/punctuation split,
    no special tokens added, no padding or truncation configured (callers pad to L with pad_id)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok, vocab


def strip_tokenizer(tok):
    tok.no_padding()
    tok.no_truncation()
    return tok


# --------------------------------------------------------------------------------------------
# Tower wrappers (one small tensor-returning module per tower).


class SiglipImageTower(nn.Module):
    def __init__(self, vision_model):
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).pooler_output


class SiglipTextTower(nn.Module):
    def __init__(self, text_model):
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # No attention mask: SigLIP was trained on max_length-padded text without one, and
        # get_text_features with the processor's output does the same.
        return self.text_model(input_ids=input_ids).pooler_output


class Dinov2Tower(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values)
        return out.pooler_output, out.last_hidden_state


class FixedRope(nn.Module):
    """DINOv3's RoPE for one fixed input size, precomputed into buffers so the traced graph
    holds no CPU-device constants (the original builds coordinates with torch.arange(device=...))."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__()
        self.register_buffer("cos", cos.clone())
        self.register_buffer("sin", sin.clone())

    def forward(self, pixel_values: torch.Tensor):
        return self.cos.to(pixel_values.dtype), self.sin.to(pixel_values.dtype)


class Dinov3Tower(nn.Module):
    """Returns (pooler, [CLS, patch tokens]): register tokens are dropped from
    last_hidden_state so that token 0 is CLS and tokens 1.. are exactly the patch tokens."""

    def __init__(self, model, height: int, width: int):
        super().__init__()
        self.model = model
        self.num_registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
        with torch.no_grad():
            cos, sin = model.rope_embeddings(torch.zeros(1, 3, height, width))
        model.rope_embeddings = FixedRope(cos, sin)

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values)
        hidden = out.last_hidden_state
        hidden = torch.cat([hidden[:, :1], hidden[:, 1 + self.num_registers :]], dim=1)
        return out.pooler_output, hidden


# --------------------------------------------------------------------------------------------
# Oracles.

# (word aliases, sRGB 0..255) of the mean-colour oracle's prototypes. Pairwise distances in
# [0,1]^3 are >= 0.866 > 2*RADIUS, so at most one kernel is non-zero for any colour.
MEANCOLOUR_PROTOTYPES = [
    (["red"], (255, 0, 0)),
    (["green", "lime"], (0, 255, 0)),
    (["blue"], (0, 0, 255)),
    (["yellow"], (255, 255, 0)),
    (["cyan", "aqua"], (0, 255, 255)),
    (["magenta", "fuchsia"], (255, 0, 255)),
    (["white"], (255, 255, 255)),
    (["black"], (0, 0, 0)),
    (["grey", "gray"], (128, 128, 128)),
]
MEANCOLOUR_RADIUS = 0.4
MEANCOLOUR_SCALE = 20.0  # exp(logit_scale)
MEANCOLOUR_BIAS = -12.0  # score > 0.5  <=>  cos > 0.6
MEANCOLOUR_TEXT_LENGTH = 8


class MeanColourImage(nn.Module):
    def __init__(self):
        super().__init__()
        protos = torch.tensor([c for _, c in MEANCOLOUR_PROTOTYPES], dtype=torch.float32) / 255.0
        self.register_buffer("prototypes", protos)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.mean(dim=(2, 3))  # [B,3], mean RGB in [0,1]
        d = torch.sqrt(((x[:, None, :] - self.prototypes[None, :, :]) ** 2).sum(-1))  # [B,K]
        w = torch.clamp(1.0 - d / MEANCOLOUR_RADIUS, min=0.0)
        one = torch.ones_like(x[:, :1])
        return torch.cat([w, one, one * 0.0], dim=1)  # [B, K+2]: kernels, anything, unknown


class MeanColourText(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table, freeze=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids[:, 0])  # only the first token counts


def meancolour_vocab():
    vocab = {"[PAD]": 0, "[UNK]": 1, "anything": 2}
    k_of = {}
    for k, (words, _) in enumerate(MEANCOLOUR_PROTOTYPES):
        for w in words:
            vocab[w] = len(vocab)
            k_of[w] = k
    return vocab, k_of


THUMBNAIL_MIN_NORM = 1e-4


class ThumbnailImage(nn.Module):
    def forward(self, pixel_values: torch.Tensor):
        grey = pixel_values.mean(dim=1, keepdim=True)  # [B,1,H,W]
        pooled = nn.functional.adaptive_avg_pool2d(grey, (16, 16)).flatten(1)  # [B,256]
        centred = pooled - pooled.mean(dim=1, keepdim=True)
        norm = centred.norm(p=2, dim=1, keepdim=True)
        # A (near-)uniform frame is exactly zero, not float rounding noise blown up to unit length.
        emb = torch.where(norm > THUMBNAIL_MIN_NORM, centred / norm.clamp_min(THUMBNAIL_MIN_NORM), torch.zeros_like(centred))
        return emb, torch.stack([emb, emb], dim=1)


# --------------------------------------------------------------------------------------------
# Helpers.


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


# The dtype SigLIP2/DINO towers compute in (--dtype); packages' inputs and outputs stay float32.
COMPUTE_DTYPE = torch.float32
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Compute(nn.Module):
    """Runs `inner` in `dtype`: float inputs are cast to it, outputs back to float32, inside the
    traced graph (a traced model cannot be cast afterwards: transformers' embeddings record the
    weights' dtype as a constant)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor):
        if x.is_floating_point():
            x = x.to(self.dtype)
        out = self.inner(x)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


def in_compute_dtype(tower: nn.Module) -> nn.Module:
    return tower if COMPUTE_DTYPE == torch.float32 else Compute(tower, COMPUTE_DTYPE).eval()


def dtype_name() -> str:
    return next(k for k, v in DTYPE_NAMES.items() if v == COMPUTE_DTYPE)


def trace_checked(module: nn.Module, make_input, name: str) -> torch.jit.ScriptModule:
    """Trace with B=2, then check the traced module against eager for B=1 and B=5."""
    module = module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, (make_input(2),), check_trace=False, strict=False)
        for b in (1, 5):
            x = make_input(b)
            want = _as_tuple(module(x))
            got = _as_tuple(traced(x))
            if len(want) != len(got):
                raise SystemExit(f"{name}: traced module returns {len(got)} outputs, eager {len(want)}")
            for w, g in zip(want, got):
                if w.shape != g.shape or g.shape[0] != b:
                    raise SystemExit(f"{name}: batch {b}: traced shape {tuple(g.shape)} != eager {tuple(w.shape)}")
                err = (w - g).abs().max().item()
                # bfloat16 keeps 8 bits of mantissa: traced and eager may round differently.
                rel = 1e-4 if COMPUTE_DTYPE == torch.float32 else 3e-2
                tol = rel * max(1.0, w.abs().max().item())
                if not err <= tol:
                    raise SystemExit(f"{name}: batch {b}: traced differs from eager by {err}")
    return traced


def pixel_input(h: int, w: int, mean, std, seed: int = 0):
    def make(b: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + b)
        x = torch.rand(b, 3, h, w, generator=g)  # as if rescaled to [0,1]
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - m) / s

    return make


def ids_input(length: int, vocab: int, pad_id: int, seed: int = 0):
    def make(n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + n)
        ids = torch.randint(0, vocab, (n, length), generator=g)
        ids[:, length // 2 :] = pad_id
        return ids

    return make


def image_block(h, w, resample, mean, std):
    return {
        "height": int(h),
        "width": int(w),
        "resize": "squash",
        "resample": resample,
        "rescale": RESCALE,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


class Package:
    """Collects files in a temporary directory, then writes manifest.json and moves it into place."""

    def __init__(self, out: Path, name: str):
        self.out = Path(out)
        self.name = name
        self.out.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.out))
        os.chmod(self.dir, 0o755)

    def save_module(self, fname: str, traced) -> None:
        torch.jit.save(traced, str(self.dir / fname))

    def write_text(self, fname: str, text: str) -> None:
        (self.dir / fname).write_text(text, encoding="utf-8")

    def finish(self, manifest: dict) -> Path:
        files = {}
        for p in sorted(self.dir.iterdir()):
            if p.name == "manifest.json":
                continue
            files[p.name] = sha256_file(p)
        manifest = {"format": FORMAT, "name": self.name, **manifest, "files": files}
        (self.dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        final = self.out / self.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.dir, final)
        return final


# --------------------------------------------------------------------------------------------
# SigLIP (SigLIP2 fixed-resolution checkpoints are SiglipModel in transformers).

SIGLIP_SIZES = {
    # vision/text hidden, layers, heads, mlp, image, patch, text length
    "tiny": dict(hidden=32, layers=2, heads=2, mlp=64, image=32, patch=8, length=16),
    "mid": dict(hidden=384, layers=6, heads=6, mlp=1536, image=224, patch=16, length=16),
    # google/siglip2-so400m-patch14-384 shapes (text vocab: Gemma's 256000)
    "full": dict(hidden=1152, layers=27, heads=16, mlp=4304, image=384, patch=14, length=64, vocab=256000),
}


def siglip_random(size: str, seed: int):
    from transformers import SiglipConfig, SiglipModel

    s = SIGLIP_SIZES[size]
    tok, vocab = build_wordlevel_tokenizer(word_list())
    vocab_size = s.get("vocab", len(vocab))
    common = dict(
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
    )
    config = SiglipConfig(
        text_config=dict(
            **common,
            vocab_size=vocab_size,
            max_position_embeddings=s["length"],
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=None,
            projection_size=s["hidden"],
        ),
        vision_config=dict(**common, image_size=s["image"], patch_size=s["patch"]),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    prep = dict(height=s["image"], width=s["image"], resample="bilinear", mean=[0.5] * 3, std=[0.5] * 3)
    return model, tok, 0, s["length"], prep


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hf_preprocessing(ckpt: Path, default: dict) -> dict:
    """Input size, resample, mean/std from the checkpoint's preprocessor_config.json.
    squash resize to crop_size when the processor crops (DINOv2), else to size."""
    p = ckpt / "preprocessor_config.json"
    if not p.exists():
        print(f"warning: {p} missing; using defaults {default}", file=sys.stderr)
        return default
    cfg = _read_json(p)
    size = cfg.get("crop_size") if cfg.get("do_center_crop") else cfg.get("size")
    size = size or {}
    if "height" in size:
        h, w = size["height"], size["width"]
    elif "shortest_edge" in size:
        h = w = size["shortest_edge"]
    else:
        h, w = default["height"], default["width"]
    resample = cfg.get("resample", None)
    if resample is None:
        resample_name = default["resample"]
    elif resample not in RESAMPLE_NAMES:
        raise SystemExit(f"{p}: resample {resample} is not bilinear (2) or bicubic (3)")
    else:
        resample_name = RESAMPLE_NAMES[resample]
    rescale = cfg.get("rescale_factor", RESCALE)
    if cfg.get("do_rescale", True) and abs(rescale - RESCALE) > 1e-12:
        raise SystemExit(f"{p}: rescale_factor {rescale} is not 1/255")
    mean = cfg.get("image_mean", default["mean"]) if cfg.get("do_normalize", True) else [0.0] * 3
    std = cfg.get("image_std", default["std"]) if cfg.get("do_normalize", True) else [1.0] * 3
    if isinstance(mean, (int, float)):
        mean = [mean] * 3
    if isinstance(std, (int, float)):
        std = [std] * 3
    return dict(height=h, width=w, resample=resample_name, mean=mean, std=std)


def siglip_from(ckpt: Path):
    from transformers import AutoConfig, SiglipModel

    config = AutoConfig.from_pretrained(ckpt, local_files_only=True)
    if config.model_type == "siglip2":
        raise SystemExit(
            f"{ckpt}: a SigLIP2 NaFlex checkpoint (model_type siglip2); use a fixed-resolution one "
            "such as google/siglip2-so400m-patch14-384 (model_type siglip)"
        )
    if config.model_type != "siglip":
        raise SystemExit(f"{ckpt}: model_type {config.model_type!r}, expected 'siglip'")
    model = SiglipModel.from_pretrained(ckpt, local_files_only=True, torch_dtype=torch.float32).eval()
    tok, pad_id = hf_tokenizer(ckpt, config)
    length = int(config.text_config.max_position_embeddings)
    vc = config.vision_config
    prep = hf_preprocessing(
        ckpt, dict(height=vc.image_size, width=vc.image_size, resample="bicubic", mean=[0.5] * 3, std=[0.5] * 3)
    )
    return model, tok, pad_id, length, prep


def hf_tokenizer(ckpt: Path, config):
    from tokenizers import Tokenizer

    # The fast tokenizer transformers builds for the checkpoint (its tokenizer.json with the
    # tokenizer config applied, e.g. add_bos/add_eos), so the package encodes exactly as
    # AutoTokenizer does; the raw tokenizer.json if transformers cannot load it. Pad id from the
    # tokenizer config.
    pad_id, tok = None, None
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(ckpt, local_files_only=True)
        pad_id = hf.pad_token_id
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is not None:
            tok = Tokenizer.from_str(backend.to_str())
    except Exception as e:  # noqa: BLE001 - fall back to the raw tokenizer.json
        print(f"warning: AutoTokenizer failed ({e}); reading tokenizer.json", file=sys.stderr)
    if tok is None:
        path = ckpt / "tokenizer.json"
        if not path.exists():
            raise SystemExit(f"{ckpt}: no tokenizer.json and transformers could not build one")
        tok = Tokenizer.from_file(str(path))
    if pad_id is None:
        pad_id = getattr(config.text_config, "pad_token_id", None)
    if pad_id is None:
        raise SystemExit(f"{ckpt}: cannot determine the pad token id")
    return strip_tokenizer(tok), int(pad_id)


def calibration_images(h: int, w: int, n: int = 16) -> torch.Tensor:
    """A fixed, varied set of synthetic images in [0,1]: solid colours, colour bars,
    checkerboards, gradients with noise."""
    g = torch.Generator().manual_seed(1234)
    yy = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    xx = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    bars = torch.tensor(
        [[1, 1, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float32
    )
    imgs = []
    for i in range(n):
        c = torch.rand(3, 1, 1, generator=g)
        t = i % 4
        if t == 0:
            img = c.expand(3, h, w) + 0.05 * torch.randn(3, h, w, generator=g)
        elif t == 1:
            img = bars[(xx * (4 + i % 5)).long() % 8].permute(2, 0, 1)
        elif t == 2:
            size = 2 + i % 6
            m = (((yy * h).long() // size + (xx * w).long() // size) % 2).float()
            img = c * m + (1 - c) * (1 - m)
        else:
            ramp = (yy * (i % 3) + xx * (2 - i % 3)) / 2
            img = 0.5 * c + 0.5 * ramp + 0.2 * torch.rand(3, h, w, generator=g)
        imgs.append(img.clamp(0, 1))
    return torch.stack(imgs)


def calibrate_logits(image_tower, text_tower, tok, pad_id, length, prep):
    """Random towers: logit_bias 0 and exp(logit_scale) = 1.5 / RMS(cos) over a fixed synthetic
    image set and prompts, so scores sit in sigmoid's sensitive range instead of saturating (a
    real SigLIP's scale/bias would give ~0 everywhere, which hides parity bugs)."""
    x = calibration_images(prep["height"], prep["width"])
    m = torch.tensor(prep["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(prep["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - m) / s
    prompts = ["red", "a green tree", "blue sky", "a dog on the beach", "a car", "white wall", "black", "people"]
    ids = torch.tensor([encode_prompt(tok, p, length, pad_id) for p in prompts])
    with torch.no_grad():
        fi = nn.functional.normalize(image_tower(x), dim=-1)
        ft = nn.functional.normalize(text_tower(ids), dim=-1)
    rms = float((fi @ ft.T).pow(2).mean().sqrt())
    scale = min(50.0, 1.5 / max(rms, 1e-6))
    return math.log(scale), 0.0


def encode_prompt(tok, prompt: str, length: int, pad_id: int) -> list[int]:
    ids = tok.encode(prompt.lower()).ids
    if len(ids) > length:
        raise ValueError(f"prompt {prompt!r} is {len(ids)} tokens, longer than the text length {length}")
    return ids + [pad_id] * (length - len(ids))


def export_siglip(out: Path, name: str, model, tok, pad_id, length, prep, source: str, calibrate: bool):
    t0 = time.time()
    image_tower = in_compute_dtype(SiglipImageTower(model.vision_model).eval())
    text_tower = in_compute_dtype(SiglipTextTower(model.text_model).eval())
    h, w = prep["height"], prep["width"]
    vocab = model.config.text_config.vocab_size
    ti = trace_checked(image_tower, pixel_input(h, w, prep["mean"], prep["std"]), f"{name}/image.pt")
    tt = trace_checked(text_tower, ids_input(length, min(vocab, tok.get_vocab_size()), pad_id), f"{name}/text.pt")
    with torch.no_grad():
        dim = int(image_tower(pixel_input(h, w, prep["mean"], prep["std"])(1)).shape[-1])
        tdim = int(text_tower(ids_input(length, 2, pad_id)(1)).shape[-1])
    if dim != tdim:
        raise SystemExit(f"{name}: image dim {dim} != text dim {tdim}")
    if calibrate:
        logit_scale, logit_bias = calibrate_logits(image_tower, text_tower, tok, pad_id, length, prep)
    else:
        logit_scale, logit_bias = float(model.logit_scale.item()), float(model.logit_bias.item())
    pkg = Package(out, name)
    pkg.save_module("image.pt", ti)
    pkg.save_module("text.pt", tt)
    tok.save(str(pkg.dir / "tokenizer.json"))
    path = pkg.finish(
        {
            "kind": "image-text-scorer",
            "source": source,
            "dtype": dtype_name(),
            "image": image_block(h, w, prep["resample"], prep["mean"], prep["std"]),
            "text": {"length": int(length), "pad_id": int(pad_id), "lowercase": True, "tokenizer": "tokenizer.json"},
            "logit_scale": float(logit_scale),
            "logit_bias": float(logit_bias),
            "embedding_dim": dim,
        }
    )
    report(path, t0)
    return path


# --------------------------------------------------------------------------------------------
# DINOv2 / DINOv3.

DINO_SIZES = {
    "tiny": dict(hidden=32, layers=2, heads=2, mlp=64, image=32, patch=8, pos_image=32),
    "mid": dict(hidden=384, layers=6, heads=6, mlp=1536, image=224, patch=14, pos_image=518),
    # facebook/dinov2-base (ViT-B/14, 518-position table interpolated to 224) / DINOv3 ViT-B/16
    "full": dict(hidden=768, layers=12, heads=12, mlp=3072, image=224, patch=14, pos_image=518),
}


def dino_random(kind: str, size: str, seed: int):
    s = dict(DINO_SIZES[size])
    # tiny: 10x the default init scale, or the CLS token barely depends on the image (cosine
    # > 0.998 between any two frames of one scene) and parity tests could hardly tell frames apart.
    init = 0.2 if size == "tiny" else 0.02
    torch.manual_seed(seed)
    prep = dict(height=s["image"], width=s["image"], resample="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if kind == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        config = Dinov2Config(
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            mlp_ratio=s["mlp"] // s["hidden"],
            image_size=s["pos_image"],
            patch_size=s["patch"],
            initializer_range=init,
        )
        return Dinov2Model(config).eval(), prep
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    patch = 16 if size != "tiny" else s["patch"]
    prep["resample"] = "bilinear"
    config = DINOv3ViTConfig(
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        image_size=s["image"],
        patch_size=patch,
        num_register_tokens=4,
        layerscale_value=1.0,
        initializer_range=init,
    )
    return DINOv3ViTModel(config).eval(), prep


def dino_from(kind: str, ckpt: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ckpt, local_files_only=True)
    if kind == "dinov2":
        from transformers import Dinov2Model

        if config.model_type != "dinov2":
            raise SystemExit(f"{ckpt}: model_type {config.model_type!r}, expected 'dinov2'")
        model = Dinov2Model.from_pretrained(ckpt, local_files_only=True, torch_dtype=torch.float32).eval()
        default = dict(height=224, width=224, resample="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    else:
        from transformers import DINOv3ViTModel

        if config.model_type != "dinov3_vit":
            raise SystemExit(f"{ckpt}: model_type {config.model_type!r}, expected 'dinov3_vit'")
        model = DINOv3ViTModel.from_pretrained(ckpt, local_files_only=True, torch_dtype=torch.float32).eval()
        default = dict(height=224, width=224, resample="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return model, hf_preprocessing(ckpt, default)


def export_dino(out: Path, name: str, kind: str, model, prep, source: str):
    t0 = time.time()
    h, w = prep["height"], prep["width"]
    tower = Dinov2Tower(model) if kind == "dinov2" else Dinov3Tower(model, h, w)
    tower = in_compute_dtype(tower.eval())
    traced = trace_checked(tower, pixel_input(h, w, prep["mean"], prep["std"]), f"{name}/image.pt")
    with torch.no_grad():
        pooled, _ = tower(pixel_input(h, w, prep["mean"], prep["std"])(1))
    pkg = Package(out, name)
    pkg.save_module("image.pt", traced)
    path = pkg.finish(
        {
            "kind": "image-embedder",
            "source": source,
            "dtype": dtype_name(),
            "image": image_block(h, w, prep["resample"], prep["mean"], prep["std"]),
            "embedding_dim": int(pooled.shape[-1]),
        }
    )
    report(path, t0)
    return path


# --------------------------------------------------------------------------------------------
# Oracle packages.

ORACLE_SIZE = 64

MEANCOLOUR_README = """# meancolour oracle (image-text-scorer)

Not a neural network: a scorer with an exact formula, so tests can predict every score.
Preprocessing (manifest): squash-resize to {size}x{size} (bilinear), rescale 1/255, mean 0, std 1,
so the image tower sees RGB in [0,1].

Image tower, D = {dim}: x = mean RGB of the input over all pixels (3 numbers in [0,1]);
for each prototype colour c_k (k = 0..{kmax}) d_k = |x - c_k| (Euclidean, in [0,1]^3) and
w_k = max(0, 1 - d_k / {radius}); feature = [w_0, ..., w_{kmax}, 1, 0].

Prototypes (sRGB / 255), in feature order:
{protos}

Text tower: WordLevel tokenizer (lower-cased; [PAD]=0, [UNK]=1, `anything`=2, colour words), text
length {length}, pad id 0. Only the FIRST token of the prompt counts: feature = one-hot e_k for a
colour word of prototype k, e_any (index {any_idx}) for `anything`, e_unk (index {unk_idx}) for [UNK]
or [PAD] (an unknown first word).

Score = sigmoid(exp(logit_scale) * cos(img, txt) + logit_bias), exp(logit_scale) = {scale:g},
logit_bias = {bias:g}, so score > 0.5 <=> cos > {tau:g}.
Prototypes are >= 0.866 apart (> 2 x {radius}), so at most one w_k is non-zero; with w = that
value (0 if none): |img| = sqrt(1 + w^2) and
  - colour word k:  cos = w_k / sqrt(1 + w^2)   -> score > 0.5 <=> w_k > 0.75 <=> d_k < 0.1
  - `anything`:     cos = 1 / sqrt(1 + w^2) >= 0.7071 -> score >= sigmoid(20*0.70711 - 12) = {any_min:.6f} on every frame
  - unknown word:   cos = 0 -> score = sigmoid(-12) = {unk_score:.3e}

Worked example: a pure red frame (255,0,0): x = (1,0,0), d_red = 0, w_red = 1,
  img = [1,0,0,0,0,0,0,0,0, 1, 0]; cos(img, red) = 1/sqrt(2) = 0.707107;
  score(red) = sigmoid(20 * 0.707107 - 12) = sigmoid(2.142136) = {red:.6f};
  score(anything) = {red:.6f} (same cos); score(green) = sigmoid(-12) = {unk_score:.3e}.
A mid-grey frame (128,128,128) scores {red:.6f} for grey/gray; a frame whose mean colour is far
from every prototype (e.g. (64,160,220)) scores sigmoid(20 - 12) = {far:.6f} for `anything`
and {unk_score:.3e} for every colour word.
Note: ffmpeg's colour name `green` is #008000 (d_green = 0.498): use `lime` or 0x00FF00 for
pure green with lavfi.
"""

THUMBNAIL_README = """# thumbnail oracle (image-embedder)

Not a neural network: an embedder with an exact formula.
Preprocessing (manifest): squash-resize to {size}x{size} (bilinear), rescale 1/255, mean 0, std 1,
so the image tower sees RGB in [0,1].

pooler (D = 256): grey = mean over the 3 channels of the input; 16x16 adaptive average pool
(each cell is the mean of a {cell}x{cell} block); flatten row-major; subtract the mean of the 256
values; divide by its L2 norm, except that a centred vector with L2 norm <= 1e-4 (a uniform frame:
only float rounding is left) gives the zero vector, exactly.
last_hidden_state = stack([pooler, pooler]) ([B,2,256]), so `pooler`, `hidden_cls` (token 0) and
`hidden_mean` (mean of tokens 1..) are the same vector.
A uniform frame gives the zero vector: its cosine with anything is 0 when normalised as
x / max(|x|, eps) (never a duplicate), NaN when divided by |x|. Use textured frames (testsrc2,
gradients) for dedup tests, never solid colours.
"""


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def export_meancolour(out: Path, name: str):
    t0 = time.time()
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab, k_of = meancolour_vocab()
    K = len(MEANCOLOUR_PROTOTYPES)
    dim = K + 2
    table = torch.zeros(len(vocab), dim)
    table[0, K + 1] = 1.0  # [PAD]
    table[1, K + 1] = 1.0  # [UNK]
    table[2, K] = 1.0  # anything
    for w, k in k_of.items():
        table[vocab[w], k] = 1.0
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    ti = trace_checked(MeanColourImage(), pixel_input(ORACLE_SIZE, ORACLE_SIZE, [0.0] * 3, [1.0] * 3), f"{name}/image.pt")
    tt = trace_checked(MeanColourText(table), ids_input(MEANCOLOUR_TEXT_LENGTH, len(vocab), 0), f"{name}/text.pt")
    pkg = Package(out, name)
    pkg.save_module("image.pt", ti)
    pkg.save_module("text.pt", tt)
    tok.save(str(pkg.dir / "tokenizer.json"))
    protos = "\n".join(
        f"  {k}: {'/'.join(words):<16} ({c[0]},{c[1]},{c[2]})" for k, (words, c) in enumerate(MEANCOLOUR_PROTOTYPES)
    )
    tau = -MEANCOLOUR_BIAS / MEANCOLOUR_SCALE
    pkg.write_text(
        "README.md",
        MEANCOLOUR_README.format(
            size=ORACLE_SIZE,
            dim=dim,
            kmax=K - 1,
            radius=MEANCOLOUR_RADIUS,
            protos=protos,
            length=MEANCOLOUR_TEXT_LENGTH,
            any_idx=K,
            unk_idx=K + 1,
            scale=MEANCOLOUR_SCALE,
            bias=MEANCOLOUR_BIAS,
            tau=tau,
            any_min=sigmoid(MEANCOLOUR_SCALE / math.sqrt(2) + MEANCOLOUR_BIAS),
            unk_score=sigmoid(MEANCOLOUR_BIAS),
            red=sigmoid(MEANCOLOUR_SCALE / math.sqrt(2) + MEANCOLOUR_BIAS),
            far=sigmoid(MEANCOLOUR_SCALE + MEANCOLOUR_BIAS),
        ),
    )
    path = pkg.finish(
        {
            "kind": "image-text-scorer",
            "source": "oracle meancolour",
            "dtype": "float32",
            "image": image_block(ORACLE_SIZE, ORACLE_SIZE, "bilinear", [0.0] * 3, [1.0] * 3),
            "text": {"length": MEANCOLOUR_TEXT_LENGTH, "pad_id": 0, "lowercase": True, "tokenizer": "tokenizer.json"},
            "logit_scale": math.log(MEANCOLOUR_SCALE),
            "logit_bias": MEANCOLOUR_BIAS,
            "embedding_dim": dim,
        }
    )
    report(path, t0)
    return path


def export_thumbnail(out: Path, name: str):
    t0 = time.time()
    ti = trace_checked(ThumbnailImage(), pixel_input(ORACLE_SIZE, ORACLE_SIZE, [0.0] * 3, [1.0] * 3), f"{name}/image.pt")
    pkg = Package(out, name)
    pkg.save_module("image.pt", ti)
    pkg.write_text("README.md", THUMBNAIL_README.format(size=ORACLE_SIZE, cell=ORACLE_SIZE // 16))
    path = pkg.finish(
        {
            "kind": "image-embedder",
            "source": "oracle thumbnail",
            "dtype": "float32",
            "image": image_block(ORACLE_SIZE, ORACLE_SIZE, "bilinear", [0.0] * 3, [1.0] * 3),
            "embedding_dim": 256,
        }
    )
    report(path, t0)
    return path


# --------------------------------------------------------------------------------------------

CI_PACKAGES = ["siglip2-tiny", "dinov2-tiny", "dinov2-tiny-bf16", "meancolour", "thumbnail"]


def report(path: Path, t0: float):
    size = sum(p.stat().st_size for p in path.iterdir())
    print(f"wrote {path} ({size / 1024:.0f} KiB, {time.time() - t0:.1f} s)", flush=True)


def export_random(out: Path, name: str, kind: str, size: str, seed: int):
    source = f"random-init seed {seed}"
    if kind == "siglip2":
        model, tok, pad_id, length, prep = siglip_random(size, seed)
        return export_siglip(out, name, model, tok, pad_id, length, prep, source, calibrate=True)
    model, prep = dino_random(kind, size, seed)
    return export_dino(out, name, kind, model, prep, source)


def main(argv=None) -> int:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="models directory; the package is <out>/<name>/")
    ap.add_argument("--name", help="package name (default: derived from the mode)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--from", dest="ckpt", type=Path, help="Hugging Face checkpoint directory on disk")
    mode.add_argument("--random-init", action="store_true")
    mode.add_argument("--oracle", choices=["meancolour", "thumbnail"])
    mode.add_argument("--ci-packages", action="store_true", help="make " + ", ".join(CI_PACKAGES))
    ap.add_argument("--kind", choices=["siglip2", "dinov2", "dinov3"])
    ap.add_argument("--size", choices=["tiny", "mid", "full"], default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="float32",
                    help="what SigLIP2/DINO towers compute in (I/O stays float32); bfloat16 for GPU agents")
    args = ap.parse_args(argv)
    # As the wire's model names: agents advertise `model:<name>` in a 64-character capability tag.
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,57}", args.name):
        ap.error(f"--name {args.name!r}: a package name is 1-58 of [A-Za-z0-9._-], not starting with '.'")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    global COMPUTE_DTYPE
    COMPUTE_DTYPE = DTYPE_NAMES[args.dtype]

    if args.ci_packages:
        export_random(args.out, "siglip2-tiny", "siglip2", "tiny", args.seed)
        export_random(args.out, "dinov2-tiny", "dinov2", "tiny", args.seed)
        # The same weights computing in bfloat16, as GPU agents run them.
        COMPUTE_DTYPE = torch.bfloat16
        export_random(args.out, "dinov2-tiny-bf16", "dinov2", "tiny", args.seed)
        COMPUTE_DTYPE = DTYPE_NAMES[args.dtype]
        export_meancolour(args.out, "meancolour")
        export_thumbnail(args.out, "thumbnail")
        return 0
    if args.oracle:
        name = args.name or args.oracle
        (export_meancolour if args.oracle == "meancolour" else export_thumbnail)(args.out, name)
        return 0
    if not args.kind:
        ap.error("--kind is required with --from and --random-init")
    if args.random_init:
        export_random(args.out, args.name or f"{args.kind}-{args.size}", args.kind, args.size, args.seed)
        return 0
    ckpt = args.ckpt.resolve()
    if not (ckpt / "config.json").exists():
        raise SystemExit(f"{ckpt}: no config.json (expected a Hugging Face checkpoint directory)")
    source = f"checkpoint {ckpt.name}"
    name = args.name or args.kind
    if args.kind == "siglip2":
        model, tok, pad_id, length, prep = siglip_from(ckpt)
        export_siglip(args.out, name, model, tok, pad_id, length, prep, source, calibrate=False)
    else:
        model, prep = dino_from(args.kind, ckpt)
        export_dino(args.out, name, args.kind, model, prep, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
