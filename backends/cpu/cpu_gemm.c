/* cpu_gemm.c: the CPU backend's matrix products, gemm and gemm_grouped, on cblas_sgemm.
 *
 * Why we thread the GEMMs ourselves instead of letting OpenBLAS do it: OpenBLAS's threaded driver
 * splits K into blocks differently from its single-threaded one (0.3.21: 512x512x513 differs in
 * the last bits between 1 and 2 threads), so its results depend on the thread count. Here C is cut
 * into tiles whose sizes depend only on (M, N, K); each tile is one single-threaded sgemm over the
 * full K, run by whichever of our threads takes it. OpenBLAS's OpenMP build runs sgemm on one
 * thread inside an active parallel region; cpu_sgemm_1thread also sets this task's OpenMP thread
 * count to 1 so that a team of one (OMP_NUM_THREADS=1) or a BLAS that ignores omp_in_parallel()
 * stays single-threaded too.
 *
 * The grouped product flattens the tiles of all groups into one task list with dynamic
 * scheduling: experts of very different sizes still keep every thread busy, and no group waits
 * for another. */
#include <config.h>

#include "cpu_internal.h"

#include <cblas.h>
#include <stdlib.h>

void cpu_sgemm_1thread(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* C = beta C; never 0 * NaN when beta is 0 */
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            if (beta == 0.0f)
                memset(c, 0, (size_t)N * sizeof *c);
            else if (beta != 1.0f)
                for (int j = 0; j < N; j++) c[j] *= beta;
        }
        return;
    }
#ifdef _OPENMP
    omp_set_num_threads(1); /* this implicit task's ICV only; gone when the region ends */
#endif
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* A tile grid for an (M, N, K) product: rows in row_tiles tiles of tile_m (the last one shorter),
 * columns likewise. A function of the shape alone, never of the thread count. */
typedef struct {
    int tile_m, tile_n;     /* tile sizes */
    int row_tiles, col_tiles;
} tile_plan;

/* Tiles aim at about CPU_TILE_FLOPS floating-point operations each: small enough that a
 * transformer-sized product makes many tiles for load balance, large enough that sgemm's packing
 * of A and B stays a small part of each tile's time. */
#define CPU_TILE_FLOPS (16.0 * 1024 * 1024)
#define CPU_TILE_ALIGN 16 /* tile sizes are multiples of this (sgemm kernels work in 16s) */

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

static tile_plan plan_tiles(int M, int N, int K) {
    tile_plan p;
    /* columns first: keep tiles at least 256 wide (or all of N) so B panels stay long */
    double per_elem = 2.0 * (K > 0 ? K : 1);
    double target_elems = CPU_TILE_FLOPS / per_elem; /* tile_m * tile_n */
    int tn = N;
    if (tn > 512 && (double)M * tn > target_elems) tn = 512;
    int tm = (int)(target_elems / tn);
    if (tm < 64) tm = 64;
    if (tm >= M) tm = M;
    p.col_tiles = (N + tn - 1) / tn;
    p.row_tiles = (M + tm - 1) / tm;
    /* even out the tiles */
    p.tile_n = round_up((N + p.col_tiles - 1) / p.col_tiles, CPU_TILE_ALIGN);
    p.tile_m = round_up((M + p.row_tiles - 1) / p.row_tiles, CPU_TILE_ALIGN);
    if (p.tile_n > N) p.tile_n = N;
    if (p.tile_m > M) p.tile_m = M;
    p.col_tiles = (N + p.tile_n - 1) / p.tile_n;
    p.row_tiles = (M + p.tile_m - 1) / p.tile_m;
    return p;
}

/* One tile (ti, tj) of the product C = alpha op(A) op(B) + beta C. */
static void run_tile(const tile_plan *p, int ti, int tj, int trans_a, int trans_b, int M, int N,
                     int K, float alpha, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc) {
    int i0 = ti * p->tile_m, j0 = tj * p->tile_n;
    int m = ETM_MIN(p->tile_m, M - i0), n = ETM_MIN(p->tile_n, N - j0);
    const float *a = trans_a ? A + i0 : A + (size_t)i0 * lda;
    const float *b = trans_b ? B + (size_t)j0 * ldb : B + j0;
    cpu_sgemm_1thread(trans_a, trans_b, m, n, K, alpha, a, lda, b, ldb, beta,
                      C + (size_t)i0 * ldc + j0, ldc);
}

void cpu_gemm(etm_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    (void)be;
    if (M <= 0 || N <= 0) return;
    tile_plan p = plan_tiles(M, N, K);
    int tiles = p.row_tiles * p.col_tiles;
    /* Always a parallel region, even for one tile: see the top of this file. */
    ETM_OMP(parallel for schedule(dynamic, 1))
    for (int t = 0; t < tiles; t++)
        run_tile(&p, t / p.col_tiles, t % p.col_tiles, trans_a, trans_b, M, N, K, alpha, A, lda,
                 B, ldb, beta, C, ldc);
}

typedef struct {
    int group;  /* index into groups */
    int ti, tj; /* tile in that group's plan */
} grouped_task;

void cpu_gemm_grouped(etm_backend *be, int trans_a, int trans_b, int count,
                      const etm_gemm_group *groups, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    (void)be;
    if (count <= 0) return;
    tile_plan *plans = etm_malloc((size_t)count * sizeof *plans);
    size_t n_tasks = 0;
    for (int g = 0; g < count; g++) {
        const etm_gemm_group *gr = &groups[g];
        if (gr->M <= 0 || gr->N <= 0) {
            plans[g].row_tiles = plans[g].col_tiles = 0;
            continue;
        }
        plans[g] = plan_tiles(gr->M, gr->N, gr->K);
        n_tasks += (size_t)plans[g].row_tiles * plans[g].col_tiles;
    }
    grouped_task *tasks = etm_malloc((n_tasks ? n_tasks : 1) * sizeof *tasks);
    size_t t = 0;
    for (int g = 0; g < count; g++)
        for (int ti = 0; ti < plans[g].row_tiles; ti++)
            for (int tj = 0; tj < plans[g].col_tiles; tj++) tasks[t++] = (grouped_task){g, ti, tj};
    long n = (long)n_tasks;
    ETM_OMP(parallel for schedule(dynamic, 1))
    for (long i = 0; i < n; i++) {
        const grouped_task *tk = &tasks[i];
        const etm_gemm_group *gr = &groups[tk->group];
        run_tile(&plans[tk->group], tk->ti, tk->tj, trans_a, trans_b, gr->M, gr->N, gr->K, alpha,
                 A + gr->a_off, lda, B + gr->b_off, ldb, beta, C + gr->c_off, ldc);
    }
    free(tasks);
    free(plans);
}
