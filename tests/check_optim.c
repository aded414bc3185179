/* check_optim.c: tests of the optimizers on a real backend ("cpu", or $ETM_TEST_BACKEND): AdamW
 * in every group against a scalar double-precision reference over several steps of a schedule;
 * Newton-Schulz against a slow double-precision reference with explicit transposes, its singular
 * values near 1, and its bit-identity across thread counts; Muon's whole update (momentum warm-up,
 * Nesterov, shape scale, weight decay, 3-D expert tensors per expert and stacked) against a
 * reference, and both expert layouts' bit-identity across thread counts; the learning-rate
 * and momentum schedules at key steps; clipping; non-finite gradients; and checkpointing of the
 * optimizer state so that a restored run continues bit for bit. lr_expert_scale (the routed
 * experts' rate alone) and matrix_weight_decay (the matrices alone) are in both references. */
#include "backend.h"
#include "checkpoint.h"
#include "common.h"
#include "hparams.h"
#include "optim.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ASSERT_MSG_HAS(err, s) \
    ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' lacks '%s'", (err).msg, (s))

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

static float *dev_alloc(etm_backend *be, size_t n) { return be->alloc(be, n * sizeof(float)); }

static void upload(etm_backend *be, float *dev, const float *host, size_t n) {
    be->upload(be, dev, host, n * sizeof(float));
}

static float *download(etm_backend *be, const float *dev, size_t n) {
    float *h = etm_malloc(n * sizeof(float));
    be->download(be, h, dev, n * sizeof(float));
    return h;
}

static void fill_normal(etm_rng *rng, float *x, size_t n, float std) { etm_rng_fill_normal(rng, x, n, std); }

static size_t numel(const etm_param *p) {
    size_t n = 1;
    for (int d = 0; d < p->ndim; d++) n *= (size_t)p->shape[d];
    return n;
}

/* A parameter with backend buffers for data and gradient. */
static etm_param make_param(etm_backend *be, const char *name, etm_param_group g, int ndim, int64_t d0,
                            int64_t d1, int64_t d2) {
    etm_param p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "%s", name);
    p.group = g;
    p.ndim = ndim;
    p.shape[0] = d0;
    p.shape[1] = d1;
    p.shape[2] = d2;
    p.data = dev_alloc(be, numel(&p));
    p.grad = dev_alloc(be, numel(&p));
    return p;
}

static void free_params(etm_backend *be, etm_param *ps, int n) {
    for (int i = 0; i < n; i++) {
        be->free(be, ps[i].data);
        be->free(be, ps[i].grad);
    }
}

/* ---- schedules ------------------------------------------------------------------------------- */

START_TEST(lr_schedule_at_key_steps) {
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.max_steps = 100;
    hp.warmup_steps = 10;
    hp.decay_fraction = 0.2f;
    hp.final_lr_frac = 0.1f;
    struct {
        int step;
        double mult;
    } cases[] = {
        {0, 0.1},    {4, 0.5},    {9, 1.0},    {10, 1.0},   {50, 1.0},  {80, 1.0},
        {81, 0.95 + 0.05 * 0.1},  {90, 0.5 + 0.5 * 0.1},    {99, 0.05 + 0.95 * 0.1},
        {100, 0.1},  {150, 0.1},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++)
        ck_assert_msg(fabs(etm_lr_multiplier(&hp, cases[i].step) - cases[i].mult) < 1e-6,
                      "step %d: %g, expected %g", cases[i].step, (double)etm_lr_multiplier(&hp, cases[i].step),
                      cases[i].mult);
    /* The multiplier never rises during the decay and never leaves [final, 1]. */
    for (int s = 1; s < 100; s++) {
        float m = etm_lr_multiplier(&hp, s);
        ck_assert(m <= 1.0f && m >= 0.1f);
        if (s > 10) ck_assert(m <= etm_lr_multiplier(&hp, s - 1));
    }
    /* Neither warm-up nor decay: constant. */
    hp.warmup_steps = 0;
    hp.decay_fraction = 0.0f;
    for (int s = 0; s < 100; s++) ck_assert(etm_lr_multiplier(&hp, s) == 1.0f);
    /* Overlapping warm-up and decay: the smaller wins. */
    hp.max_steps = 10;
    hp.warmup_steps = 8;
    hp.decay_fraction = 0.5f;
    hp.final_lr_frac = 0.0f;
    ck_assert_msg(fabs(etm_lr_multiplier(&hp, 6) - 0.8) < 1e-6, "%g", (double)etm_lr_multiplier(&hp, 6));
    ck_assert_msg(fabs(etm_lr_multiplier(&hp, 3) - 0.5) < 1e-6, "%g", (double)etm_lr_multiplier(&hp, 3));
    ck_assert_msg(fabs(etm_lr_multiplier(&hp, 9) - 0.2) < 1e-6, "%g", (double)etm_lr_multiplier(&hp, 9));
    /* The demo preset: warm-up 10 of 450 steps, decay over the last 180 to 0. */
    etm_hparams_defaults(&hp);
    ck_assert(fabs(etm_lr_multiplier(&hp, 0) - 0.1) < 1e-6);
    ck_assert(etm_lr_multiplier(&hp, 270) == 1.0f);
    ck_assert(fabs(etm_lr_multiplier(&hp, 449) - 1.0 / 180) < 1e-6);
}
END_TEST

START_TEST(muon_momentum_warms_up_linearly) {
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.muon_momentum_start = 0.85f;
    hp.muon_momentum_end = 0.95f;
    hp.muon_warmup_steps = 300;
    ck_assert(fabs(etm_muon_momentum(&hp, 0) - 0.85) < 1e-7);
    ck_assert(fabs(etm_muon_momentum(&hp, 150) - 0.90) < 1e-7);
    ck_assert(fabs(etm_muon_momentum(&hp, 299) - (0.85 + 0.1 * 299.0 / 300.0)) < 1e-7);
    ck_assert(fabs(etm_muon_momentum(&hp, 300) - 0.95) < 1e-7);
    ck_assert(fabs(etm_muon_momentum(&hp, 100000) - 0.95) < 1e-7);
    hp.muon_warmup_steps = 0;
    ck_assert(fabs(etm_muon_momentum(&hp, 0) - 0.95) < 1e-7);
}
END_TEST

/* ---- AdamW ----------------------------------------------------------------------------------- */

/* p -= lr (m / bc1 / (sqrt(v / bc2) + eps) + wd p), scalar, in double. */
static void ref_adamw(double *p, double *m, double *v, const float *g, size_t n, double lr, double wd,
                      const etm_hparams *hp, int t) {
    double b1 = hp->adam_beta1, b2 = hp->adam_beta2;
    double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    for (size_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * (double)g[i] * g[i];
        p[i] -= lr * (m[i] / bc1 / (sqrt(v[i] / bc2) + hp->adam_eps) + wd * p[i]);
    }
}

/* AdamW in every group over a schedule against the reference, with lr_expert_scale and
 * matrix_weight_decay (ETM_INHERIT: weight_decay): the routed experts' tensor alone gets the
 * scaled rate; the matrices alone (routed or not) get matrix_weight_decay; embedding, head and
 * router keep weight_decay and their own rates. */
static void check_adamw_against_reference(float expert_scale, float matrix_wd) {
    etm_backend *be = test_backend();
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.matrix_optimizer = ETM_OPT_ADAMW;
    hp.lr_embed = 0.01f;
    hp.lr_head = 0.02f;
    hp.lr_router = 0.03f;
    hp.lr_matrix = 0.04f;
    hp.adam_beta1 = 0.9f;
    hp.adam_beta2 = 0.99f;
    hp.adam_eps = 1e-8f;
    hp.weight_decay = 0.1f;
    hp.matrix_weight_decay = matrix_wd;
    hp.lr_expert_scale = expert_scale;
    hp.max_steps = 6;
    hp.warmup_steps = 2;
    hp.decay_fraction = 0.5f;
    hp.final_lr_frac = 0.2f;
    hp.grad_clip = 0.0f;
    enum { NP = 5 };
    etm_param ps[NP] = {
        make_param(be, "embed", ETM_PARAM_EMBED, 2, 7, 5, 0),
        make_param(be, "head", ETM_PARAM_HEAD, 2, 5, 7, 0),
        make_param(be, "layers.1.moe.up", ETM_PARAM_MATRIX, 3, 3, 4, 5),
        make_param(be, "layers.1.moe.router", ETM_PARAM_ROUTER, 1, 11, 0, 0),
        make_param(be, "layers.1.moe.shared_up", ETM_PARAM_MATRIX, 3, 1, 4, 5),
    };
    ps[2].routed_expert = 1;
    double mwd = matrix_wd == ETM_INHERIT ? 0.1 : matrix_wd;
    const double lrs[NP] = {0.01f, 0.02f, 0.04f * (double)expert_scale, 0.03f, 0.04f};
    const double wds[NP] = {0.1f, 0.1f, mwd, 0.1f, mwd};
    etm_rng rng;
    etm_rng_seed(&rng, 11);
    double *ref_p[NP], *ref_m[NP], *ref_v[NP];
    for (int i = 0; i < NP; i++) {
        size_t n = numel(&ps[i]);
        float *h = etm_malloc(n * sizeof *h);
        fill_normal(&rng, h, n, 1.0f);
        upload(be, ps[i].data, h, n);
        ref_p[i] = etm_calloc(n, sizeof(double));
        ref_m[i] = etm_calloc(n, sizeof(double));
        ref_v[i] = etm_calloc(n, sizeof(double));
        for (size_t j = 0; j < n; j++) ref_p[i][j] = h[j];
        free(h);
    }
    etm_error err = {{0}};
    etm_optim *opt = etm_optim_create(be, &hp, ps, NP, &err);
    ck_assert_msg(opt != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_optim_state_count(opt), 2 * NP);
    for (int step = 0; step < hp.max_steps; step++) {
        float *g[NP];
        for (int i = 0; i < NP; i++) {
            size_t n = numel(&ps[i]);
            g[i] = etm_malloc(n * sizeof(float));
            fill_normal(&rng, g[i], n, 0.5f);
            g[i][0] = 0.0f; /* a zero gradient still decays and moves by momentum */
            upload(be, ps[i].grad, g[i], n);
        }
        etm_optim_stats st;
        ck_assert_msg(etm_optim_step(opt, step, &st, &err) == 0, "%s", err.msg);
        ck_assert(st.clip_scale == 1.0f);
        ck_assert(st.lr_mult == etm_lr_multiplier(&hp, step));
        for (int i = 0; i < NP; i++) {
            size_t n = numel(&ps[i]);
            ref_adamw(ref_p[i], ref_m[i], ref_v[i], g[i], n, lrs[i] * etm_lr_multiplier(&hp, step), wds[i],
                      &hp, step + 1);
            float *got = download(be, ps[i].data, n);
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(fabs(got[j] - ref_p[i][j]) <= 2e-6 * (1 + fabs(ref_p[i][j])),
                              "%s[%zu] at step %d (lr_expert_scale %g, matrix_weight_decay %g): %.9g, "
                              "reference %.9g", ps[i].name, j, step, (double)expert_scale,
                              (double)matrix_wd, (double)got[j], ref_p[i][j]);
            free(got);
            free(g[i]);
        }
    }
    for (int i = 0; i < NP; i++) {
        free(ref_p[i]);
        free(ref_m[i]);
        free(ref_v[i]);
    }
    etm_optim_free(opt);
    free_params(be, ps, NP);
    etm_backend_free(be);
}

START_TEST(adamw_matches_a_scalar_reference) { check_adamw_against_reference(1.0f, ETM_INHERIT); }
END_TEST

/* Issue 15's options on AdamW matrices: a scaled expert rate and a decay of the matrices only. */
START_TEST(adamw_expert_scale_and_matrix_decay_match_the_reference) {
    check_adamw_against_reference(0.25f, 0.3f);
    check_adamw_against_reference(3.0f, 0.0f); /* matrices undecayed while the rest decays */
}
END_TEST

/* ---- Newton-Schulz --------------------------------------------------------------------------- */

/* The reference: Keller Jordan's zeropower_via_newtonschulz5 in double, with an explicit
 * transpose for tall matrices. x is (rows, cols), replaced by the result. */
static void ref_newton_schulz(double *x, int rows, int cols, int steps) {
    const double a = 3.4445, b = -4.7750, c = 2.0315;
    int tall = rows > cols, r = tall ? cols : rows, k = tall ? rows : cols;
    double *y = etm_malloc((size_t)r * k * sizeof *y), *y2 = etm_malloc((size_t)r * k * sizeof *y);
    double *A = etm_malloc((size_t)r * r * sizeof *A), *B = etm_malloc((size_t)r * r * sizeof *B);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            if (tall) y[(size_t)j * k + i] = x[(size_t)i * cols + j];
            else y[(size_t)i * k + j] = x[(size_t)i * cols + j];
        }
    double norm = 0;
    for (size_t i = 0; i < (size_t)r * k; i++) norm += y[i] * y[i];
    norm = sqrt(norm) + 1e-7;
    for (size_t i = 0; i < (size_t)r * k; i++) y[i] /= norm;
    for (int it = 0; it < steps; it++) {
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double s = 0;
                for (int l = 0; l < k; l++) s += y[(size_t)i * k + l] * y[(size_t)j * k + l];
                A[i * r + j] = s;
            }
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double s = 0;
                for (int l = 0; l < r; l++) s += A[i * r + l] * A[l * r + j];
                B[i * r + j] = b * A[i * r + j] + c * s;
            }
        for (int i = 0; i < r; i++)
            for (int j = 0; j < k; j++) {
                double s = 0;
                for (int l = 0; l < r; l++) s += B[i * r + l] * y[(size_t)l * k + j];
                y2[(size_t)i * k + j] = a * y[(size_t)i * k + j] + s;
            }
        memcpy(y, y2, (size_t)r * k * sizeof *y);
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) x[(size_t)i * cols + j] = tall ? y[(size_t)j * k + i] : y[(size_t)i * k + j];
    free(y);
    free(y2);
    free(A);
    free(B);
}

/* Eigenvalues of a symmetric (n, n) matrix (destroyed) by cyclic Jacobi rotations, into ev. */
static void jacobi_eigenvalues(double *a, int n, double *ev) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) off += a[p * n + q] * a[p * n + q];
        if (off < 1e-22) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < n; k++) { /* columns p, q */
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for (int k = 0; k < n; k++) { /* rows p, q */
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
            }
    }
    for (int i = 0; i < n; i++) ev[i] = a[i * n + i];
}

/* Runs etm_newton_schulz (symmetric products as mode says) on count random (rows, cols) matrices;
 * compares each with the reference and checks its singular values. Returns the result (host) for
 * further checks. */
static float *check_newton_schulz_gram(etm_backend *be, int count, int rows, int cols, uint64_t seed,
                                       etm_ns_gram mode) {
    size_t rc = (size_t)rows * cols, n = (size_t)count * rc;
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    float *h = etm_malloc(n * sizeof *h);
    fill_normal(&rng, h, n, 0.02f);
    float *x = dev_alloc(be, n), *work = dev_alloc(be, etm_newton_schulz_work(count, rows, cols));
    upload(be, x, h, n);
    etm_newton_schulz(be, x, count, rows, cols, 5, mode, work);
    float *got = download(be, x, n);
    double *ref = etm_malloc(rc * sizeof *ref);
    int s = ETM_MIN(rows, cols);
    double *gram = etm_malloc((size_t)s * s * sizeof *gram), *ev = etm_malloc((size_t)s * sizeof *ev);
    double worst = 0, smin = 1e9, smax = 0;
    for (int e = 0; e < count; e++) {
        for (size_t i = 0; i < rc; i++) ref[i] = h[(size_t)e * rc + i];
        ref_newton_schulz(ref, rows, cols, 5);
        const float *ge = got + (size_t)e * rc;
        for (size_t i = 0; i < rc; i++) worst = fmax(worst, fabs(ge[i] - ref[i]));
        /* Singular values of the result: square roots of the eigenvalues of its Gram matrix. */
        for (int i = 0; i < s; i++)
            for (int j = 0; j < s; j++) {
                double acc = 0;
                if (rows <= cols)
                    for (int l = 0; l < cols; l++) acc += (double)ge[i * cols + l] * ge[j * cols + l];
                else
                    for (int l = 0; l < rows; l++) acc += (double)ge[l * cols + i] * ge[l * cols + j];
                gram[i * s + j] = acc;
            }
        jacobi_eigenvalues(gram, s, ev);
        for (int i = 0; i < s; i++) {
            double sv = sqrt(fmax(ev[i], 0));
            smin = fmin(smin, sv);
            smax = fmax(smax, sv);
        }
    }
    printf("newton-schulz %s %d x (%d, %d): max |float - double reference| %.2e, singular values in [%.3f, %.3f]\n",
           mode == ETM_NS_GRAM_SYMMETRIC ? "symmetric" : "full", count, rows, cols, worst, smin, smax);
    ck_assert_msg(worst < 1e-4, "(%d, %d): differs from the reference by %g", rows, cols, worst);
    /* The quintic iteration does not converge to exactly 1; it lands in a band around it (about
     * [0.68, 1.13] for these seeded matrices). */
    ck_assert_msg(smin > 0.6 && smax < 1.2, "(%d, %d): singular values in [%g, %g]", rows, cols, smin, smax);
    free(h);
    free(ref);
    free(gram);
    free(ev);
    be->free(be, x);
    be->free(be, work);
    return got;
}

static float *check_newton_schulz(etm_backend *be, int count, int rows, int cols, uint64_t seed) {
    return check_newton_schulz_gram(be, count, rows, cols, seed, ETM_NS_GRAM_FULL);
}

START_TEST(newton_schulz_matches_the_reference) {
    etm_backend *be = test_backend();
    free(check_newton_schulz(be, 1, 16, 48, 1)); /* wide */
    free(check_newton_schulz(be, 1, 48, 16, 2)); /* tall: iterated as its transpose */
    free(check_newton_schulz(be, 1, 32, 32, 3)); /* square */
    free(check_newton_schulz(be, 3, 24, 40, 4)); /* a stack of expert matrices */
    free(check_newton_schulz(be, 4, 40, 24, 5));
    free(check_newton_schulz(be, 1, 96, 192, 6)); /* the demo expert shape's aspect ratio */
    etm_backend_free(be);
}
END_TEST

/* muon_ns_gram = symmetric: the same double-precision reference (which computes the full
 * products), within the same bound as the full path, on shapes whose Gram matrix is one block
 * and several (side 400: 2 x 2 blocks in the CPU backend's syrk_batched); and close to the full path's result,
 * though not its bits. */
START_TEST(newton_schulz_symmetric_matches_the_reference_and_the_full_path) {
    etm_backend *be = test_backend();
    static const int shapes[][3] = {{1, 16, 48}, {1, 48, 16}, {1, 32, 32}, {3, 24, 40}, {1, 96, 192},
                                    {1, 800, 400}, {1, 160, 400}};
    for (size_t k = 0; k < ETM_ARRAY_LEN(shapes); k++) {
        int count = shapes[k][0], rows = shapes[k][1], cols = shapes[k][2];
        size_t n = (size_t)count * rows * cols;
        float *sym = check_newton_schulz_gram(be, count, rows, cols, 20 + k, ETM_NS_GRAM_SYMMETRIC);
        float *full = check_newton_schulz_gram(be, count, rows, cols, 20 + k, ETM_NS_GRAM_FULL);
        double worst = 0, scale = 0;
        for (size_t i = 0; i < n; i++) {
            worst = fmax(worst, fabs((double)sym[i] - full[i]));
            scale = fmax(scale, fabs((double)full[i]));
        }
        printf("newton-schulz %d x (%d, %d): max |symmetric - full| %.2e (largest element %.3f)\n", count,
               rows, cols, worst, scale);
        /* fp32 products in another order, through 5 iterations: measured 3.2e-7 to 7.2e-7 on
         * these shapes (elements up to 0.54); the bound leaves a margin for other BLAS builds
         * and still fails for a Gram matrix with a wrong triangle (differences of order 0.1). */
        ck_assert_msg(worst < 2e-5, "(%d, %d, %d): symmetric and full differ by %g", count, rows, cols, worst);
        free(sym);
        free(full);
    }
    etm_backend_free(be);
}
END_TEST

START_TEST(newton_schulz_is_thread_count_invariant) {
    etm_backend *be = test_backend();
    int shapes[][3] = {{1, 96, 300}, {1, 300, 96}, {8, 64, 128}, {1, 400, 450}};
    for (int sym = 0; sym < 2; sym++)
    for (size_t k = 0; k < ETM_ARRAY_LEN(shapes); k++) {
        if (!sym && k == 3) continue; /* the full path's own shapes as before */
        int count = shapes[k][0], rows = shapes[k][1], cols = shapes[k][2];
        size_t n = (size_t)count * rows * cols;
        etm_rng rng;
        etm_rng_seed(&rng, 77 + k);
        float *h = etm_malloc(n * sizeof *h);
        fill_normal(&rng, h, n, 1.0f);
        float *x = dev_alloc(be, n), *work = dev_alloc(be, etm_newton_schulz_work(count, rows, cols));
        float *res[2];
        for (int t = 0; t < 2; t++) {
            set_threads(t + 1);
            upload(be, x, h, n);
            etm_newton_schulz(be, x, count, rows, cols, 5, sym ? ETM_NS_GRAM_SYMMETRIC : ETM_NS_GRAM_FULL, work);
            res[t] = download(be, x, n);
        }
        set_threads(2);
        ck_assert_msg(memcmp(res[0], res[1], n * sizeof(float)) == 0,
                      "(%d, %d, %d), muon_ns_gram %d: differs between 1 and 2 threads", count, rows, cols, sym);
        free(res[0]);
        free(res[1]);
        free(h);
        be->free(be, x);
        be->free(be, work);
    }
    etm_backend_free(be);
}
END_TEST

/* ---- Muon ------------------------------------------------------------------------------------ */

/* Four Muon steps on a wide, a tall, a 3-D routed-expert and a 3-D shared-expert parameter under
 * layout, against a double reference; stacked orthogonalises the (3, 8, 5) experts as one (24, 5)
 * matrix. expert_scale (lr_expert_scale) multiplies the routed experts' rate alone, their decay
 * included; matrix_wd (matrix_weight_decay; ETM_INHERIT: weight_decay 0.2) decays every one. */
static void check_muon_against_reference(etm_muon_layout layout, float expert_scale, float matrix_wd) {
    etm_backend *be = test_backend();
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.matrix_optimizer = ETM_OPT_MUON;
    hp.muon_expert_layout = layout;
    hp.lr_matrix = 0.05f;
    hp.weight_decay = 0.2f;
    hp.matrix_weight_decay = matrix_wd;
    hp.lr_expert_scale = expert_scale;
    hp.muon_momentum_start = 0.8f;
    hp.muon_momentum_end = 0.95f;
    hp.muon_warmup_steps = 3;
    hp.ns_steps = 5;
    hp.max_steps = 4;
    hp.warmup_steps = 0;
    hp.decay_fraction = 0.5f;
    hp.final_lr_frac = 0.0f;
    hp.grad_clip = 0.0f;
    enum { NP = 4 };
    etm_param ps[NP] = {
        make_param(be, "wide", ETM_PARAM_MATRIX, 2, 6, 10, 0),
        make_param(be, "tall", ETM_PARAM_MATRIX, 2, 12, 4, 0),  /* scaled by sqrt(12 / 4) */
        make_param(be, "experts", ETM_PARAM_MATRIX, 3, 3, 8, 5), /* 3 matrices of (8, 5) */
        make_param(be, "shared", ETM_PARAM_MATRIX, 3, 2, 8, 5),  /* not routed: lr_matrix */
    };
    ps[2].routed_expert = 1;
    const double wd = matrix_wd == ETM_INHERIT ? 0.2 : matrix_wd;
    etm_rng rng;
    etm_rng_seed(&rng, 5);
    double *rp[NP], *rm[NP];
    for (int i = 0; i < NP; i++) {
        size_t n = numel(&ps[i]);
        float *h = etm_malloc(n * sizeof *h);
        fill_normal(&rng, h, n, 0.3f);
        upload(be, ps[i].data, h, n);
        rp[i] = etm_calloc(n, sizeof(double));
        rm[i] = etm_calloc(n, sizeof(double));
        for (size_t j = 0; j < n; j++) rp[i][j] = h[j];
        free(h);
    }
    etm_error err = {{0}};
    etm_optim *opt = etm_optim_create(be, &hp, ps, NP, &err);
    ck_assert_msg(opt != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_optim_state_count(opt), NP);
    ck_assert_str_eq(etm_optim_state_at(opt, 2)->name, "opt.experts.momentum");
    for (int step = 0; step < hp.max_steps; step++) {
        double mu = 0.8 + (0.95 - 0.8) * ETM_MIN(step / 3.0, 1.0);
        for (int i = 0; i < NP; i++) {
            double lr = 0.05 * (ps[i].routed_expert ? (double)expert_scale : 1.0) * etm_lr_multiplier(&hp, step);
            size_t n = numel(&ps[i]);
            float *g = etm_malloc(n * sizeof *g);
            fill_normal(&rng, g, n, 1.0f);
            upload(be, ps[i].grad, g, n);
            /* The reference update, in double. */
            int count = ps[i].ndim == 3 ? (int)ps[i].shape[0] : 1;
            int rows = (int)ps[i].shape[ps[i].ndim - 2], cols = (int)ps[i].shape[ps[i].ndim - 1];
            if (layout == ETM_MUON_STACKED) {
                rows *= count;
                count = 1;
            }
            double *u = etm_malloc(n * sizeof *u);
            for (size_t j = 0; j < n; j++) {
                rm[i][j] = mu * rm[i][j] + (1 - mu) * g[j];
                u[j] = (1 - mu) * g[j] + mu * rm[i][j];
            }
            for (int e = 0; e < count; e++) ref_newton_schulz(u + (size_t)e * rows * cols, rows, cols, 5);
            double scale = sqrt(fmax(1.0, (double)rows / cols));
            for (size_t j = 0; j < n; j++) rp[i][j] = (1 - lr * wd) * rp[i][j] - lr * scale * u[j];
            free(u);
            free(g);
        }
        etm_optim_stats st;
        ck_assert_msg(etm_optim_step(opt, step, &st, &err) == 0, "%s", err.msg);
        ck_assert_msg(fabs(st.muon_momentum - mu) < 1e-6, "step %d: momentum %g, expected %g", step,
                      (double)st.muon_momentum, mu);
        for (int i = 0; i < NP; i++) {
            size_t n = numel(&ps[i]);
            float *got = download(be, ps[i].data, n);
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(fabs(got[j] - rp[i][j]) < 2e-5,
                              "%s[%zu] at step %d (lr_expert_scale %g, matrix_weight_decay %g): %.9g, "
                              "reference %.9g", ps[i].name, j, step, (double)expert_scale, (double)matrix_wd,
                              (double)got[j], rp[i][j]);
            free(got);
        }
    }
    for (int i = 0; i < NP; i++) {
        free(rp[i]);
        free(rm[i]);
    }
    etm_optim_free(opt);
    free_params(be, ps, NP);
    etm_backend_free(be);
}

START_TEST(muon_matches_a_reference) { check_muon_against_reference(ETM_MUON_PER_EXPERT, 1.0f, ETM_INHERIT); }
END_TEST

START_TEST(muon_stacked_experts_match_a_reference) { check_muon_against_reference(ETM_MUON_STACKED, 1.0f, ETM_INHERIT); }
END_TEST

/* Issue 15's options under both layouts: the routed experts' rate scaled (down and up), the
 * matrices decayed by matrix_weight_decay, or not at all while weight_decay stays 0.2. */
START_TEST(muon_expert_scale_and_matrix_decay_match_a_reference) {
    check_muon_against_reference(ETM_MUON_PER_EXPERT, 0.25f, 0.05f);
    check_muon_against_reference(ETM_MUON_STACKED, 0.25f, 0.05f);
    check_muon_against_reference(ETM_MUON_PER_EXPERT, 4.0f, 0.0f);
}
END_TEST

/* Three Muon steps on an expert tensor (8, 48, 32) and a matrix under layout with threads threads;
 * returns the expert tensor's values (host). */
static float *muon_steps(etm_backend *be, etm_muon_layout layout, int threads) {
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.muon_expert_layout = layout;
    hp.grad_clip = 0.0f;
    set_threads(threads);
    etm_param ps[2] = {
        make_param(be, "experts", ETM_PARAM_MATRIX, 3, 8, 48, 32),
        make_param(be, "w", ETM_PARAM_MATRIX, 2, 40, 64, 0),
    };
    etm_rng rng;
    etm_rng_seed(&rng, 31);
    for (int i = 0; i < 2; i++) {
        size_t n = numel(&ps[i]);
        float *h = etm_malloc(n * sizeof *h);
        fill_normal(&rng, h, n, 0.1f);
        upload(be, ps[i].data, h, n);
        free(h);
    }
    etm_error err = {{0}};
    etm_optim *opt = etm_optim_create(be, &hp, ps, 2, &err);
    ck_assert_msg(opt != NULL, "%s", err.msg);
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 2; i++) {
            size_t n = numel(&ps[i]);
            float *g = etm_malloc(n * sizeof *g);
            fill_normal(&rng, g, n, 1.0f);
            upload(be, ps[i].grad, g, n);
            free(g);
        }
        ck_assert_msg(etm_optim_step(opt, step, NULL, &err) == 0, "%s", err.msg);
    }
    float *out = download(be, ps[0].data, numel(&ps[0]));
    etm_optim_free(opt);
    free_params(be, ps, 2);
    set_threads(2);
    return out;
}

START_TEST(muon_layouts_are_thread_count_invariant) {
    etm_backend *be = test_backend();
    const size_t n = 8 * 48 * 32;
    float *per1 = muon_steps(be, ETM_MUON_PER_EXPERT, 1), *per2 = muon_steps(be, ETM_MUON_PER_EXPERT, 2);
    float *st1 = muon_steps(be, ETM_MUON_STACKED, 1), *st2 = muon_steps(be, ETM_MUON_STACKED, 2);
    ck_assert_msg(memcmp(per1, per2, n * sizeof(float)) == 0, "per_expert: 1 and 2 threads differ");
    ck_assert_msg(memcmp(st1, st2, n * sizeof(float)) == 0, "stacked: 1 and 2 threads differ");
    /* The layouts are different updates: one orthogonal (384, 32) matrix is not 8 orthogonal
     * (48, 32) ones, and the shape scales are sqrt(12) and sqrt(1.5). */
    ck_assert_msg(memcmp(per1, st1, n * sizeof(float)) != 0, "stacked and per_expert agree");
    free(per1);
    free(per2);
    free(st1);
    free(st2);
    etm_backend_free(be);
}
END_TEST

/* ---- clipping and bad gradients -------------------------------------------------------------- */

START_TEST(clipping_scales_gradients_to_the_limit) {
    etm_backend *be = test_backend();
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.grad_clip = 0.5f;
    etm_param ps[2] = {
        make_param(be, "embed", ETM_PARAM_EMBED, 2, 4, 3, 0),
        make_param(be, "w", ETM_PARAM_MATRIX, 2, 3, 5, 0),
    };
    etm_param qs[2] = {
        make_param(be, "embed", ETM_PARAM_EMBED, 2, 4, 3, 0),
        make_param(be, "w", ETM_PARAM_MATRIX, 2, 3, 5, 0),
    };
    etm_rng rng;
    etm_rng_seed(&rng, 9);
    float *g[2];
    double sum = 0;
    for (int i = 0; i < 2; i++) {
        size_t n = numel(&ps[i]);
        float *h = etm_malloc(n * sizeof *h);
        fill_normal(&rng, h, n, 1.0f);
        upload(be, ps[i].data, h, n);
        upload(be, qs[i].data, h, n);
        free(h);
        g[i] = etm_malloc(n * sizeof *g[i]);
        fill_normal(&rng, g[i], n, 1.0f);
        for (size_t j = 0; j < n; j++) sum += (double)g[i][j] * g[i][j];
        upload(be, ps[i].grad, g[i], n);
    }
    double norm = sqrt(sum);
    ck_assert(norm > 1.0);
    etm_error err = {{0}};
    etm_optim *a = etm_optim_create(be, &hp, ps, 2, &err);
    ck_assert_msg(a != NULL, "%s", err.msg);
    etm_optim_stats st;
    ck_assert_msg(etm_optim_step(a, 0, &st, &err) == 0, "%s", err.msg);
    ck_assert_msg(fabs(st.grad_norm - norm) < 1e-9 * norm, "norm %.12g, expected %.12g", st.grad_norm, norm);
    ck_assert(fabs(st.clip_scale - 0.5 / norm) < 1e-7);
    /* The gradients were scaled in place to norm 0.5. */
    double after = 0;
    for (int i = 0; i < 2; i++) {
        size_t n = numel(&ps[i]);
        float *h = download(be, ps[i].grad, n);
        for (size_t j = 0; j < n; j++) {
            ck_assert(h[j] == g[i][j] * st.clip_scale);
            after += (double)h[j] * h[j];
        }
        free(h);
    }
    ck_assert_msg(fabs(sqrt(after) - 0.5) < 1e-6, "norm after clipping %g", sqrt(after));
    /* The update is the one an unclipped optimizer makes from the scaled gradients. */
    hp.grad_clip = 0.0f;
    etm_optim *b = etm_optim_create(be, &hp, qs, 2, &err);
    for (int i = 0; i < 2; i++) {
        size_t n = numel(&qs[i]);
        for (size_t j = 0; j < n; j++) g[i][j] *= st.clip_scale;
        upload(be, qs[i].grad, g[i], n);
    }
    etm_optim_stats st2;
    ck_assert_int_eq(etm_optim_step(b, 0, &st2, &err), 0);
    ck_assert(st2.clip_scale == 1.0f);
    for (int i = 0; i < 2; i++) {
        size_t n = numel(&ps[i]);
        float *x = download(be, ps[i].data, n), *y = download(be, qs[i].data, n);
        ck_assert(memcmp(x, y, n * sizeof *x) == 0);
        free(x);
        free(y);
    }
    /* A norm under the limit leaves the gradients alone. */
    etm_optim_free(a);
    hp.grad_clip = 1000.0f;
    a = etm_optim_create(be, &hp, ps, 2, &err);
    for (int i = 0; i < 2; i++) upload(be, ps[i].grad, g[i], numel(&ps[i]));
    ck_assert_int_eq(etm_optim_step(a, 1, &st, &err), 0);
    ck_assert(st.clip_scale == 1.0f);
    float *h = download(be, ps[0].grad, numel(&ps[0]));
    ck_assert(memcmp(h, g[0], numel(&ps[0]) * sizeof *h) == 0);
    free(h);
    free(g[0]);
    free(g[1]);
    etm_optim_free(a);
    etm_optim_free(b);
    free_params(be, ps, 2);
    free_params(be, qs, 2);
    etm_backend_free(be);
}
END_TEST

START_TEST(non_finite_gradients_stop_the_step) {
    etm_backend *be = test_backend();
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    etm_param ps[2] = {
        make_param(be, "embed", ETM_PARAM_EMBED, 2, 4, 3, 0),
        make_param(be, "layers.2.attn.q", ETM_PARAM_MATRIX, 2, 3, 5, 0),
    };
    etm_error err = {{0}};
    etm_optim *opt = etm_optim_create(be, &hp, ps, 2, &err);
    float g[15], p[15];
    for (int i = 0; i < 15; i++) g[i] = p[i] = 0.25f * (float)(i - 7);
    for (int i = 0; i < 2; i++) {
        upload(be, ps[i].data, p, numel(&ps[i]));
        upload(be, ps[i].grad, g, numel(&ps[i]));
    }
    float bad[2] = {NAN, INFINITY};
    for (int k = 0; k < 2; k++) {
        g[4] = bad[k];
        upload(be, ps[1].grad, g, 15);
        ck_assert_int_ne(etm_optim_step(opt, 0, NULL, &err), 0);
        ASSERT_MSG_HAS(err, "the gradient of 'layers.2.attn.q' is not finite");
        for (int i = 0; i < 2; i++) {
            float *h = download(be, ps[i].data, numel(&ps[i]));
            ck_assert(memcmp(h, p, numel(&ps[i]) * sizeof *h) == 0);
            free(h);
        }
        for (int s = 0; s < etm_optim_state_count(opt); s++) {
            const etm_optim_state *st = etm_optim_state_at(opt, s);
            size_t n = 1;
            for (int d = 0; d < st->ndim; d++) n *= (size_t)st->shape[d];
            float *h = download(be, st->data, n);
            for (size_t j = 0; j < n; j++) ck_assert(h[j] == 0.0f);
            free(h);
        }
    }
    etm_optim_free(opt);
    free_params(be, ps, 2);
    etm_backend_free(be);
}
END_TEST

START_TEST(create_rejects_bad_parameters) {
    etm_backend *be = test_backend();
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    etm_error err = {{0}};
    etm_param ps[2] = {
        make_param(be, "a", ETM_PARAM_MATRIX, 1, 8, 0, 0),
        make_param(be, "a", ETM_PARAM_EMBED, 2, 2, 4, 0),
    };
    ck_assert_ptr_null(etm_optim_create(be, &hp, ps, 1, &err));
    ASSERT_MSG_HAS(err, "parameter 'a' (group matrix) is 1-D; Muon needs");
    hp.matrix_optimizer = ETM_OPT_ADAMW; /* AdamW takes any shape */
    etm_optim *opt = etm_optim_create(be, &hp, ps, 1, &err);
    ck_assert_msg(opt != NULL, "%s", err.msg);
    ck_assert_str_eq(etm_optim_state_at(opt, 0)->name, "opt.a.m");
    ck_assert_str_eq(etm_optim_state_at(opt, 1)->name, "opt.a.v");
    etm_optim_free(opt);
    ck_assert_ptr_null(etm_optim_create(be, &hp, ps, 2, &err));
    ASSERT_MSG_HAS(err, "parameter 'a' listed twice");
    snprintf(ps[1].name, sizeof ps[1].name, "b");
    ps[1].shape[1] = 0;
    ck_assert_ptr_null(etm_optim_create(be, &hp, ps, 2, &err));
    ASSERT_MSG_HAS(err, "parameter 'b': dimension 1 is 0");
    ps[1].shape[1] = 4;
    ps[1].group = (etm_param_group)9;
    ck_assert_ptr_null(etm_optim_create(be, &hp, ps, 2, &err));
    ASSERT_MSG_HAS(err, "parameter 'b': invalid group 9");
    ps[1].group = ETM_PARAM_HEAD;
    ck_assert_str_eq(etm_param_group_name(ETM_PARAM_ROUTER), "router");
    free_params(be, ps, 2);
    etm_backend_free(be);
}
END_TEST

/* ---- checkpointing the state ----------------------------------------------------------------- */

#define N_CKPT 4
static void ckpt_params(etm_backend *be, etm_param *ps) {
    ps[0] = make_param(be, "embed", ETM_PARAM_EMBED, 2, 6, 4, 0);
    ps[1] = make_param(be, "layers.0.attn.q", ETM_PARAM_MATRIX, 2, 4, 6, 0);
    ps[2] = make_param(be, "layers.1.moe.up", ETM_PARAM_MATRIX, 3, 2, 5, 3);
    ps[3] = make_param(be, "layers.1.moe.router", ETM_PARAM_ROUTER, 2, 2, 4, 0);
}

static void random_grads(etm_backend *be, etm_param *ps, etm_rng *rng) {
    for (int i = 0; i < N_CKPT; i++) {
        size_t n = numel(&ps[i]);
        float *g = etm_malloc(n * sizeof *g);
        fill_normal(rng, g, n, 1.0f);
        upload(be, ps[i].grad, g, n);
        free(g);
    }
}

START_TEST(state_round_trips_through_a_checkpoint) {
    etm_backend *be = test_backend();
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.max_steps = 10;
    hp.weight_decay = 0.01f;
    etm_param a[N_CKPT], b[N_CKPT], c[N_CKPT];
    ckpt_params(be, a);
    ckpt_params(be, b);
    ckpt_params(be, c);
    etm_rng rng;
    etm_rng_seed(&rng, 3);
    for (int i = 0; i < N_CKPT; i++) {
        size_t n = numel(&a[i]);
        float *h = etm_malloc(n * sizeof *h);
        fill_normal(&rng, h, n, 0.5f);
        upload(be, a[i].data, h, n);
        free(h);
    }
    etm_error err = {{0}};
    etm_optim *oa = etm_optim_create(be, &hp, a, N_CKPT, &err);
    ck_assert_msg(oa != NULL, "%s", err.msg);
    const char *names[] = {"opt.embed.m", "opt.embed.v", "opt.layers.0.attn.q.momentum",
                           "opt.layers.1.moe.up.momentum", "opt.layers.1.moe.router.m",
                           "opt.layers.1.moe.router.v"};
    ck_assert_int_eq(etm_optim_state_count(oa), 6);
    for (int i = 0; i < 6; i++) ck_assert_str_eq(etm_optim_state_at(oa, i)->name, names[i]);
    for (int step = 0; step < 3; step++) {
        random_grads(be, a, &rng);
        ck_assert_msg(etm_optim_step(oa, step, NULL, &err) == 0, "%s", err.msg);
    }
    /* Save parameters and state, as the trainer does. */
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ckpt.safetensors", dir);
    etm_st_writer *w = etm_st_writer_create();
    for (int i = 0; i < N_CKPT; i++)
        ck_assert_int_eq(etm_st_add_owned(w, a[i].name, ETM_ST_F32, a[i].ndim, a[i].shape,
                                          download(be, a[i].data, numel(&a[i])), &err), 0);
    ck_assert_msg(etm_optim_save(oa, w, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_st_write(w, path, &err) == 0, "%s", err.msg);
    etm_st_writer_free(w);

    /* Restore into fresh parameters and a fresh optimizer; c gets the parameters only. */
    etm_st_file *f = etm_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    for (int i = 0; i < N_CKPT; i++) {
        size_t n = numel(&b[i]);
        float *h = etm_malloc(n * sizeof *h);
        ck_assert_msg(etm_st_read(f, b[i].name, ETM_ST_F32, b[i].ndim, b[i].shape, h, &err) == 0, "%s", err.msg);
        upload(be, b[i].data, h, n);
        upload(be, c[i].data, h, n);
        free(h);
    }
    etm_optim *ob = etm_optim_create(be, &hp, b, N_CKPT, &err);
    etm_optim *oc = etm_optim_create(be, &hp, c, N_CKPT, &err);
    ck_assert_msg(etm_optim_load(ob, f, &err) == 0, "%s", err.msg);
    etm_st_close(f);

    /* The next steps repeat bit for bit with the restored state, and not without it. */
    for (int step = 3; step < 5; step++) {
        etm_rng r1 = rng, r2 = rng;
        random_grads(be, a, &rng);
        random_grads(be, b, &r1);
        random_grads(be, c, &r2);
        ck_assert_int_eq(etm_optim_step(oa, step, NULL, &err), 0);
        ck_assert_int_eq(etm_optim_step(ob, step, NULL, &err), 0);
        ck_assert_int_eq(etm_optim_step(oc, step, NULL, &err), 0);
    }
    int differs_without_state = 0;
    for (int i = 0; i < N_CKPT; i++) {
        size_t n = numel(&a[i]);
        float *x = download(be, a[i].data, n), *y = download(be, b[i].data, n), *z = download(be, c[i].data, n);
        ck_assert_msg(memcmp(x, y, n * sizeof *x) == 0, "%s differs after the restore", a[i].name);
        differs_without_state |= memcmp(x, z, n * sizeof *x) != 0;
        free(x);
        free(y);
        free(z);
    }
    ck_assert(differs_without_state);
    etm_optim_free(oa);
    etm_optim_free(ob);

    /* A checkpoint without the state, or with the wrong shape, is refused and changes nothing. */
    w = etm_st_writer_create();
    float zeros[24] = {0};
    const int64_t s64[2] = {6, 4}, wrong[2] = {4, 6};
    ck_assert_int_eq(etm_st_add(w, "opt.embed.m", ETM_ST_F32, 2, s64, zeros, &err), 0);
    ck_assert_int_eq(etm_st_add(w, "opt.embed.v", ETM_ST_F32, 2, wrong, zeros, &err), 0);
    ck_assert_int_eq(etm_st_write(w, path, &err), 0);
    etm_st_writer_free(w);
    f = etm_st_open(path, &err);
    ck_assert_ptr_nonnull(f);
    float *before = download(be, etm_optim_state_at(oc, 0)->data, 24);
    ck_assert_int_ne(etm_optim_load(oc, f, &err), 0);
    ASSERT_MSG_HAS(err, "optimizer state 'opt.embed.v' is F32 (4, 6), expected F32 (6, 4)");
    float *after = download(be, etm_optim_state_at(oc, 0)->data, 24);
    ck_assert(memcmp(before, after, sizeof zeros) == 0);
    etm_st_close(f);
    w = etm_st_writer_create();
    ck_assert_int_eq(etm_st_add(w, "opt.embed.m", ETM_ST_F32, 2, s64, zeros, &err), 0);
    ck_assert_int_eq(etm_st_write(w, path, &err), 0);
    etm_st_writer_free(w);
    f = etm_st_open(path, &err);
    ck_assert_int_ne(etm_optim_load(oc, f, &err), 0);
    ASSERT_MSG_HAS(err, "no optimizer state 'opt.embed.v'");
    etm_st_close(f);
    free(before);
    free(after);
    etm_optim_free(oc);
    free_params(be, a, N_CKPT);
    free_params(be, b, N_CKPT);
    free_params(be, c, N_CKPT);
    etm_backend_free(be);
}
END_TEST

static Suite *optim_suite(void) {
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, lr_schedule_at_key_steps);
    tcase_add_test(tc, muon_momentum_warms_up_linearly);
    tcase_add_test(tc, adamw_matches_a_scalar_reference);
    tcase_add_test(tc, newton_schulz_matches_the_reference);
    tcase_add_test(tc, newton_schulz_symmetric_matches_the_reference_and_the_full_path);
    tcase_add_test(tc, newton_schulz_is_thread_count_invariant);
    tcase_add_test(tc, muon_matches_a_reference);
    tcase_add_test(tc, muon_stacked_experts_match_a_reference);
    tcase_add_test(tc, muon_expert_scale_and_matrix_decay_match_a_reference);
    tcase_add_test(tc, adamw_expert_scale_and_matrix_decay_match_the_reference);
    tcase_add_test(tc, muon_layouts_are_thread_count_invariant);
    tcase_add_test(tc, clipping_scales_gradients_to_the_limit);
    tcase_add_test(tc, non_finite_gradients_stop_the_step);
    tcase_add_test(tc, create_rejects_bad_parameters);
    tcase_add_test(tc, state_round_trips_through_a_checkpoint);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(optim_suite()); }
