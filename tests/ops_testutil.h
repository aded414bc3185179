/* ops_testutil.h: helpers shared by the backend operation tests (check_ops_*.c): the backend
 * under test, random tensors, comparisons with a reference, a finite-difference gradient checker
 * (central differences, losses accumulated in double) and thread-count control. The tensors are
 * host memory: on the CPU backend, backend memory is host memory. */
#ifndef ETM_OPS_TESTUTIL_H
#define ETM_OPS_TESTUTIL_H

#include "backend.h"
#include "rng.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* An assertion for hot loops. Check reports every passing ck_assert to its parent process through
 * a pipe (a system call each), so loops over many elements call into Check only on failure. */
#define OPS_REQUIRE(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                    \
    } while (0)

#define OPS_CHECK(cond) OPS_REQUIRE(cond, "%s", #cond)

/* The backend the tests run on: "cpu" unless ETM_TEST_BACKEND names another. */
static inline etm_backend *ops_backend(void) {
    const char *name = getenv("ETM_TEST_BACKEND");
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create(name && *name ? name : "cpu", &err);
    ck_assert_msg(be != NULL, "backend: %s", err.msg);
    return be;
}

static inline void ops_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

static inline int ops_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline float *ops_floats(size_t n) { return etm_calloc(n ? n : 1, sizeof(float)); }

static inline float *ops_uniform(etm_rng *rng, size_t n, float lo, float hi) {
    float *x = ops_floats(n);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * etm_rng_uniform(rng);
    return x;
}

static inline float *ops_copy(const float *x, size_t n) {
    float *y = ops_floats(n);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* sum of w[i] * y[i] in double: the scalar loss whose gradient the backward ops produce. */
static inline double ops_dot(const float *w, const float *y, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * (double)y[i];
    return s;
}

/* Asserts |got - want| <= atol + rtol |want| elementwise; names the first bad element. */
static inline void ops_assert_close(const char *what, const float *got, const double *want,
                                    size_t n, double rtol, double atol) {
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        OPS_REQUIRE(d <= atol + rtol * fabs(want[i]) && got[i] == got[i],
                    "%s[%zu]: got %.9g, want %.9g (diff %.3g)", what, i, (double)got[i], want[i],
                    d);
    }
}

static inline void ops_assert_close_f(const char *what, const float *got, const float *want,
                                      size_t n, double rtol, double atol) {
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        OPS_REQUIRE(d <= atol + rtol * fabs((double)want[i]) && got[i] == got[i],
                    "%s[%zu]: got %.9g, want %.9g (diff %.3g)", what, i, (double)got[i],
                    (double)want[i], d);
    }
}

/* A scalar loss of the inputs (the forward op, then a weighted sum in double). */
typedef double (*ops_loss_fn)(void *ctx);

/* Central differences of loss with respect to x at up to max_checks positions (all positions when
 * n is smaller; else random ones), compared with analytic. Returns the number of positions where
 * |analytic - numeric| > atol + rtol max(|analytic|, |numeric|), printing the worst one. x is
 * restored. The many forward evaluations run on one thread: on a busy machine every parallel
 * region waits for a core, and the thread-count invariance is tested separately. */
static inline int ops_grad_check(const char *what, float *x, size_t n, const float *analytic,
                                 ops_loss_fn loss, void *ctx, float eps, double rtol, double atol,
                                 int max_checks, etm_rng *rng) {
    int bad = 0, checks = n < (size_t)max_checks ? (int)n : max_checks;
    double worst = 0.0, worst_a = 0.0, worst_n = 0.0;
    size_t worst_i = 0;
    int threads = ops_max_threads();
    ops_set_threads(1);
    for (int c = 0; c < checks; c++) {
        size_t i = n <= (size_t)max_checks ? (size_t)c : (size_t)etm_rng_below(rng, n);
        float keep = x[i];
        x[i] = keep + eps;
        double lp = loss(ctx);
        x[i] = keep - eps;
        double lm = loss(ctx);
        x[i] = keep;
        /* the step actually taken, in float */
        double h = (double)(keep + eps) - (double)(keep - eps);
        double num = (lp - lm) / h, ana = analytic[i];
        double err = fabs(num - ana), lim = atol + rtol * fmax(fabs(num), fabs(ana));
        if (err > lim) bad++;
        if (err / lim > worst) {
            worst = err / lim;
            worst_i = i;
            worst_a = ana;
            worst_n = num;
        }
    }
    ops_set_threads(threads);
    if (bad)
        fprintf(stderr, "%s: %d of %d gradients off; worst at %zu: analytic %.6g numeric %.6g\n",
                what, bad, checks, worst_i, worst_a, worst_n);
    return bad;
}

#endif
