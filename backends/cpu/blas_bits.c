/* blas_bits.c: which shortcuts keep the bits of the CBLAS sgemm calls that Muon's Newton-Schulz
 * makes (src/optim/optim.c), on this machine's BLAS. Not part of the library or of make check; run with
 * `make blas-bits` (doc/performance.md quotes its output).
 *
 * For the Newton-Schulz products of a (1024, 512) matrix X (Gram A = X^T X and X X^T, 512 x 512
 * over K = 1024; A A with beta; X B with beta, 1024 x 512 over 512), it counts the elements whose
 * bits differ between the single-threaded call that cpu_gemm.c makes and:
 *   - the same call with the BLAS's own threading on 2 threads;
 *   - the same product cut into 128 x 128 tiles, one call per tile (what a half-Gram or a
 *     finer task split would compute);
 *   - for the Gram: its own transpose (is the computed A exactly symmetric?) and cblas_ssyrk's
 *     upper triangle (half the FLOPs).
 * Any non-zero count means that shortcut would change training results. */
#include <config.h>

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TILE 128

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n); /* OpenBLAS's OpenMP build follows it at each call */
#else
    (void)n;
#endif
}

static float *random_matrix(size_t n, unsigned *state) {
    float *x = malloc(n * sizeof *x);
    if (!x) exit(1);
    for (size_t i = 0; i < n; i++) {
        *state = *state * 1664525u + 1013904223u;
        x[i] = (float)((*state >> 8) / 16777216.0 - 0.5);
    }
    return x;
}

/* Elements of the (M, N) matrices a and b (leading dimensions lda, ldb) whose bits differ. */
static long differ(const float *a, int lda, const float *b, int ldb, int M, int N) {
    long d = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) d += memcmp(&a[(size_t)i * lda + j], &b[(size_t)i * ldb + j], sizeof *a) != 0;
    return d;
}

/* C = alpha op(A) op(B) + beta C, row-major, dense operands. */
static void sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, const float *B,
                  float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, ta ? M : K, B, tb ? K : N, beta, C, ldc);
}

/* One product (A, B, C0 the initial C) as one call, with 2 BLAS threads and in tiles. */
static void probe(const char *what, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, const float *C0, float *ref) {
    size_t mn = (size_t)M * N;
    float *c = malloc(mn * sizeof *c);
    if (!c) exit(1);
    memcpy(ref, C0, mn * sizeof *ref);
    set_threads(1);
    sgemm(ta, tb, M, N, K, alpha, A, B, beta, ref, N);
    memcpy(c, C0, mn * sizeof *c);
    set_threads(2);
    sgemm(ta, tb, M, N, K, alpha, A, B, beta, c, N);
    set_threads(1);
    long threads = differ(ref, N, c, N, M, N);
    memcpy(c, C0, mn * sizeof *c);
    for (int i0 = 0; i0 < M; i0 += TILE)
        for (int j0 = 0; j0 < N; j0 += TILE) {
            const float *a = ta ? A + i0 : A + (size_t)i0 * lda;
            const float *b = tb ? B + (size_t)j0 * ldb : B + j0;
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                        TILE < M - i0 ? TILE : M - i0, TILE < N - j0 ? TILE : N - j0, K, alpha, a, lda, b,
                        ldb, beta, c + (size_t)i0 * N + j0, N);
        }
    long tiles = differ(ref, N, c, N, M, N);
    printf("%-28s %4dx%-4dx%4d  2 BLAS threads: %7ld   %dx%d tiles: %7ld   of %zu\n", what, M, N, K, threads,
           TILE, TILE, tiles, mn);
    free(c);
}

int main(void) {
    const int rows = 1024, cols = 512, s = 512;
    unsigned seed = 1;
    float *X = random_matrix((size_t)rows * cols, &seed);
    for (size_t i = 0; i < (size_t)rows * cols; i++) X[i] *= 0.01f;
    float *zero = calloc((size_t)rows * cols, sizeof *zero);
    float *A = malloc((size_t)s * s * sizeof *A), *AA = malloc((size_t)s * s * sizeof *AA);
    float *XB = malloc((size_t)rows * cols * sizeof *XB), *S = calloc((size_t)s * s, sizeof *S);
    if (!zero || !A || !AA || !XB || !S) return 1;

    probe("Gram X^T X (tall)", 1, 0, s, s, rows, 1.0f, X, cols, X, cols, 0.0f, zero, A);
    long asym = 0;
    for (int i = 0; i < s; i++)
        for (int j = 0; j < s; j++) asym += memcmp(&A[(size_t)i * s + j], &A[(size_t)j * s + i], sizeof *A) != 0;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, s, rows, 1.0f, X, cols, 0.0f, S, s);
    long syrk = 0;
    for (int i = 0; i < s; i++)
        for (int j = i; j < s; j++) syrk += memcmp(&S[(size_t)i * s + j], &A[(size_t)i * s + j], sizeof *S) != 0;
    printf("%-28s A != A^T: %ld of %d; ssyrk upper triangle != sgemm: %ld of %d\n", "", asym, s * s, syrk,
           s * (s + 1) / 2);
    float *W = random_matrix((size_t)s * rows, &seed), *G = malloc((size_t)s * s * sizeof *G);
    if (!G) return 1;
    probe("Gram X X^T (wide)", 0, 1, s, s, rows, 1.0f, W, rows, W, rows, 0.0f, zero, G);
    probe("B = c A A + b A", 0, 0, s, s, s, 2.0315f, A, s, A, s, -4.7750f, A, AA);
    probe("X' = X B + a X", 0, 0, rows, cols, s, 1.0f, X, cols, AA, s, 3.4445f, X, XB);
    free(X);
    free(W);
    free(zero);
    free(A);
    free(AA);
    free(XB);
    free(S);
    free(G);
    return 0;
}
