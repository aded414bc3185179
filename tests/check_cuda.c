/* check_cuda.c: tests of the CUDA backend. Built only when configure found nvcc.
 *
 * Without a usable device the constructor must fail cleanly (NULL and a message naming the
 * reason); the program then prints "SKIP: no CUDA device" and exits 77, which the automake test
 * driver counts as skipped. With a device: every op against the CPU backend (etm_check_backend_ops,
 * per-op tolerances, routing exact, every op repeated bit for bit), under two seeds; the registry
 * entry; and the TF32 switch (looser gemm agreement, still deterministic). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "compare_ops.h"
#include "cuda/cuda_backend.h"
#include "rng.h"
#include "testutil.h"

static etm_backend *cpu, *cuda;

static void setup(void) {
    etm_error err = {{0}};
    cpu = etm_backend_create("cpu", &err);
    ck_assert_msg(cpu != NULL, "cpu backend: %s", err.msg);
    cuda = etm_backend_create("cuda", &err);
    ck_assert_msg(cuda != NULL, "cuda backend: %s", err.msg);
}
static void teardown(void) {
    etm_backend_free(cuda);
    etm_backend_free(cpu);
}

START_TEST(test_registry_names_cuda) {
    int found = 0;
    for (const char *const *n = etm_backend_names(); *n; n++) found |= strcmp(*n, "cuda") == 0;
    ck_assert_msg(found, "the registry does not list the cuda backend");
    ck_assert_str_eq(cuda->name, "cuda");
}
END_TEST

START_TEST(test_ops_match_cpu) {
    static const uint64_t seeds[] = {1, 20250311};
    uint64_t seed = seeds[_i];
    int failed = etm_check_backend_ops(cpu, cuda, seed, stdout);
    ck_assert_msg(failed == 0, "%d comparisons between cuda and cpu failed (seed %llu, table above)",
                  failed, (unsigned long long)seed);
}
END_TEST

/* The checker itself must be able to fail: a cuda backend with one op swapped for a wrong one
 * (gemm that ignores beta) must be caught. */
static void (*real_gemm)(etm_backend *, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);
static void gemm_without_beta(etm_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                              const float *A, int lda, const float *B, int ldb, float beta,
                              float *C, int ldc) {
    (void)beta;
    real_gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
}
START_TEST(test_checker_catches_a_wrong_op) {
    etm_backend broken = *cuda;
    real_gemm = cuda->gemm;
    broken.gemm = gemm_without_beta;
    int failed = etm_check_backend_ops(cpu, &broken, 7, NULL);
    ck_assert_msg(failed > 0, "a gemm ignoring beta passed the comparison");
}
END_TEST

/* The reduced-precision GEMM modes: close to the CPU's fp32 (TF32 keeps 10 mantissa bits, errors
 * around 1e-3 relative, nmse well under 1e-4; bf16 keeps 7, errors around 1e-2, nmse under 1e-3)
 * and repeatable. ("FAST" compute types allow tensor cores, they do not force them: cuBLAS may
 * keep plain fp32 for a small shape, so the test cannot demand a difference.) */
START_TEST(test_reduced_precision_gemm_is_close_and_repeatable) {
    static const struct {
        etm_cuda_gemm_math math;
        const char *name;
        double max_nmse;
    } modes[] = {{ETM_CUDA_GEMM_TF32, "tf32", 1e-4}, {ETM_CUDA_GEMM_BF16, "bf16", 1e-3}};
    etm_rng rng;
    etm_rng_seed(&rng, 99);
    int M = 67, N = 45, K = 129;
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N);
    float *r = malloc(sizeof(float) * M * N), *t1 = malloc(sizeof(float) * M * N),
          *t2 = malloc(sizeof(float) * M * N);
    etm_rng_fill_normal(&rng, a, (uint64_t)M * K, 1.0f);
    etm_rng_fill_normal(&rng, b, (uint64_t)K * N, 1.0f);
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        etm_backend *bes[2] = {cpu, cuda};
        float *outs[3] = {r, t1, t2};
        etm_cuda_set_gemm_math(cuda, modes[m].math);
        for (int run = 0; run < 3; run++) {
            etm_backend *be = bes[run == 0 ? 0 : 1];
            float *da = be->alloc(be, sizeof(float) * M * K), *db = be->alloc(be, sizeof(float) * K * N);
            float *dc = be->alloc(be, sizeof(float) * M * N);
            be->upload(be, da, a, sizeof(float) * M * K);
            be->upload(be, db, b, sizeof(float) * K * N);
            be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, M, N, K, 1.0f, da, K, db, N, 0.0f, dc, N);
            be->download(be, outs[run], dc, sizeof(float) * M * N);
            be->free(be, da);
            be->free(be, db);
            be->free(be, dc);
        }
        etm_cuda_set_gemm_math(cuda, ETM_CUDA_GEMM_FP32);
        double nmse = etm_check_nmse(r, t1, (size_t)M * N);
        ck_assert_msg(nmse < modes[m].max_nmse, "%s gemm nmse %.3e", modes[m].name, nmse);
        ck_assert_msg(memcmp(t1, t2, sizeof(float) * M * N) == 0, "%s gemm differs between runs",
                      modes[m].name);
    }
    ck_assert_int_eq(etm_cuda_gemm_math_parse("bf16"), ETM_CUDA_GEMM_BF16);
    ck_assert_int_eq(etm_cuda_gemm_math_parse("fp16"), -1);
    free(a);
    free(b);
    free(r);
    free(t1);
    free(t2);
}
END_TEST

int main(void) {
    etm_error err = {{0}};
    etm_backend *probe = etm_cuda_backend_create(&err);
    if (!probe) {
        /* The no-device path is itself under test: NULL must come with a reason. */
        if (err.msg[0] == '\0' || strstr(err.msg, "cuda") == NULL) {
            fprintf(stderr, "FAIL: etm_cuda_backend_create returned NULL without a clear message: "
                            "'%s'\n", err.msg);
            return EXIT_FAILURE;
        }
        etm_error reg = {{0}};
        etm_backend *via_registry = etm_backend_create("cuda", &reg);
        if (via_registry != NULL || reg.msg[0] == '\0') {
            fprintf(stderr, "FAIL: etm_backend_create(\"cuda\") without a device must return NULL "
                            "with a message\n");
            return EXIT_FAILURE;
        }
        printf("SKIP: no CUDA device (%s)\n", err.msg);
        return 77;
    }
    etm_backend_free(probe);
    /* CUDA cannot be used in a child forked after the parent initialised it (the probe above
     * did), so the tests run in this process. */
    setenv("CK_FORK", "no", 1);

    Suite *s = suite_create("cuda");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_registry_names_cuda);
    tcase_add_loop_test(tc, test_ops_match_cpu, 0, 2);
    tcase_add_test(tc, test_checker_catches_a_wrong_op);
    tcase_add_test(tc, test_reduced_precision_gemm_is_close_and_repeatable);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
