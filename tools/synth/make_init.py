#!/usr/bin/env python3
"""Writes the *initial* (untrained) checkpoint of the small synthetic-benchmark Griffon in the
released Griffon-G layout: a Gemma-2 LLM, a CLIP-style main tower at --image-size, the conv_reduce
projector, and a region encoder (a second small CLIP) with its projector, plus a tokenizer made
for the benchmark's vocabulary. Weights get transformers' own initialisation (seeded); nothing is
pretrained. `griffon train` then trains it through the three stages (docs/SYNTH.md).

    /work/venv/bin/python tools/synth/make_init.py --out runs/synth/init-1022 --image-size 1022

Requirements: tools/reference/requirements.txt (torch, transformers, tokenizers, safetensors)."""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPVisionConfig, CLIPVisionModel, Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

SHAPES = ["circle", "square", "triangle", "diamond", "ring", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def corpus():
    """Every word the benchmark's prompts and answers use (train/src/synth.rs, core/src/request.rs)."""
    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    lines = [
        "Examine the image for any objects from the category set. Report the coordinates of each detected "
        "object. The category set includes " + ", ".join(SHAPES) + ".",
        "Answer in the format: class name-[x1, y1, x2, y2], and concatenate them with &.",
        "Can you point out the leftmost rightmost topmost bottommost tiny small large red circle in the image "
        "and provide the coordinates of its location?",
        "Please generate a distinguishing description for the region [0.123,0.456,0.789,0.999] in the image.",
        "In this image, find all objects similar to <region> and output their coordinates.",
        "circle-[0.012,0.345,0.678,0.901]&square-[0.100,0.200,0.300,0.400]&None",
        "a tiny small large " + " ".join(names) + " an the of",
        "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?-_[](){}<>&'\"/\\|@#$%^*+=~`\n\t",
    ]
    return lines + names


def tokenizer(folder, vocab_size):
    """Gemma-shaped BPE (' ' -> '▁', <bos> added, Gemma's turn markers) whose digits stay single
    tokens, as in Gemma's and Llama's tokenizers: a coordinate is `0 . d d d`."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\u2581", behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus() * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(folder)
    return fast


def clip_config(hidden, layers, heads, image, patch):
    c = CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, image_size=image, patch_size=patch, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, projection_dim=hidden)
    c._attn_implementation = "eager"
    return c


def released_clip_key(k):
    return k if k.startswith("vision_model.") else "vision_model." + k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, default=1022, help="main tower input size (a multiple of --patch)")
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--vision-width", type=int, default=128)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--vision-heads", type=int, default=2)
    ap.add_argument("--region-size", type=int, default=112)
    ap.add_argument("--region-layers", type=int, default=2)
    ap.add_argument("--llm-hidden", type=int, default=192)
    ap.add_argument("--llm-layers", type=int, default=4)
    ap.add_argument("--llm-heads", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.image_size % a.patch or a.region_size % a.patch:
        ap.error("--image-size and --region-size must be multiples of --patch")

    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    torch.manual_seed(a.seed)
    tok = tokenizer(a.out, a.vocab)
    H = a.llm_hidden
    hd = H // a.llm_heads
    lcfg = Gemma2Config(vocab_size=len(tok), hidden_size=H, intermediate_size=4 * H, num_hidden_layers=a.llm_layers,
                        num_attention_heads=a.llm_heads, num_key_value_heads=a.llm_heads, head_dim=hd,
                        query_pre_attn_scalar=hd, sliding_window=4096, attn_logit_softcapping=50.0,
                        final_logit_softcapping=30.0, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1,
                        bos_token_id=2, tie_word_embeddings=True, max_position_embeddings=8192)
    llm = Gemma2ForCausalLM(lcfg)
    tcfg = clip_config(a.vision_width, a.vision_layers, a.vision_heads, a.image_size, a.patch)
    tower = CLIPVisionModel(tcfg)
    rcfg = clip_config(a.vision_width, a.region_layers, a.vision_heads, a.region_size, a.patch)
    region = CLIPVisionModel(rcfg)
    conv = torch.nn.Conv2d(a.vision_width, H, kernel_size=3, stride=2, padding=1)
    linear = torch.nn.Linear(H, H)
    rp = torch.nn.Sequential(torch.nn.Linear(a.vision_width, H), torch.nn.ReLU(), torch.nn.Linear(H, H))

    tensors = {k: v for k, v in llm.state_dict().items() if k != "lm_head.weight"}
    for k, v in tower.state_dict().items():
        if "position_ids" not in k:
            tensors["model.vision_tower.vision_tower." + released_clip_key(k)] = v
    tensors["model.mm_projector.conv.weight"] = conv.weight
    tensors["model.mm_projector.conv.bias"] = conv.bias
    tensors["model.mm_projector.linear.weight"] = linear.weight
    tensors["model.mm_projector.linear.bias"] = linear.bias
    for k, v in region.state_dict().items():
        if "position_ids" not in k:
            tensors["model.prompt_visual_encoder." + released_clip_key(k)] = v
    for k, v in rp.state_dict().items():
        tensors["model.prompt_projector." + k] = v
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})

    tower_dir = f"clip-synth-{a.image_size}"
    cfg = lcfg.to_dict()
    cfg.pop("_attn_implementation", None)
    cfg.pop("attn_implementation", None)
    cfg.update({
        "model_type": "gemma2_Griffon", "architectures": ["GriffonGemma2ForCausalLM"],
        "mm_vision_tower": f"checkpoints/{tower_dir}", "mm_projector_type": "conv_reduce",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_hidden_size": a.vision_width,
        "image_aspect_ratio": "square", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "unshared_visual_encoder": True, "torch_dtype": "float32",
    })
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for c, d in [(tcfg, tower_dir), (rcfg, "clip-vit-large-patch14")]:
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
        c.save_pretrained(os.path.join(a.out, d))
    n = sum(t.numel() for t in tensors.values())
    print(json.dumps({"out": a.out, "parameters": n, "vocab": len(tok), "image_size": a.image_size,
                      "image_tokens": ((a.image_size // a.patch + 1) // 2) ** 2}))


if __name__ == "__main__":
    main()
