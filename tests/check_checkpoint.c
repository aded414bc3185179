/* check_checkpoint.c: tests of checkpoints (src/checkpoint/checkpoint.h) on tiny models with trained-on
 * state: a round trip restores parameters, optimizer state, router state, RNG, loader position,
 * step and configuration bit for bit (ET, TC with loss-free biases, dense); saving is
 * deterministic and a restored model saves the same bytes; every kind of bad file (truncated,
 * garbage header, wrong format, wrong shape or dtype, missing or unexpected tensor, differing
 * configuration, missing optimizer state) fails with a message naming the problem and leaves the
 * model untouched; resumable keys may differ; a failed save leaves the previous file intact. */
#include <config.h>

#include "backend.h"
#include "checkpoint.h"
#include "common.h"
#include "model.h"
#include "moe.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"

#include <sys/stat.h>

#include "optim.h"

#define ASSERT_MSG_HAS(err, s) \
    ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' lacks '%s'", (err).msg, (s))

/* A model small enough to build and step in milliseconds, with one dense and two MoE layers. */
static void tiny_hparams(etm_hparams *hp, etm_router_kind router) {
    *hp = test_tiny_hparams(router);
    hp->tc_balance = router == ETM_ROUTER_TC ? ETM_BALANCE_LOSSFREE : ETM_BALANCE_AUX;
    hp->lossfree_rate = 0.01f;
    hp->et_beta = 0.9f;
    hp->et_warmup_steps = 1;
    hp->max_steps = 10;
    hp->warmup_steps = 1;
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_validate(hp, &err) == 0, "%s", err.msg);
}

typedef struct {
    etm_backend *be;
    etm_model *m;
    etm_optim *opt;
} fixture;

static etm_optim *make_optim(etm_model *m) {
    etm_error err = {{0}};
    etm_optim *opt = etm_optim_create(m->be, &m->hp, m->table, m->n_tensors, &err);
    ck_assert_msg(opt != NULL, "%s", err.msg);
    return opt;
}

static void fixture_make(fixture *fx, const etm_hparams *hp) {
    etm_error err = {{0}};
    fx->be = test_backend();
    fx->m = etm_model_create(fx->be, hp, hp->batch_size, &err);
    ck_assert_msg(fx->m != NULL, "%s", err.msg);
    fx->opt = make_optim(fx->m);
}

static void fixture_free(fixture *fx) {
    etm_optim_free(fx->opt);
    etm_model_free(fx->m);
    etm_backend_free(fx->be);
}

/* A few real training steps, so that the optimizer and router state are not their zeros. */
static void train_steps(fixture *fx, int steps, uint64_t seed) {
    etm_model *m = fx->m;
    int N = m->hp.batch_size * m->hp.seq_len;
    int32_t *x = etm_malloc((size_t)(N + 1) * sizeof(int32_t));
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    etm_error err = {{0}};
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i <= N; i++) x[i] = (int32_t)etm_rng_below(&rng, (uint64_t)m->hp.vocab_size);
        double loss;
        etm_model_zero_grad(m);
        ck_assert_msg(etm_model_forward(m, x, x + 1, m->hp.batch_size, m->hp.seq_len, ETM_MOE_TRAIN, &loss, &err) == 0,
                      "%s", err.msg);
        ck_assert_msg(etm_model_backward(m, 1.0f, &err) == 0, "%s", err.msg);
        ck_assert_msg(etm_optim_step(fx->opt, s, NULL, &err) == 0, "%s", err.msg);
        etm_model_step_end(m);
    }
    free(x);
}

/* ---- snapshots: the host bytes of everything a checkpoint restores ---------------------- */
typedef struct {
    size_t n_params;
    float *params;
    size_t n_router;
    unsigned char *router; /* per MoE layer: threshold, ema, bias (E floats each), counters (2) */
    int n_opt;
    float **opt;
    size_t *opt_n;
} snapshot;

static size_t table_numel(const etm_model *m, int i) {
    size_t n = 1;
    for (int d = 0; d < m->table[i].ndim; d++) n *= (size_t)m->table[i].shape[d];
    return n;
}

static void snapshot_take(snapshot *s, const etm_model *m, const etm_optim *opt) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < m->n_tensors; i++) s->n_params += table_numel(m, i);
    s->params = etm_malloc(s->n_params * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        size_t n = table_numel(m, i);
        m->be->download(m->be, s->params + off, m->table[i].data, n * sizeof(float));
        off += n;
    }
    size_t E = (size_t)m->hp.n_routed, per = 3 * E * sizeof(float) + 2 * sizeof(int64_t);
    s->router = etm_malloc((size_t)m->hp.n_layer * per + 1);
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_router_state st;
        etm_moe_get_state(m->moe[l], &st);
        unsigned char *p = s->router + s->n_router;
        memcpy(p, st.threshold, E * sizeof(float));
        memcpy(p + E * sizeof(float), st.ema, E * sizeof(float));
        memcpy(p + 2 * E * sizeof(float), st.bias, E * sizeof(float));
        memcpy(p + 3 * E * sizeof(float), st.counters, 2 * sizeof(int64_t));
        s->n_router += per;
    }
    if (opt) {
        s->n_opt = etm_optim_state_count(opt);
        s->opt = etm_calloc((size_t)s->n_opt + 1, sizeof(float *));
        s->opt_n = etm_calloc((size_t)s->n_opt + 1, sizeof(size_t));
        for (int i = 0; i < s->n_opt; i++) {
            const etm_optim_state *st = etm_optim_state_at(opt, i);
            size_t n = 1;
            for (int d = 0; d < st->ndim; d++) n *= (size_t)st->shape[d];
            s->opt_n[i] = n;
            s->opt[i] = etm_malloc(n * sizeof(float) + 1);
            m->be->download(m->be, s->opt[i], st->data, n * sizeof(float));
        }
    }
}

static void snapshot_free(snapshot *s) {
    free(s->params);
    free(s->router);
    for (int i = 0; i < s->n_opt; i++) free(s->opt[i]);
    free(s->opt);
    free(s->opt_n);
}

static int snapshot_equal(const snapshot *a, const snapshot *b) {
    if (a->n_params != b->n_params || a->n_router != b->n_router || a->n_opt != b->n_opt) return 0;
    if (memcmp(a->params, b->params, a->n_params * sizeof(float))) return 0;
    if (memcmp(a->router, b->router, a->n_router)) return 0;
    for (int i = 0; i < a->n_opt; i++)
        if (a->opt_n[i] != b->opt_n[i] || memcmp(a->opt[i], b->opt[i], a->opt_n[i] * sizeof(float))) return 0;
    return 1;
}

/* Overwrites the model's and optimizer's state with other values, so a restore is visible. */
static void scramble(fixture *fx) {
    etm_model *m = fx->m;
    for (int i = 0; i < m->n_tensors; i++) m->be->fill(m->be, m->table[i].data, 0.25f, table_numel(m, i));
    int E = m->hp.n_routed;
    float *junk = etm_malloc((size_t)E * sizeof(float));
    for (int e = 0; e < E; e++) junk[e] = 7.0f + (float)e;
    int64_t counters[2] = {99, 98};
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) etm_moe_set_state(m->moe[l], junk, junk, junk, counters);
    free(junk);
    for (int i = 0; i < etm_optim_state_count(fx->opt); i++) {
        const etm_optim_state *st = etm_optim_state_at(fx->opt, i);
        size_t n = 1;
        for (int d = 0; d < st->ndim; d++) n *= (size_t)st->shape[d];
        m->be->fill(m->be, st->data, -3.0f, n);
    }
}

static void sample_extra(etm_checkpoint_extra *x) {
    memset(x, 0, sizeof *x);
    x->step = 3;
    etm_rng_seed(&x->rng, 4242);
    for (int i = 0; i < 5; i++) etm_rng_next(&x->rng);
    x->rng.s[3] |= (uint64_t)1 << 63; /* a word with the top bit set survives the int64 storage */
    x->loader.epoch = 2;
    x->loader.index = 5;
    x->loader.seed = 0xfedcba9876543210ULL;
    x->loader.n_windows = 11;
}

static char *read_all(const char *path, size_t *len) {
    etm_error err = {{0}};
    char *d = etm_read_file(path, len, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    return d;
}

static void round_trip(etm_router_kind router) {
    etm_hparams hp;
    tiny_hparams(&hp, router);
    fixture a, b;
    fixture_make(&a, &hp);
    fixture_make(&b, &hp);
    train_steps(&a, 3, 11);
    char dir[256], p1[512], p2[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(p1, sizeof p1, "%s/a.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/b.safetensors", dir);
    etm_checkpoint_extra x, y;
    sample_extra(&x);
    etm_error err = {{0}};
    ck_assert_msg(etm_checkpoint_save(p1, a.m, a.opt, &x, &err) == 0, "%s", err.msg);

    snapshot sa, sb;
    snapshot_take(&sa, a.m, a.opt);
    if (router == ETM_ROUTER_TC) { /* the loss-free biases moved: the test covers them */
        etm_router_state st;
        etm_moe_get_state(a.m->moe[1], &st);
        int moved = 0;
        for (int e = 0; e < hp.n_routed; e++) moved |= st.bias[e] != 0;
        ck_assert_msg(moved, "loss-free biases still zero after training");
    }
    if (router == ETM_ROUTER_ET) {
        etm_router_state st;
        etm_moe_get_state(a.m->moe[2], &st);
        ck_assert_int_eq(st.counters[0], 3);
    }
    scramble(&b);
    memset(&y, 0xab, sizeof y);
    ck_assert_msg(etm_checkpoint_load(p1, b.m, b.opt, &y, &err) == 0, "%s", err.msg);
    snapshot_take(&sb, b.m, b.opt);
    ck_assert_msg(snapshot_equal(&sa, &sb), "restored state differs from the saved one");
    ck_assert_int_eq(y.step, x.step);
    ck_assert(memcmp(&y.rng, &x.rng, sizeof x.rng) == 0);
    ck_assert(memcmp(&y.loader, &x.loader, sizeof x.loader) == 0);

    etm_hparams back;
    ck_assert_msg(etm_checkpoint_read_config(p1, &back, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_hparams_first_difference(&back, &hp) == NULL, "config differs at %s",
                  etm_hparams_first_difference(&back, &hp));

    /* The restored model saves the very same bytes. */
    ck_assert_msg(etm_checkpoint_save(p2, b.m, b.opt, &y, &err) == 0, "%s", err.msg);
    size_t l1, l2;
    char *d1 = read_all(p1, &l1), *d2 = read_all(p2, &l2);
    ck_assert_uint_eq(l1, l2);
    ck_assert_msg(memcmp(d1, d2, l1) == 0, "a restored model saves different bytes");
    free(d1);
    free(d2);

    /* The trained and the restored model continue identically. */
    train_steps(&a, 1, 77);
    train_steps(&b, 1, 77);
    snapshot ca, cb;
    snapshot_take(&ca, a.m, a.opt);
    snapshot_take(&cb, b.m, b.opt);
    ck_assert_msg(snapshot_equal(&ca, &cb), "the restored run diverges after one more step");
    snapshot_free(&ca);
    snapshot_free(&cb);

    snapshot_free(&sa);
    snapshot_free(&sb);
    fixture_free(&a);
    fixture_free(&b);
}

START_TEST(test_round_trip_et) { round_trip(ETM_ROUTER_ET); }
END_TEST

START_TEST(test_round_trip_tc_lossfree) { round_trip(ETM_ROUTER_TC); }
END_TEST

START_TEST(test_round_trip_dense) { round_trip(ETM_ROUTER_DENSE); }
END_TEST

START_TEST(test_save_twice_identical) {
    etm_hparams hp;
    tiny_hparams(&hp, ETM_ROUTER_ET);
    fixture a;
    fixture_make(&a, &hp);
    train_steps(&a, 2, 5);
    char dir[256], p1[512], p2[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(p1, sizeof p1, "%s/one.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/two.safetensors", dir);
    etm_checkpoint_extra x;
    sample_extra(&x);
    etm_error err = {{0}};
    ck_assert_msg(etm_checkpoint_save(p1, a.m, a.opt, &x, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_checkpoint_save(p2, a.m, a.opt, &x, &err) == 0, "%s", err.msg);
    size_t l1, l2;
    char *d1 = read_all(p1, &l1), *d2 = read_all(p2, &l2);
    ck_assert_uint_eq(l1, l2);
    ck_assert(memcmp(d1, d2, l1) == 0);
    free(d1);
    free(d2);

    /* The file holds what doc/checkpoint-format.md lists, and nothing else. */
    etm_st_file *f = etm_st_open(p1, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_str_eq(etm_st_metadata(f, "format"), ETM_CHECKPOINT_FORMAT);
    ck_assert_str_eq(etm_st_metadata(f, "step"), "3");
    ck_assert_str_eq(etm_st_metadata(f, "etmoe_version"), PACKAGE_VERSION);
    int moe_layers = 0;
    for (int l = 0; l < hp.n_layer; l++) moe_layers += etm_is_moe_layer(&hp, l);
    ck_assert_int_eq(etm_st_count(f), a.m->n_tensors + etm_optim_state_count(a.opt) + 4 * moe_layers + 3);
    ck_assert_ptr_nonnull(etm_st_find(f, "router.1.threshold"));
    ck_assert_ptr_nonnull(etm_st_find(f, "router.2.counters"));
    ck_assert_ptr_null(etm_st_find(f, "router.0.threshold"));
    ck_assert_int_eq(etm_st_find(f, "step")->ndim, 0);
    etm_st_close(f);
    fixture_free(&a);
}
END_TEST

/* ---- bad files ------------------------------------------------------------------------------ */
/* Rewrites checkpoint src as dst with one change: the tensor called `drop` left out, the tensor
 * `reshape` given a different shape (its first dimension one smaller), an extra tensor `add`,
 * or the config replaced by `config`. Metadata other than config is copied. */
typedef struct {
    const char *drop, *reshape, *add, *config, *format, *as_i32;
} mutation;

static void rewrite(const char *src, const char *dst, const mutation *mu) {
    etm_error err = {{0}};
    etm_st_file *f = etm_st_open(src, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    etm_st_writer *w = etm_st_writer_create();
    for (int i = 0; i < etm_st_count(f); i++) {
        const etm_st_tensor *t = etm_st_tensor_at(f, i);
        if (mu->drop && !strcmp(t->name, mu->drop)) continue;
        size_t bytes = (size_t)(t->end - t->begin);
        void *data = etm_malloc(bytes + 1);
        ck_assert_msg(etm_st_read(f, t->name, t->dtype, t->ndim, t->shape, data, &err) == 0, "%s", err.msg);
        int64_t shape[ETM_ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        etm_st_dtype dtype = t->dtype;
        if (mu->reshape && !strcmp(t->name, mu->reshape)) shape[0] -= 1; /* a prefix of the data */
        if (mu->as_i32 && !strcmp(t->name, mu->as_i32)) dtype = ETM_ST_I32;  /* same size as F32 */
        ck_assert_msg(etm_st_add_owned(w, t->name, dtype, t->ndim, shape, data, &err) == 0, "%s", err.msg);
    }
    if (mu->add) {
        float v[2] = {1, 2};
        int64_t two = 2;
        ck_assert(etm_st_add_copy(w, mu->add, ETM_ST_F32, 1, &two, v, &err) == 0);
    }
    const char *keys[] = {"format", "config", "etmoe_version", "step"};
    for (size_t k = 0; k < ETM_ARRAY_LEN(keys); k++) {
        const char *v = etm_st_metadata(f, keys[k]);
        if (!strcmp(keys[k], "config") && mu->config) v = mu->config;
        if (!strcmp(keys[k], "format") && mu->format) v = mu->format;
        if (v) ck_assert(etm_st_set_metadata(w, keys[k], v, &err) == 0);
    }
    ck_assert_msg(etm_st_write(w, dst, &err) == 0, "%s", err.msg);
    etm_st_writer_free(w);
    etm_st_close(f);
}

/* Loading bad must fail with a message holding each of the needles, and change nothing. */
static void expect_load_fails(fixture *fx, const char *bad, int with_opt, const char *n1, const char *n2,
                              const char *n3) {
    snapshot before, after;
    snapshot_take(&before, fx->m, fx->opt);
    etm_checkpoint_extra x, x0;
    memset(&x, 0x5a, sizeof x);
    x0 = x;
    etm_error err = {{0}};
    ck_assert_msg(etm_checkpoint_load(bad, fx->m, with_opt ? fx->opt : NULL, &x, &err) != 0,
                  "loading %s succeeded", bad);
    ASSERT_MSG_HAS(err, bad);
    if (n1) ASSERT_MSG_HAS(err, n1);
    if (n2) ASSERT_MSG_HAS(err, n2);
    if (n3) ASSERT_MSG_HAS(err, n3);
    snapshot_take(&after, fx->m, fx->opt);
    ck_assert_msg(snapshot_equal(&before, &after), "a failed load (%s) changed the model", err.msg);
    ck_assert_msg(memcmp(&x, &x0, sizeof x) == 0, "a failed load changed the training position");
    snapshot_free(&before);
    snapshot_free(&after);
}

typedef struct {
    fixture src, dst;
    char dir[256], good[512], bad[512];
    etm_hparams hp;
} bad_case;

static void bad_case_make(bad_case *c) {
    tiny_hparams(&c->hp, ETM_ROUTER_ET);
    fixture_make(&c->src, &c->hp);
    fixture_make(&c->dst, &c->hp);
    train_steps(&c->src, 2, 3);
    train_steps(&c->dst, 1, 9); /* a different state, so "unchanged" is not "equal to the file" */
    test_tmpdir(c->dir, sizeof c->dir);
    snprintf(c->good, sizeof c->good, "%s/good.safetensors", c->dir);
    snprintf(c->bad, sizeof c->bad, "%s/bad.safetensors", c->dir);
    etm_checkpoint_extra x;
    sample_extra(&x);
    etm_error err = {{0}};
    ck_assert_msg(etm_checkpoint_save(c->good, c->src.m, c->src.opt, &x, &err) == 0, "%s", err.msg);
}

static void bad_case_free(bad_case *c) {
    fixture_free(&c->src);
    fixture_free(&c->dst);
}

START_TEST(test_truncated) {
    bad_case c;
    bad_case_make(&c);
    size_t len;
    char *d = read_all(c.good, &len);
    etm_error err = {{0}};
    ck_assert(etm_write_file_atomic(c.bad, d, len - 100, &err) == 0);
    expect_load_fails(&c.dst, c.bad, 1, NULL, NULL, NULL);
    ck_assert(etm_write_file_atomic(c.bad, d, 5, &err) == 0); /* not even a header length */
    expect_load_fails(&c.dst, c.bad, 1, NULL, NULL, NULL);
    etm_hparams hp;
    ck_assert(etm_checkpoint_read_config(c.bad, &hp, &err) != 0);
    ASSERT_MSG_HAS(err, c.bad);
    free(d);
    bad_case_free(&c);
}
END_TEST

START_TEST(test_garbage_header) {
    bad_case c;
    bad_case_make(&c);
    size_t len;
    char *d = read_all(c.good, &len);
    etm_error err = {{0}};
    memcpy(d + 8, "GARBAGE!", 8); /* the JSON header no longer parses */
    ck_assert(etm_write_file_atomic(c.bad, d, len, &err) == 0);
    expect_load_fails(&c.dst, c.bad, 1, NULL, NULL, NULL);
    memset(d, 0xff, 8); /* a header length far beyond the file */
    ck_assert(etm_write_file_atomic(c.bad, d, len, &err) == 0);
    expect_load_fails(&c.dst, c.bad, 1, NULL, NULL, NULL);
    const char text[] = "this is not a checkpoint at all, just some text in a file";
    ck_assert(etm_write_file_atomic(c.bad, text, sizeof text, &err) == 0);
    expect_load_fails(&c.dst, c.bad, 1, NULL, NULL, NULL);
    free(d);
    bad_case_free(&c);
}
END_TEST

START_TEST(test_wrong_format) {
    bad_case c;
    bad_case_make(&c);
    mutation mu = {0};
    mu.format = "etmoe-checkpoint-999";
    rewrite(c.good, c.bad, &mu);
    expect_load_fails(&c.dst, c.bad, 1, "etmoe-checkpoint-999", ETM_CHECKPOINT_FORMAT, NULL);
    etm_hparams hp;
    etm_error err = {{0}};
    ck_assert(etm_checkpoint_read_config(c.bad, &hp, &err) != 0);
    ASSERT_MSG_HAS(err, "etmoe-checkpoint-999");
    bad_case_free(&c);
}
END_TEST

START_TEST(test_wrong_shape) {
    bad_case c;
    bad_case_make(&c);
    mutation mu = {0};
    mu.reshape = "layers.2.moe.up";
    rewrite(c.good, c.bad, &mu);
    /* E = 4, Hx = 16, D = 16: the file says (3, 16, 16) */
    expect_load_fails(&c.dst, c.bad, 1, "layers.2.moe.up", "(3, 16, 16)", "(4, 16, 16)");
    mutation mu2 = {0};
    mu2.reshape = "router.1.threshold";
    rewrite(c.good, c.bad, &mu2);
    expect_load_fails(&c.dst, c.bad, 0, "router.1.threshold", "(3)", "(4)");
    mutation mu3 = {0};
    mu3.as_i32 = "wte";
    rewrite(c.good, c.bad, &mu3);
    expect_load_fails(&c.dst, c.bad, 0, "'wte'", "I32", "F32");
    bad_case_free(&c);
}
END_TEST

START_TEST(test_missing_tensor) {
    bad_case c;
    bad_case_make(&c);
    const char *names[] = {"lm_head", "layers.1.attn.wv", "router.2.counters", "loader.pos"};
    for (size_t i = 0; i < ETM_ARRAY_LEN(names); i++) {
        mutation mu = {0};
        mu.drop = names[i];
        rewrite(c.good, c.bad, &mu);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", names[i]);
        expect_load_fails(&c.dst, c.bad, 1, "missing", quoted, NULL);
    }
    /* a model file (no optimizer state) cannot restore an optimizer, but loads a model */
    char model_file[600];
    snprintf(model_file, sizeof model_file, "%s/model.safetensors", c.dir);
    etm_error err = {{0}};
    ck_assert_msg(etm_checkpoint_save(model_file, c.src.m, NULL, NULL, &err) == 0, "%s", err.msg);
    expect_load_fails(&c.dst, model_file, 1, "missing", "opt.", NULL);
    etm_checkpoint_extra x;
    ck_assert_msg(etm_checkpoint_load(model_file, c.dst.m, NULL, NULL, &err) == 0, "%s", err.msg);
    ck_assert(etm_checkpoint_load(model_file, c.dst.m, NULL, &x, &err) != 0);
    ASSERT_MSG_HAS(err, "'step'");
    /* a whole checkpoint loads without its optimizer and position when they are not asked for */
    ck_assert_msg(etm_checkpoint_load(c.good, c.dst.m, NULL, NULL, &err) == 0, "%s", err.msg);
    bad_case_free(&c);
}
END_TEST

START_TEST(test_unexpected_tensor) {
    bad_case c;
    bad_case_make(&c);
    const char *names[] = {"layers.9.attn.wq", "router.0.threshold", "opt.nothing.m"};
    for (size_t i = 0; i < ETM_ARRAY_LEN(names); i++) {
        mutation mu = {0};
        mu.add = names[i];
        rewrite(c.good, c.bad, &mu);
        expect_load_fails(&c.dst, c.bad, 1, "unexpected", names[i], NULL);
    }
    bad_case_free(&c);
}
END_TEST

START_TEST(test_config_mismatch) {
    bad_case c;
    bad_case_make(&c);
    etm_hparams other = c.hp;
    other.rope_base = 500000.0f; /* no tensor shape changes: only the config can tell */
    char *text = etm_hparams_to_string(&other);
    mutation mu = {0};
    mu.config = text;
    rewrite(c.good, c.bad, &mu);
    expect_load_fails(&c.dst, c.bad, 1, "rope_base", "500000", "10000");
    free(text);

    other = c.hp;
    other.et_beta = 0.5f;
    text = etm_hparams_to_string(&other);
    mu.config = text;
    rewrite(c.good, c.bad, &mu);
    expect_load_fails(&c.dst, c.bad, 1, "et_beta", NULL, NULL);
    free(text);

    mu.config = "d_model = oops\n";
    rewrite(c.good, c.bad, &mu);
    expect_load_fails(&c.dst, c.bad, 1, "d_model", NULL, NULL);

    /* keys a resume may change do not stop a load */
    other = c.hp;
    other.max_steps = 1000;
    other.lr_matrix = 0.5f;
    snprintf(other.out_dir, sizeof other.out_dir, "%s", "elsewhere");
    text = etm_hparams_to_string(&other);
    mu.config = text;
    rewrite(c.good, c.bad, &mu);
    etm_checkpoint_extra x;
    etm_error err = {{0}};
    ck_assert_msg(etm_checkpoint_load(c.bad, c.dst.m, c.dst.opt, &x, &err) == 0, "%s", err.msg);
    free(text);
    ck_assert_ptr_null(etm_checkpoint_config_difference(&other, &c.hp));
    other.seed = 1;
    ck_assert_str_eq(etm_checkpoint_config_difference(&other, &c.hp), "seed");
    other = c.hp;
    other.batch_size = 4;
    ck_assert_str_eq(etm_checkpoint_config_difference(&other, &c.hp), "batch_size");
    bad_case_free(&c);
}
END_TEST

START_TEST(test_failed_save_keeps_previous) {
    bad_case c;
    bad_case_make(&c);
    size_t len;
    char *before = read_all(c.good, &len);
    /* A directory where the temporary file would go makes the save fail, even for root. */
    char blocker[700];
    snprintf(blocker, sizeof blocker, "%s.tmp.%ld", c.good, (long)getpid());
    ck_assert(mkdir(blocker, 0700) == 0);
    etm_checkpoint_extra x;
    sample_extra(&x);
    etm_error err = {{0}};
    ck_assert(etm_checkpoint_save(c.good, c.dst.m, c.dst.opt, &x, &err) != 0);
    ASSERT_MSG_HAS(err, c.good);
    rmdir(blocker);
    if (geteuid() != 0) { /* a read-only directory, where permissions are enforced */
        ck_assert(chmod(c.dir, 0555) == 0);
        ck_assert(etm_checkpoint_save(c.good, c.dst.m, c.dst.opt, &x, &err) != 0);
        ck_assert(chmod(c.dir, 0755) == 0);
    }
    size_t len2;
    char *after = read_all(c.good, &len2);
    ck_assert_uint_eq(len, len2);
    ck_assert_msg(memcmp(before, after, len) == 0, "a failed save changed the previous checkpoint");
    char missing[700];
    snprintf(missing, sizeof missing, "%s/no/such/dir/ckpt.safetensors", c.dir);
    ck_assert(etm_checkpoint_save(missing, c.dst.m, NULL, NULL, &err) != 0);
    free(before);
    free(after);
    bad_case_free(&c);
}
END_TEST

START_TEST(test_load_model) {
    bad_case c;
    bad_case_make(&c);
    etm_error err = {{0}};
    etm_model *m = etm_checkpoint_load_model(c.good, c.src.be, 1, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    snapshot a, b;
    snapshot_take(&a, c.src.m, NULL);
    snapshot_take(&b, m, NULL);
    ck_assert(snapshot_equal(&a, &b));
    ck_assert_int_eq(m->max_batch, 1);
    snapshot_free(&a);
    snapshot_free(&b);
    etm_model_free(m);
    char nothing[600];
    snprintf(nothing, sizeof nothing, "%s/nothing.safetensors", c.dir);
    ck_assert_ptr_null(etm_checkpoint_load_model(nothing, c.src.be, 1, &err));
    ASSERT_MSG_HAS(err, nothing);
    bad_case_free(&c);
}
END_TEST

static Suite *checkpoint_suite(void) {
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_add_test(tc, test_round_trip_et);
    tcase_add_test(tc, test_round_trip_tc_lossfree);
    tcase_add_test(tc, test_round_trip_dense);
    tcase_add_test(tc, test_save_twice_identical);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_garbage_header);
    tcase_add_test(tc, test_wrong_format);
    tcase_add_test(tc, test_wrong_shape);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_unexpected_tensor);
    tcase_add_test(tc, test_config_mismatch);
    tcase_add_test(tc, test_failed_save_keeps_previous);
    tcase_add_test(tc, test_load_model);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(checkpoint_suite()); }
