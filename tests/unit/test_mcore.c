// Unit tests: Megatron layouts on small hand-worked cases (spec/checkpoints.md §4-§6): the QKV
// interleaves, the gate/up split, vocabulary padding, and the directory / tracker conventions.
#include <stdlib.h>
#include <unistd.h>

#include "../../common/mcore.h"
#include "check.h"

// A text-only model with nkv = 2 groups of rep = 2 queries, head_dim 1, hidden 1, FFN 4, vocab 3.
static ModelMap tiny_map(void) {
    ModelConfig m;
    memset(&m, 0, sizeof m);
    m.text = (TextConfig){.vocab = 3, .hidden = 1, .intermediate = 4, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 1,
                          .tie_word_embeddings = 0};
    ModelMap mm;
    modelmap_init(&mm, &m);
    return mm;
}

static const MGroup *find_group(const ModelMap *mm, MapKind kind) {
    for (int i = 0; i < mm->ng; i++) if (mm->g[i].map == kind) return &mm->g[i];
    return NULL;
}

static void llm_qkv_interleaves_per_group(void) {
    ModelMap mm = tiny_map();
    const MGroup *g = find_group(&mm, MAP_QKV_LLM);
    CHECK(g && g->shape[0] == 8);
    float q[4] = {0, 1, 2, 3}, k[2] = {10, 11}, v[2] = {20, 21}, full[8], q2[4], k2[2], v2[2];
    const void *hf[3] = {q, k, v};
    mgroup_pack(g, &mm, hf, 4, full);
    // per group: [q_{2g}, q_{2g+1}, k_g, v_g]
    float want[8] = {0, 1, 10, 20, 2, 3, 11, 21};
    CHECK(!memcmp(full, want, sizeof want));
    void *back[3] = {q2, k2, v2};
    mgroup_unpack(g, &mm, full, back, 4);
    CHECK(!memcmp(q, q2, sizeof q) && !memcmp(k, k2, sizeof k) && !memcmp(v, v2, sizeof v));
    // TP 2: each rank holds whole groups
    float piece[4];
    mgroup_scatter(g, &mm, full, 2, 1, 4, piece);
    float want1[4] = {2, 3, 11, 21};
    CHECK(!memcmp(piece, want1, sizeof piece));
    modelmap_free(&mm);
}

static void gate_up_split_per_rank(void) {
    ModelMap mm = tiny_map();
    const MGroup *g = find_group(&mm, MAP_GATE_UP);
    float gate[4] = {0, 1, 2, 3}, up[4] = {10, 11, 12, 13}, full[8], piece[4], rebuilt[8] = {0};
    const void *hf[2] = {gate, up};
    mgroup_pack(g, &mm, hf, 4, full);
    float cat[8] = {0, 1, 2, 3, 10, 11, 12, 13};
    CHECK(!memcmp(full, cat, sizeof cat));
    float want0[4] = {0, 1, 10, 11}, want1[4] = {2, 3, 12, 13};
    mgroup_scatter(g, &mm, full, 2, 0, 4, piece);
    CHECK(!memcmp(piece, want0, sizeof piece));
    mgroup_gather(g, &mm, piece, 2, 0, 4, rebuilt);
    mgroup_scatter(g, &mm, full, 2, 1, 4, piece);
    CHECK(!memcmp(piece, want1, sizeof piece));
    mgroup_gather(g, &mm, piece, 2, 1, 4, rebuilt);
    CHECK(!memcmp(rebuilt, full, sizeof full));
    modelmap_free(&mm);
}

static void vocab_padding_repeats_last_row(void) {
    ModelMap mm = tiny_map();
    const MGroup *g = NULL;
    for (int i = 0; i < mm.ng; i++) if (mm.g[i].split == SPLIT_VOCAB) { g = &mm.g[i]; break; }
    CHECK(g && g->shape[0] == 3);
    int64_t shape[4];
    mgroup_rank_shape(g, &mm, 2, shape);
    CHECK_EQ_INT(shape[0], 128);  // 3 rows padded to 256, 128 per rank
    float full[3] = {5, 6, 7}, piece[128], back[3] = {0};
    mgroup_scatter(g, &mm, full, 2, 0, 4, piece);
    CHECK(piece[0] == 5 && piece[2] == 7 && piece[3] == 7 && piece[127] == 7);
    mgroup_gather(g, &mm, piece, 2, 0, 4, back);
    mgroup_scatter(g, &mm, full, 2, 1, 4, piece);
    CHECK(piece[0] == 7 && piece[127] == 7);
    mgroup_gather(g, &mm, piece, 2, 1, 4, back);  // padding rows dropped
    CHECK(!memcmp(back, full, sizeof full));
    CHECK_EQ_INT(mcore_padded_vocab(151936, 1), 151936);
    CHECK_EQ_INT(mcore_padded_vocab(151936, 2), 152064);
    CHECK_EQ_INT(mcore_padded_vocab(151936, 4), 152064);
    CHECK_EQ_INT(mcore_padded_vocab(151936, 8), 152576);
    modelmap_free(&mm);
}

static void vit_qkv_interleaves_per_head(void) {
    ModelConfig m;
    memset(&m, 0, sizeof m);
    m.text = (TextConfig){.vocab = 8, .hidden = 4, .intermediate = 4, .layers = 1, .heads = 1, .kv_heads = 1, .head_dim = 4};
    m.vision = (VisionConfig){.present = 1, .depth = 1, .hidden = 8, .intermediate = 8, .heads = 2, .in_channels = 3,
                              .patch = 1, .spatial_merge = 2, .temporal_patch = 1, .text_hidden = 4};
    ModelMap mm;
    modelmap_init(&mm, &m);
    const MGroup *g = NULL;
    for (int i = 0; i < mm.ng; i++)
        if (mm.g[i].map == MAP_QKV_VIT && mm.g[i].ndim == 1) g = &mm.g[i];
    CHECK(g && g->shape[0] == 24);
    // bias rows [Q(2 heads x 4); K; V] -> per head [q_h; k_h; v_h]
    float hf[24], full[24];
    for (int i = 0; i < 24; i++) hf[i] = (float)i;
    const void *in[1] = {hf};
    mgroup_pack(g, &mm, in, 4, full);
    float want[24] = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23};
    CHECK(!memcmp(full, want, sizeof want));
    char name[192];
    mgroup_name(g, &mm, 1, name, sizeof name);
    CHECK(!strcmp(name, "vision_model.decoder.layers.0.self_attention.linear_qkv.bias"));
    CHECK(g->split == SPLIT_REPL && g->stage == STAGE_FIRST);
    modelmap_free(&mm);
}

static void names_and_stages(void) {
    ModelMap mm = tiny_map();
    char name[192];
    int seen = 0;
    for (int i = 0; i < mm.ng; i++) {
        const MGroup *g = &mm.g[i];
        if (g->map == MAP_QKV_LLM && g->layer == 1) {
            mgroup_name(g, &mm, 2, name, sizeof name);  // layer 1 is layer 0 of stage 1
            CHECK(!strcmp(name, "language_model.decoder.layers.0.self_attention.linear_qkv.weight"));
            CHECK_EQ_INT(mgroup_stage(g, &mm, 2), 1);
            mgroup_name(g, &mm, 1, name, sizeof name);
            CHECK(!strcmp(name, "language_model.decoder.layers.1.self_attention.linear_qkv.weight"));
            seen++;
        }
        if (!strcmp(g->name, "language_model.output_layer.weight")) { CHECK_EQ_INT(mgroup_stage(g, &mm, 2), 1); seen++; }
        if (!strcmp(g->name, "language_model.embedding.word_embeddings.weight")) { CHECK_EQ_INT(mgroup_stage(g, &mm, 2), 0); seen++; }
    }
    CHECK_EQ_INT(seen, 3);
    mcore_rank_dirname(name, sizeof name, 3, 0, 1);
    CHECK(!strcmp(name, "mp_rank_03"));
    mcore_rank_dirname(name, sizeof name, 1, 2, 4);
    CHECK(!strcmp(name, "mp_rank_01_002"));
    mcore_iter_dirname(name, sizeof name, 2500);
    CHECK(!strcmp(name, "iter_0002500"));
    Err e;
    CHECK(mcore_check_parallel(&mm.cfg, (Parallel){2, 2}, "x", &e) == 0);
    CHECK(mcore_check_parallel(&mm.cfg, (Parallel){4, 1}, "x", &e) == -1);  // 2 KV heads
    CHECK_STR_CONTAINS(e.msg, "TP size 4");
    CHECK(mcore_check_parallel(&mm.cfg, (Parallel){1, 3}, "x", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "PP size 3");
    modelmap_free(&mm);
}

static void tracker_parsing(void) {
    char dir[64], buf[64];
    snprintf(dir, sizeof dir, "/tmp/test_mcore.%d", (int)getpid());
    mkdir_p(dir);
    Err e;
    CHECK(mcore_read_tracker(dir, buf, sizeof buf, &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "latest_checkpointed_iteration.txt");
    CHECK(mcore_write_tracker(dir, "iter_0000042", &e) == 0);
    char *path = path_join(dir, MCORE_TRACKER), *text = read_text_file(path, NULL, &e);
    CHECK(text && !strcmp(text, "42"));  // Megatron writes the bare number
    free(text);
    CHECK(mcore_read_tracker(dir, buf, sizeof buf, &e) == 0 && !strcmp(buf, "iter_0000042"));
    write_text_file(path, "release\n", &e);
    CHECK(mcore_read_tracker(dir, buf, sizeof buf, &e) == 0 && !strcmp(buf, "release"));
    write_text_file(path, "12abc", &e);
    CHECK(mcore_read_tracker(dir, buf, sizeof buf, &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "12abc");
    free(path);
    rm_rf(dir);
}

int main(void) {
    RUN(llm_qkv_interleaves_per_group);
    RUN(gate_up_split_per_rank);
    RUN(vocab_padding_repeats_last_row);
    RUN(vit_qkv_interleaves_per_head);
    RUN(names_and_stages);
    RUN(tracker_parsing);
    return CHECK_DONE();
}
