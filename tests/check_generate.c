/* check_generate.c: tests of text generation (src/generate/generate.h) and `etmoe generate`: greedy
 * sampling is the argmax, top-k never leaves the top k and follows the softmax, the same seed
 * gives the same tokens, KV-cache generation equals re-running the full forward on the growing
 * sequence (tokens, logits, routed-expert counts), the colour buckets, the terminal writer's
 * UTF-8 handling, the HTML page, and the verb's output, determinism and exit codes. */
#include <config.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "checkpoint.h"
#include "generate.h"
#include "model.h"
#include "rng.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------------- */



/* V 37 (or vocab), T 12, D 16, 4 heads over 2 KV heads, 3 layers (layer 0 dense), 4 routed
 * experts of width 8 + 1 shared, top_k 2. */
static etm_hparams tiny_hp(etm_router_kind router, int vocab) {
    etm_hparams hp = test_tiny_hparams(router);
    hp.vocab_size = vocab;
    hp.seq_len = 12;
    hp.n_head = 4;
    hp.n_kv_head = 2;
    hp.expert_hidden = 8;
    hp.top_k = 2;
    hp.tc_balance = ETM_BALANCE_NONE;
    hp.et_beta = 0.9f;
    hp.et_warmup_steps = 0;
    hp.grad_accum = 1;
    hp.seed = 77;
    snprintf(hp.tokenizer, sizeof hp.tokenizer, "austen");
    snprintf(hp.backend, sizeof hp.backend, "cpu");
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_validate(&hp, &err) == 0, "%s", err.msg);
    return hp;
}

/* Every parameter random (a fresh model's output projections and head are zero, which would
 * make every logit 0). */
static void randomize_params(etm_model *m, uint64_t seed) {
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        const etm_param *p = &m->table[i];
        float std = 1.0f / sqrtf((float)p->shape[p->ndim - 1]);
        if (p->group == ETM_PARAM_EMBED) std = 1.0f;
        if (p->group == ETM_PARAM_ROUTER) std *= 2.0f;
        float *buf = malloc(p->numel * sizeof(float));
        etm_rng_fill_normal(&rng, buf, p->numel, std);
        m->be->upload(m->be, p->data, buf, p->numel * sizeof(float));
        free(buf);
    }
}

/* A few training forwards and step ends, so ET/EC layers have thresholds (before the first
 * update evaluation falls back to expert choice). */
static void settle_thresholds(etm_model *m) {
    int B = m->max_batch, T = m->hp.seq_len, N = B * T;
    int32_t *tok = malloc(sizeof(int32_t) * N), *tgt = malloc(sizeof(int32_t) * N);
    etm_rng rng;
    etm_rng_seed(&rng, 500);
    etm_error err = {{0}};
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < N; i++) {
            tok[i] = (int32_t)etm_rng_below(&rng, (uint64_t)m->hp.vocab_size);
            tgt[i] = (int32_t)etm_rng_below(&rng, (uint64_t)m->hp.vocab_size);
        }
        double loss;
        ck_assert_msg(etm_model_forward(m, tok, tgt, B, T, ETM_MOE_TRAIN, &loss, &err) == 0, "%s", err.msg);
        etm_model_step_end(m);
    }
    free(tok);
    free(tgt);
}

static etm_model *random_model(etm_backend *be, const etm_hparams *hp) {
    etm_error err = {{0}};
    etm_model *m = etm_model_create(be, hp, 2, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    randomize_params(m, 31);
    if (hp->router != ETM_ROUTER_DENSE) settle_thresholds(m);
    return m;
}

static int count_substr(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* ---- sampling ------------------------------------------------------------------------------ */

START_TEST(test_greedy_is_argmax) {
    etm_rng data, rng, before;
    etm_rng_seed(&data, 1);
    etm_rng_seed(&rng, 2);
    etm_sampling s = {0.0f, 0};
    float l[100];
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + (int)etm_rng_below(&data, 100);
        for (int i = 0; i < n; i++) l[i] = etm_rng_normal(&data);
        int best = 0;
        for (int i = 1; i < n; i++)
            if (l[i] > l[best]) best = i;
        for (int k = 0; k <= 3; k++) { /* top-k changes nothing when greedy */
            s.top_k = k;
            before = rng;
            ck_assert_int_eq(etm_sample(l, n, &s, &rng), best);
            ck_assert_msg(memcmp(&before, &rng, sizeof rng) == 0, "greedy sampling consumed random numbers");
        }
    }
    /* ties go to the lower id; NaN never wins; all NaN gives 0 */
    float t[6] = {1.0f, 3.0f, NAN, 3.0f, -2.0f, 3.0f};
    s.top_k = 0;
    ck_assert_int_eq(etm_sample(t, 6, &s, &rng), 1);
    float u[3] = {NAN, -1.0f, NAN};
    ck_assert_int_eq(etm_sample(u, 3, &s, &rng), 1);
    float v[3] = {NAN, NAN, NAN};
    ck_assert_int_eq(etm_sample(v, 3, &s, &rng), 0);
}
END_TEST

/* Draws from a fixed distribution: every draw inside the top k, and each candidate's frequency
 * within 5 standard deviations (+0.003) of softmax(l / T) over the top k. */
static void check_distribution(const float *l, int n, float temperature, int top_k, int draws, uint64_t seed) {
    etm_sampling s = {temperature, top_k};
    int k = top_k <= 0 || top_k >= n ? n : top_k;
    /* the reference top k: rank every id by (logit desc, id asc) */
    int *in_top = calloc((size_t)n, sizeof(int));
    for (int i = 0; i < n; i++) {
        int rank = 0;
        for (int j = 0; j < n; j++) rank += l[j] > l[i] || (l[j] == l[i] && j < i);
        in_top[i] = rank < k;
    }
    double *p = calloc((size_t)n, sizeof(double)), max = -INFINITY, z = 0;
    for (int i = 0; i < n; i++)
        if (in_top[i] && l[i] > max) max = l[i];
    for (int i = 0; i < n; i++) {
        p[i] = in_top[i] ? exp(((double)l[i] - max) / temperature) : 0.0;
        z += p[i];
    }
    int *hits = calloc((size_t)n, sizeof(int));
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    for (int d = 0; d < draws; d++) {
        int32_t id = etm_sample(l, n, &s, &rng);
        ck_assert_msg(id >= 0 && id < n, "sample %d out of range", (int)id);
        ck_assert_msg(in_top[id], "top-%d sampled id %d, outside the top %d", top_k, (int)id, k);
        hits[id]++;
    }
    for (int i = 0; i < n; i++) {
        double pi = p[i] / z, f = (double)hits[i] / draws, sd = sqrt(pi * (1 - pi) / draws);
        ck_assert_msg(fabs(f - pi) <= 5 * sd + 0.003, "T %g top-%d: id %d drawn %.4f of the time, softmax says %.4f",
                      (double)temperature, top_k, i, f, pi);
    }
    free(in_top);
    free(p);
    free(hits);
}

START_TEST(test_top_k_and_softmax) {
    float l[24];
    etm_rng data;
    etm_rng_seed(&data, 9);
    for (int i = 0; i < 24; i++) l[i] = 1.5f * etm_rng_normal(&data);
    check_distribution(l, 24, 1.0f, 0, 40000, 1);
    check_distribution(l, 24, 1.0f, 5, 40000, 2);
    check_distribution(l, 24, 0.5f, 3, 40000, 3);
    check_distribution(l, 24, 2.0f, 10, 40000, 4);
    check_distribution(l, 24, 1.0f, 1, 2000, 5); /* top-1 is greedy */
    /* ties at the boundary of the top k go to the lower ids */
    float t[8] = {0.0f, 2.0f, 1.0f, 2.0f, 1.0f, 1.0f, -1.0f, 1.0f};
    check_distribution(t, 8, 1.0f, 3, 20000, 6); /* {1, 3, 2} */
    check_distribution(t, 8, 1.0f, 4, 20000, 7); /* {1, 3, 2, 4} */
    /* NaN is never drawn, even when top-k reaches it */
    float u[4] = {0.5f, NAN, 0.1f, 0.2f};
    etm_sampling s = {1.0f, 4};
    etm_rng rng;
    etm_rng_seed(&rng, 8);
    for (int d = 0; d < 2000; d++) ck_assert_int_ne(etm_sample(u, 4, &s, &rng), 1);
}
END_TEST

START_TEST(test_sampling_check) {
    etm_error err = {{0}};
    etm_sampling ok = {0.7f, 3}, neg = {-0.1f, 0}, nan_t = {NAN, 0}, inf_t = {INFINITY, 0}, badk = {1.0f, -1};
    ck_assert_int_eq(etm_sampling_check(&ok, &err), 0);
    ck_assert_int_ne(etm_sampling_check(&neg, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "temperature"));
    ck_assert_int_ne(etm_sampling_check(&nan_t, &err), 0);
    ck_assert_int_ne(etm_sampling_check(&inf_t, &err), 0);
    ck_assert_int_ne(etm_sampling_check(&badk, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "top-k"));
}
END_TEST

/* ---- generation against the full forward --------------------------------------------------- */

typedef struct {
    int n;
    int32_t tokens[64];
    int generated[64];
    int experts[64][8];
    int n_moe;
    float *logits; /* (64, V) */
    int V;
} recorder;

static int record(void *p, const etm_gen_event *ev) {
    recorder *r = p;
    ck_assert_int_eq(ev->pos, r->n);
    ck_assert_int_lt(r->n, 64);
    r->tokens[r->n] = ev->token;
    r->generated[r->n] = ev->generated;
    r->n_moe = ev->n_moe;
    for (int j = 0; j < ev->n_moe; j++) r->experts[r->n][j] = ev->experts[j];
    memcpy(r->logits + (size_t)r->n * r->V, ev->logits, (size_t)r->V * sizeof(float));
    r->n++;
    return 0;
}

static void recorder_init(recorder *r, int V) {
    memset(r, 0, sizeof *r);
    r->V = V;
    r->logits = calloc((size_t)64 * V, sizeof(float));
}

static etm_gen_result generate_ok(etm_model *m, etm_gen_options *o, recorder *r) {
    etm_error err = {{0}};
    etm_gen_result res;
    recorder_init(r, m->hp.vocab_size);
    o->on_token = record;
    o->ctx = r;
    ck_assert_msg(etm_generate(m, o, &res, &err) == 0, "%s", err.msg);
    return res;
}

/* Generates with the KV cache, then re-generates by running the full forward (B=1, T = the
 * sequence so far, ETM_MOE_EVAL) at every step with the same sampler and seed: the same tokens,
 * logits within 1e-5, and each token's routed experts per layer equal to its row of the full
 * forward's routing mask. */
static void check_cache_equals_full_forward(etm_router_kind router, float temperature, int top_k) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(router, 37);
    etm_model *m = random_model(be, &hp);
    int V = hp.vocab_size, T = hp.seq_len, E = hp.n_routed;
    int32_t prompt[3] = {5, 17, 2};
    etm_gen_options o;
    memset(&o, 0, sizeof o);
    o.prompt = prompt;
    o.n_prompt = 3;
    o.max_new = 100; /* more than fits: the context ends it */
    o.stop_token = -1;
    o.sampling.temperature = temperature;
    o.sampling.top_k = top_k;
    o.seed = 1234;
    recorder r;
    etm_gen_result res = generate_ok(m, &o, &r);
    ck_assert_int_eq(res.end, ETM_GEN_CONTEXT);
    ck_assert_int_eq(res.n_generated, T - 3);
    ck_assert_int_eq(r.n, T);

    int layers[8], n_moe = etm_gen_moe_layers(m, layers);
    ck_assert_int_eq(r.n_moe, n_moe);
    ck_assert_int_eq(n_moe, router == ETM_ROUTER_DENSE ? 0 : 2);
    etm_rng rng;
    etm_rng_seed(&rng, o.seed);
    int32_t seq[64];
    memcpy(seq, prompt, sizeof prompt);
    float *logits = malloc(sizeof(float) * V);
    uint8_t *mask = malloc((size_t)T * E);
    etm_error err = {{0}};
    double worst = 0;
    int routed_some = 0, routed_not_all = 0;
    for (int len = 1; len <= T; len++) {
        if (len > 3) {
            seq[len - 1] = etm_sample(logits, V, &o.sampling, &rng);
            ck_assert_msg(r.tokens[len - 1] == seq[len - 1], "router %d: token %d: cache %d, full forward %d",
                          (int)router, len - 1, (int)r.tokens[len - 1], (int)seq[len - 1]);
        }
        ck_assert_int_eq(r.generated[len - 1], len > 3);
        ck_assert_msg(etm_model_forward(m, seq, NULL, 1, len, ETM_MOE_EVAL, NULL, &err) == 0, "%s", err.msg);
        ck_assert_msg(etm_model_logits(m, logits, len - 1, 1, &err) == 0, "%s", err.msg);
        for (int v = 0; v < V; v++) {
            double d = fabs((double)logits[v] - r.logits[(size_t)(len - 1) * V + v]);
            if (d > worst) worst = d;
        }
        for (int j = 0; j < n_moe; j++) {
            be->download(be, mask, etm_moe_mask(m->moe[layers[j]]), (size_t)len * E);
            int count = 0;
            for (int e = 0; e < E; e++) count += mask[(size_t)(len - 1) * E + e] != 0;
            ck_assert_msg(r.experts[len - 1][j] == count, "router %d: token %d layer %d: cache routed %d experts, "
                          "full forward %d", (int)router, len - 1, layers[j], r.experts[len - 1][j], count);
            routed_some |= count > 0;
            routed_not_all |= count < E;
        }
    }
    ck_assert_msg(worst <= 1e-5, "router %d: cache logits differ from the full forward by %g", (int)router, worst);
    if (n_moe) ck_assert(routed_some && routed_not_all); /* the comparison saw real routing decisions */
    free(mask);
    free(logits);
    free(r.logits);
    etm_model_free(m);
    etm_backend_free(be);
}

START_TEST(test_cache_equals_full_forward_et) { check_cache_equals_full_forward(ETM_ROUTER_ET, 1.0f, 0); }
END_TEST
START_TEST(test_cache_equals_full_forward_et_topk) { check_cache_equals_full_forward(ETM_ROUTER_ET, 0.8f, 5); }
END_TEST
START_TEST(test_cache_equals_full_forward_greedy) { check_cache_equals_full_forward(ETM_ROUTER_ET, 0.0f, 0); }
END_TEST
START_TEST(test_cache_equals_full_forward_tc) { check_cache_equals_full_forward(ETM_ROUTER_TC, 1.0f, 0); }
END_TEST
START_TEST(test_cache_equals_full_forward_dense) { check_cache_equals_full_forward(ETM_ROUTER_DENSE, 1.0f, 0); }
END_TEST

START_TEST(test_same_seed_same_tokens) {
    test_one_thread();
    etm_backend *be = test_backend_named("cpu");
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET, 37);
    etm_model *m = random_model(be, &hp);
    int32_t prompt[2] = {3, 4};
    etm_gen_options o;
    memset(&o, 0, sizeof o);
    o.prompt = prompt;
    o.n_prompt = 2;
    o.max_new = 6;
    o.stop_token = -1;
    o.sampling.temperature = 1.5f;
    o.seed = 99;
    recorder a, b, c;
    etm_gen_result ra = generate_ok(m, &o, &a), rb = generate_ok(m, &o, &b);
    ck_assert_int_eq(ra.end, ETM_GEN_LENGTH);
    ck_assert_int_eq(ra.n_generated, 6);
    ck_assert_int_eq(rb.n_generated, 6);
    ck_assert_int_eq(a.n, 8);
    ck_assert(memcmp(a.tokens, b.tokens, sizeof a.tokens) == 0);
    ck_assert(memcmp(a.experts, b.experts, sizeof a.experts) == 0);
    ck_assert(memcmp(a.logits, b.logits, sizeof(float) * 8 * 37) == 0);
    o.seed = 100; /* another seed: another text (fixed seeds, so this is deterministic) */
    generate_ok(m, &o, &c);
    ck_assert(memcmp(a.tokens, c.tokens, sizeof a.tokens) != 0);

    /* the stop token ends generation before it is fed; the callback can stop it too */
    o.seed = 99;
    o.stop_token = a.tokens[4];
    recorder d;
    etm_gen_result rd = generate_ok(m, &o, &d);
    ck_assert_int_eq(rd.end, ETM_GEN_STOP_TOKEN);
    ck_assert_int_eq(rd.n_generated, 2);
    ck_assert_int_eq(d.n, 4);
    /* n_vocab limits the ids drawn */
    o.stop_token = -1;
    o.n_vocab = 3;
    o.max_new = 9;
    recorder e;
    generate_ok(m, &o, &e);
    for (int i = 2; i < e.n; i++) ck_assert_int_lt(e.tokens[i], 3);
    /* bad options */
    etm_error err = {{0}};
    etm_gen_result res;
    o.n_vocab = 38;
    ck_assert_int_ne(etm_generate(m, &o, &res, &err), 0);
    o.n_vocab = 0;
    o.n_prompt = 13;
    int32_t longp[13] = {0};
    o.prompt = longp;
    ck_assert_int_ne(etm_generate(m, &o, &res, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "context"));
    o.n_prompt = 2;
    prompt[1] = 37;
    o.prompt = prompt;
    ck_assert_int_ne(etm_generate(m, &o, &res, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "prompt token 37"));
    free(a.logits);
    free(b.logits);
    free(c.logits);
    free(d.logits);
    free(e.logits);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* ---- colours and writers ------------------------------------------------------------------- */

START_TEST(test_buckets) {
    /* budget 8: the documented boundaries */
    int expect[20] = {0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6};
    for (int c = 0; c < 20; c++) ck_assert_msg(etm_expert_bucket(c, 8) == expect[c], "count %d", c);
    /* budget 1 (one MoE layer, top_k 1): 0 none, 1 on budget, 2 up to 2x, more beyond */
    ck_assert_int_eq(etm_expert_bucket(0, 1), 0);
    ck_assert_int_eq(etm_expert_bucket(1, 1), 3);
    ck_assert_int_eq(etm_expert_bucket(2, 1), 5);
    ck_assert_int_eq(etm_expert_bucket(3, 1), 6);
    for (int b = 1; b < 40; b++)
        for (int c = 1; c < 100; c++) ck_assert(etm_expert_bucket(c, b) >= etm_expert_bucket(c - 1, b));
    for (int b = 0; b < ETM_EXPERT_BUCKETS; b++) {
        ck_assert_ptr_nonnull(strstr(etm_expert_bucket_ansi(b), "48;5;"));
        ck_assert_int_eq((int)strlen(etm_expert_bucket_html(b)), 7);
    }
}
END_TEST

static char *capture(etm_show_mode mode, const char *const *tokens, const int *totals, int n, int budget) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    etm_token_writer w;
    etm_token_writer_init(&w, f, mode);
    for (int i = 0; i < n; i++) etm_token_writer_put(&w, tokens[i], strlen(tokens[i]), totals[i], budget);
    etm_token_writer_finish(&w);
    fclose(f);
    return buf;
}

START_TEST(test_writer_utf8_and_newlines) {
    /* "é" split across two tokens, a newline inside a token, a lone lead byte at the end */
    const char *tokens[] = {"a\xc3", "\xa9\x62" /* "\xa9" "b" */, "x\ny", "\xe2\x82"};
    int totals[] = {2, 4, 0, 9};
    char *plain = capture(ETM_SHOW_PLAIN, tokens, totals, 4, 4);
    ck_assert_str_eq(plain, "a\xc3\xa9" "bx\ny\xe2\x82");
    char *ann = capture(ETM_SHOW_ANNOTATED, tokens, totals, 4, 4);
    /* annotated: newlines as \n before the annotation, the line break after it */
    ck_assert_str_eq(ann, "a[2]\xc3\xa9" "b[4]x\\ny[0]\n[9]\xe2\x82");
    char *ansi = capture(ETM_SHOW_ANSI, tokens, totals, 4, 4);
    char expect[512];
    snprintf(expect, sizeof expect,
             "\x1b[%sma\x1b[0m"                 /* 'a' alone: the lead byte waits */
             "\x1b[%sm\xc3\xa9" "b\x1b[0m"      /* the whole 'é' with the token that completes it */
             "\x1b[%smx\x1b[0m\n\x1b[%smy\x1b[0m" /* colour reset around the newline */
             "\xe2\x82",                        /* the unfinished character, uncoloured */
             etm_expert_bucket_ansi(2), etm_expert_bucket_ansi(3), etm_expert_bucket_ansi(0),
             etm_expert_bucket_ansi(0));
    ck_assert_str_eq(ansi, expect);
    free(plain);
    free(ann);
    free(ansi);
}
END_TEST

START_TEST(test_legend) {
    int layers[2] = {1, 2};
    etm_expert_trace *t = etm_trace_create(2, layers, 4, 2);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    etm_print_legend(f, ETM_SHOW_ANSI, t);
    fclose(f);
    /* budget 4 of at most 8: 0 | 1 | 2-3 | 4 | 5-6 | 7-8 (over 2x is impossible) */
    ck_assert_ptr_nonnull(strstr(buf, "budget = top_k 2 x 2 layers = 4, at most 8"));
    ck_assert_ptr_nonnull(strstr(buf, " 2-3 "));
    ck_assert_ptr_nonnull(strstr(buf, " 7-8 "));
    ck_assert_ptr_null(strstr(buf, etm_expert_bucket_meaning(6)));
    ck_assert_int_eq(count_substr(buf, "\x1b[48;5;"), 6);
    free(buf);
    etm_trace_free(t);
}
END_TEST

/* ---- HTML ---------------------------------------------------------------------------------- */

static etm_tokenizer *austen(void) {
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_load("austen", &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    return tok;
}

static int32_t one_id(const etm_tokenizer *tok, const char *text) {
    size_t n = 0;
    int32_t *ids = etm_tokenizer_encode(tok, text, strlen(text), &n);
    ck_assert_int_eq((int)n, 1);
    int32_t id = ids[0];
    free(ids);
    return id;
}

/* Checks that every token span of page matches the trace: one span per token, in order, with
 * data-id, data-experts and data-layers from the trace and the right bucket class. */
static void check_spans(const char *page, const etm_expert_trace *t) {
    ck_assert_int_eq(count_substr(page, "data-id=\""), (int)t->n);
    const char *p = page;
    for (size_t i = 0; i < t->n; i++) {
        p = strstr(p, "<span class=\"t b");
        ck_assert_ptr_nonnull(p);
        int bucket = -1, id = -1, experts = -1;
        char kind = 0, cls[64], layers_text[256];
        ck_assert_int_eq(sscanf(p, "<span class=\"%63[^\"]\" data-id=\"%d\" data-experts=\"%d\" data-layers=\"%255[0-9,]\"",
                                cls, &id, &experts, layers_text), t->n_moe ? 4 : 3);
        ck_assert_int_eq(sscanf(cls, "t b%d %c", &bucket, &kind), 2);
        ck_assert_int_eq(id, t->ids[i]);
        ck_assert_int_eq(experts, etm_trace_total(t, i));
        ck_assert_int_eq(bucket, etm_expert_bucket(experts, etm_trace_budget(t)));
        ck_assert_int_eq(kind, t->generated[i] ? 'g' : 'p');
        char want[256] = "";
        for (int j = 0; j < t->n_moe; j++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", j ? "," : "",
                     t->experts[i * (size_t)t->n_moe + j]);
        if (t->n_moe) ck_assert_str_eq(layers_text, want);
        p++;
    }
}

START_TEST(test_html_page) {
    etm_tokenizer *tok = austen();
    int layers[3] = {1, 2, 4};
    etm_expert_trace *t = etm_trace_create(3, layers, 8, 2);
    int32_t ids[] = {one_id(tok, "It"), one_id(tok, "<"), one_id(tok, "&"), one_id(tok, "\xc3"),
                     one_id(tok, "\xa9"), one_id(tok, "\xff"), one_id(tok, "\n"), one_id(tok, "\x01"),
                     one_id(tok, "\"")};
    int n = (int)ETM_ARRAY_LEN(ids);
    for (int i = 0; i < n; i++) {
        int ex[3] = {i % 3, (i * 5) % 9, i / 2};
        etm_trace_add(t, ids[i], i >= 4, ex);
    }
    size_t len = 0;
    char *page = etm_trace_html(t, tok, "a <title>", "heading & more", &len);
    ck_assert_int_eq(len, strlen(page));
    ck_assert_ptr_nonnull(strstr(page, "<!DOCTYPE html>"));
    ck_assert_ptr_nonnull(strstr(page, "</html>\n"));
    ck_assert_ptr_nonnull(strstr(page, "<title>a &lt;title&gt;</title>"));
    ck_assert_ptr_nonnull(strstr(page, "heading &amp; more"));
    ck_assert_ptr_null(strstr(page, "<script"));
    ck_assert_ptr_null(strstr(page, "http")); /* self-contained */
    check_spans(page, t);
    /* escaping, the split 'é' in the span that completes it, U+FFFD for 0xff, control bytes */
    ck_assert_ptr_nonnull(strstr(page, ">&lt;</span>"));
    ck_assert_ptr_nonnull(strstr(page, ">&amp;</span>"));
    ck_assert_ptr_nonnull(strstr(page, ">\xc3\xa9</span>"));
    ck_assert_ptr_nonnull(strstr(page, ">\xef\xbf\xbd</span>"));
    ck_assert_ptr_nonnull(strstr(page, ">\\x01</span>"));
    ck_assert_int_eq(count_substr(page, " nl\""), 1); /* the newline token is marked */
    ck_assert_ptr_nonnull(strstr(page, ">\n</span>"));
    ck_assert_ptr_nonnull(strstr(page, ">&quot;</span>"));
    ck_assert_ptr_null(strstr(page, "\xff"));
    ck_assert_ptr_nonnull(strstr(page, "title=\"token"));
    ck_assert_ptr_nonnull(strstr(page, "&#10;layer 4: 1")); /* token 2: layer 4 has 2/2 = 1 */
    ck_assert_ptr_nonnull(strstr(page, "Legend"));
    free(page);
    etm_trace_free(t);
    etm_tokenizer_free(tok);
}
END_TEST

/* ---- the verb ------------------------------------------------------------------------------ */

static const char *etmoe_bin(void) {
    const char *b = getenv("ETMOE");
    return b && *b ? b : ETM_TEST_BIN;
}

static int run(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    /* one thread unless the command says otherwise (see test_one_thread()); idle threads sleep rather
     * than spin, which on a loaded machine makes every barrier wait for a scheduler slice */
    int k = snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive; export OMP_NUM_THREADS OMP_WAIT_POLICY; ");
    vsnprintf(cmd + k, sizeof cmd - (size_t)k, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    ck_assert_msg(st != -1 && WIFEXITED(st), "could not run: %s", cmd);
    return WEXITSTATUS(st);
}

static char *slurp(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    etm_error err = {{0}};
    char *text = etm_read_file(path, NULL, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    return text;
}

static void assert_has(const char *dir, const char *name, const char *needle) {
    char *text = slurp(dir, name);
    ck_assert_msg(strstr(text, needle) != NULL, "'%s' not in %s:\n%s", needle, name, text);
    free(text);
}

/* What `generate --show-experts` should print for trace t: every token through the writer, a
 * newline, a blank line and the legend. */
static char *expected_show(etm_show_mode mode, const etm_expert_trace *t, const etm_tokenizer *tok) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    etm_token_writer w;
    etm_token_writer_init(&w, f, mode);
    for (size_t i = 0; i < t->n; i++) {
        size_t n = 0;
        const char *bytes = etm_tokenizer_token_bytes(tok, t->ids[i], &n);
        etm_token_writer_put(&w, bytes, n, etm_trace_total(t, i), etm_trace_budget(t));
    }
    etm_token_writer_finish(&w);
    fputs("\n\n", f);
    etm_print_legend(f, mode, t);
    fclose(f);
    return buf;
}

START_TEST(test_verb) {
    test_one_thread();
    const char *bin = etmoe_bin();
    char dir[256], ck[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(ck, sizeof ck, "%s/model.safetensors", dir);

    /* a tiny random ET model over the austen tokenizer, saved as a model file */
    etm_backend *be = test_backend_named("cpu");
    etm_tokenizer *tok = austen();
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET, etm_tokenizer_vocab_size(tok));
    hp.seq_len = 24;
    etm_model *m = random_model(be, &hp);
    etm_error err = {{0}};
    ck_assert_msg(etm_checkpoint_save(ck, m, NULL, NULL, &err) == 0, "%s", err.msg);

    /* what the library generates for the same prompt and options */
    const char *prompt = "It is a truth universally";
    size_t n_ids = 0;
    int32_t *ids = etm_tokenizer_encode(tok, prompt, strlen(prompt), &n_ids);
    int32_t seq[32];
    seq[0] = etm_tokenizer_eot(tok);
    memcpy(seq + 1, ids, n_ids * sizeof(int32_t));
    etm_gen_options o;
    memset(&o, 0, sizeof o);
    o.prompt = seq;
    o.n_prompt = (int)n_ids + 1;
    o.max_new = 7;
    o.n_vocab = etm_tokenizer_vocab_size(tok);
    o.stop_token = seq[0];
    o.sampling.temperature = 0.9f;
    o.sampling.top_k = 40;
    o.seed = 5;
    recorder r;
    etm_gen_result res = generate_ok(m, &o, &r);
    int layers[8], n_moe = etm_gen_moe_layers(m, layers);
    etm_expert_trace *t = etm_trace_create(n_moe, layers, hp.n_routed, hp.top_k);
    for (int i = 1; i < r.n; i++) etm_trace_add(t, r.tokens[i], r.generated[i], r.experts[i]);
    size_t text_len = 0;
    char *text = etm_tokenizer_decode(tok, r.tokens + 1, (size_t)r.n - 1, &text_len, &err);
    ck_assert_ptr_nonnull(text);

    /* plain: the prompt and the library's continuation, the same bytes on every run */
    const char *opts = "--prompt 'It is a truth universally' --tokens 7 --temperature 0.9 --top-k 40 --seed 5";
    ck_assert_int_eq(run("%s generate %s %s >%s/out1 2>%s/err1", bin, ck, opts, dir, dir), 0);
    /* the same bytes with two threads */
    ck_assert_int_eq(run("OMP_NUM_THREADS=2 %s generate %s %s >%s/out2 2>/dev/null", bin, ck, opts, dir), 0);
    char *out1 = slurp(dir, "out1"), *out2 = slurp(dir, "out2");
    char want[4096];
    snprintf(want, sizeof want, "%s\n", text);
    ck_assert_str_eq(out1, want);
    ck_assert_str_eq(out1, out2);
    assert_has(dir, "err1", "generated");
    free(out1);
    free(out2);

    /* annotated (stdout is a file), forced colours, and the HTML page */
    ck_assert_int_eq(run("%s generate %s %s --show-experts --html %s/page.html >%s/ann 2>/dev/null", bin, ck, opts,
                         dir, dir), 0);
    char *ann = slurp(dir, "ann"), *want_ann = expected_show(ETM_SHOW_ANNOTATED, t, tok);
    ck_assert_str_eq(ann, want_ann);
    ck_assert_ptr_null(strstr(ann, "\x1b["));
    ck_assert_ptr_nonnull(strstr(ann, "summed over 2 MoE layers"));
    free(ann);
    free(want_ann);
    char *page = slurp(dir, "page.html");
    check_spans(page, t);
    free(page);
    ck_assert_int_eq(run("%s generate %s %s --show-experts --color always >%s/ansi 2>/dev/null", bin, ck, opts, dir),
                     0);
    char *ansi = slurp(dir, "ansi"), *want_ansi = expected_show(ETM_SHOW_ANSI, t, tok);
    ck_assert_str_eq(ansi, want_ansi);
    ck_assert_ptr_nonnull(strstr(ansi, "\x1b[48;5;"));
    ck_assert_ptr_nonnull(strstr(ansi, "colours: routed experts per token"));
    free(ansi);
    free(want_ansi);

    /* usage errors: exit 2 with a message naming the problem */
    ck_assert_int_eq(run("%s generate %s/none.safetensors --prompt x 2>%s/e", bin, dir, dir), 2);
    assert_has(dir, "e", "no such file");
    ck_assert_int_eq(run("%s generate %s --prompt x --bogus 2>%s/e", bin, ck, dir), 2);
    assert_has(dir, "e", "unknown option '--bogus'");
    ck_assert_int_eq(run("%s generate %s 2>%s/e", bin, ck, dir), 2);
    assert_has(dir, "e", "no prompt");
    ck_assert_int_eq(run("%s generate %s --prompt x --temperature -1 2>%s/e", bin, ck, dir), 2);
    assert_has(dir, "e", "--temperature");
    ck_assert_int_eq(run("%s generate %s --prompt x --top-k many 2>%s/e", bin, ck, dir), 2);
    assert_has(dir, "e", "--top-k");
    ck_assert_int_eq(run("%s generate %s --prompt x --seed -3 2>%s/e", bin, ck, dir), 2);
    ck_assert_int_eq(run("%s generate %s --prompt x --color sometimes 2>%s/e", bin, ck, dir), 2);
    ck_assert_int_eq(run("%s generate %s --prompt x --tokens 2>%s/e", bin, ck, dir), 2);
    assert_has(dir, "e", "needs a value");
    ck_assert_int_eq(run("%s generate %s --prompt '%s' 2>%s/e", bin, ck,
                         "a b c d e f g h i j k l m n o p q r s t u v w x y z", dir), 2);
    assert_has(dir, "e", "context");
    ck_assert_int_eq(run("%s generate --help >%s/h", bin, dir), 0);
    assert_has(dir, "h", "--show-experts");
    /* a file that is not a checkpoint is the user's mistake (exit 2), named and said so */
    ck_assert_int_eq(run("echo junk >%s/bad.safetensors; %s generate %s/bad.safetensors --prompt x 2>%s/e", dir, bin,
                         dir, dir), 2);
    assert_has(dir, "e", "bad.safetensors");
    assert_has(dir, "e", "not a safetensors file");

    /* an ET model saved before its first threshold update: evaluation cannot route by thresholds */
    etm_model *fresh = etm_model_create(be, &hp, 1, &err);
    ck_assert_msg(fresh != NULL, "%s", err.msg);
    snprintf(ck, sizeof ck, "%s/fresh.safetensors", dir);
    ck_assert_msg(etm_checkpoint_save(ck, fresh, NULL, NULL, &err) == 0, "%s", err.msg);
    etm_model_free(fresh);
    ck_assert_int_eq(run("%s generate %s --prompt x --tokens 1 >/dev/null 2>%s/e", bin, ck, dir), 0);
    assert_has(dir, "e", "layer 1 has no thresholds yet");

    ck_assert_int_eq(res.end, ETM_GEN_LENGTH);
    free(text);
    free(ids);
    free(r.logits);
    etm_trace_free(t);
    etm_model_free(m);
    etm_tokenizer_free(tok);
    etm_backend_free(be);
    if (!getenv("KEEP")) run("rm -rf %s", dir);
}
END_TEST

static Suite *generate_suite(void) {
    Suite *s = suite_create("generate");
    TCase *tc = tcase_create("sampling");
    tcase_add_test(tc, test_greedy_is_argmax);
    tcase_add_test(tc, test_top_k_and_softmax);
    tcase_add_test(tc, test_sampling_check);
    suite_add_tcase(s, tc);
    tc = tcase_create("generation");
    tcase_add_test(tc, test_cache_equals_full_forward_et);
    tcase_add_test(tc, test_cache_equals_full_forward_et_topk);
    tcase_add_test(tc, test_cache_equals_full_forward_greedy);
    tcase_add_test(tc, test_cache_equals_full_forward_tc);
    tcase_add_test(tc, test_cache_equals_full_forward_dense);
    tcase_add_test(tc, test_same_seed_same_tokens);
    suite_add_tcase(s, tc);
    tc = tcase_create("display");
    tcase_add_test(tc, test_buckets);
    tcase_add_test(tc, test_writer_utf8_and_newlines);
    tcase_add_test(tc, test_legend);
    tcase_add_test(tc, test_html_page);
    suite_add_tcase(s, tc);
    tc = tcase_create("verb");
    tcase_add_test(tc, test_verb);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(generate_suite()); }
