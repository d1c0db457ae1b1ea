#!/usr/bin/python3
"""Checks a merged stage-0 checkpoint against its MLCD and Qwen3 sources, from spec/model.md alone.

usage: check_merge.py VIT_DIR LLM_DIR MERGED_DIR OUT_DTYPE(BF16|F32)

* names and shapes: the table of spec/model.md 6, sizes from the source configs;
* values: upstream's rename list (7.3) applied to every MLCD key, q/k/v stacked, post_layernorm and
  inv_freq dropped, LLM tensors unchanged, lm_head = the LLM's head or a copy of the embedding; the
  dtype conversion through PyTorch (fp32 -> bf16 round to nearest even); all compared bit for bit;
* the merger: LayerNorm 1/0, biases 0, weights N(0, 0.02) within sampling error;
* config.json: real vocabulary size, text_hidden_size, untied head.
Exits 1 with a message on the first mismatch.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from stlib import bf16_from_f32, read_dir, same_bits  # noqa: E402


def fail(msg):
    print("check_merge: " + msg)
    sys.exit(1)


def expected_shapes(vc, tc):
    D, F, hd = vc["hidden_size"], vc["intermediate_size"], vc["hidden_size"] // vc["num_attention_heads"]
    H, I, V = tc["hidden_size"], tc["intermediate_size"], tc["vocab_size"]
    nq, nkv = tc["num_attention_heads"], tc.get("num_key_value_heads", tc["num_attention_heads"])
    d = tc.get("head_dim", H // nq)
    p, C = vc["patch_size"], vc.get("num_channels", 3)
    s = {"visual.patch_embed.proj.weight": [D, C, p, p], "visual.class_embedding": [D],
         "visual.class_pos_emb": [1, hd // 2], "visual.pre_layernorm.weight": [D], "visual.pre_layernorm.bias": [D]}
    for i in range(vc["num_hidden_layers"]):
        b = f"visual.blocks.{i}."
        s.update({b + "norm1.weight": [D], b + "norm1.bias": [D], b + "attn.qkv.weight": [3 * D, D],
                  b + "attn.qkv.bias": [3 * D], b + "attn.proj.weight": [D, D], b + "attn.proj.bias": [D],
                  b + "norm2.weight": [D], b + "norm2.bias": [D], b + "mlp.fc1.weight": [F, D], b + "mlp.fc1.bias": [F],
                  b + "mlp.fc2.weight": [D, F], b + "mlp.fc2.bias": [D]})
    s.update({"visual.merger.ln_q.weight": [D], "visual.merger.ln_q.bias": [D],
              "visual.merger.mlp.0.weight": [4 * D, 4 * D], "visual.merger.mlp.0.bias": [4 * D],
              "visual.merger.mlp.2.weight": [H, 4 * D], "visual.merger.mlp.2.bias": [H],
              "model.embed_tokens.weight": [V, H], "model.norm.weight": [H], "lm_head.weight": [V, H]})
    for i in range(tc["num_hidden_layers"]):
        b = f"model.layers.{i}."
        s.update({b + "input_layernorm.weight": [H], b + "self_attn.q_proj.weight": [nq * d, H],
                  b + "self_attn.k_proj.weight": [nkv * d, H], b + "self_attn.v_proj.weight": [nkv * d, H],
                  b + "self_attn.o_proj.weight": [H, nq * d], b + "self_attn.q_norm.weight": [d],
                  b + "self_attn.k_norm.weight": [d], b + "post_attention_layernorm.weight": [H],
                  b + "mlp.gate_proj.weight": [I, H], b + "mlp.up_proj.weight": [I, H], b + "mlp.down_proj.weight": [H, I]})
    return s


def upstream_rename(key):
    """spec/model.md 7.3 step 2, in order, on a key that carries the vision_model. prefix."""
    for a, b in [("vision_model.", "model.visual."), ("model.visual.embeddings.", "model.visual."),
                 ("patch_embedding.", "patch_embed.proj."), ("encoder.layers.", "blocks."),
                 ("pre_layrnorm", "pre_layernorm"), (".layer_norm", ".norm"), (".self_attn.out_proj.", ".attn.proj.")]:
        key = key.replace(a, b)
    return key[len("model."):]  # on disk: visual.* (the in-memory model.visual.* is reversed on save)


def convert(dt, arr, out_dtype):
    if out_dtype == "F32":
        if dt == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32)
    if dt == "BF16":
        return arr
    return bf16_from_f32(arr.astype(np.float32))


def main():
    vit_dir, llm_dir, merged_dir, out_dtype = sys.argv[1:5]
    vc = json.load(open(os.path.join(vit_dir, "config.json")))
    tc = json.load(open(os.path.join(llm_dir, "config.json")))
    vit, llm, merged = read_dir(vit_dir), read_dir(llm_dir), read_dir(merged_dir)

    shapes = expected_shapes(vc, tc)
    if set(merged) != set(shapes):
        fail(f"names differ: missing {sorted(set(shapes) - set(merged))[:5]}, extra {sorted(set(merged) - set(shapes))[:5]}")
    for k, shp in shapes.items():
        dt, a = merged[k]
        if list(a.shape) != shp:
            fail(f"{k}: shape {list(a.shape)}, spec says {shp}")
        if dt != out_dtype:
            fail(f"{k}: dtype {dt}, expected {out_dtype}")

    # Vision: rename every source key the upstream way; stack q, k, v.
    want = {}
    qkv = {}
    for key, (dt, a) in vit.items():
        full = key if key.startswith("vision_model.") else "vision_model." + key
        if "post_layernorm" in full or full.endswith("inv_freq"):
            continue
        name = upstream_rename(full)
        for j, p in enumerate(("q_proj", "k_proj", "v_proj")):
            if ".self_attn." + p + "." in name:
                fused = name.replace(".self_attn." + p + ".", ".attn.qkv.")
                qkv.setdefault(fused, [None] * 3)[j] = convert(dt, a, out_dtype)
                break
        else:
            want[name] = convert(dt, a, out_dtype)
    for name, parts in qkv.items():
        want[name] = np.concatenate(parts, axis=0)
    for key, (dt, a) in llm.items():
        want[key] = convert(dt, a, out_dtype)
    if "lm_head.weight" not in want:
        want["lm_head.weight"] = want["model.embed_tokens.weight"]
    for k, w in want.items():
        if k not in merged:
            fail(f"{k}: missing from the merge")
        got = merged[k][1]
        if not same_bits(got, w):
            fail(f"{k}: values differ from the source")

    # Merger: HF _init_weights.
    def f32(k):
        dt, a = merged[k]
        return convert(dt, a, "F32") if dt == "BF16" else a
    for k in ("visual.merger.ln_q.weight",):
        if not np.all(f32(k) == 1):
            fail(f"{k}: expected ones")
    for k in ("visual.merger.ln_q.bias", "visual.merger.mlp.0.bias", "visual.merger.mlp.2.bias"):
        if not np.all(f32(k) == 0):
            fail(f"{k}: expected zeros")
    for k in ("visual.merger.mlp.0.weight", "visual.merger.mlp.2.weight"):
        a = f32(k).astype(np.float64)
        se = 0.02 / np.sqrt(a.size)  # standard error of the mean; the std's is about 0.02/sqrt(2n)
        if abs(a.mean()) > 6 * se or abs(a.std() - 0.02) > 6 * 0.02 / np.sqrt(2 * a.size) + 2e-4:
            fail(f"{k}: mean {a.mean():.5f} std {a.std():.5f}, expected N(0, 0.02)")

    cfg = json.load(open(os.path.join(merged_dir, "config.json")))
    V, H = tc["vocab_size"], tc["hidden_size"]
    checks = [(cfg["model_type"], "llavaonevision1_5"), (cfg["vocab_size"], V), (cfg["text_config"]["vocab_size"], V),
              (cfg["text_config"]["hidden_size"], H), (cfg["vision_config"]["text_hidden_size"], H),
              (cfg["vision_config"]["depth"], vc["num_hidden_layers"]), (cfg["vision_config"]["embed_dim"], vc["hidden_size"]),
              (cfg["vision_config"]["num_heads"], vc["num_attention_heads"]),
              (cfg["text_config"]["num_hidden_layers"], tc["num_hidden_layers"]),
              (cfg["text_config"]["tie_word_embeddings"], False), (cfg["vision_config"]["temporal_patch_size"], 1)]
    for got, exp in checks:
        if got != exp:
            fail(f"config.json: {got!r} where {exp!r} was expected")
    theta = tc.get("rope_parameters", {}).get("rope_theta", tc.get("rope_theta"))
    if cfg["text_config"]["rope_theta"] != theta:
        fail("config.json: text_config.rope_theta differs from the LLM's")
    print(f"check_merge: {len(merged)} tensors match spec/model.md and the sources")


main()
