#!/usr/bin/env python3
"""Golden fixtures for griffon-rs engine parity (issue: engine core).

Builds tiny random Griffon checkpoints in the *released* layout (Griffon-G gemma2 and the Llama-2
recipe), runs the reference computation with transformers + torch (f32, CPU, eager attention) and
records: preprocessed pixels, every vision hidden state, projector output, region token, prompt
input_ids, prefill logits, and the greedy continuation with its per-token probabilities.

The glue (projector, region encoder, prompt assembly) follows jefferyZhan/Griffon
(`griffon/model/multimodal_projector/builder.py` ConvProjector, `griffon_arch.py`
`encoder_prompts` / `prepare_inputs_labels_for_multimodal`, `mm_utils.tokenizer_image_token`,
`eval/run_griffon.py`); the heavy modules are transformers' own CLIPVisionModel,
Gemma2ForCausalLM and LlamaForCausalLM.

Run from the repo root:  /path/to/venv/bin/python tools/reference/make_parity_fixtures.py
Writes model/tests/fixtures/parity/<case>/ (small; committed).
"""
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (CLIPVisionConfig, CLIPVisionModel, Gemma2Config, Gemma2ForCausalLM,
                          LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "model", "tests", "fixtures", "parity")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_TOKEN_INDEX = -200
LLAMA2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                 "content that the user provides, and assist the user with a variety of tasks using natural language.")

torch.set_grad_enabled(False)

# ----------------------------------------------------------------------------- tokenizers

CORPUS = [
    "Examine the image for any objects from the category set. Report the coordinates of each detected object. "
    "The category set includes person, car, dog, traffic light, red circle, blue square.",
    "Can you point out the man in the red shirt in the image and provide the coordinates of its location?",
    "Please generate a distinguishing description for the region [0.123,0.456,0.789,0.999] in the image.",
    "In this image, find all objects similar to <region> and output their coordinates.",
    "person-[0.012,0.345,0.678,0.901]&car-[0.100,0.200,0.300,0.400]&None",
    "Answer in the format: class name-[x1, y1, x2, y2], and concatenate them with &.",
    "What is in this picture? Describe it briefly. A small green triangle near the top left corner.",
    LLAMA2_SYSTEM,
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?-_[](){}<>&'\"/\\|@#$%^*+=~`\n\t",
]


def gemma_like_tokenizer(folder):
    """A small BPE tokenizer shaped like Gemma's: ' ' -> '▁', no dummy prefix, <bos> added."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(folder)
    return fast


def llama_like_tokenizer(folder):
    """A small BPE tokenizer shaped like Llama-2's (legacy): prepend '▁', ' ' -> '▁', <s> added."""
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=380, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(folder)
    return fast


def qwen_like_tokenizer(folder):
    """A small byte-level BPE tokenizer shaped like Qwen2's: no BOS, ChatML special tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(folder)
    return fast


# ----------------------------------------------------------------------------- reference glue

class ConvProjector(nn.Module):
    """griffon/model/multimodal_projector/builder.py ConvProjector / ConvWoPadProjector."""

    def __init__(self, cin, cout, padding):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, stride=2, kernel_size=3, padding=padding)
        self.linear = nn.Linear(cout, cout)
        self.hidden = cout
        self.gelu = nn.GELU()

    def forward(self, x):
        B, N, C = x.shape
        HW = int(math.sqrt(N))
        x = x.permute(0, 2, 1).reshape(-1, C, HW, HW)
        out = self.gelu(self.conv(x))
        out = out.reshape(B, self.hidden, -1).permute(0, 2, 1)
        return self.linear(out)


def mlp_projector(cin, cout, depth):
    mods = [nn.Linear(cin, cout)]
    for _ in range(1, depth):
        mods += [nn.GELU(), nn.Linear(cout, cout)]
    return nn.Sequential(*mods)


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    """griffon/mm_utils.py, verbatim semantics."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split('<image>')]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def render(template, text):
    if "<image>" not in text:
        text = "<image>\n" + text
    if template == "gemma_instruct":
        return "<start_of_turn>user\n" + text + "<end_of_turn>\n<start_of_turn>model\n"
    if template == "qwen2":
        # conversation.py conv_qwen, SeparatorStyle.CHATML
        return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + text
                + "<|im_end|>\n<|im_start|>assistant\n")
    return f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{text} [/INST]"


def preprocess(path, size):
    """run_griffon.py: PIL open/convert RGB -> transforms.Resize((s, s)) (PIL bilinear, antialiased)
    -> CLIPImageProcessor rescale (float64 * 1/255 -> float32) and normalize (float32)."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    arr = (np.asarray(img).astype(np.float64) * (1 / 255)).astype(np.float32)
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).unsqueeze(0)


def randomize(module, seed, std=0.15):
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim == 1 and ("norm" in name or "layer_norm" in name or "layrnorm" in name) and name.endswith("weight"):
            # LayerNorm scales near 1; Gemma's RMSNorm stores w with (1 + w) applied.
            base = 0.0 if isinstance(module, Gemma2ForCausalLM) else 1.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(std * torch.randn(p.shape, generator=g))


def resize_pos_table(table, grid_out, mode):
    """Position table [1 + g*g, C] -> [1 + g'*g', C] with F.interpolate (align_corners=False), CLS kept."""
    g = int(math.sqrt(table.shape[0] - 1))
    cls, grid = table[:1], table[1:]
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    antialias = mode.endswith("-aa")
    m = mode.replace("-aa", "")
    out = F.interpolate(grid, size=(grid_out, grid_out), mode=m, align_corners=False, antialias=antialias)
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(grid_out * grid_out, -1)], 0)


def clip_at(tower, size, mode):
    """A copy of a CLIPVisionModel running at `size` with its position table resized by `mode`."""
    cfg = CLIPVisionConfig(**{**tower.config.to_dict(), "image_size": size})
    cfg._attn_implementation = "eager"
    m = CLIPVisionModel(cfg).eval()
    sd = {k: v for k, v in tower.state_dict().items() if "position_ids" not in k}
    key = next(k for k in sd if k.endswith("embeddings.position_embedding.weight"))
    sd[key] = resize_pos_table(sd[key], size // cfg.patch_size, mode)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return m


def released_clip_key(k):
    """transformers 5 drops the `vision_model.` level from CLIPVisionModel's state dict; released
    checkpoints (and transformers 4) keep it."""
    return k if k.startswith("vision_model.") else "vision_model." + k


def make_image(path, w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    d.rectangle([w // 5, h // 4, w // 2, h // 2], fill=(220, 30, 30))
    d.ellipse([w // 2, h // 2, w - 5, h - 5], fill=(30, 30, 220))
    img.save(path)


# ----------------------------------------------------------------------------- cases

def tower_config(hidden, inter, layers, heads, image, patch):
    c = CLIPVisionConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, image_size=image, patch_size=patch, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, projection_dim=hidden)
    c._attn_implementation = "eager"
    return c


def save_tower_config(cfg, folder):
    os.makedirs(folder, exist_ok=True)
    cfg.save_pretrained(folder)


def write_checkpoint(folder, tensors, dtype, shards):
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        save_file(part, os.path.join(folder, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


def build_case(name, *, llm_kind, tower_cfg, run_size, interp, projector, region_cfg, prompt, n_new,
               dtype=torch.float32, shards=1, seed=0, vision_tower_written=None, tower_folder=None):
    case = os.path.join(OUT, name)
    ck = os.path.join(case, "ckpt")
    shutil.rmtree(case, ignore_errors=True)
    os.makedirs(ck)
    torch.manual_seed(seed)

    tok = {"gemma2": gemma_like_tokenizer, "llama": llama_like_tokenizer, "qwen2": qwen_like_tokenizer}[llm_kind](ck)
    vocab = len(tok)
    template = {"gemma2": "gemma_instruct", "llama": "llava_llama_2", "qwen2": "qwen2"}[llm_kind]

    if llm_kind == "gemma2":
        lcfg = Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                            sliding_window=8, attn_logit_softcapping=4.0, final_logit_softcapping=6.0,
                            rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                            tie_word_embeddings=True, max_position_embeddings=512)
        lcfg._attn_implementation = "eager"
        llm = Gemma2ForCausalLM(lcfg).eval()
        model_type = "gemma2_Griffon"
    elif llm_kind == "qwen2":
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        lcfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                           eos_token_id=im_end, bos_token_id=None, tie_word_embeddings=True,
                           max_position_embeddings=512, use_sliding_window=False)
        lcfg._attn_implementation = "eager"
        llm = Qwen2ForCausalLM(lcfg).eval()
        model_type = "qwen2"
    else:
        lcfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, bos_token_id=1,
                           eos_token_id=2, tie_word_embeddings=False, max_position_embeddings=512)
        lcfg._attn_implementation = "eager"
        llm = LlamaForCausalLM(lcfg).eval()
        model_type = "llama"
    randomize(llm, seed + 1)
    H = lcfg.hidden_size

    tower = CLIPVisionModel(tower_cfg).eval()
    randomize(tower, seed + 2)
    if projector == "conv_reduce":
        proj = ConvProjector(tower_cfg.hidden_size, H, padding=1)
    elif projector == "conv_reduce_wo_pad":
        proj = ConvProjector(tower_cfg.hidden_size, H, padding=0)
    else:
        depth = int(projector[len("mlp"):-len("x_gelu")])
        proj = mlp_projector(tower_cfg.hidden_size, H, depth)
    randomize(proj, seed + 3)
    region = None
    if region_cfg is not None:
        region = CLIPVisionModel(region_cfg).eval()
        randomize(region, seed + 4)
        region_proj = nn.Sequential(nn.Linear(region_cfg.hidden_size, H), nn.ReLU(), nn.Linear(H, H))
        randomize(region_proj, seed + 5)

    # Round weights through the stored dtype so reference and engine see identical values.
    def through(module):
        for p in module.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    for m in [llm, tower, proj] + ([region, region_proj] if region is not None else []):
        through(m)

    # --- checkpoint in the released layout
    tensors = {}
    for k, v in llm.state_dict().items():
        if k == "lm_head.weight" and lcfg.tie_word_embeddings:
            continue
        tensors[k] = v
    for k, v in tower.state_dict().items():
        if "position_ids" not in k:
            tensors["model.vision_tower.vision_tower." + released_clip_key(k)] = v
    for k, v in proj.state_dict().items():
        tensors["model.mm_projector." + k] = v
    if region is not None:
        for k, v in region.state_dict().items():
            if "position_ids" not in k:
                tensors["model.prompt_visual_encoder." + released_clip_key(k)] = v
        for k, v in region_proj.state_dict().items():
            tensors["model.prompt_projector." + k] = v
    write_checkpoint(ck, tensors, dtype, shards)

    cfg = lcfg.to_dict()
    cfg.pop("_attn_implementation", None)
    cfg.pop("attn_implementation", None)
    cfg.update({
        "model_type": model_type,
        "architectures": ["Griffon" + {"gemma2": "Gemma2", "llama": "Llama", "qwen2": "Qwen2"}[llm_kind] + "ForCausalLM"],
        "mm_vision_tower": vision_tower_written,
        "mm_projector_type": projector,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_hidden_size": tower_cfg.hidden_size,
        "image_aspect_ratio": "square",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "unshared_visual_encoder": region is not None,
        "torch_dtype": "bfloat16" if dtype == torch.bfloat16 else "float32",
    })
    with open(os.path.join(ck, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if tower_folder is not None:
        save_tower_config(tower_cfg, os.path.join(ck, tower_folder))
    if region is not None:
        save_tower_config(region_cfg, os.path.join(ck, "clip-vit-large-patch14"))

    # --- inputs
    make_image(os.path.join(case, "image.png"), 90, 70, seed + 10)
    images = [os.path.join(case, "image.png")]
    if region is not None:
        make_image(os.path.join(case, "region.png"), 40, 50, seed + 11)

    # --- reference computation
    run_tower = tower if run_size == tower_cfg.image_size else clip_at(tower, run_size, interp)
    pixels = preprocess(images[0], run_size)
    out = run_tower(pixels, output_hidden_states=True)
    hidden_states = torch.stack(out.hidden_states, 0)  # [L+1, 1, N+1, C]
    feats = out.hidden_states[-2][:, 1:]
    image_features = proj(feats)  # [1, N', H]
    golden = {"pixels": pixels[0], "vision_hidden_states": hidden_states, "projector_out": image_features}

    region_feature = None
    if region is not None:
        rpix = preprocess(os.path.join(case, "region.png"), region_cfg.image_size)
        rout = region(rpix, output_hidden_states=True)
        region_feature = region_proj(rout.hidden_states[-1][:, 0].unsqueeze(1))  # [1, 1, H]
        golden["region_pixels"] = rpix[0]
        golden["region_token"] = region_feature[0, 0]

    full_prompt = render(template, prompt).replace("<region>", "<image>")
    input_ids = tokenizer_image_token(full_prompt, tok)

    # prepare_inputs_labels_for_multimodal for one sequence
    ids = torch.tensor(input_ids)
    pos = [-1] + torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist() + [len(input_ids)]
    text_parts = [ids[pos[i] + 1:pos[i + 1]] for i in range(len(pos) - 1)]
    # Raw table lookup. NOTE: transformers >= 5 moved Gemma-2's sqrt(hidden) scale from
    # Gemma2Model.forward into the embedding module (Gemma2TextScaledWordEmbedding), so under 5.x
    # `get_input_embeddings()(ids)` is already scaled and inputs_embeds are NOT scaled again. The
    # released checkpoints were trained with transformers 4.45, where embed_tokens was a plain
    # nn.Embedding and Gemma2Model.forward multiplied ALL inputs_embeds (image tokens included) by
    # sqrt(hidden). We reproduce the 4.45 semantics explicitly below.
    emb = F.embedding(torch.cat(text_parts), llm.get_input_embeddings().weight)
    emb_parts = torch.split(emb, [len(p) for p in text_parts], 0)
    pieces = []
    for i in range(len(text_parts)):
        pieces.append(emb_parts[i])
        if i < len(text_parts) - 1:
            if region_feature is not None and i % 2 == 1:
                pieces.append(region_feature[0])
            else:
                pieces.append(image_features[0])
    embeds = torch.cat(pieces, 0).unsqueeze(0)
    if llm_kind == "gemma2":
        # transformers 4.45 Gemma2Model.forward: hidden_states * torch.tensor(hidden**0.5, dtype)
        embeds = embeds * torch.tensor(lcfg.hidden_size ** 0.5, dtype=embeds.dtype)
        # ... and 5.x must not scale again: its scaled embedding is only used for generated ids,
        # which 4.45 scaled inside forward as well.
        assert isinstance(llm.get_input_embeddings(), torch.nn.Embedding)

    logits = llm(inputs_embeds=embeds).logits
    golden["prefill_logits"] = logits[0]

    turn_end = {"gemma2": "<end_of_turn>", "qwen2": "<|im_end|>"}.get(llm_kind)
    stop_ids = sorted({lcfg.eos_token_id} | ({tok.convert_tokens_to_ids(turn_end)} if turn_end else set()))
    gen = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                       max_new_tokens=n_new, do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0],
                       output_scores=True, return_dict_in_generate=True)
    new_ids = gen.sequences[0].tolist()
    probs, margins = [], []
    for step, s in enumerate(gen.scores):
        p = torch.softmax(s[0].float(), -1)
        probs.append(float(p[new_ids[step]]))
        top = torch.topk(s[0], 2).values
        margins.append(float(top[0] - top[1]))
    if min(margins) < 1e-3:
        sys.exit(f"{name}: greedy top-2 margin {min(margins):.2e} too small for a stable fixture; change the seed")
    text = tok.decode(new_ids, skip_special_tokens=True).strip()

    save_file({k: v.detach().float().contiguous() for k, v in golden.items()}, os.path.join(case, "golden.safetensors"))
    meta = {
        "case": name,
        "llm": llm_kind,
        "template": template,
        "user_prompt": prompt,
        "rendered_prompt": render(template, prompt),
        "input_ids": input_ids,
        "image_size": run_size,
        "pos_interp": interp,
        "stored_dtype": "bf16" if dtype == torch.bfloat16 else "f32",
        "stop_ids": stop_ids,
        "max_new_tokens": n_new,
        "greedy_ids": new_ids,
        "greedy_probs": probs,
        "greedy_min_margin": min(margins),
        "greedy_text": text,
        "sequence_length": embeds.shape[1],
        "regions": ["region.png"] if region is not None else [],
    }
    with open(os.path.join(case, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{name}: seq {embeds.shape[1]}, {len(new_ids)} new tokens, min margin {min(margins):.3g}, text {text!r}")
    return tower, run_tower


def tower_interp_goldens(tower, sizes_modes, path):
    """Hidden states of one tower at interpolated sizes, for each interpolation mode."""
    img = os.path.join(os.path.dirname(path), "image.png")
    out = {}
    for size, mode in sizes_modes:
        m = clip_at(tower, size, mode)
        px = preprocess(img, size)
        hs = torch.stack(m(px, output_hidden_states=True).hidden_states, 0)
        out[f"{size}_{mode}"] = hs
        out[f"{size}_{mode}_pixels"] = px[0]
    save_file({k: v.float().contiguous() for k, v in out.items()}, path)


def projector_goldens(path):
    """Every projector kind on the same random features: weights in the released layout
    (`<kind>/model.mm_projector.*`), inputs and outputs."""
    torch.manual_seed(99)
    cin, h, grid = 24, 32, 7
    x = torch.randn(2, grid * grid, cin)
    out = {"input": x}
    kinds = {
        "conv_reduce": ConvProjector(cin, h, padding=1),
        "conv_reduce_wo_pad": ConvProjector(cin, h, padding=0),
        "linear": nn.Linear(cin, h),
        "mlp2x_gelu": mlp_projector(cin, h, 2),
        "mlp3x_gelu": mlp_projector(cin, h, 3),
    }
    for i, (kind, m) in enumerate(kinds.items()):
        randomize(m, 500 + i, std=0.3)
        for k, v in m.state_dict().items():
            out[f"{kind}/model.mm_projector.{k}"] = v
        out[f"{kind}/output"] = m(x)
    save_file({k: v.detach().float().contiguous() for k, v in out.items()}, path)


def main():
    os.makedirs(OUT, exist_ok=True)
    projector_goldens(os.path.join(OUT, "projectors.safetensors"))
    gem_tower = tower_config(64, 128, 3, 4, 56, 8)       # 7x7 patches -> conv_reduce -> 4x4 tokens
    region_cfg = tower_config(48, 96, 2, 3, 32, 8)       # 4x4 + 1 positions
    tower, _ = build_case(
        "gemma2_region", llm_kind="gemma2", tower_cfg=gem_tower, run_size=56, interp="bilinear",
        projector="conv_reduce", region_cfg=region_cfg, shards=2, seed=10,
        vision_tower_written="checkpoints/clip-vit-tiny-patch8-to-56", tower_folder="clip-vit-tiny-patch8-to-56",
        prompt="In this image, find all objects similar to <region> and output their coordinates.", n_new=24)
    tower_interp_goldens(tower, [(72, m) for m in ["bilinear", "bilinear-aa", "bicubic", "bicubic-aa"]] + [(40, "bicubic-aa"), (40, "bilinear")],
                         os.path.join(OUT, "gemma2_region", "tower_interp.safetensors"))
    build_case(
        "gemma2_interp72", llm_kind="gemma2", tower_cfg=gem_tower, run_size=72, interp="bilinear",
        projector="conv_reduce", region_cfg=None, seed=20,
        vision_tower_written="checkpoints/clip-vit-tiny-patch8-to-56", tower_folder="clip-vit-tiny-patch8-to-56",
        prompt="Examine the image for any objects from the category set. Report the coordinates of each detected "
               "object. The category set includes person, car, dog.", n_new=20)
    build_case(
        "qwen2", llm_kind="qwen2", tower_cfg=tower_config(64, 128, 3, 4, 56, 8), run_size=56, interp="bilinear",
        projector="conv_reduce", region_cfg=None, seed=40,
        vision_tower_written="checkpoints/clip-vit-tiny-patch8-to-56", tower_folder="clip-vit-tiny-patch8-to-56",
        prompt="Can you point out the red square in the image and provide the coordinates of its location?", n_new=16)
    build_case(
        "llama2_bf16", llm_kind="llama", tower_cfg=tower_config(128, 160, 3, 2, 48, 8), run_size=48,
        interp="bilinear", projector="mlp2x_gelu", region_cfg=None, dtype=torch.bfloat16, seed=30,
        vision_tower_written="/nonexistent/clip-vit-tiny-inferred", tower_folder=None,
        prompt="Can you point out the man in the red shirt in the image and provide the coordinates of its location?",
        n_new=20)


if __name__ == "__main__":
    main()
