/* check_router.c: the routing rules (router.h) on hand-made logits, through the CPU backend:
 * ET ties at the threshold, the cut-off EMA and its bias correction over several steps and
 * micro-batches, the warm-up switch at exactly step W, the capacity clamp's pads and drops, TC
 * capacity drops, frozen thresholds in EVAL, the loss-free bias update and its selection-only
 * effect, EC's exact balance per pool, state round trips and settings checks; the kind table,
 * the batch-routing evaluation mode and the routing sizes. */
#include "backend.h"
#include "router.h"
#include "router_kind.h"
#include "routing_metrics.h"
#include "rng.h"
#include "testutil.h"

#include <math.h>

typedef struct {
    etm_backend *be;
    etm_hparams hp;
    etm_router *rt;
    int N, E;
    float *logits;  /* backend (N,E) */
    uint8_t *mask;  /* host (N,E) after route() */
    etm_moe_stats st;
    int load[64], hist[65];
} fixture;

static etm_hparams router_hp(etm_router_kind kind, int E, int k, int T, int pool_seqs) {
    etm_hparams hp;
    memset(&hp, 0, sizeof(hp));
    hp.router = kind;
    hp.n_routed = E;
    hp.top_k = k;
    hp.seq_len = T;
    hp.pool_seqs = pool_seqs;
    hp.d_model = 8;
    hp.expert_hidden = 8;
    hp.et_beta = 0.5f;
    hp.lossfree_rate = 0.01f;
    return hp;
}

static void fx_init(fixture *f, const etm_hparams *hp, int N) {
    memset(f, 0, sizeof(*f));
    etm_error err = {{0}};
    f->be = etm_backend_create("cpu", &err);
    ck_assert_msg(f->be != NULL, "cpu backend: %s", err.msg);
    f->hp = *hp;
    ck_assert_msg(etm_router_check_hparams(hp, N, &err) == 0, "%s", err.msg);
    f->rt = etm_router_create(f->be, hp, N);
    ck_assert_ptr_nonnull(f->rt);
    f->N = N;
    f->E = hp->n_routed;
    f->logits = f->be->alloc(f->be, (size_t)N * f->E * sizeof(float));
    f->mask = etm_calloc((size_t)N * f->E, 1);
    f->st.expert_load = f->load;
    f->st.experts_hist = f->hist;
}

static void fx_free(fixture *f) {
    etm_router_free(f->rt);
    f->be->free(f->be, f->logits);
    etm_backend_free(f->be);
    free(f->mask);
}

/* Routes host logits r (N,E); the mask comes back in f->mask. */
static float route(fixture *f, const float *r, etm_moe_mode mode) {
    f->be->upload(f->be, f->logits, r, (size_t)f->N * f->E * sizeof(float));
    float loss = etm_router_forward(f->rt, f->logits, f->N, mode, &f->st);
    f->be->download(f->be, f->mask, etm_router_mask(f->rt), (size_t)f->N * f->E);
    return loss;
}

static void expect_mask(const fixture *f, const uint8_t *want, const char *what) {
    for (int t = 0; t < f->N; t++)
        for (int e = 0; e < f->E; e++)
            ck_assert_msg(f->mask[t * f->E + e] == want[t * f->E + e],
                          "%s: token %d expert %d: got %d want %d", what, t, e, f->mask[t * f->E + e],
                          want[t * f->E + e]);
}

static void set_thresholds(fixture *f, const float *c, int64_t s, int64_t steps) {
    int64_t counters[2] = {s, steps};
    etm_router_set_state(f->rt, c, NULL, NULL, counters);
}

/* Host EC: expert e takes the kt largest of each pool (ties: lower token). */
static void host_ec(const float *r, int N, int E, int pool, int kt, uint8_t *z) {
    memset(z, 0, (size_t)N * E);
    for (int p0 = 0; p0 < N; p0 += pool)
        for (int e = 0; e < E; e++)
            for (int n = 0; n < kt; n++) {
                int best = -1;
                for (int t = p0; t < p0 + pool; t++)
                    if (!z[t * E + e] && (best < 0 || r[t * E + e] > r[best * E + e])) best = t;
                z[best * E + e] = 1;
            }
}

static void host_threshold(const float *r, int N, int E, const float *c, uint8_t *z) {
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) z[t * E + e] = r[t * E + e] >= c[e];
}

/* ---- expert threshold ------------------------------------------------------------------- */

START_TEST(et_ties_at_the_threshold_are_selected) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 3, 1, 4, 0);
    fixture f;
    fx_init(&f, &hp, 4);
    const float c[3] = {0.5f, -0.25f, 1.0f};
    set_thresholds(&f, c, 1, 5);
    ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_TRAIN), ETM_RULE_THRESHOLD);
    float r[12];
    for (int e = 0; e < 3; e++) {
        r[0 * 3 + e] = c[e];                        /* exactly at the threshold: selected */
        r[1 * 3 + e] = nextafterf(c[e], -INFINITY); /* one ulp below: not */
        r[2 * 3 + e] = nextafterf(c[e], INFINITY);  /* one ulp above: selected */
    }
    r[9] = -1.0f, r[10] = 0.0f, r[11] = 2.0f;
    const uint8_t want[12] = {1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1};
    for (int m = 0; m < 2; m++) {
        route(&f, r, m == 0 ? ETM_MOE_TRAIN : ETM_MOE_EVAL);
        expect_mask(&f, want, m == 0 ? "train" : "eval");
        ck_assert_int_eq(f.st.tokens_no_expert, 1);
        ck_assert_int_eq(f.st.experts_hist[0], 1);
        ck_assert_int_eq(f.st.experts_hist[1], 0);
        ck_assert_int_eq(f.st.experts_hist[2], 1);
        ck_assert_int_eq(f.st.experts_hist[3], 2);
        ck_assert_int_eq(f.st.n_pairs, 8);
        ck_assert_float_eq(f.st.mean_experts, 2.0f);
        ck_assert_int_eq(f.st.expert_load[0], 2);
        ck_assert_int_eq(f.st.expert_load[1], 3);
        ck_assert_int_eq(f.st.expert_load[2], 3);
    }
    fx_free(&f);
}
END_TEST

/* Two experts, pools of one 4-token sequence, two pools per micro-batch: k_target = 4*1/2 = 2,
 * so each cut-off is the 2nd largest logit of the pool. Columns are written per (pool, expert). */
static void fill_batch(float *r, const float cols[2][2][4]) {
    for (int p = 0; p < 2; p++)
        for (int e = 0; e < 2; e++)
            for (int i = 0; i < 4; i++) r[(p * 4 + i) * 2 + e] = cols[p][e][i];
}

START_TEST(et_cutoff_ema_with_bias_correction) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 2, 1, 4, 1);
    hp.et_warmup_steps = 10;
    fixture f;
    fx_init(&f, &hp, 8);
    /* micro-batch A: cut-offs pool 0 (3, -2), pool 1 (1, 2): means (2, 0) */
    const float A[2][2][4] = {{{1, 4, 2, 3}, {-1, -2, -3, -4}}, {{0, 0, 5, 1}, {2, 2, 2, 2}}};
    /* micro-batch B: pool 0 (6, 0), pool 1 (0, 4): means (3, 2) */
    const float B[2][2][4] = {{{6, 6, 0, 0}, {1, 0, 0, 0}}, {{2, 0, 0, 0}, {8, 4, 0, 0}}};
    /* a batch that must not count (EVAL) */
    const float X[2][2][4] = {{{90, 90, 90, 90}, {90, 90, 90, 90}}, {{90, 90, 90, 90}, {90, 90, 90, 90}}};
    float ra[16], rb[16], rx[16];
    fill_batch(ra, A);
    fill_batch(rb, B);
    fill_batch(rx, X);
    etm_router_state st;

    /* step 1, micro-batches A and B: cut (2.5, 1); m = 0.5 cut = (1.25, 0.5); c = m / 0.5 */
    route(&f, ra, ETM_MOE_TRAIN);
    route(&f, rb, ETM_MOE_TRAIN);
    etm_router_step_end(f.rt);
    etm_router_get_state(f.rt, &st);
    ck_assert_double_eq_tol(st.ema[0], 1.25, 1e-6);
    ck_assert_double_eq_tol(st.ema[1], 0.5, 1e-6);
    ck_assert_double_eq_tol(st.threshold[0], 2.5, 1e-6);
    ck_assert_double_eq_tol(st.threshold[1], 1.0, 1e-6);
    ck_assert_int_eq(st.counters[0], 1);
    ck_assert_int_eq(st.counters[1], 1);

    /* step 2, A only: cut (2, 0); m = (1.625, 0.25); c = m / 0.75 = (13/6, 1/3) */
    route(&f, ra, ETM_MOE_TRAIN);
    etm_router_step_end(f.rt);
    etm_router_get_state(f.rt, &st);
    ck_assert_double_eq_tol(st.ema[0], 1.625, 1e-6);
    ck_assert_double_eq_tol(st.ema[1], 0.25, 1e-6);
    ck_assert_double_eq_tol(st.threshold[0], 13.0 / 6.0, 1e-6);
    ck_assert_double_eq_tol(st.threshold[1], 1.0 / 3.0, 1e-6);

    /* step 3, B with an EVAL forward in between: cut (3, 2); m = (2.3125, 1.125);
     * c = m / 0.875 = (37/14, 9/7) */
    route(&f, rx, ETM_MOE_EVAL);
    route(&f, rb, ETM_MOE_TRAIN);
    route(&f, rx, ETM_MOE_EVAL);
    etm_router_step_end(f.rt);
    etm_router_get_state(f.rt, &st);
    ck_assert_double_eq_tol(st.ema[0], 2.3125, 1e-6);
    ck_assert_double_eq_tol(st.ema[1], 1.125, 1e-6);
    ck_assert_double_eq_tol(st.threshold[0], 37.0 / 14.0, 1e-6);
    ck_assert_double_eq_tol(st.threshold[1], 9.0 / 7.0, 1e-6);
    ck_assert_int_eq(st.counters[0], 3);
    ck_assert_int_eq(st.counters[1], 3);
    fx_free(&f);
}
END_TEST

/* W = 2: steps 0 and 1 route by EC, step 2 (exactly W) by thresholds. Logits rise by 1 each
 * step so that the threshold rule and EC pick different tokens at step W. */
START_TEST(et_warmup_switches_at_step_w) {
    const int W = _i == 0 ? 2 : 0;
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 3, 1, 12, 0);
    hp.et_warmup_steps = W;
    fixture f;
    fx_init(&f, &hp, 12);
    etm_rng rng;
    etm_rng_seed(&rng, 11);
    float base[36], r[36];
    for (int i = 0; i < 36; i++) base[i] = etm_rng_normal(&rng);
    uint8_t ec[36], thr[36];
    int last = W > 0 ? W : 1;
    for (int step = 0; step <= last; step++) {
        for (int i = 0; i < 36; i++) r[i] = base[i] + (float)step;
        etm_router_state st;
        etm_router_get_state(f.rt, &st);
        host_ec(r, 12, 3, 12, 4, ec);
        host_threshold(r, 12, 3, st.threshold, thr);
        route(&f, r, ETM_MOE_TRAIN);
        /* EC for the first W steps, and before any EMA update (s == 0) whatever W is */
        int expect_ec = step < W || st.counters[0] == 0;
        ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_TRAIN), expect_ec ? ETM_RULE_EC : ETM_RULE_THRESHOLD);
        if (expect_ec) {
            expect_mask(&f, ec, "warm-up");
        } else {
            expect_mask(&f, thr, "after warm-up");
            ck_assert_msg(memcmp(ec, thr, sizeof ec) != 0, "EC and thresholds agree: test is void");
        }
        etm_router_step_end(f.rt);
    }
    fx_free(&f);
}
END_TEST

/* Capacity clamp C = 0.5 with k_target 4: each expert keeps between 2 and 6 tokens. Expert 0
 * has one token above its threshold and gets padded with the next best; expert 1 has seven and
 * drops its lowest. EVAL applies no clamp. */
START_TEST(et_capacity_clamp_pads_and_drops_the_right_tokens) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 2, 1, 8, 0);
    hp.et_capacity = 0.5f;
    fixture f;
    fx_init(&f, &hp, 8);
    const float c[2] = {0.8f, 0.18f};
    set_thresholds(&f, c, 4, 4);
    const float e0[8] = {0.9f, 0.1f, 0.5f, 0.3f, 0.7f, 0.2f, 0.0f, 0.4f};
    const float e1[8] = {0.5f, 0.9f, 0.3f, 0.8f, 0.15f, 0.7f, 0.6f, 0.2f};
    float r[16];
    for (int t = 0; t < 8; t++) r[t * 2] = e0[t], r[t * 2 + 1] = e1[t];
    /* expert 0: token 0 (above) + token 4 (0.7, next best); expert 1: all above but token 4
     * (0.15 < 0.18), minus the lowest above, token 7 (0.2) */
    const uint8_t want[16] = {1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0};
    route(&f, r, ETM_MOE_TRAIN);
    expect_mask(&f, want, "clamp");
    ck_assert_int_eq(f.st.padded, 1);
    ck_assert_int_eq(f.st.dropped, 1);
    ck_assert_int_eq(f.st.expert_load[0], 2);
    ck_assert_int_eq(f.st.expert_load[1], 6);

    const uint8_t want_eval[16] = {1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1};
    route(&f, r, ETM_MOE_EVAL);
    expect_mask(&f, want_eval, "eval");
    ck_assert_int_eq(f.st.padded, 0);
    ck_assert_int_eq(f.st.dropped, 0);
    fx_free(&f);
}
END_TEST

START_TEST(eval_leaves_thresholds_frozen) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 3, 1, 6, 0);
    fixture f;
    fx_init(&f, &hp, 12);
    const float c[3] = {0.1f, -0.2f, 0.3f}, m[3] = {0.05f, -0.1f, 0.15f};
    int64_t counters[2] = {1, 7};
    etm_router_set_state(f.rt, c, m, NULL, counters);
    etm_rng rng;
    etm_rng_seed(&rng, 3);
    float r[36];
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < 36; i++) r[i] = 3.0f * etm_rng_normal(&rng) + 5.0f;
        route(&f, r, ETM_MOE_EVAL);
        uint8_t thr[36];
        host_threshold(r, 12, 3, c, thr);
        expect_mask(&f, thr, "eval");
    }
    etm_router_step_end(f.rt); /* a step with no training forward: nothing to average */
    etm_router_state st;
    etm_router_get_state(f.rt, &st);
    for (int e = 0; e < 3; e++) {
        ck_assert_float_eq(st.threshold[e], c[e]);
        ck_assert_float_eq(st.ema[e], m[e]);
    }
    ck_assert_int_eq(st.counters[0], 1);
    ck_assert_int_eq(st.counters[1], 8);
    fx_free(&f);
}
END_TEST

/* An EC layer tracks the cut-off EMA too, routes by EC in training and by thresholds in EVAL. */
START_TEST(ec_tracks_thresholds_for_eval) {
    etm_hparams hp = router_hp(ETM_ROUTER_EC, 2, 1, 8, 0);
    fixture f;
    fx_init(&f, &hp, 8);
    etm_rng rng;
    etm_rng_seed(&rng, 8);
    float r[16];
    for (int i = 0; i < 16; i++) r[i] = etm_rng_normal(&rng);
    uint8_t ec[16], thr[16];
    ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_EVAL), ETM_RULE_EC); /* s == 0 */
    route(&f, r, ETM_MOE_TRAIN);
    host_ec(r, 8, 2, 8, 4, ec);
    expect_mask(&f, ec, "ec train");
    etm_router_step_end(f.rt);
    etm_router_state st;
    etm_router_get_state(f.rt, &st);
    ck_assert_int_eq(st.counters[0], 1);
    ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_TRAIN), ETM_RULE_EC);
    ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_EVAL), ETM_RULE_THRESHOLD);
    for (int i = 0; i < 16; i++) r[i] += 0.5f;
    route(&f, r, ETM_MOE_EVAL);
    host_threshold(r, 8, 2, st.threshold, thr);
    expect_mask(&f, thr, "ec eval");
    fx_free(&f);
}
END_TEST

/* ---- expert choice ---------------------------------------------------------------------- */

START_TEST(ec_balances_each_pool_exactly) {
    const int pool_seqs = _i; /* 0 = the whole batch, 1 and 2 = pools of 4 and 8 tokens */
    etm_hparams hp = router_hp(ETM_ROUTER_EC, 4, 2, 4, pool_seqs);
    fixture f;
    fx_init(&f, &hp, 24);
    etm_rng rng;
    etm_rng_seed(&rng, 21);
    float r[96];
    for (int i = 0; i < 96; i++) r[i] = etm_rng_normal(&rng);
    route(&f, r, ETM_MOE_TRAIN);
    int pool = pool_seqs ? pool_seqs * 4 : 24, kt = pool * 2 / 4;
    int varied = 0;
    for (int p0 = 0; p0 < 24; p0 += pool)
        for (int e = 0; e < 4; e++) {
            int n = 0;
            float lo_in = INFINITY, hi_out = -INFINITY;
            for (int t = p0; t < p0 + pool; t++) {
                if (f.mask[t * 4 + e]) {
                    n++;
                    lo_in = fminf(lo_in, r[t * 4 + e]);
                } else {
                    hi_out = fmaxf(hi_out, r[t * 4 + e]);
                }
            }
            ck_assert_int_eq(n, kt);
            ck_assert_float_gt(lo_in, hi_out); /* the top kt of the pool */
        }
    for (int c = 0; c <= 4; c++) varied += f.st.experts_hist[c] > 0;
    ck_assert_int_gt(varied, 1); /* tokens get different numbers of experts */
    fx_free(&f);
}
END_TEST

/* ---- token choice ----------------------------------------------------------------------- */

START_TEST(tc_capacity_drops_lowest_tokens) {
    etm_hparams hp = router_hp(ETM_ROUTER_TC, 2, 1, 8, 0);
    hp.capacity_factor = 1.0f; /* capacity ceil(1 * 8 * 1 / 2) = 4 */
    fixture f;
    fx_init(&f, &hp, 8);
    /* tokens 0..5 prefer expert 0 with logits 0.6, 0.1, 0.9, 0.3, 0.5, 0.2 */
    const float e0[8] = {0.6f, 0.1f, 0.9f, 0.3f, 0.5f, 0.2f, -1.0f, -1.0f};
    float r[16];
    for (int t = 0; t < 8; t++) r[t * 2] = e0[t], r[t * 2 + 1] = 0.0f;
    route(&f, r, ETM_MOE_TRAIN);
    const uint8_t want[16] = {1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1};
    expect_mask(&f, want, "tc capacity");
    ck_assert_int_eq(f.st.dropped, 2);
    ck_assert_int_eq(f.st.tokens_no_expert, 2);
    route(&f, r, ETM_MOE_EVAL); /* no capacity in EVAL */
    ck_assert_int_eq(f.st.expert_load[0], 6);
    ck_assert_int_eq(f.st.dropped, 0);
    fx_free(&f);
}
END_TEST

/* Item: tc capacity with softmax scores drops by gate, not by logit. Expert 0 is the top choice
 * of tokens 0..2 and keeps 2 of them. By logit it would keep 0 (1.323) and 2 (1.2) and drop 1
 * (1.142); by softmax gate token 1 (0.959) and 2 (0.768) beat token 0 (0.506), whose second
 * logit is nearly as large. With sigmoid scores the logit order stands. */
START_TEST(tc_capacity_drops_by_gate_score) {
    const int softmax = _i;
    etm_hparams hp = router_hp(ETM_ROUTER_TC, 2, 1, 4, 0);
    hp.capacity_factor = 1.0f; /* ceil(1 * 4 * 1 / 2) = 2 */
    hp.tc_score = softmax ? ETM_SCORE_SOFTMAX : ETM_SCORE_SIGMOID;
    fixture f;
    fx_init(&f, &hp, 4);
    const float r[8] = {1.323f, 1.30f, 1.142f, -2.0f, 1.2f, 0.0f, 0.0f, 0.5f};
    route(&f, r, ETM_MOE_TRAIN);
    const uint8_t by_gate[8] = {0, 0, 1, 0, 1, 0, 0, 1}, by_logit[8] = {1, 0, 0, 0, 1, 0, 0, 1};
    expect_mask(&f, softmax ? by_gate : by_logit, softmax ? "softmax capacity" : "sigmoid capacity");
    ck_assert_int_eq(f.st.dropped, 1);
    fx_free(&f);
}
END_TEST

/* The same rule against a slow loop on random logits: top-k per row by logit (ties: lower
 * expert), then each expert keeps its `capacity` candidates with the largest gates (ties: lower
 * token), for both score kinds and with the loss-free bias in the selection. */
START_TEST(tc_capacity_matches_a_loop_reference) {
    const int softmax = _i & 1, lossfree = _i >> 1;
    const int N = 24, E = 4, k = 2;
    etm_hparams hp = router_hp(ETM_ROUTER_TC, E, k, 4, 0);
    hp.capacity_factor = 0.75f; /* ceil(0.75 * 24 * 2 / 4) = 9 of 12 on average */
    hp.tc_score = softmax ? ETM_SCORE_SOFTMAX : ETM_SCORE_SIGMOID;
    hp.tc_balance = lossfree ? ETM_BALANCE_LOSSFREE : ETM_BALANCE_NONE;
    fixture f;
    fx_init(&f, &hp, N);
    const float bias[4] = {0.3f, -0.2f, 0.0f, 0.1f};
    etm_router_set_state(f.rt, NULL, NULL, lossfree ? bias : NULL, NULL);
    etm_rng rng;
    etm_rng_seed(&rng, 44 + _i);
    float r[96], score[96], sel[96];
    for (int i = 0; i < N * E; i++) r[i] = roundf(etm_rng_normal(&rng) * 8) / 8; /* with ties */
    route(&f, r, ETM_MOE_TRAIN);
    f.be->download(f.be, score, etm_router_scores(f.rt), sizeof score);
    for (int i = 0; i < N * E; i++) sel[i] = r[i] + (lossfree ? bias[i % E] : 0.0f);
    int cap = etm_router_sizes(&hp, N).capacity;
    ck_assert_int_eq(cap, 9);
    uint8_t top[96] = {0}, want[96] = {0};
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) {
            int rank = 0;
            for (int j = 0; j < E; j++)
                rank += sel[t * E + j] > sel[t * E + e] || (sel[t * E + j] == sel[t * E + e] && j < e);
            top[t * E + e] = rank < k;
        }
    const float *key = softmax ? score : sel;
    for (int e = 0; e < E; e++)
        for (int t = 0; t < N; t++) {
            if (!top[t * E + e]) continue;
            int rank = 0;
            for (int u = 0; u < N; u++)
                rank += top[u * E + e] && (key[u * E + e] > key[t * E + e] ||
                                           (key[u * E + e] == key[t * E + e] && u < t));
            want[t * E + e] = rank < cap;
        }
    expect_mask(&f, want, "tc capacity reference");
    fx_free(&f);
}
END_TEST

/* Item: ties. EC: an expert's column tied across the pool goes to the earliest tokens, exactly
 * k_target of them. TC top-k: a tied row goes to the lower experts. ET: every token tied at the
 * threshold is routed (>=), so the load exceeds k_target by the ties. */
START_TEST(ties_follow_the_stated_rule) {
    etm_hparams hp = router_hp(ETM_ROUTER_EC, 2, 1, 8, 0); /* k_target = 8 * 1 / 2 = 4 */
    fixture f;
    fx_init(&f, &hp, 8);
    float r[16];
    const float col1[8] = {1.0f, 0.2f, 0.2f, 0.2f, 0.2f, 0.2f, -1.0f, 2.0f};
    for (int t = 0; t < 8; t++) r[t * 2] = 0.5f, r[t * 2 + 1] = col1[t];
    route(&f, r, ETM_MOE_TRAIN);
    const uint8_t ec[16] = {1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    expect_mask(&f, ec, "ec ties");
    etm_router_step_end(f.rt);
    fx_free(&f);

    hp = router_hp(ETM_ROUTER_TC, 4, 2, 2, 0);
    fx_init(&f, &hp, 2);
    const float t2[8] = {0.5f, 0.5f, 0.5f, 0.5f, -1.0f, 0.3f, 0.3f, 0.3f};
    route(&f, t2, ETM_MOE_TRAIN);
    const uint8_t tc[8] = {1, 1, 0, 0, 0, 1, 1, 0};
    expect_mask(&f, tc, "tc top-k ties");
    fx_free(&f);

    hp = router_hp(ETM_ROUTER_ET, 2, 1, 8, 0); /* k_target 16 * 1 / 2 = 8 */
    fx_init(&f, &hp, 16);
    const float c[2] = {0.25f, 0.0f};
    set_thresholds(&f, c, 1, 1);
    float r32[32];
    for (int t = 0; t < 16; t++) {
        r32[t * 2] = t < 11 ? 0.25f : 0.0f; /* 11 tied exactly at the threshold */
        r32[t * 2 + 1] = -5.0f;
    }
    route(&f, r32, ETM_MOE_TRAIN);
    ck_assert_int_eq(f.st.expert_load[0], 11);
    ck_assert_int_eq(f.st.expert_load[1], 0);
    fx_free(&f);
}
END_TEST

/* One logit of 1 per token on the chosen expert, 0 elsewhere. */
static void one_hot(float *r, const int *choice, int N, int E) {
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) r[t * E + e] = e == choice[t] ? 1.0f : 0.0f;
}

START_TEST(lossfree_bias_moves_towards_the_mean_over_micro_batches) {
    etm_hparams hp = router_hp(ETM_ROUTER_TC, 4, 1, 8, 0);
    hp.tc_balance = ETM_BALANCE_LOSSFREE;
    const float u = hp.lossfree_rate;
    fixture f;
    fx_init(&f, &hp, 8);
    float r[32];
    /* micro-batch 1 counts (0, 4, 2, 2), micro-batch 2 (6, 0, 0, 2): sums (6, 4, 2, 4), mean 4.
     * Either micro-batch alone would move expert 1's bias: only the sum may count. */
    const int mb1[8] = {1, 1, 1, 1, 2, 2, 3, 3}, mb2[8] = {0, 0, 0, 0, 0, 0, 3, 3};
    one_hot(r, mb1, 8, 4);
    route(&f, r, ETM_MOE_TRAIN);
    route(&f, r, ETM_MOE_EVAL); /* does not count */
    one_hot(r, mb2, 8, 4);
    route(&f, r, ETM_MOE_TRAIN);
    etm_router_step_end(f.rt);
    etm_router_state st;
    etm_router_get_state(f.rt, &st);
    ck_assert_float_eq(st.bias[0], -u);
    ck_assert_float_eq(st.bias[1], 0.0f); /* exactly at the mean */
    ck_assert_float_eq(st.bias[2], u);
    ck_assert_float_eq(st.bias[3], 0.0f);
    /* step 2: counts (2, 4, 1, 1), mean 2 */
    const int mb3[8] = {0, 0, 1, 1, 1, 1, 2, 3};
    one_hot(r, mb3, 8, 4);
    route(&f, r, ETM_MOE_TRAIN);
    etm_router_step_end(f.rt);
    ck_assert_float_eq(st.bias[0], -u);
    ck_assert_float_eq(st.bias[1], -u);
    ck_assert_float_eq(st.bias[2], 2 * u);
    ck_assert_float_eq(st.bias[3], u);
    fx_free(&f);
}
END_TEST

/* The bias changes which experts are chosen, never the gate values. */
START_TEST(lossfree_bias_affects_selection_only) {
    etm_hparams hp = router_hp(ETM_ROUTER_TC, 4, 1, 8, 0);
    hp.tc_balance = ETM_BALANCE_LOSSFREE;
    hp.tc_score = _i ? ETM_SCORE_SOFTMAX : ETM_SCORE_SIGMOID;
    fixture biased, plain;
    fx_init(&biased, &hp, 8);
    fx_init(&plain, &hp, 8);
    const float b[4] = {0.0f, 0.0f, 5.0f, 0.0f};
    etm_router_set_state(biased.rt, NULL, NULL, b, NULL);
    etm_rng rng;
    etm_rng_seed(&rng, 4);
    float r[32];
    for (int i = 0; i < 32; i++) r[i] = etm_rng_normal(&rng);
    route(&biased, r, ETM_MOE_TRAIN);
    route(&plain, r, ETM_MOE_TRAIN);
    ck_assert_int_eq(biased.st.expert_load[2], 8); /* +5 wins every token here */
    ck_assert_int_lt(plain.st.expert_load[2], 8);
    for (int t = 0; t < 8; t++) { /* selection by r + b, top-1 */
        int best = 0;
        for (int e = 1; e < 4; e++)
            if (r[t * 4 + e] + b[e] > r[t * 4 + best] + b[best]) best = e;
        ck_assert_int_eq(biased.mask[t * 4 + best], 1);
    }
    float s1[32], s2[32];
    biased.be->download(biased.be, s1, etm_router_scores(biased.rt), sizeof s1);
    plain.be->download(plain.be, s2, etm_router_scores(plain.rt), sizeof s2);
    ck_assert_int_eq(memcmp(s1, s2, sizeof s1), 0);
    for (int t = 0; t < 8; t++) {
        double z = 0;
        for (int e = 0; e < 4; e++) z += exp(r[t * 4 + e]);
        for (int e = 0; e < 4; e++) {
            double want = _i ? exp(r[t * 4 + e]) / z : 1.0 / (1.0 + exp(-r[t * 4 + e]));
            ck_assert_double_eq_tol(s1[t * 4 + e], want, 1e-6);
        }
    }
    fx_free(&biased);
    fx_free(&plain);
}
END_TEST

/* ---- state and settings ----------------------------------------------------------------- */

START_TEST(state_round_trip_reproduces_routing) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 3, 1, 6, 1);
    hp.et_warmup_steps = 1;
    fixture a, b;
    fx_init(&a, &hp, 12);
    fx_init(&b, &hp, 12);
    etm_rng rng;
    etm_rng_seed(&rng, 99);
    float r[36];
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 36; i++) r[i] = etm_rng_normal(&rng);
        route(&a, r, ETM_MOE_TRAIN);
        etm_router_step_end(a.rt);
    }
    etm_router_state st, st2;
    etm_router_get_state(a.rt, &st);
    etm_router_set_state(b.rt, st.threshold, st.ema, st.bias, st.counters);
    etm_router_get_state(b.rt, &st2);
    ck_assert_int_eq(memcmp(st.threshold, st2.threshold, 3 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(st.ema, st2.ema, 3 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(st.counters, st2.counters, 2 * sizeof(int64_t)), 0);
    for (int i = 0; i < 36; i++) r[i] = etm_rng_normal(&rng);
    route(&a, r, ETM_MOE_TRAIN);
    route(&b, r, ETM_MOE_TRAIN);
    ck_assert_int_eq(etm_router_rule(b.rt, ETM_MOE_TRAIN), ETM_RULE_THRESHOLD);
    ck_assert_int_eq(memcmp(a.mask, b.mask, 36), 0);
    fx_free(&a);
    fx_free(&b);
}
END_TEST

START_TEST(bad_settings_are_named) {
    etm_error err;
    etm_hparams hp = router_hp(ETM_ROUTER_EC, 4, 1, 8, 3);
    ck_assert_int_eq(etm_router_check_hparams(&hp, 32, &err), -1); /* 24-token pools in 32 */
    ck_assert_ptr_nonnull(strstr(err.msg, "pool_seqs"));
    hp = router_hp(ETM_ROUTER_ET, 16, 1, 8, 1);
    ck_assert_int_eq(etm_router_check_hparams(&hp, 32, &err), -1); /* k_target 8/16 < 1 */
    ck_assert_ptr_nonnull(strstr(err.msg, "k_target"));
    hp = router_hp(ETM_ROUTER_ET, 4, 1, 8, 0);
    hp.et_beta = 1.0f;
    ck_assert_int_eq(etm_router_check_hparams(&hp, 32, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "et_beta"));
    hp = router_hp(ETM_ROUTER_TC, 4, 5, 8, 0);
    ck_assert_int_eq(etm_router_check_hparams(&hp, 32, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "top_k"));
    hp = router_hp(ETM_ROUTER_ET, 4, 1, 8, 0);
    hp.ema_start_steps = -1;
    ck_assert_int_eq(etm_router_check_hparams(&hp, 32, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "ema_start_steps"));
    hp = router_hp(ETM_ROUTER_ET, 4, 1, 8, 2);
    ck_assert_int_eq(etm_router_check_hparams(&hp, 32, &err), 0);
}
END_TEST


/* ema_start_steps = 2: the first two steps' cut-offs are dropped (s stays 0, routing stays EC),
 * the third step's cut-off starts the EMA: with beta 0.5, m = 0.5 cut and c = m / (1 - 0.5) =
 * cut exactly. */
START_TEST(ema_starts_after_ema_start_steps) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 2, 1, 8, 0); /* k_target 4 */
    hp.ema_start_steps = 2;
    fixture f;
    fx_init(&f, &hp, 8);
    etm_rng rng;
    etm_rng_seed(&rng, 61);
    float r[16];
    etm_router_state st;
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 16; i++) r[i] = etm_rng_normal(&rng);
        ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_TRAIN), ETM_RULE_EC);
        route(&f, r, ETM_MOE_TRAIN);
        etm_router_step_end(f.rt);
        etm_router_get_state(f.rt, &st);
        ck_assert_int_eq(st.counters[0], step < 2 ? 0 : 1);
        ck_assert_int_eq(st.counters[1], step + 1);
        if (step < 2)
            for (int e = 0; e < 2; e++) ck_assert_float_eq(st.ema[e], 0.0f);
    }
    for (int e = 0; e < 2; e++) {
        float col[8];
        for (int t = 0; t < 8; t++) col[t] = r[t * 2 + e];
        int above_or_eq;
        float cut = -INFINITY;
        for (int t = 0; t < 8; t++) { /* the 4th largest */
            int gt = 0;
            above_or_eq = 0;
            for (int u = 0; u < 8; u++) gt += col[u] > col[t], above_or_eq += col[u] >= col[t];
            if (gt < 4 && above_or_eq >= 4) cut = col[t];
        }
        ck_assert_float_eq(st.threshold[e], cut);
    }
    fx_free(&f);
}
END_TEST

/* et_capacity_mode = always with et_capacity = 0 (the authors' expert_capacity_factor = 0):
 * every expert takes exactly k_target tokens of each pool in TRAIN, its best by logit, whatever
 * the thresholds; `positive` with 0 leaves the threshold rule alone. */
START_TEST(et_capacity_zero_always_is_exactly_k_target) {
    const int always = _i;
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 2, 1, 8, 1); /* pools of 8 tokens, k_target 4 */
    hp.et_capacity = 0;
    hp.et_capacity_mode = always ? ETM_CLAMP_ALWAYS : ETM_CLAMP_POSITIVE;
    etm_routing_sizes sz = etm_router_sizes(&hp, 16);
    ck_assert_int_eq(sz.clamp_lo, always ? 4 : 0);
    ck_assert_int_eq(sz.clamp_hi, always ? 4 : 8);
    fixture f;
    fx_init(&f, &hp, 16);
    const float c[2] = {-10.0f, 10.0f}; /* every token above expert 0's, none above expert 1's */
    set_thresholds(&f, c, 1, 5);
    etm_rng rng;
    etm_rng_seed(&rng, 71);
    float r[32];
    for (int i = 0; i < 32; i++) r[i] = etm_rng_normal(&rng);
    route(&f, r, ETM_MOE_TRAIN);
    uint8_t want[32];
    if (always) host_ec(r, 16, 2, 8, 4, want);
    else host_threshold(r, 16, 2, c, want);
    expect_mask(&f, want, always ? "always, C = 0" : "positive, C = 0");
    ck_assert_int_eq(f.st.dropped, always ? 8 : 0);
    ck_assert_int_eq(f.st.padded, always ? 8 : 0);
    route(&f, r, ETM_MOE_EVAL); /* never at evaluation */
    ck_assert_int_eq(f.st.expert_load[0], 16);
    ck_assert_int_eq(f.st.expert_load[1], 0);
    fx_free(&f);
}
END_TEST

/* ---- the kind table, batch evaluation, sizes ------------------------------------------------ */

/* Every kind but dense has a table row under its config name; no other value names a kind. */
START_TEST(kind_table_covers_every_kind) {
    ck_assert_ptr_null(etm_router_ops_of(ETM_ROUTER_DENSE));
    ck_assert_str_eq(etm_router_kind_name(ETM_ROUTER_DENSE), "dense");
    for (int k = ETM_ROUTER_DENSE + 1; k < ETM_ROUTER_N_KINDS; k++) {
        const etm_router_ops *o = etm_router_ops_of((etm_router_kind)k);
        ck_assert_msg(o != NULL, "kind %d has no table row", k);
        ck_assert_int_eq(o->kind, k);
        ck_assert_str_eq(o->name, etm_router_kind_name((etm_router_kind)k));
        ck_assert(o->check && o->create && o->destroy && o->rule && o->route && o->get_state && o->set_state);
    }
    ck_assert_ptr_null(etm_router_kind_name(ETM_ROUTER_N_KINDS));
    ck_assert_ptr_null(etm_router_kind_name((etm_router_kind)-1));
    ck_assert_ptr_null(etm_router_ops_of(ETM_ROUTER_N_KINDS));
    etm_hparams hp = router_hp(ETM_ROUTER_N_KINDS, 4, 1, 8, 0);
    etm_error err;
    ck_assert_int_eq(etm_router_check_hparams(&hp, 32, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown kind"));
}
END_TEST

/* EVAL_BATCH routes ec and et by expert choice over the pools whatever the thresholds and the
 * warm-up, tc as EVAL does, and leaves the state exactly as it was. */
START_TEST(eval_batch_routes_by_pools_and_keeps_the_state) {
    const etm_router_kind kinds[] = {ETM_ROUTER_EC, ETM_ROUTER_ET, ETM_ROUTER_TC};
    etm_hparams hp = router_hp(kinds[_i], 4, 1, 4, 1); /* pools of 4 tokens, k_target 1 */
    hp.capacity_factor = 1.0f;
    fixture f;
    fx_init(&f, &hp, 16);
    etm_rng rng;
    etm_rng_seed(&rng, 30 + _i);
    float r[64], c[4] = {-0.5f, 0.0f, 0.25f, 9.0f}, m[4] = {1, 2, 3, 4}, b[4] = {0.1f, -0.1f, 0, 0.2f};
    for (int i = 0; i < 64; i++) r[i] = etm_rng_normal(&rng);
    int64_t counters[2] = {3, 7};
    etm_router_set_state(f.rt, c, m, b, counters);
    etm_router_state before;
    etm_router_get_state(f.rt, &before);
    float keep[12];
    memcpy(keep, before.threshold, sizeof c);
    memcpy(keep + 4, before.ema, sizeof m);
    memcpy(keep + 8, before.bias, sizeof b);
    route(&f, r, ETM_MOE_EVAL_BATCH);
    uint8_t want[64];
    if (hp.router == ETM_ROUTER_TC) {
        ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_EVAL_BATCH), ETM_RULE_TOPK);
        uint8_t got[64];
        memcpy(got, f.mask, sizeof got);
        route(&f, r, ETM_MOE_EVAL);
        memcpy(want, f.mask, sizeof want);
        memcpy(f.mask, got, sizeof got);
    } else {
        ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_EVAL_BATCH), ETM_RULE_EC);
        host_ec(r, 16, 4, 4, 1, want);
    }
    expect_mask(&f, want, "eval batch");
    etm_router_step_end(f.rt); /* nothing was recorded: only the step count moves */
    etm_router_state after;
    etm_router_get_state(f.rt, &after);
    for (int e = 0; e < 4; e++) {
        ck_assert_float_eq(after.threshold[e], keep[e]);
        ck_assert_float_eq(after.ema[e], keep[4 + e]);
        ck_assert_float_eq(after.bias[e], hp.router == ETM_ROUTER_TC ? b[e] : 0.0f);
    }
    ck_assert_int_eq(after.counters[0], 3);
    ck_assert_int_eq(after.counters[1], 8);
    fx_free(&f);
}
END_TEST

/* end_warmup moves an et router to thresholds in TRAIN and changes nothing else. */
START_TEST(end_warmup_starts_thresholds) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 2, 1, 4, 0);
    hp.et_warmup_steps = 10;
    fixture f;
    fx_init(&f, &hp, 8);
    float c[2] = {0, 0};
    set_thresholds(&f, c, 2, 3);
    ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_TRAIN), ETM_RULE_EC);
    etm_router_end_warmup(f.rt);
    ck_assert_int_eq(etm_router_rule(f.rt, ETM_MOE_TRAIN), ETM_RULE_THRESHOLD);
    etm_router_state st;
    etm_router_get_state(f.rt, &st);
    ck_assert_int_eq(st.counters[0], 2);
    ck_assert_int_eq(st.counters[1], 10);
    fx_free(&f);
}
END_TEST

START_TEST(routing_sizes_follow_the_definitions) {
    etm_hparams hp = router_hp(ETM_ROUTER_EC, 8, 2, 16, 2); /* pools of 32 tokens */
    etm_routing_sizes s = etm_router_sizes(&hp, 128);
    ck_assert_int_eq(s.pool, 32);
    ck_assert_int_eq(s.n_pools, 4);
    ck_assert_int_eq(s.k_target, 8);
    ck_assert_int_eq(s.capacity, 0);
    ck_assert_int_eq(s.clamp_lo, 0);
    ck_assert_int_eq(s.clamp_hi, 32);
    s = etm_router_sizes(&hp, 48); /* not a whole number of pools: the whole batch */
    ck_assert_int_eq(s.pool, 48);
    ck_assert_int_eq(s.k_target, 12);
    hp.router = ETM_ROUTER_ET;
    hp.et_capacity = 0.25f;
    s = etm_router_sizes(&hp, 128);
    ck_assert_int_eq(s.clamp_lo, 6);
    ck_assert_int_eq(s.clamp_hi, 10);
    hp = router_hp(ETM_ROUTER_TC, 8, 2, 16, 2); /* tc: one pool, the batch */
    hp.capacity_factor = 1.1f; /* 1.1f * 80 * 2 / 8 = 22.0000004: 22, not 23 */
    s = etm_router_sizes(&hp, 80);
    ck_assert_int_eq(s.pool, 80);
    ck_assert_int_eq(s.capacity, 22);
    hp = router_hp(ETM_ROUTER_EC, 16, 1, 4, 0);
    s = etm_router_sizes(&hp, 4); /* 4 * 1 / 16 rounds to 0: at least 1 */
    ck_assert_int_eq(s.k_target, 1);
}
END_TEST

/* ---- cut-off scopes (router.h, et_cutoff_scope) ------------------------------------------- */

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Slow reference: the kt-th largest of column e of rows [r0, r1) of r (R,E), kt = floor(n k / E)
 * clamped to [1, n], by sorting. */
static double ref_cut(const float *r, int r0, int r1, int E, int k, int e) {
    int n = r1 - r0;
    float *v = etm_malloc((size_t)n * sizeof(float));
    for (int t = 0; t < n; t++) v[t] = r[(size_t)(r0 + t) * E + e];
    qsort(v, (size_t)n, sizeof(float), cmp_desc);
    int kt = n * k / E;
    kt = kt < 1 ? 1 : kt > n ? n : kt;
    double c = v[kt - 1];
    free(v);
    return c;
}

/* Reference step cut-off of M micro-batches of N rows (stored one after the other in r) for each
 * scope: pool (pools of `pool` rows, mean over pools then over micro-batches), microbatch (mean
 * over micro-batches), step (all M N rows). */
static double ref_step_cut(const float *r, int M, int N, int E, int k, int pool, etm_cutoff_scope scope, int e) {
    if (scope == ETM_CUTOFF_STEP) return ref_cut(r, 0, M * N, E, k, e);
    int rows = scope == ETM_CUTOFF_POOL ? pool : N;
    double sum = 0;
    for (int m = 0; m < M; m++) {
        double s = 0;
        for (int p0 = 0; p0 < N; p0 += rows) s += ref_cut(r, m * N + p0, m * N + p0 + rows, E, k, e);
        sum += s / (N / rows);
    }
    return sum / M;
}

/* Two micro-batches of two pools each, random logits with ties: each scope's thresholds after one
 * step (beta 0.5, s = 1: c = the cut-off exactly) equal its slow reference, the three scopes
 * differ, and the step's cut-off and its gap to the threshold in force are recorded. _i: ec, et. */
START_TEST(cutoff_scopes_follow_their_references) {
    const int E = 3, k = 1, T = 6, M = 2, N = 12;
    etm_rng rng;
    etm_rng_seed(&rng, 77);
    float r[2 * 12 * 3];
    for (int i = 0; i < M * N * E; i++) r[i] = (float)etm_rng_below(&rng, 40) / 8.0f - 2.0f; /* ties */
    double got[3][3];
    for (int sc = 0; sc < 3; sc++) {
        etm_hparams hp = router_hp(_i == 0 ? ETM_ROUTER_EC : ETM_ROUTER_ET, E, k, T, 1);
        hp.et_warmup_steps = 5;
        hp.et_cutoff_scope = (etm_cutoff_scope)sc;
        fixture f;
        fx_init(&f, &hp, N);
        route(&f, r, ETM_MOE_TRAIN);
        route(&f, r + N * E, ETM_MOE_TRAIN);
        route(&f, r, ETM_MOE_EVAL); /* does not count */
        etm_router_step_end(f.rt);
        etm_router_state st;
        etm_router_get_state(f.rt, &st);
        for (int e = 0; e < E; e++) {
            double want = ref_step_cut(r, M, N, E, k, T, (etm_cutoff_scope)sc, e);
            got[sc][e] = st.threshold[e];
            ck_assert_msg(fabs(st.threshold[e] - want) <= 1e-6, "scope %d expert %d: threshold %.9g want %.9g",
                          sc, e, st.threshold[e], want);
            ck_assert_double_eq_tol(st.ema[e], 0.5 * want, 1e-6);
        }
        etm_cutoff_step_info info;
        ck_assert(etm_router_last_cutoff(f.rt, &info));
        for (int e = 0; e < E; e++) {
            ck_assert_double_eq_tol(info.cut[e], got[sc][e], 1e-6);
            ck_assert_double_eq_tol(info.gap[e], got[sc][e], 1e-6); /* the threshold in force was 0 */
        }
        /* a second step: the gap is to the threshold the first step set */
        float r2[12 * 3];
        for (int i = 0; i < N * E; i++) r2[i] = r[i] + 1.0f;
        route(&f, r2, ETM_MOE_TRAIN);
        etm_router_step_end(f.rt);
        ck_assert(etm_router_last_cutoff(f.rt, &info));
        for (int e = 0; e < E; e++) {
            double want = (sc == ETM_CUTOFF_POOL ? ref_step_cut(r2, 1, N, E, k, T, ETM_CUTOFF_POOL, e)
                                                 : ref_cut(r2, 0, N, E, k, e));
            ck_assert_double_eq_tol(info.cut[e], want, 1e-6);
            ck_assert_double_eq_tol(info.gap[e], want - got[sc][e], 1e-6);
        }
        fx_free(&f);
    }
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++) {
            int differ = 0;
            for (int e = 0; e < E; e++) differ |= got[a][e] != got[b][e];
            ck_assert_msg(differ, "scopes %d and %d give the same thresholds: the case does not separate them", a, b);
        }
}
END_TEST

/* etm_cutoff_of_rows (the step scope's selection) against sorting, on sizes 1..40 with few
 * distinct values (ties) and with distinct values, top_k 1..3 */
START_TEST(cutoff_of_rows_matches_sorting) {
    etm_rng rng;
    etm_rng_seed(&rng, 5);
    const int E = 4;
    float cut[4], *scratch = etm_malloc(40 * sizeof(float)), *r = etm_malloc(40 * 4 * sizeof(float));
    for (int n = 1; n <= 40; n++)
        for (int distinct = 0; distinct < 2; distinct++)
            for (int k = 1; k <= 3; k++) {
                for (int i = 0; i < n * E; i++)
                    r[i] = distinct ? etm_rng_uniform(&rng) - 0.5f : (float)etm_rng_below(&rng, 3);
                etm_cutoff_of_rows(r, (size_t)n, E, k, cut, scratch);
                for (int e = 0; e < E; e++) {
                    double want = ref_cut(r, 0, n, E, k, e);
                    ck_assert_msg(cut[e] == want, "n %d k %d expert %d: %.9g want %.9g", n, k, e, cut[e], want);
                }
            }
    free(scratch);
    free(r);
}
END_TEST

/* The cut-off records of scope step, and the step's partial records after set_state, are cleared:
 * a restored router starts the step afresh; the rows of one step in another order give the same
 * thresholds. */
START_TEST(step_scope_is_order_free_and_cleared_by_set_state) {
    const int E = 2, N = 8;
    etm_hparams hp = router_hp(ETM_ROUTER_ET, E, 1, 4, 1);
    hp.et_cutoff_scope = ETM_CUTOFF_STEP;
    float a[16], b[16];
    for (int i = 0; i < 16; i++) {
        a[i] = (float)((i * 7) % 11);
        b[i] = (float)((i * 5) % 13) - 3.0f;
    }
    float thr[2][2];
    for (int order = 0; order < 2; order++) {
        fixture f;
        fx_init(&f, &hp, N);
        route(&f, a, ETM_MOE_TRAIN);                           /* dropped by set_state below */
        etm_router_set_state(f.rt, NULL, NULL, NULL, NULL);
        route(&f, order ? b : a, ETM_MOE_TRAIN);
        route(&f, order ? a : b, ETM_MOE_TRAIN);
        etm_router_step_end(f.rt);
        etm_router_state st;
        etm_router_get_state(f.rt, &st);
        for (int e = 0; e < E; e++) {
            float both[32];
            memcpy(both, a, sizeof a);
            memcpy(both + 16, b, sizeof b);
            thr[order][e] = st.threshold[e];
            ck_assert_double_eq_tol(st.threshold[e], ref_cut(both, 0, 16, E, 1, e), 1e-6);
        }
        fx_free(&f);
    }
    ck_assert(memcmp(thr[0], thr[1], sizeof thr[0]) == 0);
}
END_TEST

/* ---- the authors' routing metrics (routing_metrics.h) --------------------------------------- */

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

/* two-pass mean and unbiased std of v[0..n) */
static void mean_std(const double *v, int n, double *mean, double *sd) {
    double m = 0, q = 0;
    for (int i = 0; i < n; i++) m += v[i];
    m /= n;
    for (int i = 0; i < n; i++) q += (v[i] - m) * (v[i] - m);
    *mean = m;
    *sd = sqrt(q / (n - 1));
}

/* ET with the clamp (C 0.5, k_target 2 per pool of 4: bounds [1, 3]), thresholds 0:
 * pool 0: expert 0 has 4 tokens above (overflow, clamped to 3), expert 1 none (underflow, padded
 * with token 0); pool 1 within bounds (expert 1 exactly at the upper bound 3: no overflow).
 * Tokens by routed experts: 0: t7; 1: t0 t1 t2 t3 t5 t6; 2: t4. Routed gates: sigmoid of -1, 2,
 * 3, 4, 1, 1, 1, 1. */
START_TEST(routing_metrics_of_a_hand_made_batch) {
    etm_hparams hp = router_hp(ETM_ROUTER_ET, 2, 1, 4, 1);
    hp.et_capacity = 0.5f;
    fixture f;
    fx_init(&f, &hp, 8);
    const float r[16] = {1, -1, 2, -2, 3, -3, 4, -4, 1, 1, -1, 1, -2, 1, -3, -2};
    const float c[2] = {0, 0};
    set_thresholds(&f, c, 1, 1);
    route(&f, r, ETM_MOE_TRAIN);
    const uint8_t want[16] = {0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 0};
    expect_mask(&f, want, "clamped thresholds");
    ck_assert_int_eq(f.st.cap_groups, 4);
    ck_assert_int_eq(f.st.cap_over, 1);
    ck_assert_int_eq(f.st.cap_under, 1);
    etm_routing_summary sum;
    memset(&sum, 0, sizeof sum);
    etm_routing_summary_add(&sum, &f.st, 2);
    etm_routing_metrics m;
    etm_routing_summary_metrics(&sum, &m);
    ck_assert_double_eq_tol(m.tokens_0, 1.0 / 8, 1e-12);
    ck_assert_double_eq_tol(m.tokens_1, 6.0 / 8, 1e-12);
    ck_assert_double_eq_tol(m.tokens_2plus, 1.0 / 8, 1e-12);
    ck_assert_double_eq_tol(m.capacity_overflow, 0.25, 1e-12);
    ck_assert_double_eq_tol(m.capacity_underflow, 0.25, 1e-12);
    double gates[8] = {sigm(-1), sigm(2), sigm(3), sigm(4), sigm(1), sigm(1), sigm(1), sigm(1)}, lg[16], mu, sd;
    mean_std(gates, 8, &mu, &sd);
    ck_assert_double_eq_tol(m.gate_mean, mu, 1e-6);
    ck_assert_double_eq_tol(m.gate_std, sd, 1e-6);
    for (int i = 0; i < 16; i++) lg[i] = r[i];
    mean_std(lg, 16, &mu, &sd);
    ck_assert_double_eq_tol(m.logit_mean, -0.25, 1e-12);
    ck_assert_double_eq_tol(m.logit_std, sd, 1e-9);
    /* a second forward adds up: the shares stay, the counts double */
    route(&f, r, ETM_MOE_TRAIN);
    etm_routing_summary_add(&sum, &f.st, 2);
    etm_routing_summary_metrics(&sum, &m);
    ck_assert_int_eq(sum.tokens, 16);
    ck_assert_int_eq(sum.cap_groups, 8);
    ck_assert_double_eq_tol(m.tokens_1, 6.0 / 8, 1e-12);
    /* EVAL: thresholds without the clamp; no capacity applies: the rates are undefined */
    route(&f, r, ETM_MOE_EVAL);
    memset(&sum, 0, sizeof sum);
    etm_routing_summary_add(&sum, &f.st, 2);
    etm_routing_summary_metrics(&sum, &m);
    ck_assert_int_eq(f.st.cap_groups, 0);
    ck_assert(isnan(m.capacity_overflow) && isnan(m.capacity_underflow));
    fx_free(&f);
}
END_TEST

/* etm_expert_scale_of by hand: 3 experts with down RMS 1, 2, 4 and loads 1, 0, 3 (4 pairs):
 * down_rms = (1 + 12) / 4 = 3.25; gate_down = 0.5 x 3.25; ratio against a shared RMS of 2. The
 * undefined cases: no pairs, no shared expert, an all-zero shared expert. */
START_TEST(expert_scale_by_hand) {
    const double rms[3] = {1, 2, 4};
    const int64_t load[3] = {1, 0, 3}, none[3] = {0, 0, 0};
    etm_expert_scale x;
    etm_expert_scale_of(rms, load, 3, 0.5, 2.0, &x);
    ck_assert_double_eq_tol(x.down_rms, 3.25, 1e-15);
    ck_assert_double_eq_tol(x.gate_down, 1.625, 1e-15);
    ck_assert_double_eq_tol(x.shared_down_rms, 2.0, 1e-15);
    ck_assert_double_eq_tol(x.gate_down_ratio, 0.8125, 1e-15);
    etm_expert_scale_of(rms, load, 3, 0.5, NAN, &x);
    ck_assert(isnan(x.shared_down_rms) && isnan(x.gate_down_ratio) && x.gate_down == 1.625);
    etm_expert_scale_of(rms, load, 3, 0.5, 0.0, &x);
    ck_assert(isnan(x.gate_down_ratio));
    etm_expert_scale_of(rms, none, 3, NAN, 2.0, &x);
    ck_assert(isnan(x.down_rms) && isnan(x.gate_down) && isnan(x.gate_down_ratio));
}
END_TEST

/* TC capacity 2 (cf 1, 4 tokens, E 2, k 1): every token's top-1 is expert 0, 4 > 2: overflow in 1
 * of the 2 (batch, expert) counts; tc has no lower bound: no underflow. */
START_TEST(tc_capacity_overflow_rate) {
    etm_hparams hp = router_hp(ETM_ROUTER_TC, 2, 1, 4, 0);
    hp.capacity_factor = 1.0f;
    fixture f;
    fx_init(&f, &hp, 4);
    const float r[8] = {2, 1, 3, 0, 1, -1, 0.5f, 0};
    route(&f, r, ETM_MOE_TRAIN);
    ck_assert_int_eq(f.st.cap_groups, 2);
    ck_assert_int_eq(f.st.cap_over, 1);
    ck_assert_int_eq(f.st.cap_under, 0);
    fx_free(&f);
}
END_TEST

static Suite *router_suite(void) {
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("et");
    tcase_add_test(tc, et_ties_at_the_threshold_are_selected);
    tcase_add_test(tc, et_cutoff_ema_with_bias_correction);
    tcase_add_loop_test(tc, et_warmup_switches_at_step_w, 0, 2);
    tcase_add_test(tc, et_capacity_clamp_pads_and_drops_the_right_tokens);
    tcase_add_test(tc, eval_leaves_thresholds_frozen);
    tcase_add_test(tc, ec_tracks_thresholds_for_eval);
    tcase_add_test(tc, ema_starts_after_ema_start_steps);
    tcase_add_loop_test(tc, et_capacity_zero_always_is_exactly_k_target, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("ec-tc");
    tcase_add_loop_test(tc, ec_balances_each_pool_exactly, 0, 3);
    tcase_add_test(tc, tc_capacity_drops_lowest_tokens);
    tcase_add_loop_test(tc, tc_capacity_drops_by_gate_score, 0, 2);
    tcase_add_loop_test(tc, tc_capacity_matches_a_loop_reference, 0, 4);
    tcase_add_test(tc, ties_follow_the_stated_rule);
    tcase_add_test(tc, lossfree_bias_moves_towards_the_mean_over_micro_batches);
    tcase_add_loop_test(tc, lossfree_bias_affects_selection_only, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("state");
    tcase_add_test(tc, state_round_trip_reproduces_routing);
    tcase_add_test(tc, bad_settings_are_named);
    tcase_add_test(tc, kind_table_covers_every_kind);
    tcase_add_loop_test(tc, eval_batch_routes_by_pools_and_keeps_the_state, 0, 3);
    tcase_add_test(tc, end_warmup_starts_thresholds);
    tcase_add_test(tc, routing_sizes_follow_the_definitions);
    tcase_add_loop_test(tc, cutoff_scopes_follow_their_references, 0, 2);
    tcase_add_test(tc, cutoff_of_rows_matches_sorting);
    tcase_add_test(tc, step_scope_is_order_free_and_cleared_by_set_state);
    tcase_add_test(tc, routing_metrics_of_a_hand_made_batch);
    tcase_add_test(tc, expert_scale_by_hand);
    tcase_add_test(tc, tc_capacity_overflow_rate);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(router_suite()); }
