/* check_model.c: tests of the transformer (src/model/model.h): whole-model finite-difference gradients
 * for every router, causality of ET inference (and the non-causality of EC's training routing),
 * KV-cache decoding against the full forward, thread-count determinism, initialisation, the
 * parameter table and input errors. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model.h"
#include "optim.h"
#include "rng.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------------- */



/* The tiny model of the gradient checks: V 37, T 6, D 16, 4 heads over 2 KV heads, 3 layers
 * (layer 0 dense), 4 routed experts + 1 shared of width 8. */
static etm_hparams tiny_hp(etm_router_kind router) {
    etm_hparams hp = test_tiny_hparams(router);
    hp.vocab_size = 37;
    hp.seq_len = 6;
    hp.n_head = 4;
    hp.n_kv_head = 2;
    hp.norm_eps = 1e-6f;
    hp.expert_hidden = 8;
    hp.tc_score = ETM_SCORE_SIGMOID;
    hp.tc_balance = ETM_BALANCE_NONE;
    hp.aux_alpha = 0.0f;
    hp.z_loss = 0.0f;
    hp.capacity_factor = 0.0f;
    hp.pool_seqs = 0;
    hp.et_beta = 0.9f;
    hp.et_warmup_steps = 0;
    hp.et_capacity = 0.0f;
    hp.seed = 1234;
    hp.grad_accum = 1;
    return hp;
}

static etm_model *make_model(etm_backend *be, const etm_hparams *hp, int max_batch) {
    etm_error err = {{0}};
    etm_model *m = etm_model_create(be, hp, max_batch, &err);
    ck_assert_msg(m != NULL, "model create: %s", err.msg);
    return m;
}

/* Replaces the initialisation (whose zero output projections would hide most gradient paths)
 * by random values of unit-ish scale everywhere. */
static void randomize_params(etm_model *m, uint64_t seed) {
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        const etm_param *p = &m->table[i];
        float std = 1.0f / sqrtf((float)p->shape[p->ndim - 1]);
        if (p->group == ETM_PARAM_EMBED) std = 1.0f;
        if (p->group == ETM_PARAM_ROUTER) std *= 2.0f;
        size_t n = p->numel;
        float *buf = malloc(n * sizeof(float));
        etm_rng_fill_normal(&rng, buf, n, std);
        m->be->upload(m->be, p->data, buf, n * sizeof(float));
        free(buf);
    }
}

static void random_tokens(int32_t *x, int n, int V, uint64_t seed) {
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) x[i] = (int32_t)etm_rng_below(&rng, (uint64_t)V);
}

static double forward_ok(etm_model *m, const int32_t *tok, const int32_t *tgt, int B, int T, etm_moe_mode mode) {
    etm_error err = {{0}};
    double loss = -1.0;
    int rc = etm_model_forward(m, tok, tgt, B, T, mode, &loss, &err);
    ck_assert_msg(rc == 0, "forward: %s", err.msg);
    return loss;
}

static void logits_ok(etm_model *m, float *out, int first, int rows) {
    etm_error err = {{0}};
    ck_assert_msg(etm_model_logits(m, out, first, rows, &err) == 0, "logits: %s", err.msg);
}

static void backward_ok(etm_model *m, float scale) {
    etm_error err = {{0}};
    ck_assert_msg(etm_model_backward(m, scale, &err) == 0, "backward: %s", err.msg);
}

static float *download_all(etm_model *m, const float *block) {
    float *h = malloc(m->n_params * sizeof(float));
    m->be->download(m->be, h, block, m->n_params * sizeof(float));
    return h;
}

static const etm_param *find_param(const etm_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->table[i].name, name) == 0) return &m->table[i];
    return NULL;
}

static float get_param(etm_model *m, const etm_param *p, size_t i) {
    float v;
    m->be->download(m->be, &v, p->data + i, sizeof v);
    return v;
}

static void set_param(etm_model *m, const etm_param *p, size_t i, float v) {
    m->be->upload(m->be, p->data + i, &v, sizeof v);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double d = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

/* ---- finite-difference gradient check ------------------------------------------------------ */

typedef struct {
    const char *label;
    etm_router_kind router;
    etm_score_kind score;
    etm_balance_kind balance;
    float aux_alpha, z_loss;
} grad_case;

static const grad_case grad_cases[] = {
    {"dense", ETM_ROUTER_DENSE, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE, 0.0f, 0.0f},
    {"tc sigmoid + aux + z", ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_AUX, 0.3f, 0.05f},
    {"tc softmax + switch + z", ETM_ROUTER_TC, ETM_SCORE_SOFTMAX, ETM_BALANCE_SWITCH, 0.3f, 0.05f},
    {"tc sigmoid + aux_error", ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_AUX_ERROR, 0.3f, 0.0f},
    {"ec + z", ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE, 0.0f, 0.05f},
    {"et + z", ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE, 0.0f, 0.05f},
};

/* Central differences of the loss (summed in double) with the routing replayed from the first
 * forward, against the analytic gradient, on a sample of entries of every tensor. */
START_TEST(test_gradients_fd) {
    test_one_thread();
    const grad_case *gc = &grad_cases[_i];
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(gc->router);
    hp.tc_score = gc->score;
    hp.tc_balance = gc->balance;
    hp.aux_alpha = gc->aux_alpha;
    hp.z_loss = gc->z_loss;
    const int B = 2, T = hp.seq_len, N = B * T;
    etm_model *m = make_model(be, &hp, B);
    randomize_params(m, 99 + _i);
    int32_t tok[12], tgt[12];
    random_tokens(tok, N, hp.vocab_size, 5);
    random_tokens(tgt, N, hp.vocab_size, 6);
    tgt[3] = -1; /* an ignored target */

    double loss0 = forward_ok(m, tok, tgt, B, T, ETM_MOE_TRAIN);
    ck_assert(isfinite(loss0) && loss0 > 0.0);
    double added = 0.0;
    for (int l = 0; l < hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        const etm_moe_stats *st = etm_moe_last_stats(m->moe[l]);
        ck_assert_int_gt(st->n_pairs, 0);
        added += st->aux_loss + st->z_loss;
        if (gc->aux_alpha > 0.0f) ck_assert_msg(st->aux_loss > 0.0f, "%s: aux loss is off", gc->label);
        if (gc->z_loss > 0.0f) ck_assert_msg(st->z_loss > 0.0f, "%s: z loss is off", gc->label);
    }
    if (gc->aux_alpha > 0.0f || gc->z_loss > 0.0f) ck_assert(added > 1e-3);
    etm_model_zero_grad(m);
    backward_ok(m, 1.0f);
    float *grad = download_all(m, m->grads_memory);
    double replay = forward_ok(m, tok, tgt, B, T, ETM_MOE_REPLAY);
    ck_assert_msg(fabs(replay - loss0) < 1e-6, "%s: replay changed the loss %.9g -> %.9g", gc->label, loss0, replay);

    etm_rng rng;
    etm_rng_seed(&rng, 777);
    const float h = 1e-2f;
    int checked = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const etm_param *p = &m->table[t];
        size_t off = m->table[t].offset, numel = p->numel;
        double gmax = 0.0;
        for (size_t i = 0; i < numel; i++) gmax = fmax(gmax, fabs(grad[off + i]));
        for (int s = 0; s < 6; s++) {
            size_t i;
            if (p->group == ETM_PARAM_EMBED) /* rows of tokens that occur; others have no gradient */
                i = (size_t)tok[etm_rng_below(&rng, N)] * p->shape[1] + etm_rng_below(&rng, p->shape[1]);
            else
                i = etm_rng_below(&rng, numel);
            float orig = get_param(m, p, i);
            set_param(m, p, i, orig + h);
            double lp = forward_ok(m, tok, tgt, B, T, ETM_MOE_REPLAY);
            set_param(m, p, i, orig - h);
            double lm = forward_ok(m, tok, tgt, B, T, ETM_MOE_REPLAY);
            set_param(m, p, i, orig);
            double fd = (lp - lm) / (2.0 * h), an = grad[off + i];
            double tol = 1e-2 * fmax(fabs(fd), fabs(an)) + 3e-4 * gmax + 1e-5;
            ck_assert_msg(fabs(fd - an) <= tol, "%s: %s[%zu]: finite difference %.6g, backward %.6g (tol %.3g)",
                          gc->label, p->name, i, fd, an, tol);
            checked++;
        }
        ck_assert_msg(gmax > 0.0 || strstr(p->name, "router") == NULL || gc->router == ETM_ROUTER_DENSE,
                      "%s: %s has no gradient", gc->label, p->name);
    }
    ck_assert_int_eq(checked, 6 * m->n_tensors);
    free(grad);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* The gradient scales with loss_scale and accumulates across backward calls. */
START_TEST(test_grad_scale_accumulates) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_TC);
    hp.tc_balance = ETM_BALANCE_AUX;
    hp.aux_alpha = 0.3f;
    hp.z_loss = 0.05f;
    etm_model *m = make_model(be, &hp, 2);
    randomize_params(m, 3);
    int32_t tok[12], tgt[12];
    random_tokens(tok, 12, hp.vocab_size, 1);
    random_tokens(tgt, 12, hp.vocab_size, 2);
    forward_ok(m, tok, tgt, 2, hp.seq_len, ETM_MOE_TRAIN);
    etm_model_zero_grad(m);
    backward_ok(m, 1.0f);
    float *g1 = download_all(m, m->grads_memory);
    etm_model_zero_grad(m);
    backward_ok(m, 0.25f);
    backward_ok(m, 0.25f);
    float *g2 = download_all(m, m->grads_memory);
    double gmax = 0.0;
    for (size_t i = 0; i < m->n_params; i++) gmax = fmax(gmax, fabs(g1[i]));
    ck_assert(gmax > 0.0);
    for (size_t i = 0; i < m->n_params; i++)
        ck_assert_msg(fabs(2.0 * g2[i] - g1[i]) <= 1e-5 * gmax, "grad %zu: %g vs 2 x %g", i, g1[i], g2[i]);
    free(g1);
    free(g2);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* ---- causality ----------------------------------------------------------------------------- */

static etm_hparams causal_hp(etm_router_kind router) {
    etm_hparams hp = tiny_hp(router);
    hp.seq_len = 8;
    return hp;
}

/* Sets the routers' thresholds from a few training batches, as training would. */
static void settle_thresholds(etm_model *m, int B) {
    int T = m->hp.seq_len;
    int32_t *tok = malloc(sizeof(int32_t) * B * T), *tgt = malloc(sizeof(int32_t) * B * T);
    for (int step = 0; step < 3; step++) {
        random_tokens(tok, B * T, m->hp.vocab_size, 100 + step);
        random_tokens(tgt, B * T, m->hp.vocab_size, 200 + step);
        forward_ok(m, tok, tgt, B, T, ETM_MOE_TRAIN);
        etm_model_step_end(m);
    }
    free(tok);
    free(tgt);
}

/* Largest change of the logits at positions 0..t of sequence a when (1) its tokens after t are
 * replaced and (2) it is batched behind another sequence. */
typedef struct {
    double future, batch;   /* max |diff| over positions <= t */
    double after;           /* max |diff| over positions > t in case (1), a sanity check */
} causal_result;

static causal_result causal_probe(etm_model *m, etm_moe_mode mode, int t) {
    int T = m->hp.seq_len, V = m->hp.vocab_size;
    int32_t a[16], a2[16], ba[32];
    random_tokens(a, T, V, 41);
    memcpy(a2, a, sizeof a);
    for (int i = t + 1; i < T; i++) a2[i] = (a[i] + 1 + i) % V;
    random_tokens(ba, T, V, 43);
    memcpy(ba + T, a, sizeof(int32_t) * T);
    float *ref = malloc(sizeof(float) * T * V), *alt = malloc(sizeof(float) * T * V);
    causal_result r;
    forward_ok(m, a, NULL, 1, T, mode);
    logits_ok(m, ref, 0, T);
    forward_ok(m, a2, NULL, 1, T, mode);
    logits_ok(m, alt, 0, T);
    r.future = max_abs_diff(ref, alt, (size_t)(t + 1) * V);
    r.after = max_abs_diff(ref + (size_t)(t + 1) * V, alt + (size_t)(t + 1) * V, (size_t)(T - t - 1) * V);
    forward_ok(m, ba, NULL, 2, T, mode);
    logits_ok(m, alt, T, T); /* sequence a is the second one */
    r.batch = max_abs_diff(ref, alt, (size_t)(t + 1) * V);
    free(ref);
    free(alt);
    return r;
}

START_TEST(test_causal_et_eval) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = causal_hp(ETM_ROUTER_ET);
    etm_model *m = make_model(be, &hp, 2);
    randomize_params(m, 11);
    settle_thresholds(m, 2);
    for (int t = 0; t < hp.seq_len - 1; t += 3) {
        causal_result r = causal_probe(m, ETM_MOE_EVAL, t);
        ck_assert_msg(r.future <= 1e-5, "ET eval: position <= %d changed by %g when later tokens changed", t, r.future);
        ck_assert_msg(r.batch <= 1e-5, "ET eval: position <= %d changed by %g when batched", t, r.batch);
        ck_assert_msg(r.after > 1e-3, "ET eval: changing tokens after %d changed nothing (%g)", t, r.after);
    }
    /* the thresholds route some tokens and leave others: routing really is per token */
    int32_t tok[16];
    random_tokens(tok, hp.seq_len, hp.vocab_size, 5);
    forward_ok(m, tok, NULL, 1, hp.seq_len, ETM_MOE_EVAL);
    const etm_moe_stats *st = etm_moe_last_stats(m->moe[1]);
    ck_assert_int_gt(st->n_pairs, 0);
    ck_assert_int_lt(st->n_pairs, hp.seq_len * hp.n_routed);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* Expert choice routes within the batch: a token's output depends on later tokens and on the
 * other sequences. The same probe must see it. */
START_TEST(test_causal_ec_train_routing_is_not) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = causal_hp(ETM_ROUTER_EC);
    etm_model *m = make_model(be, &hp, 2);
    randomize_params(m, 11);
    causal_result r = causal_probe(m, ETM_MOE_TRAIN, 3);
    ck_assert_msg(r.future > 1e-3, "EC routing did not react to later tokens (%g)", r.future);
    ck_assert_msg(r.batch > 1e-3, "EC routing did not react to the other sequence (%g)", r.batch);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* ---- KV-cache decoding --------------------------------------------------------------------- */

static void check_decode(etm_router_kind router) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = causal_hp(router);
    etm_model *m = make_model(be, &hp, 2);
    randomize_params(m, 21);
    if (router != ETM_ROUTER_DENSE) settle_thresholds(m, 2);
    int T = hp.seq_len, V = hp.vocab_size;
    int32_t tok[16], tok2[16];
    random_tokens(tok, T, V, 8);
    memcpy(tok2, tok, sizeof tok);
    tok2[4] = (tok[4] + 7) % V;
    float *full = malloc(sizeof(float) * T * V), *full2 = malloc(sizeof(float) * T * V);
    forward_ok(m, tok, NULL, 1, T, ETM_MOE_EVAL);
    logits_ok(m, full, 0, T);
    forward_ok(m, tok2, NULL, 1, T, ETM_MOE_EVAL);
    logits_ok(m, full2, 0, T);

    etm_error err = {{0}};
    etm_kv_cache *c = etm_kv_cache_create(m, T, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    for (int pos = 0; pos < T; pos++) {
        const float *lg = etm_model_decode(m, c, tok[pos], pos, &err);
        ck_assert_msg(lg != NULL, "%s", err.msg);
        double d = max_abs_diff(lg, full + (size_t)pos * V, V);
        ck_assert_msg(d <= 2e-4, "router %d: decode at %d differs from forward by %g", (int)router, pos, d);
    }
    /* rewind to position 4 and take the other branch */
    for (int pos = 4; pos < T; pos++) {
        const float *lg = etm_model_decode(m, c, tok2[pos], pos, &err);
        ck_assert_msg(lg != NULL, "%s", err.msg);
        double d = max_abs_diff(lg, full2 + (size_t)pos * V, V);
        ck_assert_msg(d <= 2e-4, "router %d: rewound decode at %d differs by %g", (int)router, pos, d);
    }
    /* positions must follow the cache */
    ck_assert(etm_model_decode(m, c, tok[0], T, &err) == NULL);
    ck_assert_ptr_nonnull(strstr(err.msg, "position"));
    etm_kv_cache_free(c);
    free(full);
    free(full2);
    etm_model_free(m);
    etm_backend_free(be);
}

START_TEST(test_decode_dense) { check_decode(ETM_ROUTER_DENSE); }
END_TEST
START_TEST(test_decode_et) { check_decode(ETM_ROUTER_ET); }
END_TEST
START_TEST(test_decode_tc) { check_decode(ETM_ROUTER_TC); }
END_TEST

/* ---- determinism --------------------------------------------------------------------------- */

/* Gradients after one forward + backward of a model big enough for the threads to split work. */
static float *grads_with_threads(int threads, double *loss) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    hp.seq_len = 32;
    hp.d_model = 64;
    hp.ffn_hidden = 256;
    hp.expert_hidden = 128;
    hp.n_routed = 8;
    hp.vocab_size = 300;
    etm_model *m = make_model(be, &hp, 4);
    randomize_params(m, 5);
    int N = 4 * hp.seq_len;
    int32_t *tok = malloc(sizeof(int32_t) * N), *tgt = malloc(sizeof(int32_t) * N);
    random_tokens(tok, N, hp.vocab_size, 1);
    random_tokens(tgt, N, hp.vocab_size, 2);
    etm_model_zero_grad(m);
    *loss = forward_ok(m, tok, tgt, 4, hp.seq_len, ETM_MOE_TRAIN);
    backward_ok(m, 1.0f);
    float *g = download_all(m, m->grads_memory);
    free(tok);
    free(tgt);
    etm_model_free(m);
    etm_backend_free(be);
    return g;
}

START_TEST(test_threads_bit_identical) {
    double l1, l2;
    float *g1 = grads_with_threads(1, &l1);
    float *g2 = grads_with_threads(2, &l2);
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    ck_assert_msg(memcmp(&l1, &l2, sizeof l1) == 0, "loss %.17g vs %.17g", l1, l2);
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    hp.seq_len = 32, hp.d_model = 64, hp.ffn_hidden = 256, hp.expert_hidden = 128, hp.n_routed = 8;
    hp.vocab_size = 300;
    etm_model *m = make_model(be, &hp, 4);
    for (int t = 0; t < m->n_tensors; t++) {
        const etm_param *p = &m->table[t];
        size_t off = m->table[t].offset;
        ck_assert_msg(memcmp(g1 + off, g2 + off, p->numel * sizeof(float)) == 0,
                      "gradient of %s differs between 1 and 2 threads", p->name);
    }
    etm_model_free(m);
    etm_backend_free(be);
    free(g1);
    free(g2);
}
END_TEST

/* ---- initialisation and the parameter table ------------------------------------------------ */

START_TEST(test_init_seeded) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    etm_model *a = make_model(be, &hp, 1), *b = make_model(be, &hp, 1);
    hp.seed = 1235;
    etm_model *c = make_model(be, &hp, 1);
    float *pa = download_all(a, a->params_memory), *pb = download_all(b, b->params_memory);
    float *pc = download_all(c, c->params_memory);
    ck_assert(memcmp(pa, pb, a->n_params * sizeof(float)) == 0);
    for (int t = 0; t < a->n_tensors; t++) {
        const etm_param *p = &a->table[t];
        int zero = strstr(p->name, "down") || strstr(p->name, ".wo") || strcmp(p->name, "lm_head") == 0;
        size_t off = a->table[t].offset;
        int differs = memcmp(pa + off, pc + off, p->numel * sizeof(float)) != 0;
        ck_assert_msg(differs == !zero, "%s: seed change %s it", p->name, differs ? "changed" : "did not change");
    }
    free(pa);
    free(pb);
    free(pc);
    etm_model_free(a);
    etm_model_free(b);
    etm_model_free(c);
    etm_backend_free(be);
}
END_TEST

/* Each tensor follows its rule: zero output projections; embedding N(0,1); router std 1/sqrt(D);
 * others std min(1, sqrt(fan_out/fan_in))/sqrt(fan_in). Checked on sample moments. */
START_TEST(test_init_distribution) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    hp.vocab_size = 500, hp.d_model = 64, hp.n_head = 4, hp.ffn_hidden = 256, hp.expert_hidden = 32;
    hp.n_routed = 8, hp.seq_len = 16;
    etm_model *m = make_model(be, &hp, 1);
    float *p = download_all(m, m->params_memory);
    for (int t = 0; t < m->n_tensors; t++) {
        const etm_param *e = &m->table[t];
        int fan_out = e->shape[e->ndim - 2], fan_in = e->shape[e->ndim - 1];
        double want;
        if (strstr(e->name, "down") || strstr(e->name, ".wo") || strcmp(e->name, "lm_head") == 0) want = 0.0;
        else if (e->group == ETM_PARAM_EMBED) want = 1.0;
        else if (e->group == ETM_PARAM_ROUTER) want = 1.0 / sqrt(fan_in);
        else want = fmin(1.0, sqrt((double)fan_out / fan_in)) / sqrt(fan_in);
        size_t off = m->table[t].offset, numel = e->numel;
        double s1 = 0.0, s2 = 0.0;
        for (size_t i = 0; i < numel; i++) {
            s1 += p[off + i];
            s2 += (double)p[off + i] * p[off + i];
        }
        double mean = s1 / numel, std = sqrt(s2 / numel);
        if (want == 0.0) {
            ck_assert_msg(s2 == 0.0, "%s should start at zero", e->name);
        } else {
            double rel = 5.0 / sqrt((double)numel); /* five standard errors */
            ck_assert_msg(fabs(std / want - 1.0) < rel, "%s: std %g, want %g", e->name, std, want);
            ck_assert_msg(fabs(mean) < want * rel, "%s: mean %g", e->name, mean);
        }
    }
    free(p);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

START_TEST(test_param_table) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_TC);
    etm_model *m = make_model(be, &hp, 1);
    size_t next = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const etm_param *p = &m->table[t];
        size_t numel = 1;
        for (int d = 0; d < p->ndim; d++) numel *= (size_t)p->shape[d];
        ck_assert_uint_eq(m->table[t].offset, next);
        ck_assert_uint_eq(p->numel, numel);
        ck_assert_ptr_eq(p->data, m->params_memory + m->table[t].offset);
        ck_assert_ptr_eq(p->grad, m->grads_memory + m->table[t].offset);
        for (int u = 0; u < t; u++) ck_assert_str_ne(p->name, m->table[u].name);
        next = m->table[t].offset + numel;
    }
    ck_assert_uint_eq(next, m->n_params);
    ck_assert_uint_eq(etm_model_num_params(m), m->n_params);
    const etm_param *up = find_param(m, "layers.2.moe.up");
    ck_assert_ptr_nonnull(up);
    ck_assert_int_eq(up->ndim, 3);
    ck_assert_int_eq(up->shape[0], 4);
    ck_assert_int_eq(up->shape[1], 8);
    ck_assert_int_eq(up->shape[2], 16);
    ck_assert_ptr_eq(up->data, m->w.layers[2].moe.up);
    ck_assert_int_eq(find_param(m, "layers.1.moe.router")->group, ETM_PARAM_ROUTER);
    ck_assert_int_eq(find_param(m, "layers.0.mlp.up")->group, ETM_PARAM_MATRIX);
    ck_assert_int_eq(find_param(m, "wte")->group, ETM_PARAM_EMBED);
    ck_assert_int_eq(find_param(m, "lm_head")->group, ETM_PARAM_HEAD);
    const etm_param *wk = find_param(m, "layers.0.attn.wk");
    ck_assert_int_eq(wk->shape[0], 2 * 4); /* Hkv * hd */
    ck_assert_ptr_null(find_param(m, "layers.0.moe.router"));
    ck_assert_ptr_null(find_param(m, "layers.1.mlp.up"));
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* ---- errors -------------------------------------------------------------------------------- */

START_TEST(test_errors) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_error err = {{0}};
    etm_hparams hp = tiny_hp(ETM_ROUTER_DENSE);
    hp.n_kv_head = 3;
    ck_assert_ptr_null(etm_model_create(be, &hp, 1, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "n_kv_head"));
    hp = tiny_hp(ETM_ROUTER_DENSE);
    etm_model *m = make_model(be, &hp, 1);
    int32_t tok[6] = {1, 2, 3, 37, 4, 5}, tgt[6] = {1, 2, 3, 4, 5, 6};
    double loss;
    ck_assert_int_eq(etm_model_forward(m, tok, tgt, 1, 6, ETM_MOE_TRAIN, &loss, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "token 37 at position 3"));
    tok[3] = 0;
    ck_assert_int_eq(etm_model_forward(m, tok, tgt, 2, 6, ETM_MOE_TRAIN, &loss, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "batch size 2"));
    ck_assert_int_eq(etm_model_backward(m, 1.0f, &err), -1); /* no forward yet */
    ck_assert_int_eq(etm_model_forward(m, tok, NULL, 1, 6, ETM_MOE_TRAIN, &loss, &err), 0);
    ck_assert_int_eq(etm_model_backward(m, 1.0f, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "no targets"));
    ck_assert_ptr_null(etm_kv_cache_create(m, 7, &err));
    float row[37];
    ck_assert_int_eq(etm_model_logits(m, row, 6, 1, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "outside"));
    ck_assert_int_eq(etm_model_logits(m, row, 5, 1, &err), 0);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* A freshly initialised model predicts uniformly (zero LM head): loss = log V exactly. */
START_TEST(test_initial_loss_uniform) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    etm_model *m = make_model(be, &hp, 2);
    int32_t tok[12], tgt[12];
    random_tokens(tok, 12, hp.vocab_size, 1);
    random_tokens(tgt, 12, hp.vocab_size, 2);
    double loss = forward_ok(m, tok, tgt, 2, hp.seq_len, ETM_MOE_TRAIN);
    ck_assert_msg(fabs(loss - log(hp.vocab_size)) < 1e-5, "loss %g, log V %g", loss, log(hp.vocab_size));
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* Adds tc to s with a generous timeout: Check's default of 4 s is too short on a loaded shared
 * machine when the harness does not pass CK_DEFAULT_TIMEOUT down. */
static void add_case(Suite *s, TCase *tc) {
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
}

/* The parameter table drives the optimizer as is, and a few steps on one batch fit it: the
 * gradients point downhill for every router (Muon for matrices, AdamW for the rest). */
START_TEST(test_optimizer_fits_batch) {
    test_one_thread();
    static const etm_router_kind routers[] = {ETM_ROUTER_DENSE, ETM_ROUTER_TC, ETM_ROUTER_EC, ETM_ROUTER_ET};
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(routers[_i]);
    hp.max_steps = 30;
    hp.warmup_steps = 0;
    hp.grad_clip = 0.0f;
    etm_model *m = make_model(be, &hp, 2);
    etm_error err = {{0}};
    etm_optim *opt = etm_optim_create(be, &hp, m->table, m->n_tensors, &err);
    ck_assert_msg(opt != NULL, "optimizer rejects the table: %s", err.msg);
    int32_t tok[12], tgt[12];
    random_tokens(tok, 12, hp.vocab_size, 1);
    random_tokens(tgt, 12, hp.vocab_size, 2);
    double first = 0.0, last = 0.0;
    for (int step = 0; step < hp.max_steps; step++) {
        etm_model_zero_grad(m);
        last = forward_ok(m, tok, tgt, 2, hp.seq_len, ETM_MOE_TRAIN);
        if (step == 0) first = last;
        backward_ok(m, 1.0f);
        ck_assert_msg(etm_optim_step(opt, step, NULL, &err) == 0, "%s", err.msg);
        etm_model_step_end(m);
    }
    ck_assert_msg(last < 0.5 * first, "router %d: loss %g -> %g after %d steps", (int)routers[_i], first, last,
                  hp.max_steps);
    etm_optim_free(opt);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

static Suite *model_suite(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("gradients");
    tcase_add_loop_test(tc, test_gradients_fd, 0, (int)ETM_ARRAY_LEN(grad_cases));
    tcase_add_test(tc, test_grad_scale_accumulates);
    tcase_add_loop_test(tc, test_optimizer_fits_batch, 0, 4);
    add_case(s, tc);
    tc = tcase_create("causality");
    tcase_add_test(tc, test_causal_et_eval);
    tcase_add_test(tc, test_causal_ec_train_routing_is_not);
    add_case(s, tc);
    tc = tcase_create("decode");
    tcase_add_test(tc, test_decode_dense);
    tcase_add_test(tc, test_decode_et);
    tcase_add_test(tc, test_decode_tc);
    add_case(s, tc);
    tc = tcase_create("determinism");
    tcase_add_test(tc, test_threads_bit_identical);
    tcase_add_test(tc, test_init_seeded);
    add_case(s, tc);
    tc = tcase_create("structure");
    tcase_add_test(tc, test_init_distribution);
    tcase_add_test(tc, test_param_table);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_initial_loss_uniform);
    add_case(s, tc);
    return s;
}

int main(void) { return test_run_suite(model_suite()); }
