// mcore.c: see mcore.h. Index formulas are spec/checkpoints.md §4-§6.
#include "mcore.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- layout -----------------------------------------------------------------------------------

void mcore_rank_dirname(char *buf, size_t len, int tp_rank, int pp_rank, int pp) {
    if (pp == 1) snprintf(buf, len, "mp_rank_%02d", tp_rank);
    else snprintf(buf, len, "mp_rank_%02d_%03d", tp_rank, pp_rank);
}

void mcore_iter_dirname(char *buf, size_t len, int64_t iteration) {
    if (iteration < 0) snprintf(buf, len, "release");
    else snprintf(buf, len, "iter_%07lld", (long long)iteration);
}

int mcore_read_tracker(const char *root, char *buf, size_t len, Err *e) {
    char *path = path_join(root, MCORE_TRACKER);
    char *text = read_text_file(path, NULL, e);
    if (!text) {
        err_set(e, "%s: missing tracker (not an mcore checkpoint, or no checkpoint was committed)", path);
        free(path);
        return -1;
    }
    char *s = text;
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strcspn(s, " \t\r\n");
    s[n] = 0;
    int rc = 0;
    char *end;
    long long it = strtoll(s, &end, 10);
    if (!strcmp(s, "release")) snprintf(buf, len, "release");
    else if (*s && !*end && it >= 0) mcore_iter_dirname(buf, len, it);
    else {
        err_set(e, "%s: expected \"release\" or an iteration number, got \"%s\"", path, s);
        rc = -1;
    }
    free(text);
    free(path);
    return rc;
}

int mcore_write_tracker(const char *root, const char *iter_name, Err *e) {
    char *path = path_join(root, MCORE_TRACKER);
    const char *text = iter_name;
    char num[32];
    if (!strncmp(iter_name, "iter_", 5)) {  // Megatron writes the bare number
        snprintf(num, sizeof num, "%lld", atoll(iter_name + 5));
        text = num;
    }
    int rc = write_text_file(path, text, e);
    free(path);
    if (rc == 0) fsync_dir(root);
    return rc;
}

int mcore_detect_parallel(const char *iter_dir, Parallel *p, Err *e) {
    DIR *d = opendir(iter_dir);
    if (!d) { err_set(e, "%s: missing checkpoint directory", iter_dir); return -1; }
    int max_tp = -1, max_pp = -1, with_pp = 0, without_pp = 0, count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int t, q, used = 0;
        if (strncmp(de->d_name, "mp_rank_", 8)) continue;
        if (sscanf(de->d_name, "mp_rank_%2d_%3d%n", &t, &q, &used) == 2 && de->d_name[used] == 0) with_pp++;
        else if (sscanf(de->d_name, "mp_rank_%2d%n", &t, &used) == 1 && de->d_name[used] == 0) { q = 0; without_pp++; }
        else continue;
        if (t > max_tp) max_tp = t;
        if (q > max_pp) max_pp = q;
        count++;
    }
    closedir(d);
    if (!count) { err_set(e, "%s: no mp_rank_* directories", iter_dir); return -1; }
    if (with_pp && without_pp) { err_set(e, "%s: mixes mp_rank_XX and mp_rank_XX_YYY directories", iter_dir); return -1; }
    p->tp = max_tp + 1;
    p->pp = with_pp ? max_pp + 1 : 1;
    if (count != p->tp * p->pp) {
        err_set(e, "%s: incomplete model-parallel grid: %d rank directories for TP %d x PP %d", iter_dir, count, p->tp, p->pp);
        return -1;
    }
    for (int q = 0; q < p->pp; q++)
        for (int t = 0; t < p->tp; t++) {
            char name[32];
            mcore_rank_dirname(name, sizeof name, t, q, with_pp ? 2 : 1);  // 2: force the _YYY form
            char *path = path_join(iter_dir, name);
            int ok = is_dir(path);
            free(path);
            if (!ok) { err_set(e, "%s: missing %s", iter_dir, name); return -1; }
        }
    return 0;
}

int64_t mcore_padded_vocab(int64_t vocab, int tp) {
    int64_t m = (int64_t)MCORE_VOCAB_DIVISOR * tp;
    return (vocab + m - 1) / m * m;
}

int mcore_check_parallel(const ModelConfig *m, Parallel p, const char *what, Err *e) {
    const TextConfig *t = &m->text;
    if (p.tp < 1 || p.pp < 1) { err_set(e, "%s: TP and PP sizes must be at least 1", what); return -1; }
    if (t->kv_heads % p.tp || t->heads % p.tp) {
        err_set(e, "%s: TP size %d does not divide the %d attention heads and %d key-value heads", what, p.tp, t->heads,
                t->kv_heads);
        return -1;
    }
    if (t->intermediate % p.tp) {
        err_set(e, "%s: TP size %d does not divide the FFN width %d", what, p.tp, t->intermediate);
        return -1;
    }
    if (t->layers % p.pp) {
        err_set(e, "%s: PP size %d does not divide the %d decoder layers", what, p.pp, t->layers);
        return -1;
    }
    return 0;
}

// ---- groups -----------------------------------------------------------------------------------

static const char *const vision_layer_map[][2] = {
    {"norm1.weight", "self_attention.linear_qkv.layer_norm_weight"},
    {"norm1.bias", "self_attention.linear_qkv.layer_norm_bias"},
    {"attn.qkv.weight", "self_attention.linear_qkv.weight"},
    {"attn.qkv.bias", "self_attention.linear_qkv.bias"},
    {"attn.proj.weight", "self_attention.linear_proj.weight"},
    {"attn.proj.bias", "self_attention.linear_proj.bias"},
    {"norm2.weight", "mlp.linear_fc1.layer_norm_weight"},
    {"norm2.bias", "mlp.linear_fc1.layer_norm_bias"},
    {"mlp.fc1.weight", "mlp.linear_fc1.weight"},
    {"mlp.fc1.bias", "mlp.linear_fc1.bias"},
    {"mlp.fc2.weight", "mlp.linear_fc2.weight"},
    {"mlp.fc2.bias", "mlp.linear_fc2.bias"},
};

static const struct { const char *hf, *mc; SplitKind split; } text_layer_map[] = {
    {"input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight", SPLIT_REPL},
    {"self_attn.o_proj.weight", "self_attention.linear_proj.weight", SPLIT_ROW},
    {"self_attn.q_norm.weight", "self_attention.q_layernorm.weight", SPLIT_REPL},
    {"self_attn.k_norm.weight", "self_attention.k_layernorm.weight", SPLIT_REPL},
    {"post_attention_layernorm.weight", "mlp.linear_fc1.layer_norm_weight", SPLIT_REPL},
    {"mlp.down_proj.weight", "mlp.linear_fc2.weight", SPLIT_ROW},
};

static const struct { const char *hf, *mc; SplitKind split; StageKind stage; } global_map[] = {
    {"visual.patch_embed.proj.weight", "vision_model.patch_embed.proj.weight", SPLIT_REPL, STAGE_FIRST},
    {"visual.class_embedding", "vision_model.class_embedding", SPLIT_REPL, STAGE_FIRST},
    {"visual.class_pos_emb", "vision_model.class_pos_emb", SPLIT_REPL, STAGE_FIRST},
    {"visual.pre_layernorm.weight", "vision_model.pre_layernorm.weight", SPLIT_REPL, STAGE_FIRST},
    {"visual.pre_layernorm.bias", "vision_model.pre_layernorm.bias", SPLIT_REPL, STAGE_FIRST},
    {"visual.merger.ln_q.weight", "adapter.layernorm.weight", SPLIT_REPL, STAGE_FIRST},
    {"visual.merger.ln_q.bias", "adapter.layernorm.bias", SPLIT_REPL, STAGE_FIRST},
    {"visual.merger.mlp.0.weight", "adapter.linear_fc1.weight", SPLIT_REPL, STAGE_FIRST},
    {"visual.merger.mlp.0.bias", "adapter.linear_fc1.bias", SPLIT_REPL, STAGE_FIRST},
    {"visual.merger.mlp.2.weight", "adapter.linear_fc2.weight", SPLIT_REPL, STAGE_FIRST},
    {"visual.merger.mlp.2.bias", "adapter.linear_fc2.bias", SPLIT_REPL, STAGE_FIRST},
    {"model.embed_tokens.weight", "language_model.embedding.word_embeddings.weight", SPLIT_VOCAB, STAGE_FIRST},
    {"model.norm.weight", "language_model.decoder.final_layernorm.weight", SPLIT_REPL, STAGE_LAST},
    {"lm_head.weight", "language_model.output_layer.weight", SPLIT_VOCAB, STAGE_LAST},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

// The part of an HF name after "<prefix><layer>.", or NULL.
static const char *layer_rest(const char *name, const char *prefix, int layer) {
    char head[64];
    snprintf(head, sizeof head, "%s%d.", prefix, layer);
    size_t n = strlen(head);
    return strncmp(name, head, n) ? NULL : name + n;
}

void modelmap_init(ModelMap *mm, const ModelConfig *m) {
    memset(mm, 0, sizeof *mm);
    mm->cfg = *m;
    mm->np = params_hf(m, &mm->ps);
    mm->g = xcalloc((size_t)mm->np, sizeof(MGroup));
    const TextConfig *t = &m->text;
    for (int i = 0; i < mm->np; i++) {
        const ParamSpec *p = &mm->ps[i];
        MGroup *g = &mm->g[mm->ng++];
        g->layer = -1;
        g->n_hf = 1;
        g->hf[0] = i;
        g->ndim = p->ndim;
        memcpy(g->shape, p->shape, sizeof g->shape);
        const char *rest;
        if (p->kind == K_Q) {  // q, k, v follow in the table
            g->map = MAP_QKV_LLM;
            g->split = SPLIT_COL;
            g->stage = STAGE_LAYER;
            g->layer = p->layer;
            g->n_hf = 3;
            g->hf[1] = i + 1;
            g->hf[2] = i + 2;
            g->shape[0] = (int64_t)(t->heads + 2 * t->kv_heads) * t->head_dim;
            g->nkv = t->kv_heads;
            g->rep = t->heads / t->kv_heads;
            g->head_dim = t->head_dim;
            snprintf(g->name, sizeof g->name, "self_attention.linear_qkv.weight");
            i += 2;
        } else if (p->kind == K_GATE) {  // up follows
            g->map = MAP_GATE_UP;
            g->split = SPLIT_COL;
            g->stage = STAGE_LAYER;
            g->layer = p->layer;
            g->n_hf = 2;
            g->hf[1] = i + 1;
            g->shape[0] = 2 * p->shape[0];
            snprintf(g->name, sizeof g->name, "mlp.linear_fc1.weight");
            i += 1;
        } else if (p->part == PART_VISION && p->layer >= 0 && (rest = layer_rest(p->name, "visual.blocks.", p->layer))) {
            g->split = SPLIT_REPL;  // the ViT is never TP-split (checkpoints.md §6, pitfalls.md #24)
            g->stage = STAGE_FIRST;
            if (p->kind == K_VIT_QKV_W || p->kind == K_VIT_QKV_B) {
                g->map = MAP_QKV_VIT;
                g->nkv = m->vision.heads;
                g->head_dim = vision_head_dim(&m->vision);
            }
            for (int k = 0; k < COUNT(vision_layer_map); k++)
                if (!strcmp(rest, vision_layer_map[k][0]))
                    snprintf(g->name, sizeof g->name, "vision_model.decoder.layers.%d.%s", p->layer, vision_layer_map[k][1]);
        } else if (p->part == PART_TEXT && p->layer >= 0 && (rest = layer_rest(p->name, "model.layers.", p->layer))) {
            g->stage = STAGE_LAYER;
            g->layer = p->layer;
            for (int k = 0; k < COUNT(text_layer_map); k++)
                if (!strcmp(rest, text_layer_map[k].hf)) {
                    snprintf(g->name, sizeof g->name, "%s", text_layer_map[k].mc);
                    g->split = text_layer_map[k].split;
                }
        } else {
            for (int k = 0; k < COUNT(global_map); k++)
                if (!strcmp(p->name, global_map[k].hf)) {
                    snprintf(g->name, sizeof g->name, "%s", global_map[k].mc);
                    g->split = global_map[k].split;
                    g->stage = global_map[k].stage;
                }
        }
        if (!g->name[0]) die_internal("no Megatron name for HF tensor '%s'", p->name);
    }
}

void modelmap_free(ModelMap *mm) {
    free(mm->ps);
    free(mm->g);
    memset(mm, 0, sizeof *mm);
}

int64_t mgroup_numel(const MGroup *g) {
    int64_t n = 1;
    for (int i = 0; i < g->ndim; i++) n *= g->shape[i];
    return n;
}

int mgroup_stage(const MGroup *g, const ModelMap *mm, int pp) {
    switch (g->stage) {
    case STAGE_FIRST: return 0;
    case STAGE_LAST: return pp - 1;
    default: return g->layer / (mm->cfg.text.layers / pp);
    }
}

void mgroup_name(const MGroup *g, const ModelMap *mm, int pp, char *buf, size_t len) {
    if (g->stage != STAGE_LAYER) { snprintf(buf, len, "%s", g->name); return; }
    int per_stage = mm->cfg.text.layers / pp;
    snprintf(buf, len, "language_model.decoder.layers.%d.%s", g->layer % per_stage, g->name);
}

void mgroup_rank_shape(const MGroup *g, const ModelMap *mm, int tp, int64_t shape[4]) {
    memcpy(shape, g->shape, 4 * sizeof(int64_t));
    switch (g->split) {
    case SPLIT_REPL: break;
    case SPLIT_COL: shape[0] /= tp; break;
    case SPLIT_ROW: shape[1] /= tp; break;
    case SPLIT_VOCAB: shape[0] = mcore_padded_vocab(mm->cfg.text.vocab, tp) / tp; break;
    }
}

// Bytes of one row (everything after dim 0).
static size_t row_bytes(const MGroup *g, size_t es) {
    size_t n = es;
    for (int i = 1; i < g->ndim; i++) n *= (size_t)g->shape[i];
    return n;
}

// Maps full row -> (source tensor, source row) for the fused layouts; used both ways.
static void fused_source(const MGroup *g, int64_t row, int *which, int64_t *src_row) {
    int64_t d = g->head_dim;
    if (g->map == MAP_QKV_LLM) {
        // full row (grp·(rep+2) + j)·d + e  <-  q row (grp·rep + j)·d + e | k/v row grp·d + e
        int64_t e = row % d, slot = row / d, grp = slot / (g->rep + 2), j = slot % (g->rep + 2);
        if (j < g->rep) { *which = 0; *src_row = (grp * g->rep + j) * d + e; }
        else { *which = (int)(j - g->rep) + 1; *src_row = grp * d + e; }
    } else if (g->map == MAP_QKV_VIT) {
        // full row (h·3 + j)·d + e  <-  HF qkv row j·D + h·d + e (one HF tensor)
        int64_t e = row % d, slot = row / d, h = slot / 3, j = slot % 3;
        *which = 0;
        *src_row = j * (g->nkv * d) + h * d + e;
    } else {  // MAP_GATE_UP: [gate; up]
        int64_t half = g->shape[0] / 2;
        *which = row >= half;
        *src_row = row % half;
    }
}

void mgroup_pack(const MGroup *g, const ModelMap *mm, const void *const *hf, size_t es, void *full) {
    (void)mm;
    size_t rb = row_bytes(g, es);
    if (g->map == MAP_COPY) { memcpy(full, hf[0], (size_t)g->shape[0] * rb); return; }
    for (int64_t r = 0; r < g->shape[0]; r++) {
        int w;
        int64_t sr;
        fused_source(g, r, &w, &sr);
        memcpy((char *)full + (size_t)r * rb, (const char *)hf[w] + (size_t)sr * rb, rb);
    }
}

void mgroup_unpack(const MGroup *g, const ModelMap *mm, const void *full, void *const *hf, size_t es) {
    (void)mm;
    size_t rb = row_bytes(g, es);
    if (g->map == MAP_COPY) { memcpy(hf[0], full, (size_t)g->shape[0] * rb); return; }
    for (int64_t r = 0; r < g->shape[0]; r++) {
        int w;
        int64_t sr;
        fused_source(g, r, &w, &sr);
        memcpy((char *)hf[w] + (size_t)sr * rb, (const char *)full + (size_t)r * rb, rb);
    }
}

// Rank r's rows of the full tensor, as (full row) for each piece row; -1 = none (never happens).
static int64_t piece_row_to_full(const MGroup *g, const ModelMap *mm, int tp, int r, int64_t pr) {
    switch (g->split) {
    case SPLIT_COL:
        if (g->map == MAP_GATE_UP) {  // piece = [gate_r; up_r] (checkpoints.md §5)
            int64_t half = g->shape[0] / 2, per = half / tp;
            return pr < per ? r * per + pr : half + r * per + (pr - per);
        }
        return r * (g->shape[0] / tp) + pr;
    case SPLIT_VOCAB: {  // padding rows repeat the last real row
        int64_t per = mcore_padded_vocab(mm->cfg.text.vocab, tp) / tp, gr = r * per + pr;
        return gr < g->shape[0] ? gr : -(g->shape[0] - 1) - 2;  // encoded: a padding copy of the last row
    }
    default: return pr;
    }
}

void mgroup_scatter(const MGroup *g, const ModelMap *mm, const void *full, int tp, int r, size_t es, void *piece) {
    size_t rb = row_bytes(g, es);
    if (g->split == SPLIT_REPL) { memcpy(piece, full, (size_t)mgroup_numel(g) * es); return; }
    if (g->split == SPLIT_ROW) {  // columns [r·C/tp, (r+1)·C/tp) of every row
        size_t cb = rb / (size_t)tp;
        for (int64_t i = 0; i < g->shape[0]; i++)
            memcpy((char *)piece + (size_t)i * cb, (const char *)full + (size_t)i * rb + (size_t)r * cb, cb);
        return;
    }
    int64_t shape[4];
    mgroup_rank_shape(g, mm, tp, shape);
    for (int64_t pr = 0; pr < shape[0]; pr++) {
        int64_t fr = piece_row_to_full(g, mm, tp, r, pr);
        if (fr < 0) fr = -(fr + 2);
        memcpy((char *)piece + (size_t)pr * rb, (const char *)full + (size_t)fr * rb, rb);
    }
}

void mgroup_gather(const MGroup *g, const ModelMap *mm, const void *piece, int tp, int r, size_t es, void *full) {
    size_t rb = row_bytes(g, es);
    if (g->split == SPLIT_REPL) { memcpy(full, piece, (size_t)mgroup_numel(g) * es); return; }
    if (g->split == SPLIT_ROW) {
        size_t cb = rb / (size_t)tp;
        for (int64_t i = 0; i < g->shape[0]; i++)
            memcpy((char *)full + (size_t)i * rb + (size_t)r * cb, (const char *)piece + (size_t)i * cb, cb);
        return;
    }
    int64_t shape[4];
    mgroup_rank_shape(g, mm, tp, shape);
    for (int64_t pr = 0; pr < shape[0]; pr++) {
        int64_t fr = piece_row_to_full(g, mm, tp, r, pr);
        if (fr < 0) continue;  // vocabulary padding is dropped (cut_embedding_padding)
        memcpy((char *)full + (size_t)fr * rb, (const char *)piece + (size_t)pr * rb, rb);
    }
}
