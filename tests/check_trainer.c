/* check_trainer.c: tests of the training loop (src/train/trainer.h) on tiny models and tiny shards of a
 * Markov-chain "language" written in a temp dir: exact resume (2N steps == N, checkpoint, resume,
 * N more, byte for byte, also after a stop request), determinism across runs and thread counts,
 * the stop on a non-finite loss with the last good checkpoint left alone, learning (the loss
 * falls well below the data's unigram entropy), the metrics lines, the run-directory rules,
 * evaluation (each window once; batch routing restores the router) and the command line. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "checkpoint.h"
#include "hparams.h"
#include "loader.h"
#include "model.h"
#include "moe.h"
#include "rng.h"
#include "safetensors.h"
#include "shard.h"
#include "testutil.h"
#include "trainer.h"

/* ---- fixtures ------------------------------------------------------------------------------ */

#define VOCAB 48

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* n tokens of a Markov chain: with probability 0.9 the successor of the previous token under a
 * fixed permutation, else a uniformly random token. Its unigram distribution is about uniform
 * (entropy near ln VOCAB), its conditional entropy about 0.6 nats: a model that learns the
 * bigrams gets far below the unigram entropy. */
static int32_t *markov_tokens(size_t n, uint64_t seed) {
    etm_rng rng;
    etm_rng_seed(&rng, 4242); /* the permutation is the same for train and val */
    uint32_t succ[VOCAB];
    for (uint32_t i = 0; i < VOCAB; i++) succ[i] = i;
    etm_rng_shuffle_u32(&rng, succ, VOCAB);
    etm_rng_seed(&rng, seed);
    int32_t *t = malloc(n * sizeof *t);
    t[0] = 0;
    for (size_t i = 1; i < n; i++)
        t[i] = etm_rng_uniform(&rng) < 0.9f ? (int32_t)succ[t[i - 1]] : (int32_t)etm_rng_below(&rng, VOCAB);
    return t;
}

typedef struct {
    char dir[512];   /* the temp dir */
    char train[600]; /* train shard glob */
    char val[600];   /* val shard glob */
} fixture;

static void fixture_make(fixture *fx) {
    test_tmpdir(fx->dir, sizeof fx->dir);
    char path[700];
    etm_error err = {{0}};
    int32_t *t = markov_tokens(24000, 1);
    snprintf(path, sizeof path, "%s/train_000000.bin", fx->dir);
    ck_assert_msg(etm_shard_write(path, t, 24000, &err) == 0, "%s", err.msg);
    free(t);
    t = markov_tokens(1500, 2);
    snprintf(path, sizeof path, "%s/val_000000.bin", fx->dir);
    ck_assert_msg(etm_shard_write(path, t, 1500, &err) == 0, "%s", err.msg);
    free(t);
    snprintf(fx->train, sizeof fx->train, "%s/train_*.bin", fx->dir);
    snprintf(fx->val, sizeof fx->val, "%s/val_*.bin", fx->dir);
}

/* rm -r of a test's temp dir (files and directories only, as the tests make them). */
static void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[1200];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            remove_tree(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void fixture_free(fixture *fx) { remove_tree(fx->dir); }

static void set(etm_hparams *hp, const char *kv) {
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_set_arg(hp, kv, &err) == 0, "%s: %s", kv, err.msg);
}

/* A 2-layer ET model (layer 0 dense, layer 1 with 4 routed experts + 1 shared), sequences of 16
 * tokens, micro-batches of 4 sequences, 2 micro-batches per step, 8 steps; the ET warm-up ends
 * after step 2, so both routing rules are exercised. out_dir = DIR/<name>. */
static etm_hparams tiny_config(const fixture *fx, const char *name) {
    etm_hparams hp = test_tiny_hparams(ETM_ROUTER_ET);
    const char *keys[] = {"vocab_size=48", "seq_len=16", "n_layer=2", "d_model=32", "ffn_hidden=64",
                          "expert_hidden=32", "pool_seqs=0", "et_beta=0.9", "et_warmup_steps=2",
                          "batch_size=4", "grad_accum=2", "max_steps=8", "warmup_steps=2",
                          "muon_warmup_steps=4", "eval_every=4", "eval_batches=2", "ckpt_every=0",
                          "log_every=1", "thresholds_every=2", "lr_matrix=0.02", "lr_embed=0.1",
                          "lr_head=0.01", "lr_router=0.01"};
    for (size_t i = 0; i < ETM_ARRAY_LEN(keys); i++) set(&hp, keys[i]);
    snprintf(hp.train_data, sizeof hp.train_data, "%s", fx->train);
    snprintf(hp.val_data, sizeof hp.val_data, "%s", fx->val);
    snprintf(hp.out_dir, sizeof hp.out_dir, "%s/%s", fx->dir, name);
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_validate(&hp, &err) == 0, "%s", err.msg);
    return hp;
}

static void train_ok(const etm_hparams *hp, const etm_train_options *opt, etm_train_result *res) {
    etm_error err = {{0}};
    ck_assert_msg(etm_train(hp, opt, res, &err) == 0, "%s", err.msg);
}

static char *read_all(const char *path, size_t *len) {
    etm_error err = {{0}};
    char *b = etm_read_file(path, len, &err);
    ck_assert_msg(b != NULL, "%s", err.msg);
    return b;
}

static char *checkpoint_bytes(const etm_hparams *hp, size_t *len) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", hp->out_dir, ETM_RUN_CHECKPOINT);
    return read_all(path, len);
}

static void assert_same_bytes(const char *a, size_t na, const char *b, size_t nb, const char *what) {
    ck_assert_msg(na == nb, "%s: sizes differ (%zu vs %zu)", what, na, nb);
    size_t i = 0;
    while (i < na && a[i] == b[i]) i++;
    ck_assert_msg(i == na, "%s: first difference at byte %zu of %zu", what, i, na);
}

static long checkpoint_step(const etm_hparams *hp) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", hp->out_dir, ETM_RUN_CHECKPOINT);
    etm_error err = {{0}};
    etm_st_file *f = etm_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    const char *s = etm_st_metadata(f, "step");
    ck_assert_ptr_nonnull(s);
    long step = strtol(s, NULL, 10);
    etm_st_close(f);
    return step;
}

/* The metrics file's lines, parsed; *n gets their count. Every line must be one JSON object. */
static json_t **metrics_lines(const etm_hparams *hp, int *n) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", hp->out_dir, ETM_RUN_METRICS);
    size_t len;
    char *text = read_all(path, &len);
    json_t **lines = calloc(len + 1, sizeof *lines);
    int k = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        ck_assert_msg(nl != NULL, "line %d of %s does not end with a newline", k + 1, path);
        *nl = '\0';
        json_error_t je;
        lines[k] = json_loads(line, 0, &je);
        ck_assert_msg(lines[k] != NULL, "line %d of %s is not JSON: %s", k + 1, path, je.text);
        ck_assert_msg(json_is_object(lines[k]), "line %d of %s is not an object", k + 1, path);
        k++;
        line = nl + 1;
    }
    free(text);
    *n = k;
    return lines;
}

static void metrics_free(json_t **lines, int n) {
    for (int i = 0; i < n; i++) json_decref(lines[i]);
    free(lines);
}

/* ---- exact resume and determinism ---------------------------------------------------------- */

/* Raises a stop request (as the Ctrl-C handler would) just before 0-based step `step` runs. */
typedef struct {
    int step;
    volatile sig_atomic_t flag;
} stop_ctx;

static void request_stop_at(void *ctx, etm_model *m, int step) {
    (void)m;
    stop_ctx *p = ctx;
    if (step == p->step) p->flag = 1;
}

START_TEST(resume_is_byte_exact) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    etm_train_options opt;
    etm_train_result res;

    /* 2N = 8 steps in one go */
    etm_train_options_init(&opt);
    train_ok(&hp, &opt, &res);
    ck_assert_int_eq(res.step, 8);
    ck_assert_int_eq(res.interrupted, 0);
    size_t n_full, n_resumed;
    char *full = checkpoint_bytes(&hp, &n_full);

    /* N = 4, checkpoint, then a resume for the other 4 */
    opt.force = 1;
    opt.stop_at = 4;
    train_ok(&hp, &opt, &res);
    ck_assert_int_eq(res.step, 4);
    ck_assert_int_eq(checkpoint_step(&hp), 4);
    /* a crash after step 4 would leave later lines (the last one cut short); resume drops them */
    char mpath[1200];
    snprintf(mpath, sizeof mpath, "%s/%s", hp.out_dir, ETM_RUN_METRICS);
    FILE *f = fopen(mpath, "a");
    fputs("{\"step\":5,\"stale\":true}\n{\"step\":6,\"lo", f);
    fclose(f);
    etm_train_options_init(&opt);
    opt.resume = 1;
    train_ok(&hp, &opt, &res);
    ck_assert_int_eq(res.start_step, 4);
    ck_assert_int_eq(res.step, 8);
    char *resumed = checkpoint_bytes(&hp, &n_resumed);
    assert_same_bytes(full, n_full, resumed, n_resumed, "8 steps vs 4 + resume + 4");
    free(resumed);

    int n;
    json_t **lines = metrics_lines(&hp, &n);
    ck_assert_int_eq(n, 8);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(json_integer_value(json_object_get(lines[i], "step")), i + 1);
        ck_assert_ptr_null(json_object_get(lines[i], "stale"));
    }
    metrics_free(lines, n);

    /* a stop request during step 3 (0-based 2): the step finishes, is checkpointed, and the
     * resumed run ends where the uninterrupted one did */
    stop_ctx ctx = {2, 0};
    etm_train_options_init(&opt);
    opt.force = 1;
    opt.before_step = request_stop_at;
    opt.hook_ctx = &ctx;
    opt.stop_flag = &ctx.flag;
    train_ok(&hp, &opt, &res);
    ck_assert_int_eq(res.interrupted, 1);
    ck_assert_int_eq(res.step, 3);
    ck_assert_int_eq(checkpoint_step(&hp), 3);
    etm_train_options_init(&opt);
    opt.resume = 1;
    train_ok(&hp, &opt, &res);
    resumed = checkpoint_bytes(&hp, &n_resumed);
    assert_same_bytes(full, n_full, resumed, n_resumed, "8 steps vs stop after 3 + resume");
    free(resumed);

    /* resuming a finished run does nothing and changes nothing */
    train_ok(&hp, &opt, &res);
    ck_assert_int_eq(res.start_step, 8);
    ck_assert_int_eq(res.step, 8);
    resumed = checkpoint_bytes(&hp, &n_resumed);
    assert_same_bytes(full, n_full, resumed, n_resumed, "a finished run resumed");
    free(resumed);
    free(full);
    fixture_free(&fx);
}
END_TEST

/* ---- ec_pool_scope = step ------------------------------------------------------------------ */

/* The slow reference of expert choice over one pool: row t of column e is taken when fewer than kt
 * rows of the pool come before it (a larger logit, or an equal one earlier). */
static void slow_expert_choice(const float *r, int rows, int E, int kt, uint8_t *mask) {
    for (int t = 0; t < rows; t++)
        for (int e = 0; e < E; e++) {
            int before = 0;
            for (int u = 0; u < rows; u++) {
                float a = r[(size_t)u * E + e], b = r[(size_t)t * E + e];
                before += a > b || (a == b && u < t);
            }
            mask[(size_t)t * E + e] = before < kt;
        }
}

/* Two micro-batches routed as one step's pool: each MoE layer's selection (the stored one, and the
 * mask the training forward then used) is the slow loop's top k_target over both micro-batches'
 * logits concatenated in order (the logits those forwards computed), and differs from selecting
 * within each micro-batch. Layer 0 is dense and layer 2 sees layer 1's pooled routing. */
START_TEST(ec_step_pool_selects_over_the_concatenated_logits) {
    /* _i: 0 ec; 1 et, whose first step routes by EC (its warm-up) */
    etm_hparams hp = test_tiny_hparams(_i == 0 ? ETM_ROUTER_EC : ETM_ROUTER_ET);
    hp.ec_pool_scope = ETM_EC_POOL_STEP;
    hp.grad_accum = 2;
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_validate(&hp, &err) == 0, "%s", err.msg);
    etm_backend *be = test_backend();
    int B = hp.batch_size, T = hp.seq_len, N = B * T, E = hp.n_routed, L = hp.n_layer, A = 2;
    etm_model *m = etm_model_create(be, &hp, B, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    int32_t tokens[2 * 16], targets[2 * 16];
    ck_assert_int_le(A * N, 32);
    etm_rng rng;
    etm_rng_seed(&rng, 7);
    for (int i = 0; i < A * N; i++) {
        tokens[i] = (int32_t)etm_rng_below(&rng, (uint32_t)hp.vocab_size);
        targets[i] = (int32_t)etm_rng_below(&rng, (uint32_t)hp.vocab_size);
    }
    ck_assert(etm_model_step_routing_needed(m));
    ck_assert_msg(etm_model_route_step(m, tokens, A, B, T, 0, A, NULL, NULL, &err) == 0, "%s", err.msg);
    size_t NE = (size_t)N * E;
    float *logits = malloc((size_t)L * A * NE * sizeof(float));
    uint8_t *used = malloc((size_t)L * A * NE), *want = malloc((size_t)A * NE), *own = malloc(NE);
    for (int a = 0; a < A; a++) {
        double loss;
        etm_model_use_step_routing(m, a);
        ck_assert_msg(etm_model_forward(m, tokens + a * N, targets + a * N, B, T, ETM_MOE_TRAIN, &loss, &err) == 0,
                      "%s", err.msg);
        for (int l = 0; l < L; l++) {
            if (!m->moe[l]) continue;
            be->download(be, logits + ((size_t)l * A + a) * NE, etm_moe_logits(m->moe[l]), NE * sizeof(float));
            be->download(be, used + ((size_t)l * A + a) * NE, etm_moe_mask(m->moe[l]), NE);
        }
    }
    int kt = A * N * hp.top_k / E, kt_mb = N * hp.top_k / E, layers = 0, differs = 0;
    for (int l = 0; l < L; l++) {
        if (!m->moe[l]) continue;
        layers++;
        slow_expert_choice(logits + (size_t)l * A * NE, A * N, E, kt, want);
        for (int a = 0; a < A; a++) {
            const uint8_t *w = want + a * NE;
            ck_assert_msg(memcmp(etm_model_step_mask(m, l, a), w, NE) == 0,
                          "layer %d micro-batch %d: the stored selection is not the pooled top-k", l, a);
            ck_assert_msg(memcmp(used + ((size_t)l * A + a) * NE, w, NE) == 0,
                          "layer %d micro-batch %d: the forward did not route by the pooled selection", l, a);
            slow_expert_choice(logits + ((size_t)l * A + a) * NE, N, E, kt_mb, own);
            differs += memcmp(own, w, NE) != 0;
        }
    }
    ck_assert_int_eq(layers, 2);
    ck_assert_msg(differs > 0, "the pooled selection equals the per-micro-batch one: the case tests nothing");
    free(logits);
    free(used);
    free(want);
    free(own);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* _i: 0 the tiny config; 1 and 2 et_cutoff_scope = step and microbatch over pooled micro-batches
 * (two per step), past the warm-up so that the thresholds route; 3 router = ec and 4 et with
 * ec_pool_scope = step (the routing pass; et's during its warm-up) */
START_TEST(runs_are_deterministic_across_thread_counts) {
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    if (_i > 0) {
        set(&hp, _i == 1 ? "et_cutoff_scope=step" : "et_cutoff_scope=microbatch");
        set(&hp, "pool_seqs=1");
        set(&hp, "et_warmup_steps=1");
    }
    if (_i >= 3) {
        set(&hp, "pool_seqs=0");
        set(&hp, _i == 3 ? "router=ec" : "router=et");
        set(&hp, "ec_pool_scope=step");
    }
    set(&hp, "max_steps=4");
    set(&hp, "d_model=64");
    set(&hp, "n_head=4");
    set(&hp, "expert_hidden=64");
    set(&hp, "ffn_hidden=128");
    etm_train_options opt;
    etm_train_options_init(&opt);
    opt.force = 1;
    etm_train_result res;
    size_t n[3];
    char *bytes[3];
    int threads[3] = {1, 2, 2};
    for (int i = 0; i < 3; i++) {
        set_threads(threads[i]);
        train_ok(&hp, &opt, &res);
        bytes[i] = checkpoint_bytes(&hp, &n[i]);
    }
    assert_same_bytes(bytes[0], n[0], bytes[1], n[1], "OMP threads 1 vs 2");
    assert_same_bytes(bytes[1], n[1], bytes[2], n[2], "the same run twice");
    for (int i = 0; i < 3; i++) free(bytes[i]);
    fixture_free(&fx);
}
END_TEST

/* ---- failure handling ---------------------------------------------------------------------- */

typedef struct {
    int step;     /* 0-based step before which the model is poisoned */
    char *saved;  /* the checkpoint's bytes just before */
    size_t n_saved;
    const etm_hparams *hp;
} poison_ctx;

static void poison_head(void *ctx, etm_model *m, int step) {
    poison_ctx *p = ctx;
    if (step != p->step) return;
    p->saved = checkpoint_bytes(p->hp, &p->n_saved);
    m->be->fill(m->be, m->w.lm_head + 5, NAN, 1);
}

START_TEST(nan_loss_stops_and_keeps_the_last_good_checkpoint) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    set(&hp, "ckpt_every=2");
    poison_ctx p = {4, NULL, 0, &hp};
    etm_train_options opt;
    etm_train_options_init(&opt);
    opt.before_step = poison_head;
    opt.hook_ctx = &p;
    etm_train_result res;
    etm_error err = {{0}};
    ck_assert_int_eq(etm_train(&hp, &opt, &res, &err), -1);
    ck_assert_msg(strstr(err.msg, "step 5:") && strstr(err.msg, "nan"), "message: %s", err.msg);
    ck_assert_msg(strstr(err.msg, "(step 4) is the last good checkpoint"), "message: %s", err.msg);
    ck_assert_int_eq(res.step, 4);
    ck_assert_ptr_nonnull(p.saved);
    size_t n;
    char *after = checkpoint_bytes(&hp, &n);
    assert_same_bytes(p.saved, p.n_saved, after, n, "the checkpoint before and after the NaN");
    ck_assert_int_eq(checkpoint_step(&hp), 4);
    int lines;
    json_t **m = metrics_lines(&hp, &lines);
    ck_assert_int_eq(lines, 4); /* nothing of the bad step */
    metrics_free(m, lines);
    free(after);
    free(p.saved);

    /* and the run resumes from that checkpoint */
    etm_train_options_init(&opt);
    opt.resume = 1;
    train_ok(&hp, &opt, &res);
    ck_assert_int_eq(res.start_step, 4);
    ck_assert_int_eq(res.step, 8);
    fixture_free(&fx);
}
END_TEST

/* Every value of every float tensor of a checkpoint is finite. */
static int checkpoint_is_finite(const char *path) {
    etm_error err = {{0}};
    etm_st_file *f = etm_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    int ok = 1;
    for (int i = 0; i < etm_st_count(f) && ok; i++) {
        const etm_st_tensor *t = etm_st_tensor_at(f, i);
        if (t->dtype != ETM_ST_F32) continue;
        size_t n = (t->end - t->begin) / 4;
        float *x = malloc(n * sizeof *x + 4);
        ck_assert_msg(etm_st_read(f, t->name, ETM_ST_F32, t->ndim, t->shape, x, &err) == 0, "%s", err.msg);
        for (size_t k = 0; k < n; k++) ok &= isfinite(x[k]) != 0;
        free(x);
    }
    etm_st_close(f);
    return ok;
}

START_TEST(huge_learning_rate_stops_before_saving_a_bad_state) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    const char *keys[] = {"ckpt_every=1", "lr_matrix=3e38", "lr_embed=3e38", "lr_head=3e38",
                          "lr_router=3e38", "grad_clip=0", "warmup_steps=0"};
    for (size_t i = 0; i < ETM_ARRAY_LEN(keys); i++) set(&hp, keys[i]);
    etm_train_options opt;
    etm_train_options_init(&opt);
    etm_train_result res;
    etm_error err = {{0}};
    ck_assert_int_eq(etm_train(&hp, &opt, &res, &err), -1);
    char want[32];
    snprintf(want, sizeof want, "step %d:", res.step + 1);
    ck_assert_msg(strstr(err.msg, want), "message (after %d good steps): %s", res.step, err.msg);
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", hp.out_dir, ETM_RUN_CHECKPOINT);
    if (res.step > 0) {
        ck_assert_int_eq(checkpoint_step(&hp), res.step);
        ck_assert_msg(checkpoint_is_finite(path), "a checkpoint with non-finite values was saved");
    } else {
        ck_assert_int_ne(access(path, F_OK), 0);
    }
    fixture_free(&fx);
}
END_TEST

/* ---- learning ------------------------------------------------------------------------------ */

START_TEST(loss_falls_well_below_the_unigram_entropy) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    /* the unigram entropy of the training tokens, from their counts */
    char path[700];
    snprintf(path, sizeof path, "%s/train_000000.bin", fx.dir);
    etm_error err = {{0}};
    etm_shard *sh = etm_shard_open(path, ETM_SHARD_LOAD_READ, &err);
    ck_assert_msg(sh != NULL, "%s", err.msg);
    uint64_t n = etm_shard_n_tokens(sh), counts[VOCAB] = {0};
    for (uint64_t i = 0; i < n; i++) counts[etm_shard_token(sh, i)]++;
    etm_shard_free(sh);
    double H = 0.0;
    for (int v = 0; v < VOCAB; v++)
        if (counts[v]) H -= (double)counts[v] / n * log((double)counts[v] / n);

    etm_hparams hp = tiny_config(&fx, "run");
    set(&hp, "max_steps=60");
    set(&hp, "eval_every=0");
    set(&hp, "eval_batches=100"); /* the whole validation shard */
    set(&hp, "lr_matrix=0.04");
    etm_train_options opt;
    etm_train_options_init(&opt);
    etm_train_result res;
    train_ok(&hp, &opt, &res);
    ck_assert_msg(res.val_loss < 0.5 * H && res.train_loss < 0.5 * H,
                  "after 60 steps: val loss %.4f, train loss %.4f, unigram entropy %.4f", res.val_loss,
                  res.train_loss, H);
    int lines;
    json_t **m = metrics_lines(&hp, &lines);
    double first = json_real_value(json_object_get(m[0], "loss"));
    ck_assert_msg(first > 0.9 * H, "the first loss %.4f should be near ln V (%.4f)", first, log(VOCAB));
    metrics_free(m, lines);
    fixture_free(&fx);
}
END_TEST

/* ---- metrics ------------------------------------------------------------------------------- */

static double num(json_t *o, const char *key, int line) {
    json_t *v = json_object_get(o, key);
    ck_assert_msg(v && json_is_number(v), "line %d: '%s' missing or not a number", line, key);
    return json_number_value(v);
}

START_TEST(metrics_have_one_object_per_step_with_the_documented_keys) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    etm_train_options opt;
    etm_train_options_init(&opt);
    etm_train_result res;
    train_ok(&hp, &opt, &res);
    int n;
    json_t **lines = metrics_lines(&hp, &n);
    ck_assert_int_eq(n, hp.max_steps);
    int tokens = hp.batch_size * hp.seq_len * hp.grad_accum;
    double gap1[64];
    for (int i = 0; i < n; i++) {
        json_t *o = lines[i];
        int step = i + 1;
        ck_assert_int_eq((int)num(o, "step", step), step);
        const char *keys[] = {"lr", "lr_mult", "loss", "aux_loss", "z_loss", "grad_norm", "tokens_per_sec", "elapsed"};
        for (size_t k = 0; k < ETM_ARRAY_LEN(keys); k++) ck_assert(isfinite(num(o, keys[k], step)));
        ck_assert_double_eq_tol(num(o, "lr", step), hp.lr_matrix * num(o, "lr_mult", step), 1e-6);
        ck_assert_double_eq(num(o, "aux_loss", step), 0.0); /* et: no balance loss, z_loss = 0 */
        ck_assert_int_eq(json_object_get(o, "val_loss") != NULL, step % 4 == 0);
        ck_assert_int_eq(json_object_get(o, "val_bpb") != NULL, step % 4 == 0);
        /* ids below 256 are single bytes: bits per byte = nats per token / ln 2 */
        if (step % 4 == 0)
            ck_assert_double_eq_tol(num(o, "val_bpb", step), num(o, "val_loss", step) / log(2.0), 1e-6);
        ck_assert_int_eq(json_object_get(o, "thresholds") != NULL, step % 2 == 0);
        json_t *routing = json_object_get(o, "routing");
        ck_assert(json_is_array(routing));
        ck_assert_int_eq(json_array_size(routing), 1); /* one MoE layer */
        json_t *l1 = json_array_get(routing, 0);
        ck_assert_int_eq((int)num(l1, "layer", step), 1);
        json_t *load = json_object_get(l1, "load");
        ck_assert_int_eq(json_array_size(load), hp.n_routed);
        long pairs = 0;
        for (int e = 0; e < hp.n_routed; e++) pairs += json_integer_value(json_array_get(load, e));
        ck_assert_double_eq_tol(num(l1, "mean_experts", step), (double)pairs / tokens, 1e-9);
        double no_expert = num(l1, "no_expert", step);
        ck_assert(no_expert >= 0 && no_expert <= tokens);
        ck_assert_double_eq(num(l1, "dropped", step), 0.0);
        ck_assert_double_eq(num(l1, "padded", step), 0.0);
        /* the authors' routing metrics (routing_metrics.h) */
        double t0 = num(l1, "tokens_0", step), t1 = num(l1, "tokens_1", step), t2 = num(l1, "tokens_2plus", step);
        ck_assert_double_eq_tol(t0 + t1 + t2, 1.0, 1e-12);
        ck_assert_double_eq_tol(t0 * tokens, no_expert, 1e-9);
        ck_assert(t1 + 2 * t2 <= (double)pairs / tokens + 1e-12); /* 2+ means at least 2 */
        double gm = num(l1, "gate_mean", step), gs = num(l1, "gate_std", step);
        ck_assert(gm > 0 && gm < 1 && gs >= 0 && gs < 0.5);
        ck_assert(isfinite(num(l1, "logit_mean", step)) && num(l1, "logit_std", step) > 0);
        ck_assert_ptr_null(json_object_get(l1, "capacity_overflow")); /* no clamp in this config */
        /* the routed experts' scale against the shared one (routing_metrics.h): the product of
         * the two means; the ratio once the shared down projection has moved (not at step 1,
         * when only the LM head has a gradient) */
        ck_assert_double_eq_tol(num(l1, "gate_down", step), gm * num(l1, "down_rms", step),
                                1e-7 * num(l1, "gate_down", step) + 1e-15);
        double shared_rms = num(l1, "shared_down_rms", step);
        ck_assert_int_eq(json_object_get(l1, "gate_down_ratio") != NULL, shared_rms > 0);
        if (shared_rms > 0)
            ck_assert_double_eq_tol(num(l1, "gate_down_ratio", step), num(l1, "gate_down", step) / shared_rms,
                                    1e-7 * num(l1, "gate_down_ratio", step)); /* 9 digits each */
        if (step == n) { /* from the weights after the step: the final checkpoint's */
            etm_error err = {{0}};
            char path[1200];
            snprintf(path, sizeof path, "%s/%s", hp.out_dir, ETM_RUN_CHECKPOINT);
            etm_st_file *f = etm_st_open(path, &err);
            ck_assert_msg(f != NULL, "%s", err.msg);
            int E = hp.n_routed, D = hp.d_model, Hx = hp.expert_hidden, S = hp.n_shared;
            int64_t shape[3] = {E, D, Hx}, sshape[3] = {S, D, Hx};
            float *down = malloc((size_t)E * D * Hx * sizeof *down), *sd = malloc((size_t)S * D * Hx * sizeof *sd);
            ck_assert_msg(etm_st_read(f, "layers.1.moe.down", ETM_ST_F32, 3, shape, down, &err) == 0, "%s", err.msg);
            ck_assert_msg(etm_st_read(f, "layers.1.moe.shared_down", ETM_ST_F32, 3, sshape, sd, &err) == 0, "%s",
                          err.msg);
            etm_st_close(f);
            double want = 0, sq_shared = 0;
            for (int e = 0; e < E; e++) {
                double sq = 0;
                for (size_t j = 0; j < (size_t)D * Hx; j++) sq += (double)down[(size_t)e * D * Hx + j] * down[(size_t)e * D * Hx + j];
                want += json_integer_value(json_array_get(load, e)) * sqrt(sq / ((double)D * Hx)) / (double)pairs;
            }
            for (size_t j = 0; j < (size_t)S * D * Hx; j++) sq_shared += (double)sd[j] * sd[j];
            ck_assert_double_eq_tol(num(l1, "down_rms", step), want, 1e-6 * want);
            ck_assert_double_eq_tol(shared_rms, sqrt(sq_shared / ((double)S * D * Hx)), 1e-6 * shared_rms);
            ck_assert(want > 0);
            free(down);
            free(sd);
        }
        json_t *gap = json_object_get(l1, "cutoff_gap");
        ck_assert_int_eq(json_array_size(gap), hp.n_routed);
        /* step 1: the threshold in force is 0, so gap1 = cut1; step 2: c1 = cut1, cut2 = c1 + gap2,
         * and the threshold after step 2 is (beta (1-beta) cut1 + (1-beta) cut2) / (1 - beta^2) */
        for (int e = 0; e < hp.n_routed && e < 64; e++) {
            double g = json_number_value(json_array_get(gap, e));
            if (step == 1) gap1[e] = g;
            if (step == 2) {
                double beta = hp.et_beta, cut1 = gap1[e], cut2 = cut1 + g;
                double c2 = json_number_value(json_array_get(
                    json_object_get(json_array_get(json_object_get(o, "thresholds"), 0), "threshold"), e));
                ck_assert_msg(fabs(c2 - (beta * (1 - beta) * cut1 + (1 - beta) * cut2) / (1 - beta * beta)) < 1e-5,
                              "expert %d: threshold %.7g after step 2, gaps %.7g %.7g", e, c2, cut1, g);
            }
        }
        if (step <= hp.et_warmup_steps) /* EC: every expert takes exactly k_target per batch */
            for (int e = 0; e < hp.n_routed; e++)
                ck_assert_int_eq(json_integer_value(json_array_get(load, e)),
                                 hp.grad_accum * hp.batch_size * hp.seq_len * hp.top_k / hp.n_routed);
        json_t *th = json_object_get(o, "thresholds");
        if (th) {
            ck_assert_int_eq(json_array_size(th), 1);
            json_t *t = json_object_get(json_array_get(th, 0), "threshold");
            ck_assert_int_eq(json_array_size(t), hp.n_routed);
            for (int e = 0; e < hp.n_routed; e++) ck_assert(json_is_number(json_array_get(t, e)));
        }
    }
    ck_assert_double_eq_tol(num(lines[n - 1], "val_loss", n), res.val_loss, 1e-6);
    ck_assert_double_eq_tol(num(lines[n - 1], "loss", n), res.train_loss, 1e-6);
    metrics_free(lines, n);

    /* the effective configuration reads back to the run's */
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", hp.out_dir, ETM_RUN_CONFIG);
    size_t len;
    char *text = read_all(path, &len);
    etm_hparams back;
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_from_string(&back, text, path, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(etm_hparams_first_difference(&back, &hp));
    free(text);
    fixture_free(&fx);
}
END_TEST

/* ---- the run directory --------------------------------------------------------------------- */

START_TEST(run_directory_is_never_clobbered_by_accident) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    set(&hp, "max_steps=2");
    etm_train_options opt;
    etm_train_options_init(&opt);
    etm_train_result res;
    etm_error err = {{0}};

    opt.resume = 1; /* nothing to resume yet */
    ck_assert_int_eq(etm_train(&hp, &opt, &res, &err), -1);
    ck_assert_msg(strstr(err.msg, "does not exist"), "%s", err.msg);
    opt.resume = 0;
    train_ok(&hp, &opt, &res);

    /* a fresh start over a checkpoint */
    ck_assert_int_eq(etm_train(&hp, &opt, &res, &err), -1);
    ck_assert_msg(strstr(err.msg, "--resume") && strstr(err.msg, "--force"), "%s", err.msg);
    /* forced, but the data is missing: the old checkpoint is still there */
    char ckpt[1200];
    snprintf(ckpt, sizeof ckpt, "%s/%s", hp.out_dir, ETM_RUN_CHECKPOINT);
    etm_hparams bad = hp;
    snprintf(bad.val_data, sizeof bad.val_data, "%s/none_*.bin", fx.dir);
    opt.force = 1;
    ck_assert_int_eq(etm_train(&bad, &opt, &res, &err), -1);
    ck_assert_msg(strstr(err.msg, "val_data"), "%s", err.msg);
    ck_assert_int_eq(access(ckpt, F_OK), 0);
    opt.force = 0;
    /* another configuration in the same directory */
    etm_hparams other = hp;
    set(&other, "d_model=64");
    set(&other, "n_head=4");
    ck_assert_int_eq(unlink(ckpt), 0);
    ck_assert_int_eq(etm_train(&other, &opt, &res, &err), -1);
    ck_assert_msg(strstr(err.msg, "d_model"), "%s", err.msg);
    /* forced, it starts over */
    opt.force = 1;
    train_ok(&other, &opt, &res);
    ck_assert_int_eq(res.step, 2);
    /* a resume may not change the model's shape (the key is named) but may extend the run */
    opt.force = 0;
    opt.resume = 1;
    ck_assert_int_eq(etm_train(&hp, &opt, &res, &err), -1);
    ck_assert_msg(strstr(err.msg, "d_model"), "%s", err.msg);
    set(&other, "max_steps=3");
    train_ok(&other, &opt, &res);
    ck_assert_int_eq(res.start_step, 2);
    ck_assert_int_eq(res.step, 3);
    fixture_free(&fx);
}
END_TEST

/* ---- evaluation ---------------------------------------------------------------------------- */

START_TEST(evaluation_sees_each_window_once_and_changes_nothing) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    etm_train_options opt;
    etm_train_options_init(&opt);
    etm_train_result res;
    train_ok(&hp, &opt, &res);

    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    ck_assert_ptr_nonnull(be);
    etm_model *m = etm_model_create(be, &hp, hp.batch_size, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", hp.out_dir, ETM_RUN_CHECKPOINT);
    ck_assert_msg(etm_checkpoint_load(path, m, NULL, NULL, &err) == 0, "%s", err.msg);
    int T = hp.seq_len;
    int windows = (1500 - 1) / T; /* the val shard's windows */

    /* every window once, however large the request; the last batch is partial (93 = 23 * 4 + 1) */
    etm_eval_result all, capped, again;
    ck_assert_msg(etm_evaluate(m, fx.val, 0, ETM_EVAL_THRESHOLD, &all, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(all.sequences, windows);
    ck_assert_int_eq(all.tokens, (int64_t)windows * T);
    ck_assert_msg(etm_evaluate(m, fx.val, 100000, ETM_EVAL_THRESHOLD, &capped, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capped.sequences, windows);
    ck_assert_double_eq(capped.loss, all.loss);
    ck_assert_double_eq_tol(all.perplexity, exp(all.loss), 1e-9);

    /* the same loss, window by window, one sequence at a time (a slow reference); and bits per
     * byte under a made-up byte table (token id mod 3 bytes: every third token is not text and
     * counts in neither sum) */
    int32_t token_bytes[VOCAB];
    for (int v = 0; v < VOCAB; v++) token_bytes[v] = v % 3;
    etm_eval_result bpb;
    ck_assert_msg(etm_evaluate_bytes(m, fx.val, 0, ETM_EVAL_THRESHOLD, token_bytes, &bpb, &err) == 0, "%s",
                  err.msg);
    ck_assert_double_eq(bpb.loss, all.loss);
    ck_assert(isnan(all.bits_per_byte) && all.bytes == 0);
    etm_loader *ld = etm_loader_open(fx.val, 1, T, hp.seed, 0, hp.vocab_size, &err);
    ck_assert_ptr_nonnull(ld);
    int32_t in[64], tg[64];
    double sum = 0.0, text_nats = 0.0;
    int64_t bytes = 0;
    for (int w = 0; w < windows; w++) {
        double loss;
        ck_assert(etm_loader_next(ld, in, tg, &err) == 0);
        ck_assert_msg(etm_model_forward(m, in, tg, 1, T, ETM_MOE_EVAL, &loss, &err) == 0, "%s", err.msg);
        for (int t = 0; t < T; t++) {
            sum += m->host_losses[t];
            if (tg[t] % 3) text_nats += m->host_losses[t], bytes += tg[t] % 3;
        }
    }
    etm_loader_free(ld);
    ck_assert_double_eq_tol(all.loss, sum / ((double)windows * T), 1e-5);
    ck_assert_int_eq(bpb.bytes, bytes);
    ck_assert_double_eq_tol(bpb.bits_per_byte, text_nats / log(2.0) / (double)bytes, 1e-5);

    /* batch routing: expert choice per pool (here the whole batch of 4 x 16 tokens, k_target 16),
     * so exactly k routed experts per token on full batches; the thresholds are untouched */
    etm_eval_result batch, thr8;
    ck_assert_msg(etm_evaluate(m, fx.val, 8, ETM_EVAL_BATCH, &batch, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_evaluate(m, fx.val, 8, ETM_EVAL_THRESHOLD, &thr8, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(batch.sequences, 8);
    ck_assert_double_eq_tol(batch.mean_experts, (double)hp.top_k, 1e-12);
    ck_assert(batch.loss != thr8.loss); /* a different routing rule */
    ck_assert_msg(etm_evaluate(m, fx.val, 0, ETM_EVAL_THRESHOLD, &again, &err) == 0, "%s", err.msg);
    ck_assert_double_eq(again.loss, all.loss);
    ck_assert_double_eq(again.mean_experts, all.mean_experts);

    /* the training run's last validation used the same rule on its first eval_batches batches */
    etm_eval_result first;
    ck_assert(etm_evaluate(m, fx.val, hp.eval_batches * hp.batch_size, ETM_EVAL_THRESHOLD, &first, &err) == 0);
    ck_assert_double_eq_tol(first.loss, res.val_loss, 1e-12);
    etm_model_free(m);
    etm_backend_free(be);
    fixture_free(&fx);
}
END_TEST

/* A hand-computable case: a fresh model's LM head is zero, so every prediction is uniform and every
 * target costs ln V nats; with 2 bytes per token except token 0 (not text), bits per byte is
 * log2(V) / 2 whatever the data. */
START_TEST(bits_per_byte_of_a_uniform_model_is_log2_v_over_bytes_per_token) {
    set_threads(1);
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    ck_assert_ptr_nonnull(be);
    etm_model *m = etm_model_create(be, &hp, hp.batch_size, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    int32_t token_bytes[VOCAB];
    for (int v = 0; v < VOCAB; v++) token_bytes[v] = v ? 2 : 0;
    etm_eval_result ev;
    ck_assert_msg(etm_evaluate_bytes(m, fx.val, 0, ETM_EVAL_THRESHOLD, token_bytes, &ev, &err) == 0, "%s",
                  err.msg);
    ck_assert_double_eq_tol(ev.loss, log((double)VOCAB), 1e-6);
    ck_assert_double_eq_tol(ev.bits_per_byte, log2((double)VOCAB) / 2.0, 1e-6);
    ck_assert(ev.bytes > 0 && ev.bytes % 2 == 0 && ev.bytes < 2 * ev.tokens); /* some targets are 0 */
    etm_model_free(m);
    etm_backend_free(be);
    fixture_free(&fx);
}
END_TEST

/* ---- the command line ---------------------------------------------------------------------- */

static int run_cmd(const char *dir, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "./etmoe %s >%s/stdout 2>%s/stderr", args, dir, dir);
    int rc = system(cmd);
    ck_assert_msg(rc != -1 && WIFEXITED(rc), "%s did not exit normally", cmd);
    return WEXITSTATUS(rc);
}

static int file_has(const char *path, const char *text) {
    size_t len;
    etm_error err;
    char *b = etm_read_file(path, &len, &err);
    int found = b && strstr(b, text) != NULL;
    free(b);
    return found;
}

START_TEST(command_line_train_eval_and_exit_codes) {
    ck_assert_msg(access("./etmoe", X_OK) == 0, "./etmoe not built (tests run in the build directory)");
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    set(&hp, "max_steps=3");
    char conf[700], args[2048], out[700], errf[700];
    snprintf(conf, sizeof conf, "%s/tiny.conf", fx.dir);
    snprintf(out, sizeof out, "%s/stdout", fx.dir);
    snprintf(errf, sizeof errf, "%s/stderr", fx.dir);
    char *text = etm_hparams_to_string(&hp);
    etm_error err = {{0}};
    ck_assert(etm_write_file_atomic(conf, text, strlen(text), &err) == 0);
    free(text);

    ck_assert_int_eq(run_cmd(fx.dir, "train --help"), 0);
    ck_assert(file_has(out, "usage: etmoe train"));
    ck_assert_int_eq(run_cmd(fx.dir, "eval --help"), 0);
    ck_assert_int_eq(run_cmd(fx.dir, "train"), 2);
    ck_assert_int_eq(run_cmd(fx.dir, "train --bogus"), 2);
    ck_assert_int_eq(run_cmd(fx.dir, "train /nonexistent/x.conf"), 2);
    snprintf(args, sizeof args, "train %s no_such_key=1", conf);
    ck_assert_int_eq(run_cmd(fx.dir, args), 2);
    ck_assert(file_has(errf, "no_such_key"));
    snprintf(args, sizeof args, "train %s --resume --force", conf);
    ck_assert_int_eq(run_cmd(fx.dir, args), 2);
    snprintf(args, sizeof args, "train %s --stop-at 0", conf);
    ck_assert_int_eq(run_cmd(fx.dir, args), 2);
    snprintf(args, sizeof args, "train %s --backend", conf);
    ck_assert_int_eq(run_cmd(fx.dir, args), 2);
    snprintf(args, sizeof args, "train %s backend=cpu --backend no_such_backend", conf);
    ck_assert_int_ne(run_cmd(fx.dir, args), 0);
    ck_assert(file_has(errf, "unknown backend 'no_such_backend'"));
    ck_assert_int_eq(run_cmd(fx.dir, "eval"), 2);
    ck_assert_int_eq(run_cmd(fx.dir, "eval /nonexistent.safetensors"), 2);

    /* a run, then a refused rerun (exit 1), then eval */
    snprintf(args, sizeof args, "train %s --backend cpu", conf);
    ck_assert_int_eq(run_cmd(fx.dir, args), 0);
    snprintf(args, sizeof args, "train %s", conf);
    ck_assert(file_has(errf, "step     3/3"));
    ck_assert_int_eq(run_cmd(fx.dir, args), 1);
    ck_assert(file_has(errf, "--resume"));
    char ckpt[1200];
    snprintf(ckpt, sizeof ckpt, "%s/%s", hp.out_dir, ETM_RUN_CHECKPOINT);
    snprintf(args, sizeof args, "eval %s --mode sideways", ckpt);
    ck_assert_int_eq(run_cmd(fx.dir, args), 2);
    snprintf(args, sizeof args, "eval %s", ckpt);
    ck_assert_int_eq(run_cmd(fx.dir, args), 0);
    ck_assert(file_has(out, "perplexity"));
    ck_assert(file_has(out, "bits/byte"));
    ck_assert(file_has(out, "93 sequences"));
    snprintf(args, sizeof args, "eval %s --batches 2 --mode batch --data %s", ckpt, fx.train);
    ck_assert_int_eq(run_cmd(fx.dir, args), 0);
    ck_assert(file_has(out, "8 sequences"));
    ck_assert(file_has(out, "batch"));
    fixture_free(&fx);
}
END_TEST

/* Ctrl-C: the run finishes its step, saves, and exits with 130. */
START_TEST(sigint_checkpoints_and_exits_130) {
    ck_assert_msg(access("./etmoe", X_OK) == 0, "./etmoe not built (tests run in the build directory)");
    fixture fx;
    fixture_make(&fx);
    etm_hparams hp = tiny_config(&fx, "run");
    set(&hp, "max_steps=1000000");
    set(&hp, "eval_every=0");
    char conf[700], metrics[1200], ckpt[1200];
    snprintf(conf, sizeof conf, "%s/tiny.conf", fx.dir);
    snprintf(metrics, sizeof metrics, "%s/%s", hp.out_dir, ETM_RUN_METRICS);
    snprintf(ckpt, sizeof ckpt, "%s/%s", hp.out_dir, ETM_RUN_CHECKPOINT);
    char *text = etm_hparams_to_string(&hp);
    etm_error err = {{0}};
    ck_assert(etm_write_file_atomic(conf, text, strlen(text), &err) == 0);
    free(text);

    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        execl("./etmoe", "etmoe", "train", conf, "--quiet", (char *)NULL);
        _exit(127);
    }
    /* wait (generously: the machine may be busy) for two completed steps */
    int steps = 0;
    for (int tries = 0; tries < 6000 && steps < 2; tries++) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
        size_t len;
        char *b = etm_read_file(metrics, &len, &err);
        steps = 0;
        for (size_t i = 0; b && i < len; i++) steps += b[i] == '\n';
        free(b);
    }
    ck_assert_int_ge(steps, 2);
    kill(pid, SIGINT);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status), "etmoe train did not exit normally after SIGINT");
    ck_assert_int_eq(WEXITSTATUS(status), 130);
    long step = checkpoint_step(&hp);
    int n;
    json_t **lines = metrics_lines(&hp, &n);
    ck_assert_int_ge(step, 2);
    ck_assert_int_eq(n, step); /* the checkpoint is of the last step logged */
    metrics_free(lines, n);
    fixture_free(&fx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("trainer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, resume_is_byte_exact);
    tcase_add_loop_test(tc, runs_are_deterministic_across_thread_counts, 0, 5);
    tcase_add_loop_test(tc, ec_step_pool_selects_over_the_concatenated_logits, 0, 2);
    tcase_add_test(tc, nan_loss_stops_and_keeps_the_last_good_checkpoint);
    tcase_add_test(tc, huge_learning_rate_stops_before_saving_a_bad_state);
    tcase_add_test(tc, loss_falls_well_below_the_unigram_entropy);
    tcase_add_test(tc, metrics_have_one_object_per_step_with_the_documented_keys);
    tcase_add_test(tc, run_directory_is_never_clobbered_by_accident);
    tcase_add_test(tc, evaluation_sees_each_window_once_and_changes_nothing);
    tcase_add_test(tc, bits_per_byte_of_a_uniform_model_is_log2_v_over_bytes_per_token);
    tcase_add_test(tc, command_line_train_eval_and_exit_codes);
    tcase_add_test(tc, sigint_checkpoints_and_exits_130);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
