/* validate_step.c: part (2) of the whole-model validation (validate_backend.h): one training step
 * on both backends from the same state, compared through dump files and dump.h's comparison, plus
 * the routing disagreements measured against their decision boundaries. */
#include <config.h>

#include "validate_backend.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compare_ops.h"
#include "dump.h"
#include "model.h"
#include "optim.h"
#include "rng.h"
#include "router.h"
#include "safetensors.h"
#include "validate_side.h"

static void transfer(etm_backend *from, const float *src, etm_backend *to, float *dst, size_t n) {
    float *host = etm_malloc((n ? n : 1) * sizeof(float));
    if (n) {
        from->download(from, host, src, n * sizeof(float));
        to->upload(to, dst, host, n * sizeof(float));
    }
    free(host);
}

static size_t state_numel(const etm_optim_state *st) {
    size_t n = 1;
    for (int d = 0; d < st->ndim; d++) n *= (size_t)st->shape[d];
    return n;
}

/* Makes test's parameters, optimizer state and router state those of ref; ET routers of both get
 * their warm-up counter past et_warmup_steps, so that their next step routes by thresholds. */
static void copy_state(side *ref, side *test) {
    transfer(ref->be, ref->m->params_memory, test->be, test->m->params_memory, ref->m->n_params);
    for (int i = 0; i < etm_optim_state_count(ref->opt); i++) {
        const etm_optim_state *a = etm_optim_state_at(ref->opt, i), *b = etm_optim_state_at(test->opt, i);
        transfer(ref->be, a->data, test->be, b->data, state_numel(a));
    }
    const etm_hparams *hp = &ref->m->hp;
    int E = hp->n_routed;
    float *c = etm_malloc((size_t)E * sizeof(float)), *ema = etm_malloc((size_t)E * sizeof(float));
    float *bias = etm_malloc((size_t)E * sizeof(float));
    for (int l = 0; l < hp->n_layer; l++) {
        if (!ref->m->moe[l]) continue;
        etm_router_state st;
        etm_moe_get_state(ref->m->moe[l], &st);
        memcpy(c, st.threshold, (size_t)E * sizeof(float));
        memcpy(ema, st.ema, (size_t)E * sizeof(float));
        memcpy(bias, st.bias, (size_t)E * sizeof(float));
        int64_t counters[2] = {st.counters[0], st.counters[1]};
        etm_moe_set_state(ref->m->moe[l], c, ema, bias, counters);
        etm_moe_set_state(test->m->moe[l], c, ema, bias, counters);
        etm_moe_end_warmup(ref->m->moe[l]);
        etm_moe_end_warmup(test->m->moe[l]);
    }
    free(c);
    free(ema);
    free(bias);
}

/* ---- routing disagreements and their distance from the decision boundary --------------------- */
/* One side's view of one MoE layer's last forward (host copies). */
typedef struct {
    float *logits;     /* (N, E) router logits */
    uint8_t *mask;     /* (N, E) routing decisions */
    float *select;     /* (N, E) the scores top-k selects on: logits + loss-free bias (tc) */
    uint8_t *eligible; /* (N, E) tc capacity: the top-k choice before dropping; NULL otherwise */
    float *drop_key;   /* (N, E) what a tc capacity ranks a column's candidates by: the softmax
                          gates with softmax scores (router.h), else select; NULL without eligible */
    float *threshold;  /* (E) the thresholds the forward used */
    etm_route_rule rule;
    float **columns;   /* (n_pools * E) descending candidate scores of each column, made on demand */
    int *column_len;   /* (n_pools * E) */
} route_view;

typedef struct {
    const etm_hparams *hp;
    int N, E;
    etm_routing_sizes sz; /* pool rows and sizes of the rule's selections (etm_router_sizes) */
} route_shape;

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* The value sorts compare on: NaN ranks below every number, as in backend.h. */
static float rank_key(float x) { return isnan(x) ? -INFINITY : x; }

/* Distance of x from the midpoint of v[k-1] and v[k], the k-th and (k+1)-th of the descending
 * values v[0..n): where the selection of the k largest is decided. Infinite when k < 1 or k >= n
 * (nothing or everything is selected: no boundary) or when anything is not finite. */
static double boundary_distance(const float *v, int n, int k, float x) {
    if (k < 1 || k >= n || !isfinite(x)) return INFINITY;
    double d = fabs((double)x - 0.5 * ((double)v[k - 1] + (double)v[k]));
    return isfinite(d) ? d : INFINITY;
}

static int top_k_of_row(const float *row, int E, int k, int e) {
    int rank = 0;
    for (int j = 0; j < E; j++) rank += row[j] > row[e] || (row[j] == row[e] && j < e);
    return rank < k;
}

static void route_view_init(route_view *v, const route_shape *s, etm_model *m, int l) {
    const etm_hparams *hp = s->hp;
    etm_backend *be = m->be;
    size_t NE = (size_t)s->N * s->E;
    const etm_moe_layer *layer = m->moe[l];
    memset(v, 0, sizeof *v);
    v->logits = etm_malloc(NE * sizeof(float));
    v->mask = etm_malloc(NE);
    v->select = etm_malloc(NE * sizeof(float));
    v->threshold = etm_malloc((size_t)s->E * sizeof(float));
    be->download(be, v->logits, etm_moe_logits(layer), NE * sizeof(float));
    be->download(be, v->mask, etm_moe_mask(layer), NE);
    v->rule = etm_router_rule(etm_moe_router(layer), ETM_MOE_TRAIN);
    etm_router_state st;
    etm_moe_get_state(layer, &st);
    memcpy(v->threshold, st.threshold, (size_t)s->E * sizeof(float));
    int lossfree = hp->router == ETM_ROUTER_TC && hp->tc_balance == ETM_BALANCE_LOSSFREE;
    for (size_t i = 0; i < NE; i++)
        v->select[i] = rank_key(v->logits[i] + (lossfree ? st.bias[i % (size_t)s->E] : 0.0f));
    if (v->rule == ETM_RULE_TOPK && s->sz.capacity > 0) {
        v->eligible = etm_malloc(NE);
        for (int n = 0; n < s->N; n++)
            for (int e = 0; e < s->E; e++)
                v->eligible[(size_t)n * s->E + e] =
                    (uint8_t)top_k_of_row(v->select + (size_t)n * s->E, s->E, hp->top_k, e);
        v->drop_key = etm_malloc(NE * sizeof(float));
        if (hp->tc_score == ETM_SCORE_SOFTMAX) {
            be->download(be, v->drop_key, etm_router_scores(etm_moe_router(layer)), NE * sizeof(float));
            for (size_t i = 0; i < NE; i++) v->drop_key[i] = rank_key(v->drop_key[i]);
        } else {
            memcpy(v->drop_key, v->select, NE * sizeof(float));
        }
    }
    v->columns = etm_calloc((size_t)s->sz.n_pools * s->E, sizeof(float *));
    v->column_len = etm_calloc((size_t)s->sz.n_pools * s->E, sizeof(int));
}

static void route_view_free(route_view *v, const route_shape *s) {
    for (size_t i = 0; v->columns && i < (size_t)s->sz.n_pools * s->E; i++) free(v->columns[i]);
    free(v->columns);
    free(v->column_len);
    free(v->logits);
    free(v->mask);
    free(v->select);
    free(v->eligible);
    free(v->drop_key);
    free(v->threshold);
}

/* The candidates of expert e in pool p (the eligible ones under a tc capacity), descending. */
static const float *column(route_view *v, const route_shape *s, int p, int e, int *len) {
    size_t c = (size_t)p * s->E + e;
    if (!v->columns[c]) {
        float *col = etm_malloc((size_t)s->sz.pool * sizeof(float));
        int n = 0;
        for (int r = p * s->sz.pool; r < (p + 1) * s->sz.pool; r++) {
            size_t i = (size_t)r * s->E + e;
            if (!v->eligible) col[n++] = v->select[i];
            else if (v->eligible[i]) col[n++] = v->drop_key[i];
        }
        qsort(col, (size_t)n, sizeof(float), cmp_desc);
        v->columns[c] = col;
        v->column_len[c] = n;
    }
    *len = v->column_len[c];
    return v->columns[c];
}

/* How far decision (n, e) of this side is from where its rule decides it: the nearest boundary
 * of the rule (row top-k; the k-th largest of the column in the pool; the threshold and, with a
 * capacity clamp, the clamp's bounds). */
static double decision_distance(route_view *v, const route_shape *s, int n, int e) {
    const etm_hparams *hp = s->hp;
    size_t i = (size_t)n * s->E + e;
    int p = n / s->sz.pool, len;
    const float *col;
    double d = INFINITY;
    if (!isfinite(v->logits[i])) return INFINITY;
    if (v->rule == ETM_RULE_TOPK) {
        float *row = etm_malloc((size_t)s->E * sizeof(float));
        memcpy(row, v->select + (size_t)n * s->E, (size_t)s->E * sizeof(float));
        qsort(row, (size_t)s->E, sizeof(float), cmp_desc);
        d = boundary_distance(row, s->E, hp->top_k, v->select[i]);
        free(row);
        if (v->eligible && v->eligible[i]) {
            col = column(v, s, p, e, &len);
            d = fmin(d, boundary_distance(col, len, s->sz.capacity, v->drop_key[i]));
        }
    } else if (v->rule == ETM_RULE_EC) {
        col = column(v, s, p, e, &len);
        d = boundary_distance(col, len, s->sz.k_target, v->logits[i]);
    } else {
        d = fabs((double)v->logits[i] - (double)v->threshold[e]);
        if (!isfinite(d)) d = INFINITY;
        if (etm_router_et_clamps(hp)) {
            col = column(v, s, p, e, &len);
            d = fmin(d, boundary_distance(col, len, s->sz.clamp_lo, v->logits[i]));
            d = fmin(d, boundary_distance(col, len, s->sz.clamp_hi, v->logits[i]));
        }
    }
    return d;
}

static const char *rule_name(etm_route_rule r) {
    return r == ETM_RULE_TOPK ? "top-k" : r == ETM_RULE_EC ? "expert choice" : "threshold";
}

/* The sizes the router uses for N tokens (router.h: pools, k_target, tc capacity). */
static route_shape shape_of(const etm_hparams *hp, int N) {
    route_shape s;
    s.hp = hp;
    s.N = N;
    s.E = hp->n_routed;
    s.sz = etm_router_sizes(hp, N);
    return s;
}

/* Compares the masks of MoE layer l after both forwards, lists the disagreements and adds them
 * to r. */
static void compare_routing(side *ref, side *test, int l, int N, const etm_cbk_options *o,
                            FILE *report, etm_cbk_step_result *r) {
    const etm_hparams *hp = &ref->m->hp;
    route_shape s = shape_of(hp, N);
    route_view a, b;
    route_view_init(&a, &s, ref->m, l);
    route_view_init(&b, &s, test->m, l);
    size_t NE = (size_t)N * s.E;
    double max_logit_diff = 0.0;
    for (size_t i = 0; i < NE; i++) {
        double d = fabs((double)a.logits[i] - (double)b.logits[i]);
        if (isnan(d)) d = INFINITY; /* a NaN on one side (or both) is as far off as it gets */
        max_logit_diff = fmax(max_logit_diff, d);
    }
    long flips = 0, bad = 0, listed = 0;
    int same_rule = a.rule == b.rule;
    for (int n = 0; n < N; n++)
        for (int e = 0; e < s.E; e++) {
            size_t i = (size_t)n * s.E + e;
            if (a.mask[i] == b.mask[i]) continue;
            flips++;
            double da = decision_distance(&a, &s, n, e), db = decision_distance(&b, &s, n, e);
            double worst = fmax(da, db);
            int ok = same_rule && worst <= o->route_eps;
            bad += !ok;
            if (worst > r->worst_margin) r->worst_margin = worst;
            if (report && listed < o->max_listed) {
                listed++;
                fprintf(report,
                        "    token %d expert %d: %s routed, %s not; logit %.9g / %.9g; distance to "
                        "the boundary %.3g / %.3g: %s\n",
                        n, e, a.mask[i] ? ref->be->name : test->be->name,
                        a.mask[i] ? test->be->name : ref->be->name, a.logits[i], b.logits[i], da, db,
                        ok ? "acceptable" : "NOT ACCEPTABLE");
            }
        }
    if (report) {
        if (flips > listed) fprintf(report, "    ... and %ld more\n", flips - listed);
        fprintf(report, "  layer %d (%s rule%s): %ld routing disagreement%s in %zu decisions, %ld "
                "farther than %g from its boundary; largest router-logit difference %.3g\n",
                l, rule_name(a.rule), same_rule ? "" : ", BUT THE TEST BACKEND USED ANOTHER RULE",
                flips, flips == 1 ? "" : "s", NE, bad, o->route_eps, max_logit_diff);
    }
    r->decisions += (long)NE;
    r->flips += flips;
    r->flips_bad += bad;
    route_view_free(&a, &s);
    route_view_free(&b, &s);
}

/* ---- the state after the step, as a safetensors file ---------------------------------------- */
static int write_state(side *s, const char *path, etm_error *err) {
    etm_model *m = s->m;
    etm_st_writer *w = etm_st_writer_create();
    int rc = 0;
    char name[160];
    for (int i = 0; rc == 0 && i < m->n_tensors; i++) {
        const etm_param *t = &m->table[i];
        int64_t shape[3];
        for (int d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
        float *host = etm_malloc(t->numel * sizeof(float));
        s->be->download(s->be, host, t->data, t->numel * sizeof(float));
        snprintf(name, sizeof name, "param.%s", t->name);
        rc = etm_st_add_owned(w, name, ETM_ST_F32, t->ndim, shape, host, err);
    }
    for (int i = 0; rc == 0 && i < etm_optim_state_count(s->opt); i++) {
        const etm_optim_state *st = etm_optim_state_at(s->opt, i);
        size_t n = state_numel(st);
        float *host = etm_malloc((n ? n : 1) * sizeof(float));
        if (n) s->be->download(s->be, host, st->data, n * sizeof(float));
        rc = etm_st_add_owned(w, st->name, ETM_ST_F32, st->ndim, st->shape, host, err);
    }
    int64_t E = m->hp.n_routed, two = 2;
    for (int l = 0; rc == 0 && l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_router_state st;
        etm_moe_get_state(m->moe[l], &st);
        snprintf(name, sizeof name, "router.%d.threshold", l);
        rc = etm_st_add_copy(w, name, ETM_ST_F32, 1, &E, st.threshold, err);
        snprintf(name, sizeof name, "router.%d.ema", l);
        if (rc == 0) rc = etm_st_add_copy(w, name, ETM_ST_F32, 1, &E, st.ema, err);
        snprintf(name, sizeof name, "router.%d.bias", l);
        if (rc == 0) rc = etm_st_add_copy(w, name, ETM_ST_F32, 1, &E, st.bias, err);
        snprintf(name, sizeof name, "router.%d.counters", l);
        if (rc == 0) rc = etm_st_add_copy(w, name, ETM_ST_I64, 1, &two, st.counters, err);
    }
    if (rc == 0) rc = etm_st_set_metadata(w, "backend", s->be->name, err);
    if (rc == 0) rc = etm_st_write(w, path, err);
    etm_st_writer_free(w);
    return rc;
}

/* Compares files a and b with dump.h's comparison (max_flips routing disagreements allowed) and
 * the per-tensor normalised-error bound; adds to r's tensor counts. */
static int compare_files(const char *a, const char *b, long max_flips, const etm_cbk_options *o,
                         FILE *report, etm_cbk_step_result *r, etm_error *err) {
    etm_compare_opts co;
    etm_compare_opts_default(&co);
    co.rtol = o->rtol;
    co.atol = o->atol;
    co.max_flips = max_flips;
    co.max_listed = o->max_listed;
    etm_compare_result cr;
    if (etm_dump_compare(a, b, &co, report, &cr, err) < 0) return -1;
    int over_norm = 0;
    for (int i = 0; i < cr.n_rows; i++) {
        const etm_compare_row *row = &cr.rows[i];
        if (row->status != ETM_CMP_OK || row->is_mask || !(row->norm_err > o->norm_tol)) continue;
        if (report) {
            if (!over_norm) fprintf(report, "within rtol/atol but beyond norm_tol %g:\n", o->norm_tol);
            fprintf(report, "  %-36s norm err %.3g\n", row->name, row->norm_err);
        }
        over_norm++;
    }
    r->tensors += cr.n_rows;
    r->tensors_failed += cr.n_failed + over_norm;
    etm_compare_result_free(&cr);
    return 0;
}

/* ---- part (2) -------------------------------------------------------------------------------- */
static int make_dir(const etm_cbk_options *o, char *dir, size_t len, etm_error *err) {
    if (o->dump_dir) {
        snprintf(dir, len, "%s", o->dump_dir);
        return 0;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, len, "%s/etmoe-check-backend-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) return etm_fail(err, "cannot create a temporary directory %s: %s", dir, strerror(errno));
    return 0;
}

int etm_cbk_compare_step(etm_backend *ref_be, etm_backend *test_be, const etm_hparams *hp,
                         const etm_cbk_options *o, FILE *report, etm_cbk_step_result *r,
                         etm_error *err) {
    memset(r, 0, sizeof *r);
    if (hp->router == ETM_ROUTER_DENSE)
        return etm_fail(err, "check-backend: the compared step needs an MoE model (router tc, ec or et)");
    int B = hp->batch_size, T = hp->seq_len, A = hp->grad_accum, N = B * T;
    side ref, test;
    if (etm_cbk_side_create(&ref, ref_be, hp, err) != 0) return -1;
    if (etm_cbk_side_create(&test, test_be, hp, err) != 0) {
        etm_cbk_side_free(&ref);
        return -1;
    }
    char dir[1024], path[4][1100];
    if (make_dir(o, dir, sizeof dir, err) != 0) {
        etm_cbk_side_free(&ref);
        etm_cbk_side_free(&test);
        return -1;
    }
    const char *rn = etm_router_kind_name(hp->router);
    snprintf(path[0], sizeof path[0], "%s/%s-step-ref.safetensors", dir, rn);
    snprintf(path[1], sizeof path[1], "%s/%s-step-test.safetensors", dir, rn);
    snprintf(path[2], sizeof path[2], "%s/%s-after-ref.safetensors", dir, rn);
    snprintf(path[3], sizeof path[3], "%s/%s-after-test.safetensors", dir, rn);

    token_source src;
    etm_cbk_source_init(&src, o->seed, hp->vocab_size);
    size_t micro = (size_t)N;
    int32_t *inputs = etm_malloc(micro * (size_t)A * sizeof(int32_t));
    int32_t *targets = etm_malloc(micro * (size_t)A * sizeof(int32_t));
    int rc = 0;
    for (int s = 0; rc == 0 && s < o->prime_steps; s++) {
        double loss;
        etm_cbk_source_batch(&src, B * A, T, inputs, targets);
        rc = etm_cbk_train_step(&ref, s, inputs, targets, &loss, err);
    }
    if (rc == 0) {
        copy_state(&ref, &test);
        if (report)
            fprintf(report, "state: %d reference step%s, then copied to %s; batch of %d x %d tokens\n",
                    o->prime_steps, o->prime_steps == 1 ? "" : "s", test_be->name, B, T);
        etm_cbk_source_batch(&src, B, T, inputs, targets);
        etm_error e2 = {{0}};
        rc = etm_dump_write(ref.m, inputs, targets, B, "check-backend reference", path[0], &r->loss_ref, err);
        if (rc == 0 && etm_dump_write(test.m, inputs, targets, B, "check-backend test", path[1], &r->loss_test,
                                      &e2) != 0)
            rc = etm_fail(err, "%s: %s", test_be->name, e2.msg);
    }
    if (rc == 0) {
        if (report) fprintf(report, "routing (%s / %s):\n", ref_be->name, test_be->name);
        for (int l = 0; l < hp->n_layer; l++)
            if (ref.m->moe[l]) compare_routing(&ref, &test, l, N, o, report, r);
        if (report) fprintf(report, "\nthe step (%s):\n", dir);
        rc = compare_files(path[0], path[1], r->flips - r->flips_bad, o, report, r, err);
    }
    /* the optimizer update and the router's step end on both */
    if (rc == 0) {
        etm_error e2 = {{0}};
        if (etm_optim_step(ref.opt, o->prime_steps, NULL, &e2) != 0)
            rc = etm_fail(err, "%s: %s", ref_be->name, e2.msg);
        else if (etm_optim_step(test.opt, o->prime_steps, NULL, &e2) != 0) {
            if (report) fprintf(report, "\n%s: the optimizer step failed: %s\n", test_be->name, e2.msg);
            r->tensors_failed++;
        } else {
            etm_model_step_end(ref.m);
            etm_model_step_end(test.m);
            rc = write_state(&ref, path[2], err);
            if (rc == 0) rc = write_state(&test, path[3], err);
            if (rc == 0 && report) fprintf(report, "\nafter the optimizer update and the routers' step end:\n");
            if (rc == 0) rc = compare_files(path[2], path[3], 0, o, report, r, err);
        }
    }
    r->passed = rc == 0 && r->tensors_failed == 0 && r->flips_bad == 0;
    if (rc == 0 && report && r->flips > r->flips_bad && r->tensors_failed > 0)
        fprintf(report, "\nnote: %ld acceptable routing disagreement%s sent tokens to other experts, so the "
                "tensors downstream of them differ for that reason alone; rerun with another --seed for a "
                "step without disagreements before reading the tensor table\n",
                r->flips - r->flips_bad, r->flips - r->flips_bad == 1 ? "" : "s");
    if (!o->dump_dir) {
        for (int i = 0; i < 4; i++) unlink(path[i]);
        rmdir(dir);
    }
    etm_cbk_source_free(&src);
    free(inputs);
    free(targets);
    etm_cbk_side_free(&ref);
    etm_cbk_side_free(&test);
    return rc;
}
