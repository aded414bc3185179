/* check_compare_ops.c: tests of the op-by-op backend comparison (src/validate/compare_ops.c), runnable
 * on any machine: the CPU backend compared with itself must pass every comparison, and copies of
 * it with one op broken in a known way (wrong arithmetic, wrong tie-breaking, a NaN, results
 * that change from run to run) must each be caught; and every operation of backends/backend.h's
 * list must be profiled and exercised by the comparison. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "compare_ops.h"
#include "profiler.h"
#include "testutil.h"

/* A copy of the cpu backend's table with room for a call counter. The cpu backend's tensors are
 * host memory, so the broken ops below can work on the pointers directly. */
typedef struct {
    etm_backend be; /* first member: an etm_backend * to it is a broken_backend * */
    etm_backend *cpu;
    int calls;
} broken_backend;

static broken_backend make_broken(etm_backend *cpu) {
    broken_backend b;
    b.be = *cpu;
    b.be.name = "cpu-broken";
    b.cpu = cpu;
    b.calls = 0;
    return b;
}

static void gemm_ignores_beta(etm_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                              const float *A, int lda, const float *B, int ldb, float beta,
                              float *C, int ldc) {
    etm_backend *cpu = ((broken_backend *)be)->cpu;
    (void)beta;
    cpu->gemm(cpu, ta, tb, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
}

/* Top-k with ties broken towards the higher index (the contract says lower). */
static void topk_ties_high(etm_backend *be, uint8_t *z, const float *score, int N, int E, int k) {
    (void)be;
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++) {
            const float *row = score + (size_t)n * E;
            int rank = 0;
            for (int j = 0; j < E; j++) rank += row[j] > row[e] || (row[j] == row[e] && j > e);
            z[(size_t)n * E + e] = rank < k;
        }
}

static void softmax_with_nan(etm_backend *be, float *out, const float *x, int N, int E) {
    etm_backend *cpu = ((broken_backend *)be)->cpu;
    cpu->softmax_forward(cpu, out, x, N, E);
    out[(size_t)N * E / 2] = NAN;
}

/* axpy whose result depends on how often it was called: a stand-in for a reduction whose order
 * changes between runs. */
static void axpy_varies(etm_backend *be, float *y, float a, const float *x, size_t n) {
    broken_backend *b = (broken_backend *)be;
    b->cpu->axpy(b->cpu, y, a, x, n);
    if (b->calls++ % 2) y[n / 3] = nextafterf(y[n / 3], INFINITY);
}

static etm_backend *cpu;

static void setup(void) {
    etm_error err = {{0}};
    cpu = etm_backend_create("cpu", &err);
    ck_assert_msg(cpu != NULL, "%s", err.msg);
}
static void teardown(void) { etm_backend_free(cpu); }

START_TEST(test_cpu_against_itself_passes) {
    int failed = etm_check_backend_ops(cpu, cpu, 12345, stdout);
    ck_assert_int_eq(failed, 0);
}
END_TEST

START_TEST(test_wrong_gemm_is_caught) {
    broken_backend b = make_broken(cpu);
    b.be.gemm = gemm_ignores_beta;
    ck_assert_int_gt(etm_check_backend_ops(cpu, &b.be, 1, NULL), 0);
}
END_TEST

START_TEST(test_wrong_tie_break_is_caught) {
    broken_backend b = make_broken(cpu);
    b.be.topk_rows = topk_ties_high;
    ck_assert_int_gt(etm_check_backend_ops(cpu, &b.be, 2, NULL), 0);
}
END_TEST

START_TEST(test_nan_is_caught) {
    broken_backend b = make_broken(cpu);
    b.be.softmax_forward = softmax_with_nan;
    ck_assert_int_gt(etm_check_backend_ops(cpu, &b.be, 3, NULL), 0);
}
END_TEST

START_TEST(test_nondeterminism_is_caught) {
    broken_backend b = make_broken(cpu);
    b.be.axpy = axpy_varies;
    ck_assert_int_gt(etm_check_backend_ops(cpu, &b.be, 4, NULL), 0);
}
END_TEST

/* The list in backend.h is the contract: each operation must have a profiler wrapper (or the
 * profiler would report it as host time) and be called by etm_check_backend_ops (or a backend
 * could get it wrong unnoticed). The comparison is run on the profiler, which counts the calls. */
START_TEST(test_every_op_is_checked_and_profiled) {
    etm_profiler *pr = etm_profiler_create(cpu);
    etm_backend *prof = etm_profiler_backend(pr);
    for (int op = 0; op < ETM_BACKEND_N_OPS; op++) {
        if (etm_backend_op_kind(op) == ETM_OP_LIFETIME) continue; /* destroy: etm_backend_free */
        ck_assert_msg(etm_backend_op(prof, op) != etm_backend_op(cpu, op),
                      "operation %s is not profiled (src/bench/profiler.c)", etm_backend_op_name(op));
    }
    ck_assert_int_eq(etm_check_backend_ops(cpu, prof, 7, NULL), 0);
    for (int op = 0; op < ETM_BACKEND_N_OPS; op++) {
        if (etm_backend_op_kind(op) == ETM_OP_LIFETIME) continue;
        ck_assert_msg(etm_profiler_calls(pr, 0, op) > 0.0,
                      "operation %s is never called by etm_check_backend_ops (src/compare_ops*.c)",
                      etm_backend_op_name(op));
    }
    etm_profiler_free(pr);
}
END_TEST

START_TEST(test_nmse) {
    float r[4] = {1, -2, 3, 0}, t[4] = {1, -2, 3, 0};
    ck_assert(etm_check_nmse(r, t, 4) == 0.0);
    t[3] = 1; /* sum of squared differences 1 over sum of squares 14 */
    ck_assert(fabs(etm_check_nmse(r, t, 4) - 1.0 / 14.0) < 1e-15);
    t[3] = NAN;
    ck_assert(isinf(etm_check_nmse(r, t, 4)));
    t[3] = 0;
    r[0] = NAN;
    t[0] = NAN; /* NaN on both sides still never passes */
    ck_assert(isinf(etm_check_nmse(r, t, 4)));
}
END_TEST

int main(void) {
    Suite *s = suite_create("compare_ops");
    TCase *tc = tcase_create("checker");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_cpu_against_itself_passes);
    tcase_add_test(tc, test_wrong_gemm_is_caught);
    tcase_add_test(tc, test_wrong_tie_break_is_caught);
    tcase_add_test(tc, test_nan_is_caught);
    tcase_add_test(tc, test_nondeterminism_is_caught);
    tcase_add_test(tc, test_every_op_is_checked_and_profiled);
    tcase_add_test(tc, test_nmse);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
