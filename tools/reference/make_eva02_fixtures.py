#!/usr/bin/env python3
"""Golden fixtures for model/src/eva02.rs (tests: model/tests/eva02.rs).

A tiny random timm `Eva` configured like `eva02_large_patch14_clip_336` (timm/models/eva.py):
separate q/k/v projections (q and v bias, no k bias), inner attention LayerNorm
(`scale_attn_inner`), SwiGLU MLP with inner LayerNorm (`swiglu_mlp`, `scale_mlp`), 2-D rotary
embedding on patch tokens (`use_rot_pos_emb`, RotaryEmbeddingCat, interleaved pairs, index grid
rescaled to `ref_feat_shape`), learned absolute position table with a CLS row, token pooling (so
the final `norm` exists but is not part of any hidden state).

Tiny config: embed 32, depth 3, heads 2 (head_dim 16), patch 8, img 56 (grid 7), mlp hidden
int(32 * 8/3) = 85, ref_feat_shape (4, 4) (the L/14-336 model also runs its rope on a grid that
differs from the reference: 24 vs 16).

Writes model/tests/fixtures/eva02/:
  timm.safetensors       weights, timm state-dict names (separate q/k/v)
  evaclip.safetensors    the same weights in the EVA-CLIP layout (`visual.` prefix, q_bias/v_bias,
                         inner_attn_ln, mlp.w1/w2/ffn_ln/w3, plus rope buffers and a head that a
                         loader must ignore), i.e. the inverse of timm's checkpoint_filter_fn renames
  fused.safetensors      a second tiny model with fused qkv (`attn.qkv.weight`, `q_bias`, `v_bias`)
  golden.safetensors     per case <case>: <case>.pixels [B,3,S,S], <case>.hs<i> (hidden state i:
                         0 = embeddings + pos (norm_pre is Identity), i = output of block i) and
                         <case>.feat_m2 (hidden_states[-2] without CLS)
  golden.json            config + case list (size, interp, which weights)

Cases: native 56; 72 (upsampled table) and 40 (downsampled) where the timm model is built at the
new img_size and the 56-px weights are loaded through timm's checkpoint_filter_fn, which resizes
pos_embed with resample_abs_pos_embed(interpolation='bicubic', antialias=True) -> Interp bicubic-aa,
and the rope is built for the new grid with the same ref_feat_shape. The fused model runs at 56.

Re-run: /work/venv/bin/python tools/reference/make_eva02_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models.eva import Eva, checkpoint_filter_fn

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "model" / "tests" / "fixtures" / "eva02"

CFG = dict(
    img_size=56,
    patch_size=8,
    embed_dim=32,
    depth=3,
    num_heads=2,
    mlp_ratio=4 * 2 / 3,
    qkv_fused=False,
    swiglu_mlp=True,
    scale_mlp=True,
    scale_attn_inner=True,
    use_rot_pos_emb=True,
    ref_feat_shape=(4, 4),
    global_pool="token",
    num_classes=0,
)


def build(seed: int, **over) -> Eva:
    torch.manual_seed(seed)
    m = Eva(**dict(CFG, **over)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or (
                p.ndim == 1 and "norm" in name and name.endswith("weight")
            ):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1 or name in ("cls_token", "pos_embed"):
                p.copy_(0.3 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in**0.5)
    return m


def hidden_states(m: Eva, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        h = m.patch_embed(x)
        h, rope = m._pos_embed(h)
        h = m.norm_pre(h)
        states = [h]
        for blk in m.blocks:
            h = blk(h, rope=rope)
            states.append(h)
        # Cross-check the manual loop against timm's own API.
        inter = m.forward_intermediates(x, indices=len(m.blocks), output_fmt="NLC", intermediates_only=True,
                                        return_prefix_tokens=True)
        for i, (sp, pre) in enumerate(inter):
            full = torch.cat([pre, sp], 1)
            assert torch.equal(full, states[i + 1]), f"forward_intermediates disagrees at block {i}"
    return states


def to_evaclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the renames in timm's checkpoint_filter_fn (eva.py) for the no-qkv layout."""
    out = {}
    for k, v in sd.items():
        k2 = k.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias")
        k2 = k2.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2")
        k2 = k2.replace("mlp.norm", "mlp.ffn_ln").replace("mlp.fc2", "mlp.w3")
        k2 = k2.replace("attn.norm", "attn.inner_attn_ln")
        out["visual." + k2] = v
    g = CFG["img_size"] // CFG["patch_size"]
    hd = CFG["embed_dim"] // CFG["num_heads"]
    # EVA-CLIP stores its rope tables as buffers; timm's filter drops them (`'rope' in k`).
    out["visual.rope.freqs_cos"] = torch.randn(g * g, hd)
    out["visual.rope.freqs_sin"] = torch.randn(g * g, hd)
    out["visual.head.weight"] = torch.randn(16, CFG["embed_dim"])
    out["visual.head.bias"] = torch.randn(16)
    out["logit_scale"] = torch.tensor(4.6)
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    golden: dict[str, torch.Tensor] = {}
    cases = []

    base = build(0)
    sd = {k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}
    save_file(sd, str(OUT / "timm.safetensors"))
    save_file({k: v.contiguous() for k, v in to_evaclip(sd).items()}, str(OUT / "evaclip.safetensors"))

    fused = build(1, qkv_fused=True)
    fsd = {k: v.detach().clone().contiguous() for k, v in fused.state_dict().items()}
    save_file(fsd, str(OUT / "fused.safetensors"))

    def add_case(name: str, model: Eva, size: int, batch: int, interp: str, weights: str, seed: int):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, size, size, generator=g)
        hs = hidden_states(model, x)
        golden[f"{name}.pixels"] = x.contiguous()
        for i, h in enumerate(hs):
            golden[f"{name}.hs{i}"] = h.clone().contiguous()
        golden[f"{name}.feat_m2"] = hs[-2][:, 1:].clone().contiguous()
        cases.append(dict(name=name, size=size, interp=interp, weights=weights, states=len(hs)))

    add_case("native56", base, 56, 2, "bicubic-aa", "timm", 10)
    for size in (72, 40):
        m = Eva(**dict(CFG, img_size=size)).eval()
        m.load_state_dict(checkpoint_filter_fn(sd, m), strict=True)
        add_case(f"interp{size}", m, size, 1, "bicubic-aa", "timm", 10 + size)
    add_case("fused56", fused, 56, 1, "bicubic-aa", "fused", 99)

    save_file(golden, str(OUT / "golden.safetensors"))
    meta = dict(
        generator="tools/reference/make_eva02_fixtures.py",
        timm=timm.__version__,
        torch=torch.__version__,
        config=dict(CFG, ref_feat_shape=list(CFG["ref_feat_shape"])),
        intermediate_size=int(CFG["embed_dim"] * CFG["mlp_ratio"]),
        layer_norm_eps=1e-6,
        cases=cases,
    )
    (OUT / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
