/* check_dump.c: tests of the dump file, its comparison and the routing statistics (src/diagnostics/dump.h)
 * on a tiny model and a tiny shard: a dump holds the model's own logits, losses and gradients and
 * a routing mask consistent with its logits and thresholds, is deterministic, and compares equal
 * to itself; a perturbed gradient element is found and named; one flipped mask entry is one
 * routing disagreement; a missing or reshaped tensor fails the comparison; the inspect statistics
 * match a reference recount from the router logits and add up (sum of loads = N * mean). */
#include <config.h>

#include "backend.h"
#include "checkpoint.h"
#include "common.h"
#include "dump.h"
#include "loader.h"
#include "model.h"
#include "moe.h"
#include "rng.h"
#include "safetensors.h"
#include "shard.h"
#include "testutil.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ASSERT_STR_HAS(hay, s) ck_assert_msg(strstr((hay), (s)) != NULL, "'%s' lacks '%s'", (hay), (s))

static void tiny_hparams(etm_hparams *hp) {
    *hp = test_tiny_hparams(ETM_ROUTER_ET);
    hp->et_warmup_steps = 0;
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_validate(hp, &err) == 0, "%s", err.msg);
}

/* The model is initialised with a non-zero head and output projections (the default
 * initialisation zeroes them, which would make most gradients zero), and thresholds set so
 * that the threshold rule is in force. */
typedef struct {
    etm_backend *be;
    etm_model *m;
    etm_loader *ld;
    int32_t *inputs, *targets;
    char dir[256], shards[512], a[512], b[512];
} fixture;

static void randomise(etm_model *m, uint64_t seed) {
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        size_t n = 1;
        for (int d = 0; d < m->table[i].ndim; d++) n *= (size_t)m->table[i].shape[d];
        float *h = etm_malloc(n * sizeof(float));
        etm_rng_fill_normal(&rng, h, n, 0.3f);
        m->be->upload(m->be, m->table[i].data, h, n * sizeof(float));
        free(h);
    }
    float th[4] = {0.1f, -0.2f, 0.0f, 0.3f}, zero[4] = {0};
    int64_t counters[2] = {5, 5}; /* EMA updated: thresholds route */
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) etm_moe_set_state(m->moe[l], th, th, zero, counters);
}

static void fixture_make(fixture *fx, int B) {
    etm_hparams hp;
    tiny_hparams(&hp);
    etm_error err = {{0}};
    fx->be = test_backend();
    fx->m = etm_model_create(fx->be, &hp, B, &err);
    ck_assert_msg(fx->m != NULL, "%s", err.msg);
    randomise(fx->m, 31);
    test_tmpdir(fx->dir, sizeof fx->dir);
    size_t n = (size_t)(8 * hp.seq_len + 1);
    int32_t *tokens = etm_malloc(n * sizeof(int32_t));
    etm_rng rng;
    etm_rng_seed(&rng, 5);
    for (size_t i = 0; i < n; i++) tokens[i] = (int32_t)etm_rng_below(&rng, (uint64_t)hp.vocab_size);
    char shard[600];
    snprintf(shard, sizeof shard, "%s/val_000000.bin", fx->dir);
    ck_assert_msg(etm_shard_write(shard, tokens, n, &err) == 0, "%s", err.msg);
    free(tokens);
    snprintf(fx->shards, sizeof fx->shards, "%s/val_*.bin", fx->dir);
    snprintf(fx->a, sizeof fx->a, "%s/a.safetensors", fx->dir);
    snprintf(fx->b, sizeof fx->b, "%s/b.safetensors", fx->dir);
    fx->ld = etm_loader_open(fx->shards, B, hp.seq_len, hp.seed, 0, hp.vocab_size, &err);
    ck_assert_msg(fx->ld != NULL, "%s", err.msg);
    fx->inputs = etm_malloc((size_t)B * hp.seq_len * sizeof(int32_t));
    fx->targets = etm_malloc((size_t)B * hp.seq_len * sizeof(int32_t));
    ck_assert_msg(etm_loader_next(fx->ld, fx->inputs, fx->targets, &err) == 0, "%s", err.msg);
}

static void fixture_free(fixture *fx) {
    free(fx->inputs);
    free(fx->targets);
    etm_loader_free(fx->ld);
    etm_model_free(fx->m);
    etm_backend_free(fx->be);
}

static void *read_tensor(etm_st_file *f, const char *name, etm_st_dtype dtype) {
    const etm_st_tensor *t = etm_st_find(f, name);
    ck_assert_msg(t != NULL, "no tensor %s", name);
    ck_assert_int_eq(t->dtype, dtype);
    void *d = etm_malloc((size_t)(t->end - t->begin) + 1);
    etm_error err = {{0}};
    ck_assert_msg(etm_st_read(f, name, t->dtype, t->ndim, t->shape, d, &err) == 0, "%s", err.msg);
    return d;
}

/* Copies dump src to dst with one change made by edit(name, data, numel) on each tensor. */
static void rewrite(const char *src, const char *dst, void (*edit)(const char *, void *, uint64_t),
                    const char *drop) {
    etm_error err = {{0}};
    etm_st_file *f = etm_st_open(src, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    etm_st_writer *w = etm_st_writer_create();
    for (int i = 0; i < etm_st_count(f); i++) {
        const etm_st_tensor *t = etm_st_tensor_at(f, i);
        if (drop && !strcmp(t->name, drop)) continue;
        void *d = read_tensor(f, t->name, t->dtype);
        uint64_t n = 1;
        for (int k = 0; k < t->ndim; k++) n *= (uint64_t)t->shape[k];
        if (edit) edit(t->name, d, n);
        ck_assert(etm_st_add_owned(w, t->name, t->dtype, t->ndim, t->shape, d, &err) == 0);
    }
    ck_assert(etm_st_set_metadata(w, "config", etm_st_metadata(f, "config"), &err) == 0);
    ck_assert_msg(etm_st_write(w, dst, &err) == 0, "%s", err.msg);
    etm_st_writer_free(w);
    etm_st_close(f);
}

/* Runs the comparison, returning its verdict and the printed report (malloc'd). */
static int compare(const char *a, const char *b, const etm_compare_opts *o, etm_compare_result *r, char **report) {
    FILE *out = tmpfile();
    ck_assert_ptr_nonnull(out);
    etm_error err = {{0}};
    int ok = etm_dump_compare(a, b, o, out, r, &err);
    ck_assert_msg(ok >= 0, "%s", err.msg);
    long len = ftell(out);
    rewind(out);
    *report = etm_malloc((size_t)len + 1);
    ck_assert_uint_eq(fread(*report, 1, (size_t)len, out), (size_t)len);
    (*report)[len] = '\0';
    fclose(out);
    return ok;
}

static const etm_compare_row *row_named(const etm_compare_result *r, const char *name) {
    for (int i = 0; i < r->n_rows; i++)
        if (!strcmp(r->rows[i].name, name)) return &r->rows[i];
    ck_abort_msg("no row %s", name);
    return NULL;
}

START_TEST(test_dump_contents) {
    fixture fx;
    fixture_make(&fx, 2);
    etm_model *m = fx.m;
    int B = 2, T = m->hp.seq_len, V = m->hp.vocab_size, E = m->hp.n_routed, N = B * T;
    etm_error err = {{0}};
    double loss;
    ck_assert_msg(etm_dump_write(m, fx.inputs, fx.targets, B, "test", fx.a, &loss, &err) == 0, "%s", err.msg);
    etm_st_file *f = etm_st_open(fx.a, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_str_eq(etm_st_metadata(f, "format"), ETM_DUMP_FORMAT);
    ck_assert_str_eq(etm_st_metadata(f, "source"), "test");
    ck_assert_str_eq(etm_st_metadata(f, "routing.1.rule"), "threshold");
    ck_assert_int_eq(etm_st_count(f), 5 + m->n_tensors + 2 * 5);

    int32_t *in = read_tensor(f, "inputs", ETM_ST_I32), *tg = read_tensor(f, "targets", ETM_ST_I32);
    ck_assert(memcmp(in, fx.inputs, (size_t)N * sizeof(int32_t)) == 0);
    ck_assert(memcmp(tg, fx.targets, (size_t)N * sizeof(int32_t)) == 0);
    double *l = read_tensor(f, "loss", ETM_ST_F64);
    ck_assert(*l == loss);
    float *losses = read_tensor(f, "losses", ETM_ST_F32);
    double mean = 0;
    for (int n = 0; n < N; n++) mean += losses[n];
    mean /= N;
    ck_assert_msg(fabs(mean - loss) < 1e-3 * fabs(loss) + 1e-3, "mean per-token loss %g vs loss %g", mean, loss);

    /* The logits are the soft-capped ones the losses come from: recompute each token's loss. */
    float *logits = read_tensor(f, "logits", ETM_ST_F32);
    for (int n = 0; n < N; n++) {
        double mx = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, logits[(size_t)n * V + v]);
        for (int v = 0; v < V; v++) s += exp(logits[(size_t)n * V + v] - mx);
        double ce = mx + log(s) - logits[(size_t)n * V + tg[n]];
        ck_assert_msg(fabs(ce - losses[n]) < 1e-4, "token %d: loss %g, from logits %g", n, losses[n], ce);
    }
    /* The gradients are the model's own, under their parameters' names. */
    for (int i = 0; i < m->n_tensors; i++) {
        char name[96];
        snprintf(name, sizeof name, "grad.%s", m->table[i].name);
        const etm_st_tensor *t = etm_st_find(f, name);
        ck_assert_msg(t != NULL, "no %s", name);
        size_t n = (size_t)(t->end - t->begin) / sizeof(float);
        float *g = read_tensor(f, name, ETM_ST_F32), *mine = etm_malloc(n * sizeof(float));
        m->be->download(m->be, mine, m->table[i].grad, n * sizeof(float));
        ck_assert_msg(memcmp(g, mine, n * sizeof(float)) == 0, "%s differs from the model's gradient", name);
        free(g);
        free(mine);
    }
    /* Routing by thresholds (no clamp): mask = logit >= threshold, gate = sigmoid(logit). */
    for (int layer = 1; layer < 3; layer++) {
        char nm[64], nl[64], nt[64], ng[64];
        snprintf(nm, sizeof nm, "routing.%d.mask", layer);
        snprintf(nl, sizeof nl, "routing.%d.logits", layer);
        snprintf(nt, sizeof nt, "routing.%d.threshold", layer);
        snprintf(ng, sizeof ng, "routing.%d.gates", layer);
        uint8_t *mask = read_tensor(f, nm, ETM_ST_U8);
        float *r = read_tensor(f, nl, ETM_ST_F32), *c = read_tensor(f, nt, ETM_ST_F32), *g = read_tensor(f, ng, ETM_ST_F32);
        int routed = 0;
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++) {
                size_t i = (size_t)n * E + e;
                ck_assert_int_eq(mask[i], r[i] >= c[e]);
                ck_assert(fabs(g[i] - 1.0 / (1.0 + exp(-r[i]))) < 1e-6);
                routed += mask[i];
            }
        ck_assert_int_gt(routed, 0);
        ck_assert_int_lt(routed, N * E);
        free(mask);
        free(r);
        free(c);
        free(g);
    }
    etm_st_close(f);

    /* Deterministic: a second dump is the same file, also with another number of threads. */
#ifdef _OPENMP
    int threads = omp_get_max_threads();
    omp_set_num_threads(threads == 1 ? 3 : 1);
#endif
    ck_assert_msg(etm_dump_write(m, fx.inputs, fx.targets, B, "test", fx.b, NULL, &err) == 0, "%s", err.msg);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    size_t la, lb;
    char *da = etm_read_file(fx.a, &la, &err), *db = etm_read_file(fx.b, &lb, &err);
    ck_assert_uint_eq(la, lb);
    ck_assert(memcmp(da, db, la) == 0);
    free(da);
    free(db);
    free(in);
    free(tg);
    free(l);
    free(losses);
    free(logits);
    fixture_free(&fx);
}
END_TEST

START_TEST(test_compare_self) {
    fixture fx;
    fixture_make(&fx, 2);
    etm_error err = {{0}};
    ck_assert_msg(etm_dump_write(fx.m, fx.inputs, fx.targets, 2, NULL, fx.a, NULL, &err) == 0, "%s", err.msg);
    etm_compare_opts o;
    etm_compare_opts_default(&o);
    o.rtol = 0;
    o.atol = 0;
    etm_compare_result r;
    char *report;
    ck_assert_int_eq(compare(fx.a, fx.a, &o, &r, &report), 1);
    ck_assert_int_eq(r.n_failed, 0);
    ck_assert_int_eq(r.routing_flips, 0);
    ck_assert_int_eq(r.n_rows, 5 + fx.m->n_tensors + 10);
    for (int i = 0; i < r.n_rows; i++) {
        ck_assert_int_eq(r.rows[i].status, ETM_CMP_OK);
        ck_assert(r.rows[i].max_abs == 0);
    }
    ASSERT_STR_HAS(report, "PASS");
    ASSERT_STR_HAS(report, "grad.layers.2.moe.up");
    free(report);
    etm_compare_result_free(&r);
    fixture_free(&fx);
}
END_TEST

static const char *planted_name = "grad.layers.1.moe.down";
static const uint64_t planted_index = 37;

static void plant_gradient(const char *name, void *data, uint64_t n) {
    if (strcmp(name, planted_name)) return;
    ck_assert_uint_gt(n, planted_index);
    float *g = data;
    g[planted_index] += 1e-3f + 1e-2f * fabsf(g[planted_index]);
}

START_TEST(test_compare_planted_gradient) {
    fixture fx;
    fixture_make(&fx, 2);
    etm_error err = {{0}};
    ck_assert_msg(etm_dump_write(fx.m, fx.inputs, fx.targets, 2, NULL, fx.a, NULL, &err) == 0, "%s", err.msg);
    rewrite(fx.a, fx.b, plant_gradient, NULL);
    etm_compare_opts o;
    etm_compare_opts_default(&o);
    etm_compare_result r;
    char *report;
    ck_assert_int_eq(compare(fx.a, fx.b, &o, &r, &report), 0);
    ck_assert_int_eq(r.n_failed, 1);
    const etm_compare_row *row = row_named(&r, planted_name);
    ck_assert_int_eq(row->status, ETM_CMP_DIFFERS);
    ck_assert_uint_eq(row->n_bad, 1);
    ck_assert_uint_eq(row->worst, planted_index);
    ck_assert(row->max_abs > 1e-3 * 0.99);
    for (int i = 0; i < r.n_rows; i++)
        if (&r.rows[i] != row) ck_assert_msg(r.rows[i].status == ETM_CMP_OK, "%s not ok", r.rows[i].name);
    ASSERT_STR_HAS(report, planted_name);
    ASSERT_STR_HAS(report, "DIFFERS");
    ASSERT_STR_HAS(report, "FAIL");
    free(report);
    etm_compare_result_free(&r);

    /* A loose enough tolerance accepts it. */
    o.atol = 1.0;
    ck_assert_int_eq(compare(fx.a, fx.b, &o, &r, &report), 1);
    free(report);
    etm_compare_result_free(&r);
    fixture_free(&fx);
}
END_TEST

static const uint64_t flipped_index = 13; /* token 3, expert 1 with E = 4 */

static void flip_mask(const char *name, void *data, uint64_t n) {
    if (strcmp(name, "routing.2.mask")) return;
    ck_assert_uint_gt(n, flipped_index);
    ((uint8_t *)data)[flipped_index] ^= 1;
}

START_TEST(test_compare_flipped_mask) {
    fixture fx;
    fixture_make(&fx, 2);
    etm_error err = {{0}};
    ck_assert_msg(etm_dump_write(fx.m, fx.inputs, fx.targets, 2, NULL, fx.a, NULL, &err) == 0, "%s", err.msg);
    rewrite(fx.a, fx.b, flip_mask, NULL);
    etm_compare_opts o;
    etm_compare_opts_default(&o);
    etm_compare_result r;
    char *report;
    ck_assert_int_eq(compare(fx.a, fx.b, &o, &r, &report), 0);
    ck_assert_int_eq(r.routing_flips, 1);
    ck_assert_int_eq(r.n_failed, 1);
    const etm_compare_row *row = row_named(&r, "routing.2.mask");
    ck_assert(row->is_mask);
    ck_assert_uint_eq(row->n_bad, 1);
    ASSERT_STR_HAS(report, "layer 2 token 3 expert 1");
    ASSERT_STR_HAS(report, "logit - threshold");
    free(report);
    etm_compare_result_free(&r);
    o.max_flips = 1;
    ck_assert_int_eq(compare(fx.a, fx.b, &o, &r, &report), 1);
    ck_assert_int_eq(r.routing_flips, 1);
    free(report);
    etm_compare_result_free(&r);
    fixture_free(&fx);
}
END_TEST

START_TEST(test_compare_missing_tensor) {
    fixture fx;
    fixture_make(&fx, 2);
    etm_error err = {{0}};
    ck_assert_msg(etm_dump_write(fx.m, fx.inputs, fx.targets, 2, NULL, fx.a, NULL, &err) == 0, "%s", err.msg);
    rewrite(fx.a, fx.b, NULL, "grad.wte");
    etm_compare_opts o;
    etm_compare_opts_default(&o);
    etm_compare_result r;
    char *report;
    ck_assert_int_eq(compare(fx.a, fx.b, &o, &r, &report), 0);
    ck_assert_int_eq(row_named(&r, "grad.wte")->status, ETM_CMP_ONLY_A);
    ASSERT_STR_HAS(report, "ONLY IN A");
    free(report);
    etm_compare_result_free(&r);
    /* A dump of another batch size: every batch-shaped tensor is a mismatch, weights' grads not. */
    fixture fx4;
    fixture_make(&fx4, 4);
    ck_assert_msg(etm_dump_write(fx4.m, fx4.inputs, fx4.targets, 4, NULL, fx.b, NULL, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(compare(fx.a, fx.b, &o, &r, &report), 0);
    ck_assert_int_eq(row_named(&r, "logits")->status, ETM_CMP_MISMATCH);
    ck_assert_int_eq(row_named(&r, "routing.1.mask")->status, ETM_CMP_MISMATCH);
    ck_assert_int_ne(row_named(&r, "routing.1.threshold")->status, ETM_CMP_MISMATCH);
    free(report);
    etm_compare_result_free(&r);
    char nothing[600];
    snprintf(nothing, sizeof nothing, "%s/nothing", fx.dir);
    ck_assert_int_eq(etm_dump_compare(fx.a, nothing, &o, NULL, &r, &err), -1);
    ASSERT_STR_HAS(err.msg, nothing);
    fixture_free(&fx4);
    fixture_free(&fx);
}
END_TEST

/* ---- inspect -------------------------------------------------------------------------------- */
START_TEST(test_inspect_counts) {
    fixture fx;
    fixture_make(&fx, 2);
    etm_model *m = fx.m;
    int B = 2, T = m->hp.seq_len, E = m->hp.n_routed, V = m->hp.vocab_size, N = B * T;
    etm_inspect *s = etm_inspect_create(m);
    ck_assert_int_eq(s->n_layers, 2);
    ck_assert_int_eq(s->layers[0].layer, 1);
    ck_assert_int_eq(s->layers[1].layer, 2);
    etm_error err = {{0}};
    /* reference: per layer, per expert, per token counts recomputed from the router logits */
    int64_t *ref = etm_calloc((size_t)2 * E * V, sizeof(int64_t));
    int64_t ref_pairs[2] = {0, 0};
    float *logits = etm_malloc((size_t)N * E * sizeof(float));
    etm_loader_reset(fx.ld);
    int batches = 3;
    double stats_mean_sum[2] = {0, 0};
    for (int b = 0; b < batches; b++) {
        ck_assert_msg(etm_loader_next(fx.ld, fx.inputs, fx.targets, &err) == 0, "%s", err.msg);
        ck_assert_msg(etm_inspect_add_batch(s, m, fx.inputs, fx.targets, B, &err) == 0, "%s", err.msg);
        for (int li = 0; li < 2; li++) {
            etm_moe_layer *layer = m->moe[li + 1];
            etm_router_state st;
            etm_moe_get_state(layer, &st);
            m->be->download(m->be, logits, etm_moe_logits(layer), (size_t)N * E * sizeof(float));
            for (int n = 0; n < N; n++)
                for (int e = 0; e < E; e++)
                    if (logits[(size_t)n * E + e] >= st.threshold[e]) {
                        ref[((size_t)li * E + e) * V + fx.inputs[n]]++;
                        ref_pairs[li]++;
                    }
            stats_mean_sum[li] += etm_moe_last_stats(layer)->mean_experts;
        }
    }
    ck_assert_int_eq(s->n_tokens, (int64_t)batches * N);
    for (int li = 0; li < 2; li++) {
        etm_inspect_layer *il = &s->layers[li];
        int64_t load_sum = 0, hist_sum = 0, hist_pairs = 0;
        for (int e = 0; e < E; e++) load_sum += il->load[e];
        for (int c = 0; c <= E; c++) {
            hist_sum += il->hist[c];
            hist_pairs += (int64_t)c * il->hist[c];
        }
        ck_assert_int_eq(il->n_pairs, ref_pairs[li]);
        ck_assert_int_eq(load_sum, il->n_pairs);
        ck_assert_int_eq(hist_sum, s->n_tokens);
        ck_assert_int_eq(hist_pairs, il->n_pairs);
        /* the routing metrics' summary counts the same tokens and pairs as the histogram */
        ck_assert_int_eq(il->summary.tokens, s->n_tokens);
        ck_assert_int_eq(il->summary.by_experts[0], il->hist[0]);
        ck_assert_int_eq(il->summary.by_experts[1], il->hist[1]);
        ck_assert_int_eq(il->summary.by_experts[2], s->n_tokens - il->hist[0] - il->hist[1]);
        ck_assert_int_eq(il->summary.pairs, il->n_pairs);
        /* counts sum to N * mean, with the mean the MoE layer itself reported per batch */
        double mean = stats_mean_sum[li] / batches;
        ck_assert_msg(fabs((double)load_sum - (double)s->n_tokens * mean) < 1e-3, "layer %d: %lld pairs vs N*mean %g",
                      il->layer, (long long)load_sum, (double)s->n_tokens * mean);
        for (int e = 0; e < E; e++) {
            int32_t ids[64];
            int64_t counts[64];
            int found = etm_inspect_top_tokens(s, li, e, V, ids, counts);
            int64_t sum = 0, nonzero = 0;
            for (int v = 0; v < V; v++) nonzero += ref[((size_t)li * E + e) * V + v] > 0;
            ck_assert_int_eq(found, nonzero);
            for (int k = 0; k < found; k++) {
                ck_assert_int_eq(counts[k], ref[((size_t)li * E + e) * V + ids[k]]);
                if (k > 0)
                    ck_assert(counts[k] < counts[k - 1] || (counts[k] == counts[k - 1] && ids[k] > ids[k - 1]));
                sum += counts[k];
            }
            ck_assert_int_eq(sum, il->load[e]);
            int32_t top1;
            int64_t c1;
            if (found) {
                ck_assert_int_eq(etm_inspect_top_tokens(s, li, e, 1, &top1, &c1), 1);
                ck_assert_int_eq(top1, ids[0]);
            }
        }
    }
    int64_t tokens = 0;
    for (int v = 0; v < V; v++) tokens += s->token_count[v];
    ck_assert_int_eq(tokens, s->n_tokens);
    ck_assert(s->n_valid == s->n_tokens && s->loss_sum > 0);
    free(ref);
    free(logits);
    etm_inspect_free(s);
    fixture_free(&fx);
}
END_TEST

static Suite *dump_suite(void) {
    Suite *s = suite_create("dump");
    TCase *tc = tcase_create("dump");
    tcase_add_test(tc, test_dump_contents);
    tcase_add_test(tc, test_compare_self);
    tcase_add_test(tc, test_compare_planted_gradient);
    tcase_add_test(tc, test_compare_flipped_mask);
    tcase_add_test(tc, test_compare_missing_tensor);
    tcase_add_test(tc, test_inspect_counts);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(dump_suite()); }
