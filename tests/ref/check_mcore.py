#!/usr/bin/python3
"""Checks an mcore checkpoint against an HF checkpoint, from spec/checkpoints.md 2-6 alone.

usage: check_mcore.py HF_DIR MCORE_ROOT TP PP [ITER_DIR_NAME]

Builds every rank's expected tensors with numpy the way upstream's converter describes them
(transpose_shape0 for the QKV interleave and the gate/up split, torch.chunk-style splits, padding
rows copied from the last real row) and compares names, shapes and bytes exactly.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from stlib import read_dir, read_file, same_bits  # noqa: E402


def fail(msg):
    print("check_mcore: " + msg)
    sys.exit(1)


def transpose_shape0(w, m, n):
    """View dim 0 as (m, n, rest), swap the first two axes, flatten back."""
    shape = w.shape
    return w.reshape(m, n, -1).swapaxes(0, 1).reshape(shape)


def main():
    hf_dir, root, tp, pp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    it = sys.argv[5] if len(sys.argv) > 5 else open(os.path.join(root, "latest_checkpointed_iteration.txt")).read().strip()
    if it != "release" and not it.startswith("iter_"):
        it = "iter_%07d" % int(it)
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    tc, vc = cfg["text_config"], cfg["vision_config"]
    hf = {k: a for k, (dt, a) in read_dir(hf_dir).items()}
    L, nq, nkv, d = tc["num_hidden_layers"], tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    rep, V = nq // nkv, tc["vocab_size"]
    per_stage = L // pp
    Vp = -(-V // (128 * tp)) * 128 * tp

    # expected[pp][tp] = {name: array}
    exp = [[{} for _ in range(tp)] for _ in range(pp)]

    def put(stage, name, full=None, split=None, pieces=None):
        for r in range(tp):
            if pieces is not None:
                a = pieces[r]
            elif split is None:
                a = full
            else:
                a = np.split(full, tp, axis=split)[r]
            exp[stage][r][name] = a

    # Vision tower, patch/CLS/pre-LN, adapter: stage 0, replicated on every TP rank.
    for k in ("patch_embed.proj.weight", "class_embedding", "class_pos_emb", "pre_layernorm.weight", "pre_layernorm.bias"):
        put(0, "vision_model." + k, hf["visual." + k])
    heads = vc["num_heads"]
    for i in range(vc["depth"]):
        b, m = f"visual.blocks.{i}.", f"vision_model.decoder.layers.{i}."
        put(0, m + "self_attention.linear_qkv.layer_norm_weight", hf[b + "norm1.weight"])
        put(0, m + "self_attention.linear_qkv.layer_norm_bias", hf[b + "norm1.bias"])
        put(0, m + "self_attention.linear_qkv.weight", transpose_shape0(hf[b + "attn.qkv.weight"], 3, heads))
        put(0, m + "self_attention.linear_qkv.bias", transpose_shape0(hf[b + "attn.qkv.bias"], 3, heads))
        put(0, m + "self_attention.linear_proj.weight", hf[b + "attn.proj.weight"])
        put(0, m + "self_attention.linear_proj.bias", hf[b + "attn.proj.bias"])
        put(0, m + "mlp.linear_fc1.layer_norm_weight", hf[b + "norm2.weight"])
        put(0, m + "mlp.linear_fc1.layer_norm_bias", hf[b + "norm2.bias"])
        for a, z in (("fc1", "linear_fc1"), ("fc2", "linear_fc2")):
            put(0, m + f"mlp.{z}.weight", hf[b + f"mlp.{a}.weight"])
            put(0, m + f"mlp.{z}.bias", hf[b + f"mlp.{a}.bias"])
    for a, z in (("ln_q", "layernorm"), ("mlp.0", "linear_fc1"), ("mlp.2", "linear_fc2")):
        for s in ("weight", "bias"):
            put(0, f"adapter.{z}.{s}", hf[f"visual.merger.{a}.{s}"])

    def pad(w):
        return np.concatenate([w, np.repeat(w[-1:], Vp - V, axis=0)], axis=0)

    put(0, "language_model.embedding.word_embeddings.weight", pad(hf["model.embed_tokens.weight"]), split=0)
    put(pp - 1, "language_model.decoder.final_layernorm.weight", hf["model.norm.weight"])
    put(pp - 1, "language_model.output_layer.weight", pad(hf["lm_head.weight"]), split=0)
    for li in range(L):
        stage, loc = li // per_stage, li % per_stage
        b, m = f"model.layers.{li}.", f"language_model.decoder.layers.{loc}."
        q = transpose_shape0(hf[b + "self_attn.q_proj.weight"], nkv, rep)
        w = np.concatenate([q, hf[b + "self_attn.k_proj.weight"], hf[b + "self_attn.v_proj.weight"]], axis=0)
        put(stage, m + "self_attention.linear_qkv.weight", transpose_shape0(w, rep + 2, nkv), split=0)
        put(stage, m + "self_attention.linear_qkv.layer_norm_weight", hf[b + "input_layernorm.weight"])
        put(stage, m + "self_attention.q_layernorm.weight", hf[b + "self_attn.q_norm.weight"])
        put(stage, m + "self_attention.k_layernorm.weight", hf[b + "self_attn.k_norm.weight"])
        put(stage, m + "self_attention.linear_proj.weight", hf[b + "self_attn.o_proj.weight"], split=1)
        put(stage, m + "mlp.linear_fc1.layer_norm_weight", hf[b + "post_attention_layernorm.weight"])
        gu = np.concatenate([hf[b + "mlp.gate_proj.weight"], hf[b + "mlp.up_proj.weight"]], axis=0)
        put(stage, m + "mlp.linear_fc1.weight", pieces=np.split(transpose_shape0(gu, 2, tp), tp, axis=0))
        put(stage, m + "mlp.linear_fc2.weight", hf[b + "mlp.down_proj.weight"], split=1)

    n = 0
    for s in range(pp):
        for r in range(tp):
            sub = f"mp_rank_{r:02d}" if pp == 1 else f"mp_rank_{r:02d}_{s:03d}"
            got = {k: a for k, (dt, a) in read_file(os.path.join(root, it, sub, "model.safetensors")).items()}
            want = exp[s][r]
            if set(got) != set(want):
                fail(f"{sub}: names differ: missing {sorted(set(want) - set(got))[:4]}, extra {sorted(set(got) - set(want))[:4]}")
            for k, w in want.items():
                if not same_bits(got[k], w):
                    fail(f"{sub}: {k}: shape {got[k].shape} vs {w.shape} or bytes differ")
                n += 1
    if open(os.path.join(root, "latest_checkpointed_iteration.txt")).read().strip() not in ("release",) and it == "release":
        fail("tracker does not say release")
    print(f"check_mcore: {n} tensors on {tp}x{pp} ranks match spec/checkpoints.md")


main()
