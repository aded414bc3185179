/* check_moe.c: tests of the MoE layer (moe.h) through the CPU backend:
 *  - forward output, added loss and every gradient against a slow per-token reference written
 *    here (plain loops, double accumulators, its own routing), for every router at awkward sizes;
 *  - finite-difference gradients of the whole layer with routing held fixed (REPLAY), aux and
 *    z losses included;
 *  - pair buffers that grow from few pairs to N*E;
 *  - byte-identical results with 1 and 2 OpenMP threads. */
#include "backend.h"
#include "moe.h"
#include "rng.h"
#include "testutil.h"

#include <math.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- one test problem ------------------------------------------------------------------ */

typedef struct {
    const char *name;
    etm_router_kind router;
    etm_score_kind score;
    etm_balance_kind balance;
    int E, k, S, T, n_seq, D, Hx, pool_seqs;
    float capacity_factor, et_capacity, z_loss, aux_alpha;
    etm_moe_mode mode;    /* TRAIN or EVAL for the checked forward */
    int with_state;       /* set thresholds / biases through the state (s > 0: threshold routing) */
    int force;            /* a feature that sends every token to expert 0 and none to expert E-1 */
    etm_gate_fn gate;     /* router_activation (0: sigmoid, the rows that do not name one) */
} moe_case;

typedef struct {
    etm_hparams hp;
    int N, D, E, Hx, S;
    /* host */
    float *x, *wr, *up, *down, *su, *sd, *dy; /* shapes as in moe.h; dy (N,D) */
    float *thr, *bias;                        /* (E) state to set when with_state */
    /* backend */
    etm_backend *be;
    float *bx, *by, *bdx, *bdy;
    etm_moe_weights w, dw;
} problem;


static float *dev_from(etm_backend *be, const float *host, size_t n) {
    float *d = be->alloc(be, (n ? n : 1) * sizeof(float));
    if (host && n) be->upload(be, d, host, n * sizeof(float));
    return d;
}

static void hp_from_case(etm_hparams *hp, const moe_case *c) {
    memset(hp, 0, sizeof(*hp));
    hp->seq_len = c->T;
    hp->d_model = c->D;
    hp->router = c->router;
    hp->n_routed = c->E;
    hp->n_shared = c->S;
    hp->expert_hidden = c->Hx;
    hp->top_k = c->k;
    hp->tc_score = c->score;
    hp->tc_balance = c->balance;
    hp->aux_alpha = c->aux_alpha;
    hp->lossfree_rate = 0.01f;
    hp->z_loss = c->z_loss;
    hp->capacity_factor = c->capacity_factor;
    hp->pool_seqs = c->pool_seqs;
    hp->et_beta = 0.9f;
    hp->et_warmup_steps = 0;
    hp->et_capacity = c->et_capacity;
    hp->batch_size = c->n_seq;
    hp->router_activation = c->gate;
    hp->ffn_hidden = 3 * c->Hx; /* granularity G = 3: softmax_e_shared_out's shared gate 1/3 */
}

static void problem_init(problem *p, const moe_case *c, uint64_t seed) {
    memset(p, 0, sizeof(*p));
    hp_from_case(&p->hp, c);
    p->N = c->T * c->n_seq;
    p->D = c->D;
    p->E = c->E;
    p->Hx = c->Hx;
    p->S = c->S;
    int N = p->N, D = p->D, E = p->E, Hx = p->Hx, S = p->S;
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    p->x = etm_calloc((size_t)N * D, sizeof(float));
    p->wr = etm_calloc((size_t)E * D, sizeof(float));
    p->up = etm_calloc((size_t)E * Hx * D, sizeof(float));
    p->down = etm_calloc((size_t)E * D * Hx, sizeof(float));
    p->su = etm_calloc((size_t)(S ? S : 1) * Hx * D, sizeof(float));
    p->sd = etm_calloc((size_t)(S ? S : 1) * D * Hx, sizeof(float));
    p->dy = etm_calloc((size_t)N * D, sizeof(float));
    p->thr = etm_calloc((size_t)E, sizeof(float));
    p->bias = etm_calloc((size_t)E, sizeof(float));
    etm_rng_fill_normal(&rng, p->x, (uint64_t)N * D, 1.0f);
    etm_rng_fill_normal(&rng, p->wr, (uint64_t)E * D, 1.0f / sqrtf((float)D));
    etm_rng_fill_normal(&rng, p->up, (uint64_t)E * Hx * D, 1.0f / sqrtf((float)D));
    etm_rng_fill_normal(&rng, p->down, (uint64_t)E * D * Hx, 1.0f / sqrtf((float)Hx));
    etm_rng_fill_normal(&rng, p->su, (uint64_t)S * Hx * D, 1.0f / sqrtf((float)D));
    etm_rng_fill_normal(&rng, p->sd, (uint64_t)S * D * Hx, 1.0f / sqrtf((float)Hx));
    etm_rng_fill_normal(&rng, p->dy, (uint64_t)N * D, 1.0f);
    for (int e = 0; e < E; e++) {
        p->thr[e] = 0.25f * etm_rng_normal(&rng);
        p->bias[e] = 0.3f * etm_rng_normal(&rng);
    }
    if (c->force) {
        /* feature 0 is a constant 3: expert 0's logit gains 15, expert E-1's loses 15 */
        for (int t = 0; t < N; t++) p->x[(size_t)t * D] = 3.0f;
        p->wr[0] = 5.0f;
        p->wr[(size_t)(E - 1) * D] = -5.0f;
        p->thr[0] = -1e9f;     /* et: everything passes expert 0's threshold */
        p->thr[E - 1] = 1e9f;  /* and nothing expert E-1's */
    }
    etm_backend *be = p->be = test_backend_named("cpu");
    p->bx = dev_from(be, p->x, (size_t)N * D);
    p->by = dev_from(be, NULL, (size_t)N * D);
    p->bdx = dev_from(be, NULL, (size_t)N * D);
    p->bdy = dev_from(be, p->dy, (size_t)N * D);
    p->w.router = dev_from(be, p->wr, (size_t)E * D);
    p->w.up = dev_from(be, p->up, (size_t)E * Hx * D);
    p->w.down = dev_from(be, p->down, (size_t)E * D * Hx);
    p->w.shared_up = S ? dev_from(be, p->su, (size_t)S * Hx * D) : NULL;
    p->w.shared_down = S ? dev_from(be, p->sd, (size_t)S * D * Hx) : NULL;
    p->dw.router = dev_from(be, NULL, (size_t)E * D);
    p->dw.up = dev_from(be, NULL, (size_t)E * Hx * D);
    p->dw.down = dev_from(be, NULL, (size_t)E * D * Hx);
    p->dw.shared_up = S ? dev_from(be, NULL, (size_t)S * Hx * D) : NULL;
    p->dw.shared_down = S ? dev_from(be, NULL, (size_t)S * D * Hx) : NULL;
}

static void problem_free(problem *p) {
    etm_backend *be = p->be;
    float *d[] = {p->bx, p->by, p->bdx, p->bdy, p->w.router, p->w.up, p->w.down, p->w.shared_up,
                  p->w.shared_down, p->dw.router, p->dw.up, p->dw.down, p->dw.shared_up,
                  p->dw.shared_down};
    for (size_t i = 0; i < ETM_ARRAY_LEN(d); i++)
        if (d[i]) be->free(be, d[i]);
    etm_backend_free(be);
    float *h[] = {p->x, p->wr, p->up, p->down, p->su, p->sd, p->dy, p->thr, p->bias};
    for (size_t i = 0; i < ETM_ARRAY_LEN(h); i++) free(h[i]);
}

static etm_moe_layer *problem_layer(problem *p, const moe_case *c) {
    etm_error err = {{0}};
    ck_assert_msg(etm_moe_check_hparams(&p->hp, p->N, &err) == 0, "%s: %s", c->name, err.msg);
    etm_moe_layer *L = etm_moe_create(p->be, &p->hp, p->N);
    ck_assert_ptr_nonnull(L);
    if (c->with_state) {
        int64_t counters[2] = {3, 100}; /* three EMA updates, past any warm-up */
        etm_moe_set_state(L, p->thr, NULL, p->bias, counters);
    }
    return L;
}

/* ---- the reference: per token, plain loops, double accumulators --------------------------- */

typedef struct {
    double loss;                                  /* aux + z */
    double *y, *dx, *dwr, *dup, *ddown, *dsu, *dsd; /* like the layer's */
    uint8_t *z;                                   /* (N,E) its routing */
    double min_margin;                            /* closest routing decision (tie guard) */
} ref_out;

static double sigm(double v) { return 1.0 / (1.0 + exp(-v)); }

/* Indices of the n largest of v[0..len) (ties: lower index first) into out; returns the gap
 * between the n-th and (n+1)-th largest (INFINITY when there is no such pair). */
static double top_n(const double *v, int len, int n, int *out) {
    int *order = etm_malloc((size_t)(len ? len : 1) * sizeof(int));
    for (int i = 0; i < len; i++) order[i] = i;
    for (int i = 1; i < len; i++) /* insertion sort: descending value, ascending index */
        for (int j = i; j > 0; j--) {
            int a = order[j - 1], b = order[j];
            if (v[b] > v[a] || (v[b] == v[a] && b < a)) {
                order[j - 1] = b;
                order[j] = a;
            } else {
                break;
            }
        }
    for (int i = 0; i < n && i < len; i++) out[i] = order[i];
    double gap = (n > 0 && n < len) ? v[order[n - 1]] - v[order[n]] : INFINITY;
    free(order);
    return gap;
}

/* Routing from double logits, following router.h, into z; sel_counts gets the counts the
 * balance loss uses (top-k before capacity). */
static void ref_route(const moe_case *c, const problem *p, const double *r, const float *thr,
                      const float *bias, uint8_t *z, double *sel_counts, double *margin) {
    int N = p->N, E = p->E;
    memset(z, 0, (size_t)N * E);
    for (int e = 0; e < E; e++) sel_counts[e] = 0;
    *margin = INFINITY;
    int *idx = etm_malloc((size_t)N * sizeof(int));
    double *col = etm_malloc((size_t)N * sizeof(double));
    int *rows = etm_malloc((size_t)N * sizeof(int));
    if (c->router == ETM_ROUTER_TC) {
        uint8_t *pick = etm_calloc((size_t)N * E, 1);
        double row[64];
        for (int t = 0; t < N; t++) {
            for (int e = 0; e < E; e++)
                row[e] = r[(size_t)t * E + e] + (c->balance == ETM_BALANCE_LOSSFREE ? bias[e] : 0.0);
            double g = top_n(row, E, c->k, idx);
            *margin = fmin(*margin, g);
            for (int i = 0; i < c->k; i++) pick[(size_t)t * E + idx[i]] = 1;
        }
        for (int t = 0; t < N; t++)
            for (int e = 0; e < E; e++) sel_counts[e] += pick[(size_t)t * E + e];
        if (c->capacity_factor > 0 && c->mode == ETM_MOE_TRAIN) {
            int cap = (int)ceil(c->capacity_factor * (double)N * c->k / E - 1e-9);
            for (int e = 0; e < E; e++) {
                int n = 0;
                for (int t = 0; t < N; t++)
                    if (pick[(size_t)t * E + e]) {
                        /* overflow ranked by gate: softmax gates are not ordered by logit across
                         * tokens (router.h); sigmoid gates are */
                        const double *rt = r + (size_t)t * E;
                        double key = rt[e];
                        if (c->score == ETM_SCORE_SOFTMAX) {
                            double mx = rt[0], sum = 0;
                            for (int j = 1; j < E; j++) mx = fmax(mx, rt[j]);
                            for (int j = 0; j < E; j++) sum += exp(rt[j] - mx);
                            key = exp(rt[e] - mx) / sum;
                        }
                        rows[n] = t;
                        col[n++] = key;
                    }
                int take = n < cap ? n : cap;
                double g = top_n(col, n, take, idx);
                *margin = fmin(*margin, g);
                for (int i = 0; i < take; i++) z[(size_t)rows[idx[i]] * E + e] = 1;
            }
        } else {
            memcpy(z, pick, (size_t)N * E);
        }
        free(pick);
    } else {
        int threshold = c->with_state; /* s > 0 and past warm-up, or EVAL */
        int pool = c->pool_seqs ? c->pool_seqs * c->T : N;
        int kt = pool * c->k / E;
        for (int p0 = 0; p0 < N; p0 += pool)
            for (int e = 0; e < E; e++) {
                int above = 0;
                for (int i = 0; i < pool; i++) {
                    col[i] = r[(size_t)(p0 + i) * E + e];
                    if (threshold) {
                        above += col[i] >= thr[e];
                        *margin = fmin(*margin, fabs(col[i] - thr[e]));
                    }
                }
                int take = kt;
                if (threshold) {
                    take = above;
                    if (c->et_capacity > 0 && c->mode == ETM_MOE_TRAIN) {
                        int lo = (int)floor((1.0 - c->et_capacity) * kt);
                        int hi = (int)floor((1.0 + c->et_capacity) * kt);
                        take = take < lo ? lo : take > hi ? hi : take;
                    }
                }
                double g = top_n(col, pool, take, idx);
                if (!threshold || take != above) *margin = fmin(*margin, g);
                for (int i = 0; i < take; i++) z[(size_t)(p0 + idx[i]) * E + e] = 1;
            }
    }
    free(idx);
    free(col);
    free(rows);
}

static void ref_run(const moe_case *c, const problem *p, const float *thr, const float *bias,
                    ref_out *o) {
    int N = p->N, D = p->D, E = p->E, Hx = p->Hx, S = p->S;
    const etm_hparams *hp = &p->hp;
    o->y = etm_calloc((size_t)N * D, sizeof(double));
    o->dx = etm_calloc((size_t)N * D, sizeof(double));
    o->dwr = etm_calloc((size_t)E * D, sizeof(double));
    o->dup = etm_calloc((size_t)E * Hx * D, sizeof(double));
    o->ddown = etm_calloc((size_t)E * D * Hx, sizeof(double));
    o->dsu = etm_calloc((size_t)(S ? S : 1) * Hx * D, sizeof(double));
    o->dsd = etm_calloc((size_t)(S ? S : 1) * D * Hx, sizeof(double));
    o->z = etm_calloc((size_t)N * E, 1);
    double *r = etm_calloc((size_t)N * E, sizeof(double));
    double *score = etm_calloc((size_t)N * E, sizeof(double));
    double *prob = etm_calloc((size_t)N * E, sizeof(double));
    double *lse = etm_calloc((size_t)N, sizeof(double));
    double *dscore = etm_calloc((size_t)N * E, sizeof(double));
    double *dprob = etm_calloc((size_t)N * E, sizeof(double));
    double *counts = etm_calloc((size_t)E, sizeof(double));
    double h[256], a[256], da[256], dh[256];

    for (int t = 0; t < N; t++) {
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) {
            double acc = 0;
            for (int d = 0; d < D; d++) acc += (double)p->x[(size_t)t * D + d] * p->wr[(size_t)e * D + d];
            r[(size_t)t * E + e] = acc;
            mx = fmax(mx, acc);
        }
        for (int e = 0; e < E; e++) sum += exp(r[(size_t)t * E + e] - mx);
        lse[t] = mx + log(sum);
        for (int e = 0; e < E; e++) {
            double pr = exp(r[(size_t)t * E + e] - lse[t]);
            prob[(size_t)t * E + e] = pr;
            score[(size_t)t * E + e] =
                (c->router == ETM_ROUTER_TC && c->score == ETM_SCORE_SOFTMAX) ? pr : sigm(r[(size_t)t * E + e]);
        }
    }
    /* the other gate functions (router.h), straight from their definitions */
    double *sgate = etm_calloc((size_t)N, sizeof(double)), *dsgate = etm_calloc((size_t)N, sizeof(double));
    for (int t = 0; t < N; t++) {
        const double *rt = r + (size_t)t * E;
        double *st = score + (size_t)t * E;
        sgate[t] = 1.0;
        if (c->gate == ETM_GATE_RELU)
            for (int e = 0; e < E; e++) st[e] = rt[e] > 0 ? rt[e] : 0;
        if (c->gate == ETM_GATE_SOFTMAX_E || c->gate == ETM_GATE_SOFTMAX_E_SHARED_OUT) {
            double den = 1.0; /* the anchor: exp(0) */
            for (int e = 0; e < E; e++) den += exp(rt[e]);
            for (int e = 0; e < E; e++) st[e] = exp(rt[e]) / den;
            sgate[t] = c->gate == ETM_GATE_SOFTMAX_E ? 1.0 / den : 1.0 / 3.0;
        }
    }
    if (c->gate == ETM_GATE_SOFTMAX_K)
        for (int e = 0; e < E; e++) {
            double den = 0;
            for (int t = 0; t < N; t++) den += exp(r[(size_t)t * E + e]);
            for (int t = 0; t < N; t++) score[(size_t)t * E + e] = exp(r[(size_t)t * E + e]) / den;
        }
    ref_route(c, p, r, thr, bias, o->z, counts, &o->min_margin);

    /* added losses and their gradients w.r.t. scores / probabilities / logits */
    int balance = c->router == ETM_ROUTER_TC && (c->balance == ETM_BALANCE_AUX || c->balance == ETM_BALANCE_SWITCH ||
                                                 c->balance == ETM_BALANCE_AUX_ERROR);
    o->loss = 0;
    if (balance) {
        const double *P = c->balance == ETM_BALANCE_SWITCH ? prob : score;
        double *dP = c->balance == ETM_BALANCE_SWITCH ? dprob : dscore;
        for (int e = 0; e < E; e++) {
            /* alpha sum_i f_i P_i, f_i = count_i E / (N k); the switch form is the same sum;
             * aux_error (the authors'): f_i - 1 in place of f_i */
            double f = counts[e] * E / ((double)N * c->k), mean = 0;
            if (c->balance == ETM_BALANCE_AUX_ERROR) f -= 1.0;
            for (int t = 0; t < N; t++) mean += P[(size_t)t * E + e];
            mean /= N;
            o->loss += hp->aux_alpha * f * mean;
            for (int t = 0; t < N; t++) dP[(size_t)t * E + e] += hp->aux_alpha * f / N;
        }
    }
    if (hp->z_loss > 0) {
        double s = 0;
        for (int t = 0; t < N; t++) s += lse[t] * lse[t];
        o->loss += hp->z_loss * s / N;
    }

    for (int t = 0; t < N; t++) {
        const float *xt = p->x + (size_t)t * D;
        const float *dyt = p->dy + (size_t)t * D;
        double *yt = o->y + (size_t)t * D, *dxt = o->dx + (size_t)t * D;
        /* shared experts, gate 1, then routed experts with their gates */
        for (int s = -S; s < E; s++) {
            int shared = s < 0;
            int e = shared ? s + S : s;
            if (!shared && !o->z[(size_t)t * E + e]) continue;
            const float *wu = shared ? p->su + (size_t)e * Hx * D : p->up + (size_t)e * Hx * D;
            const float *wd = shared ? p->sd + (size_t)e * D * Hx : p->down + (size_t)e * D * Hx;
            double *dwu = shared ? o->dsu + (size_t)e * Hx * D : o->dup + (size_t)e * Hx * D;
            double *dwd = shared ? o->dsd + (size_t)e * D * Hx : o->ddown + (size_t)e * D * Hx;
            double g = shared ? (S ? sgate[t] : 1.0) : score[(size_t)t * E + e];
            for (int j = 0; j < Hx; j++) {
                double acc = 0;
                for (int d = 0; d < D; d++) acc += (double)wu[(size_t)j * D + d] * xt[d];
                h[j] = acc;
                a[j] = acc > 0 ? acc * acc : 0;
            }
            double dg = 0;
            for (int d = 0; d < D; d++) {
                double acc = 0;
                for (int j = 0; j < Hx; j++) acc += (double)wd[(size_t)d * Hx + j] * a[j];
                yt[d] += g * acc;
                dg += (double)dyt[d] * acc;
            }
            for (int j = 0; j < Hx; j++) da[j] = 0;
            for (int d = 0; d < D; d++)
                for (int j = 0; j < Hx; j++) {
                    dwd[(size_t)d * Hx + j] += g * dyt[d] * a[j];
                    da[j] += g * dyt[d] * wd[(size_t)d * Hx + j];
                }
            for (int j = 0; j < Hx; j++) dh[j] = h[j] > 0 ? da[j] * 2 * h[j] : 0;
            for (int j = 0; j < Hx; j++)
                for (int d = 0; d < D; d++) {
                    dwu[(size_t)j * D + d] += dh[j] * xt[d];
                    dxt[d] += dh[j] * wu[(size_t)j * D + d];
                }
            if (!shared) dscore[(size_t)t * E + e] += dg;
            else dsgate[t] += dg;
        }
    }
    /* scores -> logits, once every token's score gradient is known (softmax_k couples tokens) */
    double *dsk = etm_calloc((size_t)E, sizeof(double)); /* softmax_k: sum_t p ds per expert */
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) dsk[e] += score[(size_t)t * E + e] * dscore[(size_t)t * E + e];
    for (int t = 0; t < N; t++) {
        const float *xt = p->x + (size_t)t * D;
        double *dxt = o->dx + (size_t)t * D;
        /* scores -> logits */
        double dr[64], sd = 0, pd = 0;
        for (int e = 0; e < E; e++) {
            sd += score[(size_t)t * E + e] * dscore[(size_t)t * E + e];
            pd += prob[(size_t)t * E + e] * dprob[(size_t)t * E + e];
        }
        for (int e = 0; e < E; e++) {
            double s = score[(size_t)t * E + e], pr = prob[(size_t)t * E + e];
            double ds = dscore[(size_t)t * E + e];
            if (c->router == ETM_ROUTER_TC && c->score == ETM_SCORE_SOFTMAX) dr[e] = s * (ds - sd);
            else if (c->gate == ETM_GATE_RELU) dr[e] = r[(size_t)t * E + e] > 0 ? ds : 0;
            else if (c->gate == ETM_GATE_SOFTMAX_E)
                dr[e] = s * (ds - sd - (S ? sgate[t] * dsgate[t] : 0)); /* the anchor's share too */
            else if (c->gate == ETM_GATE_SOFTMAX_E_SHARED_OUT) dr[e] = s * (ds - sd);
            else if (c->gate == ETM_GATE_SOFTMAX_K) dr[e] = s * (ds - dsk[e]);
            else dr[e] = ds * s * (1 - s);
            dr[e] += pr * (dprob[(size_t)t * E + e] - pd);
            if (hp->z_loss > 0) dr[e] += hp->z_loss * 2 * lse[t] * pr / N;
        }
        for (int e = 0; e < E; e++)
            for (int d = 0; d < D; d++) {
                o->dwr[(size_t)e * D + d] += dr[e] * xt[d];
                dxt[d] += dr[e] * p->wr[(size_t)e * D + d];
            }
    }
    free(dsk);
    free(sgate);
    free(dsgate);
    free(r);
    free(score);
    free(prob);
    free(lse);
    free(dscore);
    free(dprob);
    free(counts);
}

static void ref_free(ref_out *o) {
    free(o->y);
    free(o->dx);
    free(o->dwr);
    free(o->dup);
    free(o->ddown);
    free(o->dsu);
    free(o->dsd);
    free(o->z);
}

/* max |got - want| / max(1, max |want|), with a message naming the tensor on failure */
static void expect_close(const char *what, const char *name, etm_backend *be, const float *dev,
                         const double *want, size_t n, double tol) {
    if (n == 0) return;
    float *got = etm_malloc(n * sizeof(float));
    be->download(be, got, dev, n * sizeof(float));
    double scale = 1, err = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= err)) {
            err = d;
            worst = i;
        }
    }
    ck_assert_msg(err / scale <= tol, "%s: %s differs at %zu: got %.8g want %.8g (rel %.3g)", name,
                  what, worst, got[worst], want[worst], err / scale);
    free(got);
}

/* ---- the cases ----------------------------------------------------------------------------- */

/*                name                 router           score              balance              E  k  S  T  seq D   Hx pool cf    etC   z      alpha  mode            state force */
static const moe_case cases[] = {
    {"tc-sigmoid-aux-z",   ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_AUX,      5, 2, 2, 7, 3, 12, 10, 0, 0,    0,    0.01f, 0.1f,  ETM_MOE_TRAIN, 0, 1, ETM_GATE_SIGMOID},
    {"tc-softmax-switch",  ETM_ROUTER_TC, ETM_SCORE_SOFTMAX, ETM_BALANCE_SWITCH,   6, 1, 0, 5, 3, 9,  7,  0, 0,    0,    0,     0.2f,  ETM_MOE_TRAIN, 0, 1, ETM_GATE_SIGMOID},
    {"tc-sigmoid-switch",  ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_SWITCH,   4, 1, 1, 5, 3, 9,  7,  0, 0,    0,    0.02f, 0.2f,  ETM_MOE_TRAIN, 0, 0, ETM_GATE_SIGMOID},
    {"tc-sigmoid-cap",     ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 2, 2, 7, 3, 12, 10, 0, 1.0f, 0,    0,     0,     ETM_MOE_TRAIN, 0, 1, ETM_GATE_SIGMOID},
    {"tc-softmax-cap-z",   ETM_ROUTER_TC, ETM_SCORE_SOFTMAX, ETM_BALANCE_AUX,      4, 1, 0, 6, 3, 10, 6,  0, 1.25f,0,    0.01f, 0.1f,  ETM_MOE_TRAIN, 0, 0, ETM_GATE_SIGMOID},
    {"tc-lossfree",        ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_LOSSFREE, 5, 2, 1, 7, 3, 12, 10, 0, 0,    0,    0,     0,     ETM_MOE_TRAIN, 1, 0, ETM_GATE_SIGMOID},
    {"tc-softmax-eval",    ETM_ROUTER_TC, ETM_SCORE_SOFTMAX, ETM_BALANCE_LOSSFREE, 5, 2, 2, 7, 3, 12, 10, 0, 1.0f, 0,    0.01f, 0,     ETM_MOE_EVAL,  1, 1, ETM_GATE_SIGMOID},
    {"ec-pools",           ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     4, 2, 0, 6, 3, 10, 6,  1, 0,    0,    0,     0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_SIGMOID},
    {"ec-pools-shared-z",  ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 2, 5, 4, 11, 9,  2, 0,    0,    0.01f, 0,     ETM_MOE_TRAIN, 0, 1, ETM_GATE_SIGMOID},
    {"ec-all-tokens",      ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     2, 2, 1, 5, 3, 9,  7,  0, 0,    0,    0,     0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_SIGMOID},
    {"ec-eval-thresholds", ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 2, 7, 3, 12, 10, 1, 0,    0,    0.01f, 0,     ETM_MOE_EVAL,  1, 1, ETM_GATE_SIGMOID},
    {"et-thresholds",      ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 2, 7, 3, 12, 10, 0, 0,    0,    0.01f, 0,     ETM_MOE_TRAIN, 1, 1, ETM_GATE_SIGMOID},
    {"et-no-shared",       ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     4, 2, 0, 6, 3, 10, 6,  0, 0,    0,    0,     0,     ETM_MOE_TRAIN, 1, 0, ETM_GATE_SIGMOID},
    {"et-clamp-pools",     ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 2, 2, 7, 3, 12, 10, 1, 0,    0.5f, 0.01f, 0,     ETM_MOE_TRAIN, 1, 1, ETM_GATE_SIGMOID},
    {"et-clamp-eval",      ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 2, 2, 7, 3, 12, 10, 1, 0,    0.5f, 0,     0,     ETM_MOE_EVAL,  1, 1, ETM_GATE_SIGMOID},
    {"et-warmup-ec",       ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     4, 2, 1, 6, 3, 10, 6,  1, 0,    0,    0.01f, 0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_SIGMOID},
    /* gate functions (router_activation), the authors' router_utils.py */
    {"ec-relu-shared-z",   ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 2, 5, 4, 11, 9,  2, 0,    0,    0.01f, 0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_RELU},
    {"et-relu-thresholds", ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 1, 7, 3, 12, 10, 0, 0,    0,    0,     0,     ETM_MOE_TRAIN, 1, 0, ETM_GATE_RELU},
    /* (no balance loss: its P_i averages the relu of every logit, whose kinks at 0 the finite
     * differences would cross) */
    {"tc-relu-cap",        ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 1, 7, 3, 12, 10, 0, 1.0f, 0,    0.01f, 0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_RELU},
    {"ec-softmax-e-shared",ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 2, 5, 4, 11, 9,  2, 0,    0,    0.01f, 0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_SOFTMAX_E},
    {"et-softmax-e-shared",ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 2, 1, 7, 3, 12, 10, 1, 0,    0.5f, 0,     0,     ETM_MOE_TRAIN, 1, 0, ETM_GATE_SOFTMAX_E},
    {"et-softmax-e-noshared",ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,   4, 2, 0, 6, 3, 10, 6,  0, 0,    0,    0.01f, 0,     ETM_MOE_EVAL,  1, 0, ETM_GATE_SOFTMAX_E},
    {"ec-softmax-e-out",   ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 2, 5, 4, 11, 9,  2, 0,    0,    0,     0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_SOFTMAX_E_SHARED_OUT},
    {"et-softmax-e-out",   ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 1, 7, 3, 12, 10, 0, 0,    0,    0.01f, 0,     ETM_MOE_EVAL,  1, 0, ETM_GATE_SOFTMAX_E_SHARED_OUT},
    {"ec-softmax-k-pools", ETM_ROUTER_EC, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 2, 5, 4, 11, 9,  2, 0,    0,    0.01f, 0,     ETM_MOE_TRAIN, 0, 0, ETM_GATE_SOFTMAX_K},
    {"et-softmax-k",       ETM_ROUTER_ET, ETM_SCORE_SIGMOID, ETM_BALANCE_NONE,     5, 1, 1, 7, 3, 12, 10, 0, 0,    0,    0,     0,     ETM_MOE_TRAIN, 1, 0, ETM_GATE_SOFTMAX_K},
    {"tc-sigmoid-auxerr",  ETM_ROUTER_TC, ETM_SCORE_SIGMOID, ETM_BALANCE_AUX_ERROR,5, 2, 1, 7, 3, 12, 10, 0, 0,    0,    0,     0.3f,  ETM_MOE_TRAIN, 0, 1, ETM_GATE_SIGMOID},
    {"tc-softmax-auxerr-cap", ETM_ROUTER_TC, ETM_SCORE_SOFTMAX, ETM_BALANCE_AUX_ERROR, 4, 1, 0, 6, 3, 10, 6, 0, 1.25f, 0, 0.01f, 0.3f, ETM_MOE_TRAIN, 0, 0, ETM_GATE_SIGMOID},
};
#define N_CASES ((int)ETM_ARRAY_LEN(cases))

/* Runs forward (case mode) and backward once; y and the gradients stay in p's buffers. */
static float run_layer(problem *p, etm_moe_layer *L, etm_moe_mode mode, float loss_scale) {
    etm_backend *be = p->be;
    int N = p->N, D = p->D, E = p->E, Hx = p->Hx, S = p->S;
    float loss = etm_moe_forward(L, &p->w, p->bx, p->by, N, mode);
    be->zero(be, p->bdx, (size_t)N * D * sizeof(float));
    be->zero(be, p->dw.router, (size_t)E * D * sizeof(float));
    be->zero(be, p->dw.up, (size_t)E * Hx * D * sizeof(float));
    be->zero(be, p->dw.down, (size_t)E * D * Hx * sizeof(float));
    if (S) {
        be->zero(be, p->dw.shared_up, (size_t)S * Hx * D * sizeof(float));
        be->zero(be, p->dw.shared_down, (size_t)S * D * Hx * sizeof(float));
    }
    etm_moe_backward(L, &p->w, &p->dw, p->bdy, p->bdx, loss_scale);
    return loss;
}

static void compare_with_reference(const moe_case *c, problem *p, etm_moe_layer *L, float loss) {
    etm_backend *be = p->be;
    int N = p->N, D = p->D, E = p->E, Hx = p->Hx, S = p->S;
    etm_router_state st;
    etm_moe_get_state(L, &st);
    ref_out o;
    ref_run(c, p, st.threshold, st.bias, &o);
    ck_assert_msg(o.min_margin > 1e-4, "%s: test data has a near tie (%g); change the seed", c->name,
                  o.min_margin);

    uint8_t *z = etm_malloc((size_t)N * E);
    be->download(be, z, etm_moe_mask(L), (size_t)N * E);
    for (size_t i = 0; i < (size_t)N * E; i++)
        ck_assert_msg(z[i] == o.z[i], "%s: routing of token %zu expert %zu: got %d want %d", c->name,
                      i / E, i % E, z[i], o.z[i]);
    const etm_moe_stats *s = etm_moe_last_stats(L);
    int pairs = 0;
    for (int e = 0; e < E; e++) {
        int load = 0;
        for (int t = 0; t < N; t++) load += o.z[(size_t)t * E + e];
        ck_assert_int_eq(s->expert_load[e], load);
        pairs += load;
    }
    ck_assert_int_eq(s->n_pairs, pairs);
    ck_assert_msg(fabs(loss - o.loss) <= 1e-5 * fmax(1, fabs(o.loss)), "%s: loss %g want %g", c->name,
                  loss, o.loss);

    const double tol = 2e-5;
    expect_close("y", c->name, be, p->by, o.y, (size_t)N * D, tol);
    expect_close("dx", c->name, be, p->bdx, o.dx, (size_t)N * D, tol);
    expect_close("d router", c->name, be, p->dw.router, o.dwr, (size_t)E * D, tol);
    expect_close("d up", c->name, be, p->dw.up, o.dup, (size_t)E * Hx * D, tol);
    expect_close("d down", c->name, be, p->dw.down, o.ddown, (size_t)E * D * Hx, tol);
    if (S) {
        expect_close("d shared up", c->name, be, p->dw.shared_up, o.dsu, (size_t)S * Hx * D, tol);
        expect_close("d shared down", c->name, be, p->dw.shared_down, o.dsd, (size_t)S * D * Hx, tol);
    }
    free(z);
    ref_free(&o);
}

START_TEST(layer_matches_reference) {
    const moe_case *c = &cases[_i];
    problem p;
    problem_init(&p, c, 1000 + (uint64_t)_i);
    etm_moe_layer *L = problem_layer(&p, c);
    float loss = run_layer(&p, L, c->mode, 1.0f);
    compare_with_reference(c, &p, L, loss);

    /* the forced expert really received every token and the other none, as the case intends */
    if (c->force && c->router != ETM_ROUTER_EC) {
        const etm_moe_stats *s = etm_moe_last_stats(L);
        int capped = (c->et_capacity > 0 || c->capacity_factor > 0) && c->mode == ETM_MOE_TRAIN;
        if (!capped) {
            ck_assert_int_eq(s->expert_load[0], p.N);
            ck_assert_int_eq(s->dropped + s->padded, 0);
        } else {
            ck_assert_int_gt(s->dropped, 0); /* expert 0 wanted every token */
        }
        if (!capped || c->router == ETM_ROUTER_TC) ck_assert_int_eq(s->expert_load[p.E - 1], 0);
        else ck_assert_int_gt(s->padded, 0); /* the clamp fills expert E-1 up to its minimum */
    }
    etm_moe_free(L);
    problem_free(&p);
}
END_TEST

/* etm_moe_down_rms (routing_metrics.h's down_rms and shared_down_rms) against a slow double loop
 * over the host copies of the weights: each routed expert on its own, the shared ones together. */
START_TEST(down_rms_matches_a_slow_loop) {
    const moe_case *c = &cases[_i];
    problem p;
    problem_init(&p, c, 4000 + (uint64_t)_i);
    etm_moe_layer *L = problem_layer(&p, c);
    size_t n = (size_t)p.D * p.Hx;
    double *got = etm_malloc((size_t)p.E * sizeof *got), shared;
    etm_moe_down_rms(L, &p.w, got, &shared);
    for (int e = 0; e < p.E; e++) {
        double sq = 0;
        for (size_t i = 0; i < n; i++) sq += (double)p.down[e * n + i] * p.down[e * n + i];
        ck_assert_msg(fabs(got[e] - sqrt(sq / n)) <= 1e-6 * sqrt(sq / n), "%s: expert %d: %.9g, loop %.9g",
                      c->name, e, got[e], sqrt(sq / n));
    }
    if (p.S == 0) {
        ck_assert_msg(isnan(shared), "%s: no shared expert, yet shared_down_rms %g", c->name, shared);
    } else {
        double sq = 0;
        for (size_t i = 0; i < (size_t)p.S * n; i++) sq += (double)p.sd[i] * p.sd[i];
        double want = sqrt(sq / ((double)p.S * n));
        ck_assert_msg(fabs(shared - want) <= 1e-6 * want, "%s: shared %.9g, loop %.9g", c->name, shared, want);
    }
    free(got);
    etm_moe_free(L);
    problem_free(&p);
}
END_TEST

/* A layer that first routes few pairs, then N*E pairs: the pair buffers grow and the results
 * still match the reference. */
START_TEST(pair_buffers_grow_to_all_pairs) {
    moe_case c = cases[11]; /* et-thresholds */
    ck_assert_int_eq(c.router, ETM_ROUTER_ET);
    problem p;
    problem_init(&p, &c, 77);
    etm_moe_layer *L = problem_layer(&p, &c);
    int64_t counters[2] = {3, 100};
    float *high = etm_malloc((size_t)p.E * sizeof(float)), *low = etm_malloc((size_t)p.E * sizeof(float));
    for (int e = 0; e < p.E; e++) {
        high[e] = e == 1 ? 1.0f : 1e9f; /* a few tokens for expert 1, none elsewhere */
        low[e] = -1e9f;                 /* every pair */
    }
    etm_moe_set_state(L, high, NULL, NULL, counters);
    run_layer(&p, L, ETM_MOE_TRAIN, 1.0f);
    ck_assert_int_lt(etm_moe_last_stats(L)->n_pairs, p.N);
    etm_moe_set_state(L, low, NULL, NULL, counters);
    float loss = run_layer(&p, L, ETM_MOE_TRAIN, 1.0f);
    ck_assert_int_eq(etm_moe_last_stats(L)->n_pairs, p.N * p.E);
    ck_assert_int_eq(etm_moe_last_stats(L)->experts_hist[p.E], p.N);
    memcpy(p.thr, low, (size_t)p.E * sizeof(float));
    compare_with_reference(&c, &p, L, loss);
    free(high);
    free(low);
    etm_moe_free(L);
    problem_free(&p);
}
END_TEST

/* ---- finite differences ---------------------------------------------------------------------- */

/* loss = sum(y * dy) + added loss, in double, for the current weights (routing replayed). */
static double fd_loss(problem *p, etm_moe_layer *L, float *ybuf) {
    float added = etm_moe_forward(L, &p->w, p->bx, p->by, p->N, ETM_MOE_REPLAY);
    p->be->download(p->be, ybuf, p->by, (size_t)p->N * p->D * sizeof(float));
    double s = added;
    for (size_t i = 0; i < (size_t)p->N * p->D; i++) s += (double)ybuf[i] * p->dy[i];
    return s;
}

/* Checks n_probe coordinates of one tensor (backend `dev`, gradient `grad`) by central
 * differences. */
static void fd_tensor(const char *name, const char *what, problem *p, etm_moe_layer *L, float *dev,
                      const float *grad_dev, size_t n, etm_rng *rng) {
    etm_backend *be = p->be;
    float *vals = etm_malloc(n * sizeof(float)), *grad = etm_malloc(n * sizeof(float));
    float *ybuf = etm_malloc((size_t)p->N * p->D * sizeof(float));
    be->download(be, vals, dev, n * sizeof(float));
    be->download(be, grad, grad_dev, n * sizeof(float));
    /* 3e-3 balances float rounding of y (grows as eps shrinks) against relu^2 kinks crossed
     * within +-eps (grows with eps); measured errors stay below 0.4% of the gradient */
    const float eps = 3e-3f;
    int n_probe = n < 10 ? (int)n : 10;
    for (int i = 0; i < n_probe; i++) {
        size_t j = (size_t)etm_rng_below(rng, n);
        float orig = vals[j];
        float v = orig + eps;
        be->upload(be, dev + j, &v, sizeof(float));
        double lp = fd_loss(p, L, ybuf);
        v = orig - eps;
        be->upload(be, dev + j, &v, sizeof(float));
        double lm = fd_loss(p, L, ybuf);
        be->upload(be, dev + j, &orig, sizeof(float));
        double fd = (lp - lm) / (2.0 * eps);
        double an = grad[j];
        ck_assert_msg(fabs(fd - an) <= 1e-2 * fmax(fabs(fd), fabs(an)) + 2e-3,
                      "%s: d %s[%zu]: finite difference %.6g, backward %.6g", name, what, j, fd, an);
    }
    free(vals);
    free(grad);
    free(ybuf);
}

START_TEST(finite_differences_with_replay) {
    const moe_case *c = &cases[_i];
    problem p;
    problem_init(&p, c, 2000 + (uint64_t)_i);
    etm_moe_layer *L = problem_layer(&p, c);
    run_layer(&p, L, c->mode, 1.0f);
    etm_rng rng;
    etm_rng_seed(&rng, 5 + (uint64_t)_i);
    int N = p.N, D = p.D, E = p.E, Hx = p.Hx, S = p.S;
    fd_tensor(c->name, "x", &p, L, p.bx, p.bdx, (size_t)N * D, &rng);
    fd_tensor(c->name, "router", &p, L, p.w.router, p.dw.router, (size_t)E * D, &rng);
    fd_tensor(c->name, "up", &p, L, p.w.up, p.dw.up, (size_t)E * Hx * D, &rng);
    fd_tensor(c->name, "down", &p, L, p.w.down, p.dw.down, (size_t)E * D * Hx, &rng);
    if (S) {
        fd_tensor(c->name, "shared up", &p, L, p.w.shared_up, p.dw.shared_up, (size_t)S * Hx * D, &rng);
        fd_tensor(c->name, "shared down", &p, L, p.w.shared_down, p.dw.shared_down, (size_t)S * D * Hx, &rng);
    }
    etm_moe_free(L);
    problem_free(&p);
}
END_TEST

/* The added loss alone has the gradient backward gives it: checked with dy = 0 so that only
 * the aux and z terms remain (coefficients raised to 1 so they dominate float rounding), at a
 * loss scale other than 1. */
START_TEST(added_loss_gradients_alone) {
    /* aux+z sigmoid, switch softmax, switch sigmoid, aux softmax+cap, aux_error sigmoid and softmax+cap */
    static const int which[] = {0, 1, 2, 4, N_CASES - 2, N_CASES - 1};
    moe_case cc = cases[which[_i]];
    cc.aux_alpha = 1.0f;
    cc.z_loss = 1.0f;
    cc.force = 0; /* forced logits of 15 would make the z-loss ~225, too coarse in float */
    const moe_case *c = &cc;
    problem p;
    problem_init(&p, c, 3000 + (uint64_t)_i);
    memset(p.dy, 0, (size_t)p.N * p.D * sizeof(float));
    p.be->upload(p.be, p.bdy, p.dy, (size_t)p.N * p.D * sizeof(float));
    etm_moe_layer *L = problem_layer(&p, c);
    float loss = run_layer(&p, L, c->mode, 0.5f);
    ck_assert_float_gt(loss, 0);
    /* the gradient of 0.5 * loss: compare 2 * backward with the finite difference of loss */
    float *g = etm_malloc((size_t)p.E * p.D * sizeof(float)), *ybuf = etm_malloc((size_t)p.N * p.D * sizeof(float));
    p.be->download(p.be, g, p.dw.router, (size_t)p.E * p.D * sizeof(float));
    double nonzero = 0;
    const float eps = 3e-3f;
    for (int j = 0; j < p.E * p.D; j++) {
        float orig = p.wr[j], v = orig + eps;
        p.be->upload(p.be, p.w.router + j, &v, sizeof(float));
        double lp = fd_loss(&p, L, ybuf);
        v = orig - eps;
        p.be->upload(p.be, p.w.router + j, &v, sizeof(float));
        double lm = fd_loss(&p, L, ybuf);
        p.be->upload(p.be, p.w.router + j, &orig, sizeof(float));
        double fd = (lp - lm) / (2.0 * eps), an = 2.0 * g[j];
        nonzero += fabs(an);
        ck_assert_msg(fabs(fd - an) <= 1e-2 * fmax(fabs(fd), fabs(an)) + 1e-4,
                      "%s: d router[%d] of the added loss: fd %.6g backward %.6g", c->name, j, fd, an);
    }
    ck_assert_double_gt(nonzero, 1e-4);
    free(g);
    free(ybuf);
    etm_moe_free(L);
    problem_free(&p);
}
END_TEST

/* ---- determinism ------------------------------------------------------------------------------ */

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* Everything a forward + backward produces, as bytes. */
static size_t snapshot(problem *p, etm_moe_layer *L, float loss, unsigned char *buf) {
    etm_backend *be = p->be;
    size_t off = 0;
    int N = p->N, D = p->D, E = p->E, Hx = p->Hx, S = p->S;
    struct { const float *dev; size_t n; } parts[] = {
        {p->by, (size_t)N * D}, {p->bdx, (size_t)N * D}, {p->dw.router, (size_t)E * D},
        {p->dw.up, (size_t)E * Hx * D}, {p->dw.down, (size_t)E * D * Hx},
        {p->dw.shared_up, (size_t)S * Hx * D}, {p->dw.shared_down, (size_t)S * D * Hx}};
    for (size_t i = 0; i < ETM_ARRAY_LEN(parts); i++) {
        if (!parts[i].dev) continue;
        be->download(be, buf + off, parts[i].dev, parts[i].n * sizeof(float));
        off += parts[i].n * sizeof(float);
    }
    memcpy(buf + off, &loss, sizeof loss);
    off += sizeof loss;
    be->download(be, buf + off, etm_moe_mask(L), (size_t)N * E);
    return off + (size_t)N * E;
}

/* 4: softmax tc capacity; 16 on: the gate functions relu (ec), softmax_e with shared experts
 * (ec), softmax_e_shared_out (ec), softmax_k (ec) */
static const int det_cases[] = {0, 8, 13, 4, 16, 19, 22, 24};

START_TEST(one_and_two_threads_give_identical_bytes) {
    /* bigger than the reference cases so that the backend's parallel paths engage */
    moe_case c = cases[det_cases[_i]];
    c.T = 64;
    c.n_seq = 4;
    c.D = 64;
    c.Hx = 96;
    c.pool_seqs = c.router == ETM_ROUTER_TC ? 0 : 2;
    size_t cap = 0;
    unsigned char *bytes[2] = {NULL, NULL};
    size_t len[2];
    for (int run = 0; run < 2; run++) {
        set_threads(run + 1);
        problem p;
        problem_init(&p, &c, 4242);
        etm_moe_layer *L = problem_layer(&p, &c);
        if (!cap) cap = 4 * ((size_t)7 * p.N * p.D + 2 * (size_t)(p.E + p.S) * p.Hx * p.D + p.E * p.D) + 64 + (size_t)p.N * p.E;
        bytes[run] = etm_malloc(cap);
        float loss = run_layer(&p, L, c.mode, 1.0f);
        len[run] = snapshot(&p, L, loss, bytes[run]);
        ck_assert_uint_le(len[run], cap);
        etm_moe_free(L);
        problem_free(&p);
    }
    set_threads(2);
    ck_assert_uint_eq(len[0], len[1]);
    ck_assert_msg(memcmp(bytes[0], bytes[1], len[0]) == 0, "%s: 1 and 2 threads differ", c.name);
    free(bytes[0]);
    free(bytes[1]);
}
END_TEST

static Suite *moe_suite(void) {
    Suite *s = suite_create("moe");
    TCase *tc = tcase_create("reference");
    tcase_add_loop_test(tc, layer_matches_reference, 0, N_CASES);
    tcase_add_test(tc, pair_buffers_grow_to_all_pairs);
    tcase_add_loop_test(tc, down_rms_matches_a_slow_loop, 0, N_CASES);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_add_loop_test(tc, finite_differences_with_replay, 0, N_CASES);
    tcase_add_loop_test(tc, added_loss_gradients_alone, 0, 6);
    suite_add_tcase(s, tc);
    tc = tcase_create("determinism");
    tcase_add_loop_test(tc, one_and_two_threads_give_identical_bytes, 0, (int)ETM_ARRAY_LEN(det_cases));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(moe_suite()); }
