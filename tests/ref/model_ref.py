#!/usr/bin/python3
"""PyTorch reference of the LLaVA-OV-1.5 forward pass, written from spec/model.md (fp32).

usage:
  model_ref.py inputs MODEL_DIR IN.safetensors SEED [packed|batch|prompt|text]
        write random test inputs for the model's config: packed = one row of two packed sub-sequences with
        two images of different grids; batch = input_ids [2, T] with an image in each row; prompt = one row
        with one image and no labels (for generation); text = two packed sub-sequences without images
  model_ref.py check MODEL_DIR IN.safetensors OURS.safetensors
        recompute and compare with `forward`'s outputs: max |diff| <= 1e-4 * max|ref| + 1e-5, loss <= 1e-5 relative
  model_ref.py grads MODEL_DIR IN.safetensors OURS.safetensors [TRAINABLE_PREFIXES]
        every grad.<name> against autograd (relative L2 <= 1e-4); with prefixes (comma-separated, HF names), the
        gradient set must be exactly the tensors they cover
  model_ref.py grads-bf16 MODEL_DIR IN.safetensors OUT.safetensors
        the peer's bf16 mixed precision: the same forward and backward under torch.autocast(bfloat16) with fp32
        weights (Hugging Face Trainer's bf16=True); writes loss, logits and grad.<name> (fp32) in `forward`'s layout;
        on the GPU with MODEL_REF_DEVICE=cuda
  model_ref.py steps MODEL_DIR IN.safetensors OURS.safetensors LR WD
        N steps of torch.optim.AdamW (decay on ndim >= 2 only) on the batch; losses within 1e-4 relative
  model_ref.py generate MODEL_DIR IN.safetensors OURS.safetensors
        greedy decoding by repeated full forwards; the tokens must equal OURS's `generated`
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from stlib import read_dir, read_file, write_file  # noqa: E402


def f32(dt, a):
    if dt == "BF16":
        return torch.from_numpy((a.astype(np.uint32) << 16).view(np.float32).copy())
    return torch.from_numpy(np.array(a, dtype=np.float32))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def attend(q, k, v, allowed):
    """q [T, Hq, d], k/v [T, Hkv, d], allowed [T, T] bool; GQA by repeating kv heads."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = torch.einsum("thd,shd->hts", q, k) / q.shape[-1] ** 0.5
    s = s.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hts,shd->thd", s.softmax(-1), v)


def block_mask(lengths, causal):
    T = sum(lengths)
    m = torch.zeros(T, T, dtype=torch.bool)
    o = 0
    for n in lengths:
        blk = torch.ones(n, n, dtype=torch.bool)
        m[o:o + n, o:o + n] = torch.tril(blk) if causal else blk
        o += n
    return m


def vision(W, vc, px, grid):
    D, nh = vc["embed_dim"], vc["num_heads"]
    hd, eps = D // nh, vc.get("layer_norm_eps", 1e-5)
    theta = vc.get("rope_theta", 10000.0)
    pe = px @ W["visual.patch_embed.proj.weight"].reshape(D, -1).T
    inv = 1.0 / (theta ** (torch.arange(0, hd // 2, 2, dtype=torch.float32) / (hd // 2)))
    xs, rots, lens, o = [], [], [], 0
    for _, h, w in grid.tolist():
        # OV-HF rot_pos_emb: h/w ids in 2x2-block order
        hp = torch.arange(h).unsqueeze(1).expand(-1, w).reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).flatten()
        wp = torch.arange(w).unsqueeze(0).expand(h, -1).reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).flatten()
        rot = torch.cat([hp[:, None].float() * inv[None], wp[:, None].float() * inv[None]], dim=1)
        rots.append(torch.cat([W["visual.class_pos_emb"], rot]))
        xs.append(torch.cat([W["visual.class_embedding"][None], pe[o:o + h * w]]))
        lens.append(h * w + 1)
        o += h * w
    x, rot = torch.cat(xs), torch.cat(rots)
    emb = torch.cat([rot, rot], dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    allowed = block_mask(lens, causal=False)
    x = F.layer_norm(x, (D,), W["visual.pre_layernorm.weight"], W["visual.pre_layernorm.bias"], eps)
    S = x.shape[0]
    for i in range(vc["depth"]):
        b = f"visual.blocks.{i}."
        h = F.layer_norm(x, (D,), W[b + "norm1.weight"], W[b + "norm1.bias"], eps)
        q, k, v = (h @ W[b + "attn.qkv.weight"].T + W[b + "attn.qkv.bias"]).reshape(S, 3, nh, hd).unbind(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        a = attend(q, k, v, allowed).reshape(S, D)
        x = x + a @ W[b + "attn.proj.weight"].T + W[b + "attn.proj.bias"]
        h = F.layer_norm(x, (D,), W[b + "norm2.weight"], W[b + "norm2.bias"], eps)
        h = F.gelu(h @ W[b + "mlp.fc1.weight"].T + W[b + "mlp.fc1.bias"])  # exact erf GELU
        x = x + h @ W[b + "mlp.fc2.weight"].T + W[b + "mlp.fc2.bias"]
    keep = torch.ones(S, dtype=torch.bool)
    c = 0
    for n in lens:
        keep[c] = False
        c += n
    hidden = x[keep]
    m = F.layer_norm(hidden, (D,), W["visual.merger.ln_q.weight"], W["visual.merger.ln_q.bias"], eps).reshape(-1, 4 * D)
    m = F.gelu(m @ W["visual.merger.mlp.0.weight"].T + W["visual.merger.mlp.0.bias"])
    return hidden, m @ W["visual.merger.mlp.2.weight"].T + W["visual.merger.mlp.2.bias"]


def rms(x, w, eps):
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * w


def text(W, tc, ids, cu, image_embeds, image_id):
    T, H = ids.shape[0], tc["hidden_size"]
    nq, nkv, hd, eps = tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"], tc["rms_norm_eps"]
    theta = tc.get("rope_parameters", {}).get("rope_theta", tc.get("rope_theta"))
    x = W["model.embed_tokens.weight"][ids]
    if image_embeds is not None:
        x[ids == image_id] = image_embeds
    lens = (cu[1:] - cu[:-1]).tolist()
    pos = torch.cat([torch.arange(n) for n in lens]).float()  # restart per packed sub-sequence
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    ang = pos[:, None] * inv[None]
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    allowed = block_mask(lens, causal=True)
    for i in range(tc["num_hidden_layers"]):
        b = f"model.layers.{i}."
        h = rms(x, W[b + "input_layernorm.weight"], eps)
        q = rms((h @ W[b + "self_attn.q_proj.weight"].T).reshape(T, nq, hd), W[b + "self_attn.q_norm.weight"], eps)
        k = rms((h @ W[b + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd), W[b + "self_attn.k_norm.weight"], eps)
        v = (h @ W[b + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        x = x + attend(q, k, v, allowed).reshape(T, nq * hd) @ W[b + "self_attn.o_proj.weight"].T
        h = rms(x, W[b + "post_attention_layernorm.weight"], eps)
        x = x + (F.silu(h @ W[b + "mlp.gate_proj.weight"].T) * (h @ W[b + "mlp.up_proj.weight"].T)) @ W[b + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"], eps)
    return x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T  # a plain Qwen3 may tie the head


def load(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    return cfg, {k: f32(dt, a) for k, (dt, a) in read_dir(model_dir).items()}


def make_inputs(model_dir, path, seed, kind="packed"):
    cfg, _ = load(model_dir)
    g = torch.Generator().manual_seed(seed)
    if kind != "packed":
        return make_other_inputs(cfg, path, g, kind)
    grids = [(1, 4, 6), (1, 2, 2)]
    rows = sum(h * w for _, h, w in grids)
    img = cfg["image_token_id"]
    V = cfg["text_config"]["vocab_size"]
    rnd = lambda n: torch.randint(0, min(V, 1000), (n,), generator=g)
    seq1 = torch.cat([rnd(5), torch.full((6,), img), rnd(9)])   # image 0: 4x6 patches -> 6 tokens
    seq2 = torch.cat([rnd(3), torch.full((1,), img), rnd(7)])   # image 1: 2x2 -> 1 token
    ids = torch.cat([seq1, seq2]).to(torch.int32)
    labels = ids.clone()
    labels[torch.rand(ids.shape[0], generator=g) < 0.3] = -100
    write_file(path, [("input_ids", "I32", ids.numpy()), ("labels", "I32", labels.numpy()),
                      ("cu_seqlens", "I32", np.array([0, len(seq1), len(seq1) + len(seq2)], np.int32)),
                      ("pixel_values", "F32", torch.randn(rows, 588, generator=g).numpy()),
                      ("grid_thw", "I32", np.array(grids, np.int32))])


def make_other_inputs(cfg, path, g, kind):
    img, V = cfg.get("image_token_id"), cfg.get("text_config", cfg)["vocab_size"]
    rnd = lambda n: torch.randint(0, min(V, 1000), (n,), generator=g)
    if kind == "text":  # no images: two packed sub-sequences
        ids = torch.cat([rnd(13), rnd(9)]).to(torch.int32)
        labels = ids.clone()
        labels[torch.rand(ids.shape[0], generator=g) < 0.3] = -100
        write_file(path, [("input_ids", "I32", ids.numpy()), ("labels", "I32", labels.numpy()),
                          ("cu_seqlens", "I32", np.array([0, 13, 22], np.int32))])
        return
    if kind == "prompt":  # image 4x4 patches -> 4 tokens
        ids = torch.cat([rnd(3), torch.full((4,), img), rnd(5)]).to(torch.int32)
        write_file(path, [("input_ids", "I32", ids.numpy()),
                          ("pixel_values", "F32", torch.randn(16, 588, generator=g).numpy()),
                          ("grid_thw", "I32", np.array([[1, 4, 4]], np.int32))])
        return
    # batch: two rows of 14 tokens, image 0 (2x4 -> 2 tokens) in row 0, image 1 (2x2 -> 1) in row 1
    row0 = torch.cat([rnd(4), torch.full((2,), img), rnd(8)])
    row1 = torch.cat([rnd(6), torch.full((1,), img), rnd(7)])
    ids = torch.stack([row0, row1]).to(torch.int32)
    labels = ids.clone()
    labels[torch.rand(ids.shape, generator=g) < 0.3] = -100
    write_file(path, [("input_ids", "I32", ids.numpy()), ("labels", "I32", labels.numpy()),
                      ("pixel_values", "F32", torch.randn(12, 588, generator=g).numpy()),
                      ("grid_thw", "I32", np.array([[1, 2, 4], [1, 2, 2]], np.int32))])


def run(cfg, W, inp):
    """Vision tower (if images), text model over all rows; returns hidden, embeds, logits [B*T, V], loss."""
    hidden = embeds = None
    if "pixel_values" in inp:
        hidden, embeds = vision(W, cfg["vision_config"], inp["pixel_values"], inp["grid_thw"])
    ids = inp["input_ids"].long()
    B, T = (1, ids.shape[0]) if ids.dim() == 1 else ids.shape
    cu = inp["cu_seqlens"].long() if "cu_seqlens" in inp else torch.arange(B + 1) * T  # one block per row
    # a plain Qwen3 checkpoint has its text fields at the top level and no image token
    logits = text(W, cfg.get("text_config", cfg), ids.reshape(-1), cu, embeds, cfg.get("image_token_id", -1))
    loss = None
    if "labels" in inp:  # Hugging Face shift inside each row, mean over all counted positions
        lab = inp["labels"].long().reshape(B, T)
        loss = F.cross_entropy(logits.reshape(B, T, -1)[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1),
                               ignore_index=-100)
    return hidden, embeds, logits, loss


def read(path):
    return {k: torch.from_numpy(np.array(a)) for k, (dt, a) in read_file(path).items()}


def check(model_dir, in_path, ours_path):
    cfg, W = load(model_dir)
    inp = {k: torch.from_numpy(np.array(a)) for k, (dt, a) in read_file(in_path).items()}
    ours = {k: torch.from_numpy(np.array(a)) for k, (dt, a) in read_file(ours_path).items()}
    with torch.no_grad():
        hidden, embeds, logits, loss = run(cfg, W, inp)
    bad = False
    for name, ref in (("vision_hidden", hidden), ("image_embeds", embeds), ("logits", logits)):
        if ref is None:
            continue
        d = (ours[name] - ref).abs().max().item()
        tol = 1e-4 * ref.abs().max().item() + 1e-5
        print(f"model_ref: {name} {tuple(ref.shape)} max |diff| {d:.3e} (tolerance {tol:.3e})")
        bad |= not d <= tol
    rel = abs(ours["loss"].item() - loss.item()) / abs(loss.item())
    print(f"model_ref: loss {loss.item():.6f}, relative diff {rel:.2e} (tolerance 1e-5)")
    sys.exit(1 if bad or rel > 1e-5 else 0)


def check_grads(model_dir, in_path, ours_path, prefixes=None):
    """Every grad.<name> of `forward --grads` against autograd: relative L2 error <= 1e-4."""
    cfg, W = load(model_dir)
    inp, ours = read(in_path), read(ours_path)
    names = [k[len("grad."):] for k in ours if k.startswith("grad.")]
    want = set(W) if prefixes is None else {n for n in W if any(n.startswith(p) for p in prefixes.split(","))}
    for n in want:
        W[n].requires_grad_(True)
    _, _, _, loss = run(cfg, W, inp)
    loss.backward()
    worst, bad = 0.0, []
    for n in names:
        ref, got = W[n].grad, ours["grad." + n]
        if ref is None:
            bad.append((n, "has a gradient but is frozen"))
            continue
        err = ((got - ref).norm() / (ref.norm() + 1e-30)).item()
        worst = max(worst, err)
        if not err <= 1e-4:
            bad.append((n, err))
    if set(names) != want:
        bad.append(("gradient set differs", sorted(want - set(names))[:3], sorted(set(names) - want)[:3]))
    rel = abs(ours["loss"].item() - loss.item()) / abs(loss.item())
    print(f"model_ref: {len(names)} gradients, worst relative L2 error {worst:.2e} (tolerance 1e-4); loss diff {rel:.1e}")
    for b in bad[:5]:
        print("model_ref: FAIL", b)
    sys.exit(1 if bad or rel > 1e-5 else 0)


def grads_bf16(model_dir, in_path, out_path):
    # MODEL_REF_DEVICE=cuda: autocast on the GPU (bf16 tensor-core products, as PyTorch trains there);
    # the default is the CPU's autocast
    dev = os.environ.get("MODEL_REF_DEVICE", "cpu")
    if dev != "cpu":
        torch.set_default_device(dev)  # the masks, positions and angles made inside run()
    cfg, W = load(model_dir)
    W = {k: w.to(dev) for k, w in W.items()}
    inp = {k: t.to(dev) for k, t in read(in_path).items()}
    for w in W.values():
        w.requires_grad_(True)
    with torch.autocast(dev, dtype=torch.bfloat16):
        _, _, logits, loss = run(cfg, W, inp)
    loss.float().backward()
    out = [("loss", "F32", np.array([loss.item()], np.float32)), ("logits", "F32", logits.detach().float().cpu().numpy())]
    out += [("grad." + n, "F32", w.grad.float().cpu().numpy()) for n, w in sorted(W.items()) if w.grad is not None]
    write_file(out_path, out)


def check_steps(model_dir, in_path, ours_path, lr, wd):
    """The losses of len(ours.losses) AdamW steps on one batch, every tensor trainable, decay on ndim >= 2."""
    cfg, W = load(model_dir)
    inp, ours = read(in_path), read(ours_path)
    got = ours["losses"]
    params = list(W.values())
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    ref = []
    for _ in range(got.shape[0]):
        opt.zero_grad()
        _, _, _, loss = run(cfg, W, inp)
        loss.backward()
        opt.step()
        ref.append(loss.item())
    ref = torch.tensor(ref, dtype=torch.float64)
    diff = (got.double() - ref).abs()
    rel = diff / ref.abs()
    # 1e-4 relative, and 1e-6 absolute: a loss trained close to 0 (the GQA preset's falls from 13.9 to 0.007) is a
    # sum of small probabilities, whose relative error is the absolute error of the logits they come from (fp32
    # roundings of logits of magnitude ~10, accumulated over the steps), not a relative one: 1.13e-4 relative
    # (7.9e-7 absolute) there at the last step on one development machine, under 1e-4 on an earlier one with the
    # same code (the CPU's kernels, ours or PyTorch's, differ)
    within = bool((diff <= 1e-4 * ref.abs() + 1e-6).all())
    worst = int(rel.argmax())
    print("model_ref: losses ours " + " ".join(f"{x:.7g}" for x in got.tolist()))
    print("model_ref: losses ref  " + " ".join(f"{x:.7g}" for x in ref.tolist()))
    print(f"model_ref: {got.shape[0]} AdamW steps, worst relative loss difference {rel.max().item():.2e} at step {worst + 1} "
          f"(absolute {diff[worst].item():.1e}; tolerance 1e-4 relative + 1e-6 absolute): {'ok' if within else 'FAIL'}")
    moved = (ref[0] - ref[-1]).item() / ref[0].item()
    print(f"model_ref: the loss fell by {100 * moved:.1f}%")
    sys.exit(0 if within and moved > 0.05 else 1)


def check_generate(model_dir, in_path, ours_path):
    """Greedy tokens by repeated full forwards over the growing sequence (no cache)."""
    cfg, W = load(model_dir)
    inp, ours = read(in_path), read(ours_path)
    got = ours["generated"].tolist()
    seq = inp["input_ids"].long().reshape(-1)
    ref = []
    with torch.no_grad():
        for _ in range(len(got)):
            step = dict(inp)
            step["input_ids"] = seq
            step.pop("labels", None)
            _, _, logits, _ = run(cfg, W, step)
            nxt = int(logits[-1].argmax())
            ref.append(nxt)
            seq = torch.cat([seq, torch.tensor([nxt])])
    print(f"model_ref: generated ours {got}")
    print(f"model_ref: generated ref  {ref}")
    sys.exit(0 if got == ref and len(got) > 0 else 1)


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "inputs":
        make_inputs(a[0], a[1], int(a[2]), a[3] if len(a) > 3 else "packed")
    elif cmd == "grads":
        check_grads(a[0], a[1], a[2], a[3] if len(a) > 3 else None)
    elif cmd == "grads-bf16":
        grads_bf16(a[0], a[1], a[2])
    elif cmd == "steps":
        check_steps(a[0], a[1], a[2], float(a[3]), float(a[4]))
    elif cmd == "generate":
        check_generate(a[0], a[1], a[2])
    else:
        check(a[0], a[1], a[2])
