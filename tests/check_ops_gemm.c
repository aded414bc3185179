/* check_ops_gemm.c: tests of the backend's matrix products: gemm against a slow double-precision
 * loop for every transpose combination, padded leading dimensions, beta and K = 0 corner cases;
 * gemm_grouped with empty and uneven groups; syrk_batched (Muon's symmetric products) against the
 * same loop; and byte-identical results with 1, 2 and 3 threads on transformer shapes and on the K
 * that OpenBLAS's own threading rounds differently. */
#include "ops_testutil.h"

/* C = alpha op(A) op(B) + beta C in double; also the sum of |terms| per element for the error
 * bound. beta == 0 ignores C (BLAS convention). */
static void ref_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, const float *C, int ldc, double *out,
                     double *mag) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0, m = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
                m += fabs(a * b);
            }
            double c = beta == 0.0f ? 0.0 : (double)beta * C[(size_t)i * ldc + j];
            out[(size_t)i * N + j] = alpha * s + c;
            mag[(size_t)i * N + j] = fabs(alpha) * m + fabs(c);
        }
}

/* Checks C's (M,N) block against the reference and that padding columns were not touched. */
static void check_product(const char *what, const float *C, const float *C0, int M, int N, int ldc,
                          int K, const double *want, const double *mag) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double got = C[(size_t)i * ldc + j], w = want[(size_t)i * N + j];
            double tol = 1e-6 * (K + 4) * mag[(size_t)i * N + j] + 1e-30;
            OPS_REQUIRE(fabs(got - w) <= tol, "%s: C[%d,%d] = %.9g, want %.9g", what, i, j, got, w);
        }
        for (int j = N; j < ldc; j++)
            OPS_REQUIRE(C[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j] ||
                            (C[(size_t)i * ldc + j] != C[(size_t)i * ldc + j] &&
                             C0[(size_t)i * ldc + j] != C0[(size_t)i * ldc + j]),
                        "%s: padding C[%d,%d] changed", what, i, j);
    }
}

static void run_gemm_case(etm_backend *be, etm_rng *rng, int ta, int tb, int M, int N, int K,
                          int pad, float alpha, float beta, int nan_c) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    int arows = ta ? K : M, brows = tb ? N : K;
    float *A = ops_uniform(rng, (size_t)arows * lda + 1, -1, 1);
    float *B = ops_uniform(rng, (size_t)brows * ldb + 1, -1, 1);
    float *C = ops_uniform(rng, (size_t)M * ldc + 1, -1, 1);
    if (nan_c)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = NAN;
    float *C0 = ops_copy(C, (size_t)M * ldc + 1);
    double *want = etm_malloc(((size_t)M * N + 1) * sizeof *want);
    double *mag = etm_malloc(((size_t)M * N + 1) * sizeof *mag);
    ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc, want, mag);
    be->gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    char what[128];
    snprintf(what, sizeof what, "gemm ta=%d tb=%d %dx%dx%d pad %d beta %g", ta, tb, M, N, K, pad,
             (double)beta);
    check_product(what, C, C0, M, N, ldc, K, want, mag);
    free(A);
    free(B);
    free(C);
    free(C0);
    free(want);
    free(mag);
}

START_TEST(gemm_matches_loops_for_all_transposes) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 1);
    /* shapes from tiny to several tiles in both directions */
    static const int shapes[][3] = {{1, 1, 1},       {3, 5, 7},      {17, 33, 65},  {64, 64, 64},
                                    {130, 1100, 40}, {700, 90, 130}, {300, 700, 64}};
    for (size_t s = 0; s < ETM_ARRAY_LEN(shapes); s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int pad = (int)((s + ta + 2 * tb) % 3) * 3; /* 0, 3 or 6 extra columns */
                run_gemm_case(be, &rng, ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], pad,
                              0.75f, s % 2 ? 0.5f : 0.0f, 0);
            }
    etm_backend_free(be);
}
END_TEST

START_TEST(gemm_beta_zero_ignores_c_and_k_zero_scales) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 2);
    run_gemm_case(be, &rng, 0, 1, 70, 40, 30, 2, 1.0f, 0.0f, 1);    /* NaN in C, beta 0 */
    run_gemm_case(be, &rng, 1, 0, 20, 600, 300, 0, -2.0f, 1.0f, 0); /* accumulate */
    run_gemm_case(be, &rng, 0, 0, 9, 11, 0, 1, 1.0f, 0.5f, 0);      /* K = 0: C = beta C */
    run_gemm_case(be, &rng, 0, 0, 9, 11, 0, 1, 1.0f, 0.0f, 1);      /* K = 0, beta 0: zeros */
    /* M or N zero: nothing happens, nothing is read */
    be->gemm(be, 0, 0, 0, 5, 5, 1.0f, NULL, 5, NULL, 5, 0.0f, NULL, 5);
    be->gemm(be, 0, 0, 5, 0, 5, 1.0f, NULL, 5, NULL, 1, 0.0f, NULL, 1);
    etm_backend_free(be);
}
END_TEST

START_TEST(gemm_grouped_matches_loops_with_empty_groups) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 3);
    /* expert-style: A rows of each group consecutive, B one (N,K) matrix per group (trans_b), C
     * rows consecutive. Group sizes include 0, 1 and ones spanning several tiles. */
    static const int rows[] = {0, 5, 1, 200, 0, 64, 517, 3, 0};
    const int G = (int)ETM_ARRAY_LEN(rows), N = 96, K = 48, pad = 5;
    int lda = K + pad, ldb = K, ldc = N + pad, total = 0;
    for (int g = 0; g < G; g++) total += rows[g];
    for (int tb = 0; tb < 2; tb++) {
        etm_gemm_group groups[9];
        int r0 = 0;
        for (int g = 0; g < G; g++) {
            groups[g] = (etm_gemm_group){rows[g],         N, K, (size_t)r0 * lda, (size_t)g * N * K,
                                         (size_t)r0 * ldc};
            r0 += rows[g];
        }
        float *A = ops_uniform(&rng, (size_t)total * lda, -1, 1);
        float *B = ops_uniform(&rng, (size_t)G * N * K, -1, 1);
        float *C = ops_uniform(&rng, (size_t)total * ldc, -1, 1);
        float *C0 = ops_copy(C, (size_t)total * ldc);
        int ldb_t = tb ? K : N;
        be->gemm_grouped(be, 0, tb, G, groups, 1.5f, A, lda, B, tb ? ldb : ldb_t, 0.25f, C, ldc);
        for (int g = 0; g < G; g++) {
            if (!rows[g]) continue;
            const etm_gemm_group *gr = &groups[g];
            double *want = etm_malloc((size_t)gr->M * N * sizeof *want);
            double *mag = etm_malloc((size_t)gr->M * N * sizeof *mag);
            ref_gemm(0, tb, gr->M, N, K, 1.5f, A + gr->a_off, lda, B + gr->b_off, ldb_t, 0.25f,
                     C0 + gr->c_off, ldc, want, mag);
            char what[64];
            snprintf(what, sizeof what, "gemm_grouped tb=%d group %d", tb, g);
            check_product(what, C + gr->c_off, C0 + gr->c_off, gr->M, N, ldc, K, want, mag);
            free(want);
            free(mag);
        }
        free(A);
        free(B);
        free(C);
        free(C0);
    }
    /* K == 0 groups still scale C; count 0 does nothing */
    float c[6] = {1, 2, 3, 4, 5, 6};
    etm_gemm_group g0 = {2, 3, 0, 0, 0, 0};
    be->gemm_grouped(be, 0, 0, 1, &g0, 1.0f, c, 1, c, 3, 0.5f, c, 3);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(c[i], 0.5f * (float)(i + 1));
    be->gemm_grouped(be, 0, 0, 0, NULL, 1.0f, NULL, 1, NULL, 1, 0.0f, NULL, 1);
    etm_backend_free(be);
}
END_TEST

/* One product computed with 1, 2 and 3 threads must give the same bytes. */
static void check_gemm_threads(etm_backend *be, etm_rng *rng, int ta, int tb, int M, int N, int K) {
    int lda = ta ? M : K, ldb = tb ? K : N;
    float *A = ops_uniform(rng, (size_t)M * K, -1, 1), *B = ops_uniform(rng, (size_t)K * N, -1, 1);
    float *C1 = ops_floats((size_t)M * N), *C = ops_floats((size_t)M * N);
    int saved = ops_max_threads();
    ops_set_threads(1);
    be->gemm(be, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C1, N);
    for (int t = 2; t <= 3; t++) {
        ops_set_threads(t);
        be->gemm(be, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
        ck_assert_msg(!memcmp(C1, C, (size_t)M * N * sizeof *C),
                      "gemm %dx%dx%d ta=%d tb=%d differs between 1 and %d threads", M, N, K, ta, tb,
                      t);
        /* our use of OpenMP inside gemm must leave the caller's thread count alone */
        ck_assert_int_eq(ops_max_threads(), t);
    }
    ops_set_threads(saved);
    free(A);
    free(B);
    free(C1);
    free(C);
}

START_TEST(gemm_is_identical_across_thread_counts) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 4);
    /* transformer shapes: qkv / mlp up (N x D -> 4D), mlp down, weight gradients (trans_a), a
     * small router, and K = 513 / 1000, which OpenBLAS's own threading blocks differently */
    check_gemm_threads(be, &rng, 0, 1, 512, 1024, 256);
    check_gemm_threads(be, &rng, 0, 0, 512, 256, 1024);
    check_gemm_threads(be, &rng, 1, 0, 256, 1024, 512);
    check_gemm_threads(be, &rng, 0, 1, 512, 8, 256);
    check_gemm_threads(be, &rng, 0, 0, 256, 256, 513);
    check_gemm_threads(be, &rng, 0, 1, 300, 700, 1000);
    etm_backend_free(be);
}
END_TEST

/* The weight-gradient form: C_g(M,N) += A_g^T B_g with A_g (K_g, M), B_g (K_g, N) stacked by rows,
 * K_g the tokens of expert g (0 for an idle expert: C_g unchanged with beta 1). */
START_TEST(gemm_grouped_weight_gradient_form) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 6);
    static const int tokens[] = {30, 0, 300, 1, 700, 0};
    const int G = (int)ETM_ARRAY_LEN(tokens), M = 72, N = 600;
    int total = 0;
    for (int g = 0; g < G; g++) total += tokens[g];
    for (int tb = 0; tb < 2; tb++) {
        etm_gemm_group groups[6];
        int r0 = 0;
        for (int g = 0; g < G; g++) {
            /* B_g is (K_g, N) rows of a (total, N) matrix, or its transpose stored (N, total) */
            groups[g] = (etm_gemm_group){M, N, tokens[g], (size_t)r0 * M,
                                         tb ? (size_t)r0 : (size_t)r0 * N, (size_t)g * M * N};
            r0 += tokens[g];
        }
        float *A = ops_uniform(&rng, (size_t)total * M, -1, 1);
        float *B = ops_uniform(&rng, (size_t)total * N, -1, 1);
        float *C = ops_uniform(&rng, (size_t)G * M * N, -1, 1), *C0 = ops_copy(C, (size_t)G * M * N);
        int ldb = tb ? total : N;
        be->gemm_grouped(be, ETM_TRANS, tb, G, groups, 1.0f, A, M, B, ldb, 1.0f, C, N);
        double *want = etm_malloc((size_t)M * N * sizeof *want);
        double *mag = etm_malloc((size_t)M * N * sizeof *mag);
        for (int g = 0; g < G; g++) {
            const etm_gemm_group *gr = &groups[g];
            ref_gemm(1, tb, M, N, gr->K, 1.0f, A + gr->a_off, M, B + gr->b_off, ldb, 1.0f,
                     C0 + gr->c_off, N, want, mag);
            char what[64];
            snprintf(what, sizeof what, "gemm_grouped dW tb=%d group %d", tb, g);
            check_product(what, C + gr->c_off, C0 + gr->c_off, M, N, N, gr->K, want, mag);
        }
        free(want);
        free(mag);
        free(A);
        free(B);
        free(C);
        free(C0);
    }
    etm_backend_free(be);
}
END_TEST

START_TEST(gemm_grouped_is_identical_across_thread_counts) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 5);
    static const int rows[] = {64, 300, 0, 128, 512, 77, 250, 1};
    const int G = (int)ETM_ARRAY_LEN(rows), N = 512, K = 256;
    int total = 0;
    etm_gemm_group groups[8];
    for (int g = 0; g < G; g++) {
        groups[g] = (etm_gemm_group){rows[g],          N, K, (size_t)total * K, (size_t)g * N * K,
                                     (size_t)total * N};
        total += rows[g];
    }
    float *A = ops_uniform(&rng, (size_t)total * K, -1, 1);
    float *B = ops_uniform(&rng, (size_t)G * N * K, -1, 1);
    float *C1 = ops_floats((size_t)total * N), *C = ops_floats((size_t)total * N);
    int saved = ops_max_threads();
    ops_set_threads(1);
    be->gemm_grouped(be, 0, 1, G, groups, 1.0f, A, K, B, K, 0.0f, C1, N);
    for (int t = 2; t <= 3; t++) {
        ops_set_threads(t);
        be->gemm_grouped(be, 0, 1, G, groups, 1.0f, A, K, B, K, 0.0f, C, N);
        ck_assert_msg(!memcmp(C1, C, (size_t)total * N * sizeof *C),
                      "gemm_grouped differs between 1 and %d threads", t);
    }
    ops_set_threads(saved);
    free(A);
    free(B);
    free(C1);
    free(C);
    etm_backend_free(be);
}
END_TEST

/* ---- syrk_batched ---------------------------------------------------------------------------- */

/* count symmetric products of (n, k) (trans 0: C = A A^T) or (k, n) (trans 1: C = A^T A) matrices
 * at padded strides, against ref_gemm on C with its lower triangle replaced by the upper one (the
 * op reads only the upper triangle: the lower one starts as NaN and must be overwritten), the
 * result exactly symmetric and the padding untouched. */
static void run_syrk_case(etm_backend *be, etm_rng *rng, int trans, int count, int n, int k, int pad,
                          float alpha, float beta) {
    int lda = (trans ? n : k) + pad, ldc = n + pad;
    size_t sa = (size_t)(trans ? k : n) * lda + 3, sc = (size_t)n * ldc + 2;
    float *A = ops_uniform(rng, (size_t)count * sa, -1, 1);
    float *C = ops_uniform(rng, (size_t)count * sc, -1, 1);
    for (int e = 0; e < count; e++)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++) C[e * sc + (size_t)i * ldc + j] = NAN;
    float *C0 = ops_copy(C, (size_t)count * sc);
    double *want = etm_malloc(((size_t)n * n + 1) * sizeof *want);
    double *mag = etm_malloc(((size_t)n * n + 1) * sizeof *mag);
    be->syrk_batched(be, trans, count, n, k, alpha, A, lda, sa, beta, C, ldc, sc);
    for (int e = 0; e < count; e++) {
        float *c0 = C0 + e * sc, *c = C + e * sc;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++) c0[(size_t)i * ldc + j] = c0[(size_t)j * ldc + i];
        ref_gemm(trans, !trans, n, n, k, alpha, A + e * sa, lda, A + e * sa, lda, beta, c0, ldc, want,
                 mag);
        for (int i = 0; i < n; i++) /* the NaNs of the lower triangle, for check_product's padding test */
            for (int j = 0; j < i; j++) c0[(size_t)i * ldc + j] = NAN;
        char what[128];
        snprintf(what, sizeof what, "syrk_batched trans=%d n %d k %d matrix %d beta %g", trans, n, k, e, beta);
        check_product(what, c, c0, n, n, ldc, k, want, mag);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++)
                OPS_REQUIRE(memcmp(&c[(size_t)i * ldc + j], &c[(size_t)j * ldc + i], sizeof *c) == 0,
                            "%s: C[%d,%d] != C[%d,%d]", what, i, j, j, i);
    }
    /* the gaps between the matrices are not written */
    for (int e = 0; e < count; e++)
        for (size_t i = (size_t)n * ldc; i < sc; i++)
            OPS_REQUIRE(memcmp(&C[e * sc + i], &C0[e * sc + i], sizeof *C) == 0,
                        "syrk_batched wrote past matrix %d", e);
    free(A);
    free(C);
    free(C0);
    free(want);
    free(mag);
}

START_TEST(syrk_batched_matches_loops) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 11);
    for (int trans = 0; trans < 2; trans++) {
        run_syrk_case(be, &rng, trans, 3, 5, 7, 2, 1.0f, 0.0f);     /* small, beta 0 */
        run_syrk_case(be, &rng, trans, 2, 400, 37, 3, 2.0315f, -4.775f); /* 2 x 2 blocks (208, 192) */
        run_syrk_case(be, &rng, trans, 1, 97, 0, 1, 1.0f, 0.5f);    /* k = 0: the upper triangle scaled */
    }
    be->syrk_batched(be, 0, 0, 4, 4, 1.0f, NULL, 4, 16, 0.0f, NULL, 4, 16); /* count 0: nothing */
    etm_backend_free(be);
}
END_TEST

START_TEST(syrk_batched_is_identical_across_thread_counts) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 12);
    const int count = 3, n = 520, k = 300; /* 3 x 3 blocks per matrix */
    float *A = ops_uniform(&rng, (size_t)count * n * k, -1, 1);
    size_t nc = (size_t)count * n * n;
    float *C1 = ops_floats(nc), *C = ops_floats(nc);
    int saved = ops_max_threads();
    for (int trans = 0; trans < 2; trans++) {
        ops_set_threads(1);
        be->syrk_batched(be, trans, count, n, k, 1.0f, A, trans ? n : k, (size_t)n * k, 0.0f, C1, n,
                         (size_t)n * n);
        for (int t = 2; t <= 3; t++) {
            ops_set_threads(t);
            be->syrk_batched(be, trans, count, n, k, 1.0f, A, trans ? n : k, (size_t)n * k, 0.0f, C, n,
                             (size_t)n * n);
            ck_assert_msg(!memcmp(C1, C, nc * sizeof *C), "syrk_batched trans=%d differs between 1 and %d threads",
                          trans, t);
        }
    }
    ops_set_threads(saved);
    free(A);
    free(C1);
    free(C);
    etm_backend_free(be);
}
END_TEST

static Suite *gemm_suite(void) {
    Suite *s = suite_create("ops_gemm");
    TCase *tc = tcase_create("gemm");
    tcase_set_timeout(tc, 300); /* busy machines; serial-tests ignores CK_DEFAULT_TIMEOUT */
    tcase_add_test(tc, gemm_matches_loops_for_all_transposes);
    tcase_add_test(tc, gemm_beta_zero_ignores_c_and_k_zero_scales);
    tcase_add_test(tc, gemm_grouped_matches_loops_with_empty_groups);
    tcase_add_test(tc, gemm_grouped_weight_gradient_form);
    tcase_add_test(tc, gemm_is_identical_across_thread_counts);
    tcase_add_test(tc, gemm_grouped_is_identical_across_thread_counts);
    tcase_add_test(tc, syrk_batched_matches_loops);
    tcase_add_test(tc, syrk_batched_is_identical_across_thread_counts);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(gemm_suite()); }
