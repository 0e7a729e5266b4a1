#!/usr/bin/env python3
"""Self-check of the model packages' Python side (run by CI after scripts/models/setup.sh).

Builds the CI packages into a temporary directory with export.py --ci-packages (or checks the
packages already in --packages DIR), then verifies: the manifest contract and file hashes;
each TorchScript loads with torch.jit.load and returns the documented shapes; batch-size
independence (a row's output does not depend on the batch it is in, B = 1, 2, 5); the oracle
formulas on synthetic frames (pure red/green/grey/...); random-model outputs that vary across
inputs by >> 1e-3; the reference's two preprocessing paths agree; the filter rules' strict
inequalities and the dedup rule on frames written as JPEGs.
Exits non-zero on any failure; the last line is "N passed, M failed".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reference  # noqa: E402

CI_PACKAGES = {
    "siglip2-tiny": "image-text-scorer",
    "dinov2-tiny": "image-embedder",
    "dinov2-tiny-bf16": "image-embedder",
    "meancolour": "image-text-scorer",
    "thumbnail": "image-embedder",
}
MAX_CI_PACKAGE_BYTES = 2 * 1024 * 1024

passed, failed = 0, 0


def check(name: str):
    def deco(fn):
        global passed, failed
        try:
            fn()
            passed += 1
            print(f"ok    {name}")
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL  {name}: {e}")
            traceback.print_exc(limit=3)
        return fn

    return deco


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def pixels(pkg_manifest, b, seed=0):
    im = pkg_manifest["image"]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, im["height"], im["width"], generator=g)
    m = torch.tensor(im["mean"]).view(1, 3, 1, 1)
    s = torch.tensor(im["std"]).view(1, 3, 1, 1)
    return (x - m) / s


def varied_pixels(pkg_manifest, b, seed=0):
    """b different-looking images (colour, gradient direction, noise level), normalised."""
    im = pkg_manifest["image"]
    h, w = im["height"], im["width"]
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w)
    out = []
    for i in range(b):
        base = torch.rand(3, 1, 1, generator=g)
        ramp = (yy * (i % 3) + xx * (2 - i % 3)) / 2
        noise = torch.rand(3, h, w, generator=g) * (0.05 + 0.3 * (i % 2))
        out.append((0.6 * base + 0.4 * ramp + noise).clamp(0, 1))
    x = torch.stack(out)
    m = torch.tensor(im["mean"]).view(1, 3, 1, 1)
    s = torch.tensor(im["std"]).view(1, 3, 1, 1)
    return (x - m) / s


def as_tuple(o):
    return o if isinstance(o, tuple) else (o,)


def solid(rgb, size=(96, 64)):
    return Image.new("RGB", size, rgb)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packages", type=Path, help="check these packages instead of building the CI ones")
    ap.add_argument("--keep", type=Path, help="build the CI packages here (kept) instead of a temp dir")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    tmp = tempfile.TemporaryDirectory(prefix="dataminer-models-")
    root = args.packages or args.keep or Path(tmp.name) / "models"
    if not args.packages:

        @check("export.py --ci-packages runs in < 60 s")
        def _():
            t0 = time.time()
            subprocess.run(
                [sys.executable, str(HERE / "export.py"), "--out", str(root), "--ci-packages"],
                check=True,
            )
            dt = time.time() - t0
            expect(dt < 60, f"took {dt:.1f} s")

        names = list(CI_PACKAGES)
    else:
        names = sorted(p.name for p in root.iterdir() if (p / "manifest.json").exists())

    pkgs = {}
    for name in names:
        path = root / name

        @check(f"{name}: manifest contract and sha256 of every file")
        def _():
            m = json.loads((path / "manifest.json").read_text())
            expect(m["format"] == 1, "format != 1")
            expect(m["name"] == name, f"name {m['name']!r} != directory {name!r}")
            expect(m["kind"] in ("image-text-scorer", "image-embedder"), f"kind {m['kind']!r}")
            if name in CI_PACKAGES:
                expect(m["kind"] == CI_PACKAGES[name], f"kind {m['kind']}")
            src = m["source"]
            expect(
                src.startswith("random-init seed ") or src.startswith("checkpoint ") or src.startswith("oracle "),
                f"source {src!r}",
            )
            expect(m["dtype"] == ("bfloat16" if name.endswith("-bf16") else "float32"), f"dtype {m['dtype']}")
            im = m["image"]
            expect(set(im) == {"height", "width", "resize", "resample", "rescale", "mean", "std"}, f"image keys {sorted(im)}")
            expect(im["resize"] == "squash" and im["resample"] in ("bilinear", "bicubic"), "resize/resample")
            expect(abs(im["rescale"] - 1 / 255) < 1e-15 and len(im["mean"]) == 3 and len(im["std"]) == 3, "rescale/mean/std")
            expect(isinstance(m["embedding_dim"], int) and m["embedding_dim"] > 0, "embedding_dim")
            want = {"image.pt"}
            if m["kind"] == "image-text-scorer":
                t = m["text"]
                expect(set(t) == {"length", "pad_id", "lowercase", "tokenizer"}, f"text keys {sorted(t)}")
                expect(t["lowercase"] is True and t["tokenizer"] == "tokenizer.json", "text block")
                expect(isinstance(m["logit_scale"], float) and isinstance(m["logit_bias"], float), "logit scale/bias")
                want |= {"text.pt", "tokenizer.json"}
            else:
                expect("text" not in m and "logit_scale" not in m, "embedder has scorer fields")
            on_disk = {p.name for p in path.iterdir()} - {"manifest.json"}
            expect(want <= on_disk, f"missing {want - on_disk}")
            expect(set(m["files"]) == on_disk, f"files {sorted(m['files'])} != on disk {sorted(on_disk)}")
            for f, digest in m["files"].items():
                expect(hashlib.sha256((path / f).read_bytes()).hexdigest() == digest, f"{f}: sha256 mismatch")
            if name in CI_PACKAGES:
                size = sum(p.stat().st_size for p in path.iterdir())
                expect(size < MAX_CI_PACKAGE_BYTES, f"{size} bytes is not tiny")
            pkgs[name] = reference.Package(path)

        if name not in pkgs:
            continue
        pkg = pkgs[name]
        m = pkg.manifest
        D = m["embedding_dim"]

        @check(f"{name}: image.pt shapes and batch independence (B = 1, 2, 5)")
        def _():
            x5 = pixels(m, 5, seed=1)
            with torch.no_grad():
                o5 = as_tuple(pkg.image_tower(x5))
                o1 = [as_tuple(pkg.image_tower(x5[i : i + 1])) for i in range(5)]
                o2 = as_tuple(pkg.image_tower(x5[1:3]))
            if m["kind"] == "image-text-scorer":
                expect(len(o5) == 1 and tuple(o5[0].shape) == (5, D), f"shape {[tuple(o.shape) for o in o5]}")
            else:
                expect(len(o5) == 2, f"{len(o5)} outputs, want (pooler, last_hidden_state)")
                expect(tuple(o5[0].shape) == (5, D), f"pooler {tuple(o5[0].shape)}")
                expect(o5[1].dim() == 3 and o5[1].shape[0] == 5 and o5[1].shape[2] == D, f"hidden {tuple(o5[1].shape)}")
                expect(o5[1].shape[1] >= 2, "hidden has no token after token 0")
            for k in range(len(o5)):
                expect(all(o.dtype == torch.float32 for o in o5), "dtype")
                for i in range(5):
                    err = (o5[k][i] - o1[i][k][0]).abs().max().item()
                    expect(err < 1e-4, f"output {k} row {i}: B=5 vs B=1 differ by {err}")
                err = (o5[k][1:3] - o2[k]).abs().max().item()
                expect(err < 1e-4, f"output {k}: B=5 vs B=2 differ by {err}")

        @check(f"{name}: no CPU device constant in the traced graphs (they must run on CUDA too)")
        def _():
            import re

            for f in ("image.pt", "text.pt"):
                if not (pkg.path / f).exists():
                    continue
                g = str(torch.jit.load(str(pkg.path / f)).inlined_graph)
                hits = re.findall(r'.{0,60}(?:value="cpu"|Device\(|value=cpu).{0,20}', g)
                expect(not hits, f"{f}: {hits[:2]}")

        if m["kind"] == "image-text-scorer":

            @check(f"{name}: text.pt shapes, batch independence, tokenizer fits the vocabulary")
            def _():
                from tokenizers import Tokenizer

                t = m["text"]
                tok = Tokenizer.from_file(str(pkg.path / "tokenizer.json"))
                V = tok.get_vocab_size()
                emb = [v for k, v in pkg.text_tower.state_dict().items() if k.endswith("embedding.weight") or k.endswith("table.weight")]
                expect(emb, "no token embedding table in text.pt")
                rows = emb[0].shape[0]
                expect(V <= rows, f"tokenizer vocab {V} > embedding rows {rows}")
                if name in CI_PACKAGES:
                    expect(V == rows, f"tokenizer vocab {V} != model vocab {rows}")
                expect(0 <= t["pad_id"] < V, "pad_id out of range")
                ids = reference.encode_prompts(pkg, ["Red", "a dog on the beach", "anything", "zzzz", "BLUE sky"], None)
                expect(tuple(ids.shape) == (5, t["length"]), f"ids {tuple(ids.shape)}")
                expect(ids[0].tolist() == reference.encode_prompts(pkg, ["red"], None)[0].tolist(), "not lower-cased")
                expect(int(ids[0, -1]) == t["pad_id"], "not padded with pad_id")
                with torch.no_grad():
                    o5 = pkg.text_tower(ids)
                    o1 = torch.cat([pkg.text_tower(ids[i : i + 1]) for i in range(5)])
                expect(tuple(o5.shape) == (5, D), f"shape {tuple(o5.shape)}")
                expect((o5 - o1).abs().max().item() < 1e-4, "B=5 vs B=1 differ")
                long = " ".join(["red"] * (t["length"] + 1))
                try:
                    reference.encode_prompts(pkg, [long], None)
                    raise AssertionError("a prompt longer than the text length was accepted")
                except SystemExit:
                    pass

        if m["source"].startswith("random-init"):

            @check(f"{name}: random-model outputs vary across inputs by >> 1e-3")
            def _():
                x = varied_pixels(m, 6)
                with torch.no_grad():
                    o = as_tuple(pkg.image_tower(x))
                # per-frame vectors as the stages use them: features / pooler, hidden_cls, hidden_mean
                vecs = [o[0]] if len(o) == 1 else [o[0], o[1][:, 0], o[1][:, 1:].mean(1)]
                for k, v in enumerate(vecs):
                    v = torch.nn.functional.normalize(v, dim=-1)
                    spread = (v[:, None] - v[None]).abs().amax(dim=-1).max().item()
                    expect(spread > 0.02, f"image vector {k} spread {spread}")
                if m["kind"] == "image-text-scorer":
                    ids = reference.encode_prompts(pkg, ["red", "a dog", "blue sky", "people on a beach"], None)
                    with torch.no_grad():
                        ft = torch.nn.functional.normalize(pkg.text_tower(ids), dim=-1)
                        fi = torch.nn.functional.normalize(o[0], dim=-1)
                    spread = (ft[:, None] - ft[None]).abs().amax(dim=-1).max().item()
                    expect(spread > 0.05, f"text spread {spread}")
                    s = torch.sigmoid(math.exp(m["logit_scale"]) * fi @ ft.T + m["logit_bias"])
                    expect(s.max() - s.min() > 0.05, f"scores all within {float(s.max() - s.min())}")

    # ------------------------------------------------------------------------------------------
    # Oracle formulas.
    if "meancolour" in pkgs:
        pkg = pkgs["meancolour"]
        m = pkg.manifest
        pre = reference.Preprocessor(m["image"], "hf", None)
        words = ["red", "green", "blue", "white", "black", "yellow", "grey", "anything", "zebra"]
        ids = reference.encode_prompts(pkg, words, None)
        with torch.no_grad():
            txt = reference.l2n(pkg.text_tower(ids))

        def scores(images):
            with torch.no_grad():
                img = reference.l2n(pkg.image_tower(pre(images)))
            return torch.sigmoid(math.exp(m["logit_scale"]) * img @ txt.T + m["logit_bias"])

        @check("meancolour: worked example (pure red frame vs `red` = 0.894932) and the formula")
        def _():
            s = scores([solid((255, 0, 0))])[0]
            want = sigmoid(20 / math.sqrt(2) - 12)
            expect(abs(float(s[0]) - want) < 1e-5 and abs(want - 0.894932) < 1e-6, f"red {float(s[0])} != {want}")
            expect(abs(float(s[7]) - want) < 1e-5, f"anything {float(s[7])}")
            expect(float(s[1]) < 1e-5 and float(s[8]) < 1e-5, "green / unknown not ~sigmoid(-12)")
            expect(abs(m["logit_scale"] - math.log(20)) < 1e-12 and m["logit_bias"] == -12.0, "scale/bias")
            # a near colour: d_red = 0.2 -> w = 0.5 -> cos(red) = 0.5/sqrt(1.25)
            s = scores([solid((204, 0, 0))])[0]
            d = 51 / 255
            w = 1 - d / 0.4
            expect(abs(float(s[0]) - sigmoid(20 * w / math.sqrt(1 + w * w) - 12)) < 1e-5, f"near red {float(s[0])}")
            expect(abs(float(s[7]) - sigmoid(20 / math.sqrt(1 + w * w) - 12)) < 1e-5, "near red anything")

        @check("meancolour: score > 0.5 iff the mean colour is close; `anything` > 0.5 on every frame")
        def _():
            frames = {
                "red": solid((255, 0, 0)),
                "green": solid((0, 255, 0)),
                "blue": solid((0, 0, 255)),
                "white": solid((255, 255, 255)),
                "black": solid((0, 0, 0)),
                "yellow": solid((255, 255, 0)),
                "grey": solid((128, 128, 128)),
            }
            rng = np.random.default_rng(0)
            extra = [solid(tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(40)]
            extra += [Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)) for _ in range(5)]
            s = scores(list(frames.values()) + extra)
            for i, colour in enumerate(frames):
                for j, word in enumerate(words[:7]):
                    expect((float(s[i, j]) > 0.5) == (word == colour), f"{colour} frame vs {word}: {float(s[i, j])}")
            expect(bool((s[:, 7] > 0.5).all()), f"anything min {float(s[:, 7].min())}")
            expect(bool((s[:, 8] < 0.5).all()), "unknown word scored > 0.5")
            protos = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (255, 255, 0), (128, 128, 128)]) / 255
            for k, im in enumerate(extra[:40]):
                x = np.asarray(im, dtype=np.float64)[0, 0] / 255
                d = np.sqrt(((protos - x) ** 2).sum(-1))
                for j in range(7):
                    expect((float(s[7 + k, j]) > 0.5) == (d[j] < 0.1), f"random colour {x * 255} vs {words[j]}")

    if "thumbnail" in pkgs:
        pkg = pkgs["thumbnail"]
        m = pkg.manifest
        pre = reference.Preprocessor(m["image"], "numpy", None)

        @check("thumbnail: formula (grey 16x16 average pool, mean-subtracted, L2-normalised)")
        def _():
            rng = np.random.default_rng(1)
            ims = [Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in range(3)]
            x = pre(ims)
            with torch.no_grad():
                pooler, hidden = pkg.image_tower(x)
            xn = x.numpy().astype(np.float64)
            H, W = xn.shape[2:]
            grey = xn.mean(axis=1)
            pooled = grey.reshape(3, 16, H // 16, 16, W // 16).mean(axis=(2, 4)).reshape(3, 256)
            c = pooled - pooled.mean(axis=1, keepdims=True)
            expect((np.linalg.norm(c, axis=1) > 1e-3).all(), "test images too flat")
            want = c / np.linalg.norm(c, axis=1, keepdims=True)
            expect(np.abs(pooler.numpy() - want).max() < 1e-5, "pooler != formula")
            expect(tuple(hidden.shape) == (3, 2, 256), f"hidden {tuple(hidden.shape)}")
            expect(torch.equal(hidden[:, 0], pooler) and torch.equal(hidden[:, 1:].mean(1), pooler), "hidden tokens != pooler")
            with torch.no_grad():
                z, _ = pkg.image_tower(pre([solid((200, 10, 10))]))
            expect(float(z.abs().max()) == 0.0, "a uniform frame is not the zero vector")

    # ------------------------------------------------------------------------------------------
    # The reference on JPEG frames: both preprocessing paths, filter strictness, dedup.
    if {"meancolour", "thumbnail"} <= set(pkgs):
        data = Path(tmp.name) / "data"
        fdir = data / "frames" / "1"
        fdir.mkdir(parents=True)
        grad = np.zeros((72, 128, 3), dtype=np.float64)
        grad[..., 0] = np.linspace(0, 255, 128)[None, :]
        grad[..., 1] = np.linspace(0, 255, 72)[:, None]
        images = [
            solid((255, 0, 0), (128, 72)),
            solid((0, 255, 0), (128, 72)),
            Image.fromarray(grad.astype(np.uint8)),
            Image.fromarray((grad * 0.97 + 4).astype(np.uint8)),
            Image.fromarray(grad[:, ::-1].astype(np.uint8)),
            None,
        ]
        frames = []
        for i, im in enumerate(images, 1):
            p = fdir / f"frame_{i:06d}.jpg"
            if im is None:
                p.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
            else:
                im.save(p, quality=92)
            frames.append({"index": i, "source_frame": i - 1, "pts_s": (i - 1) / 25, "path": f"frames/1/frame_{i:06d}.jpg"})
        manifest = fdir / "manifest.json"
        manifest.write_text(json.dumps({"version": 1, "video_id": 1, "video_path": "v/1.mp4", "settings": {}, "source": {}, "frames": frames}))

        def ref(package, *extra):
            out = Path(tmp.name) / "ref.json"
            reference.main(["--package", str(root / package), "--frames", str(manifest), "--data-root", str(data), "--out", str(out), *extra])
            return json.loads(out.read_text())

        @check("reference: transformers' processor and the numpy path agree (all packages)")
        def _():
            for name, pkg in pkgs.items():
                fr = reference.load_frames(manifest, data, [1, 2, 3, 4, 5])
                ims = [reference.decode(p) for _, p in fr]
                a = reference.Preprocessor(pkg.image, "hf", None)(ims)
                b = reference.Preprocessor(pkg.image, "numpy", None)(ims)
                expect(a.shape == b.shape, f"{name}: {a.shape} vs {b.shape}")
                err = (a - b).abs().max().item()
                expect(err < 1e-5, f"{name}: preprocessing differs by {err}")

        @check("reference filter: strict inequalities, negatives, junk, unreadable frames")
        def _():
            r = ref("meancolour", "--positive", "red", "--positive", "green", "--threshold", "0.5")
            expect(r["kept"] == [1, 2] and r["frames_unreadable"] == [6], f"kept {r['kept']} unreadable {r['frames_unreadable']}")
            red = r["frames"][0]["pos_max"]
            # threshold equal to the score: not kept (strict)
            r = ref("meancolour", "--positive", "red", "--threshold", repr(float(red)))
            expect(r["kept"] == [], f"pos_max == threshold kept {r['kept']}")
            r = ref("meancolour", "--positive", "red", "--threshold", repr(float(np.nextafter(red, 0))))
            expect(r["kept"] == [1], f"just below: {r['kept']}")
            # negatives: anything on every frame as negative with a high negative threshold
            r = ref("meancolour", "--positive", "red", "--negative", "green", "--threshold", "0.5", "--negative-threshold", "0.5", "--margin-threshold", "0.05")
            expect(r["kept"] == [1], f"negative: {r['kept']}")
            r = ref("meancolour", "--positive", "anything", "--negative", "red", "--threshold", "0.5", "--negative-threshold", "0.5", "--margin-threshold", "0.0")
            expect(r["kept"] == [2, 3, 4, 5], f"negative red: {r['kept']}")
            r = ref("meancolour", "--positive", "anything", "--junk", "green", "--threshold", "0.5", "--junk-threshold", "0.3", "--junk-margin-threshold", "0.05")
            expect(r["kept"] == [1, 3, 4, 5], f"junk: {r['kept']}")
            # margin boundary: pos_max - neg_max == margin is not kept, just below is
            args = ["--positive", "anything", "--negative", "zebra", "--threshold", "0.5", "--negative-threshold", "0.5"]
            f = ref("meancolour", *args)["frames"][0]
            margin = f["pos_max"] - f["neg_max"]
            r = ref("meancolour", *args, "--margin-threshold", repr(float(margin)))
            expect(1 not in r["kept"], "margin equal to the difference kept the frame")
            r = ref("meancolour", *args, "--margin-threshold", repr(float(np.nextafter(margin, 0))))
            expect(1 in r["kept"], "margin just below the difference dropped the frame")

        @check("reference dedup: cos >= threshold with any kept frame drops, in frame order, with priors")
        def _():
            r = ref("thumbnail", "--threshold", "0.9")
            by = {f["index"]: f for f in r["frames"]}
            expect(by[4]["kept"] is False and by[4]["duplicate_of"] == {"frame": 3}, f"frame 4: {by[4]}")
            expect(by[5]["kept"] is True, "mirrored gradient was dropped")
            expect(r["kept"] == [1, 2, 3, 5] and r["frames_unreadable"] == [6], f"kept {r['kept']}")
            sim = by[4]["similarity"]
            r = ref("thumbnail", "--threshold", repr(float(sim)))
            expect(4 not in r["kept"], "cos == threshold must drop")
            r = ref("thumbnail", "--threshold", repr(float(np.nextafter(np.float32(sim), np.float32(2)))))
            expect(4 in r["kept"], "cos just below the threshold must keep")
            prior = Path(tmp.name) / "prior.npy"
            np.save(prior, np.array([by[3]["embedding"]], dtype=np.float32))
            r = ref("thumbnail", "--threshold", "0.9", "--prior", str(prior))
            by = {f["index"]: f for f in r["frames"]}
            expect(by[3]["duplicate_of"] == {"prior": 0} and r["kept"] == [1, 2, 5], f"with prior: {r['kept']}")

    if "siglip2-tiny" in pkgs and "dinov2-tiny" in pkgs and {"meancolour", "thumbnail"} <= set(pkgs):

        @check("reference runs the random packages (filter and dedup, hidden_mean) and --bench")
        def _():
            r = ref("siglip2-tiny", "--positive", "red", "--positive", "a dog", "--negative", "blue sky", "--threshold", "0.3")
            sc = np.array([f["scores"] for f in r["frames"] if "scores" in f])
            expect(sc.shape == (5, 3) and np.ptp(sc) > 1e-2, f"scores {sc}")
            r = ref("dinov2-tiny", "--threshold", "0.99", "--embedding", "hidden_mean")
            expect(len(r["frames"]) == 6 and r["frames_unreadable"] == [6], "dedup frames")
            b = ref("dinov2-tiny", "--bench", "--batch-size", "4", "--threads", "1")
            expect(b["frames"] == 6 and b["frames_per_s"] > 0, f"bench {b}")

    if not args.packages:

        @check("export.py --from: checkpoint directories round-trip (SigLIP, DINOv2) with their processor configs")
        def _():
            import export
            from transformers import Dinov2Config, Dinov2Model, PreTrainedTokenizerFast

            ck = Path(tmp.name) / "checkpoints"
            model, tok, _, length, _ = export.siglip_random("tiny", 5)
            model.save_pretrained(ck / "siglip")
            PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(ck / "siglip")
            (ck / "siglip" / "preprocessor_config.json").write_text(json.dumps({
                "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
                "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
            torch.manual_seed(5)
            dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56, patch_size=8)).eval()
            dino.save_pretrained(ck / "dinov2")
            (ck / "dinov2" / "preprocessor_config.json").write_text(json.dumps({
                "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 36},
                "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
            out = Path(tmp.name) / "from"
            for kind, name in (("siglip2", "siglip"), ("dinov2", "dinov2")):
                subprocess.run([sys.executable, str(HERE / "export.py"), "--out", str(out), "--from", str(ck / name), "--kind", kind], check=True)
            m = json.loads((out / "siglip2" / "manifest.json").read_text())
            expect(m["source"] == "checkpoint siglip" and m["image"]["resample"] == "bicubic" and m["text"]["length"] == length, f"siglip manifest {m}")
            expect(abs(m["logit_scale"] - model.logit_scale.item()) < 1e-6 and abs(m["logit_bias"] - model.logit_bias.item()) < 1e-6, "logit scale/bias")
            x = varied_pixels(m, 3)
            ids = reference.encode_prompts(reference.Package(out / "siglip2"), ["red", "a dog"], None)
            with torch.no_grad():
                err_i = (torch.jit.load(str(out / "siglip2" / "image.pt"))(x) - model.get_image_features(pixel_values=x).pooler_output).abs().max().item()
                err_t = (torch.jit.load(str(out / "siglip2" / "text.pt"))(ids) - model.get_text_features(input_ids=ids).pooler_output).abs().max().item()
            expect(err_i < 1e-5 and err_t < 1e-5, f"siglip package != checkpoint model ({err_i}, {err_t})")
            m = json.loads((out / "dinov2" / "manifest.json").read_text())
            expect((m["image"]["height"], m["image"]["width"], m["image"]["resample"]) == (32, 32, "bicubic"), f"dinov2 image {m['image']}")
            x = varied_pixels(m, 3)
            with torch.no_grad():
                pooler, hidden = torch.jit.load(str(out / "dinov2" / "image.pt"))(x)
                want = dino(pixel_values=x)
            expect((pooler - want.pooler_output).abs().max().item() < 1e-5, "dinov2 pooler != checkpoint model")
            expect((hidden - want.last_hidden_state).abs().max().item() < 1e-5, "dinov2 hidden != checkpoint model")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
