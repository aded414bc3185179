/* cpu_gemm.c: the CPU backend's matrix products, gemm and gemm_grouped, on cblas_sgemm, and
 * syrk_batched (symmetric products, on cblas_ssyrk and cblas_sgemm; at the end of the file).
 *
 * Why we thread the GEMMs ourselves instead of letting OpenBLAS do it: OpenBLAS's threaded driver
 * splits K into blocks differently from its single-threaded one (0.3.21: 512x512x513 differs in
 * the last bits between 1 and 2 threads), so its results depend on the thread count. Here C is cut
 * into tiles whose sizes depend only on (M, N, K); each tile is one single-threaded sgemm over the
 * full K, run by whichever of our threads takes it. OpenBLAS's OpenMP build runs sgemm on one
 * thread inside an active parallel region; cpu_sgemm_1thread also sets this task's OpenMP thread
 * count to 1 around the call so that a team of one (OMP_NUM_THREADS=1) or a BLAS that ignores
 * omp_in_parallel() stays single-threaded too. Another BLAS (--with-blas) keeps the guarantee only
 * if it runs single-threaded when called from our threads (a sequential build does).
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
    int threads = omp_get_max_threads(); /* this task's setting, restored below */
    omp_set_num_threads(1);
#endif
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
}

/* A tile grid for an (M, N, K) product: rows in row_tiles tiles of tile_m (the last one shorter),
 * columns likewise. A function of the shape alone, never of the thread count. */
typedef struct {
    int tile_m, tile_n; /* tile sizes */
    int row_tiles, col_tiles;
} tile_plan;

/* Tile sizes. Single-threaded sgemm (OpenBLAS 0.3.21, AVX-512, K = 256) runs at about 98 GFLOP/s
 * on 512-row tiles, 95 on 256, 88 on 128 and 80 on 64 rows; columns matter less past 256. So
 * tiles start near 512 x 1024 and are halved only while a product has fewer than min_tiles of
 * them (so that a few threads stay busy) and each still has CPU_MIN_TILE_FLOPS of work. A grouped
 * product asks each group for only its share of CPU_MIN_TILES: the groups keep the threads busy.
 * Measured by CPU time on one thread, the tiles run at 90-99% of one whole-matrix sgemm on
 * transformer shapes (the price of dynamic scheduling's balance); a loop over groups calling
 * OpenBLAS's threaded sgemm ran 2-5x slower than the flat task list on the shared 2-core machine.
 * Many-core machines get less speed-up on small products than OpenBLAS would give them: the
 * price of tiles that do not depend on the thread count. */
#define CPU_TILE_M 512
#define CPU_TILE_N 1024
#define CPU_MIN_TILES 4
#define CPU_MIN_TILE_FLOPS 4.0e6
#define CPU_TILE_ALIGN 16 /* tile sizes are multiples of this (sgemm kernels work in 16s) */

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

/* n split into parts of about `target` (one part when n <= 1.5 target), a multiple of the
 * alignment unless that is all of n. */
static int split(int n, int target) {
    if (n <= target + target / 2) return n;
    int parts = (n + target - 1) / target;
    return ETM_MIN(n, round_up((n + parts - 1) / parts, CPU_TILE_ALIGN));
}

/* The tiles of one (M, N, K) product, at least min_tiles of them where the work allows. */
static tile_plan plan_tiles(int M, int N, int K, int min_tiles) {
    tile_plan p;
    int tm = split(M, CPU_TILE_M), tn = split(N, CPU_TILE_N);
    for (;;) {
        long tiles = (long)((M + tm - 1) / tm) * ((N + tn - 1) / tn);
        if (tiles >= min_tiles || 2.0 * tm * tn * (K > 0 ? K : 1) < 2 * CPU_MIN_TILE_FLOPS)
            break;
        if (tn >= 256 && tn >= tm)
            tn = split(tn, tn / 2);
        else if (tm >= 128)
            tm = split(tm, tm / 2);
        else if (tn >= 256)
            tn = split(tn, tn / 2);
        else
            break;
    }
    p.tile_m = tm;
    p.tile_n = tn;
    p.row_tiles = (M + tm - 1) / tm;
    p.col_tiles = (N + tn - 1) / tn;
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
    tile_plan p = plan_tiles(M, N, K, CPU_MIN_TILES);
    int tiles = p.row_tiles * p.col_tiles;
    /* Always a parallel region, even for one tile: see the top of this file. */
    ETM_OMP(parallel for schedule(dynamic, 1))
    for (int t = 0; t < tiles; t++)
        run_tile(&p, t / p.col_tiles, t % p.col_tiles, trans_a, trans_b, M, N, K, alpha, A, lda, B,
                 ldb, beta, C, ldc);
}

typedef struct {
    int group;    /* index into groups */
    int ti, tj;   /* tile in that group's plan */
    double flops; /* of this tile, for largest-first ordering */
} grouped_task;

/* Largest tiles first, so that dynamic scheduling ends with small ones (ties: group order). */
static int by_flops_desc(const void *pa, const void *pb) {
    const grouped_task *a = pa, *b = pb;
    if (a->flops != b->flops) return a->flops < b->flops ? 1 : -1;
    if (a->group != b->group) return a->group < b->group ? -1 : 1;
    return a->ti != b->ti ? (a->ti < b->ti ? -1 : 1) : (a->tj < b->tj ? -1 : a->tj > b->tj);
}

void cpu_gemm_grouped(etm_backend *be, int trans_a, int trans_b, int count,
                      const etm_gemm_group *groups, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    (void)be;
    if (count <= 0) return;
    /* The groups themselves give the threads work: each needs only its share of CPU_MIN_TILES. */
    int nonempty = 0;
    for (int g = 0; g < count; g++) nonempty += groups[g].M > 0 && groups[g].N > 0;
    int min_tiles = nonempty ? (CPU_MIN_TILES + nonempty - 1) / nonempty : 1;
    tile_plan *plans = etm_malloc((size_t)count * sizeof *plans);
    size_t n_tasks = 0;
    for (int g = 0; g < count; g++) {
        const etm_gemm_group *gr = &groups[g];
        if (gr->M <= 0 || gr->N <= 0) {
            plans[g].row_tiles = plans[g].col_tiles = 0;
            continue;
        }
        plans[g] = plan_tiles(gr->M, gr->N, gr->K, min_tiles);
        n_tasks += (size_t)plans[g].row_tiles * plans[g].col_tiles;
    }
    grouped_task *tasks = etm_malloc((n_tasks ? n_tasks : 1) * sizeof *tasks);
    size_t t = 0;
    for (int g = 0; g < count; g++)
        for (int ti = 0; ti < plans[g].row_tiles; ti++)
            for (int tj = 0; tj < plans[g].col_tiles; tj++) {
                const tile_plan *p = &plans[g];
                int m = ETM_MIN(p->tile_m, groups[g].M - ti * p->tile_m);
                int n = ETM_MIN(p->tile_n, groups[g].N - tj * p->tile_n);
                tasks[t++] = (grouped_task){g, ti, tj, (double)m * n * (groups[g].K + 1)};
            }
    qsort(tasks, n_tasks, sizeof *tasks, by_flops_desc);
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

/* ---- symmetric products (syrk_batched) --------------------------------------------------------
 * The upper triangle of each C_e is cut into square blocks of about CPU_SYRK_TILE (a function of n
 * alone, never of the thread count or of count): a diagonal block is one single-threaded ssyrk,
 * an off-diagonal one a single-threaded sgemm, and each task also writes the mirror of what it
 * computed, so no pass over C follows. Single-threaded on one 512-side Gram matrix (OpenBLAS
 * 0.3.21, Haswell kernels, k = 1024): sgemm of the whole square 5.0 ms, one ssyrk 2.7 ms, blocks
 * of 256 2.8 ms, of 128 2.8 ms, upper-triangle row panels by sgemm 3.1-3.7 ms; the mirror
 * (mirror_block) 0.05 ms. Blocks of 256 cost little against one ssyrk and give a 512-side matrix 3 tasks, so a
 * single large matrix (count 1) still keeps a few threads busy. */
#define CPU_SYRK_TILE 256

static void cpu_ssyrk_1thread(int trans, int n, int k, float alpha, const float *A, int lda, float beta,
                       float *C, int ldc) {
    if (n <= 0) return;
    if (k <= 0) { /* the upper triangle = beta C; never 0 * NaN when beta is 0 */
        for (int i = 0; i < n; i++)
            for (int j = i; j < n; j++) {
                float *c = C + (size_t)i * ldc + j;
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return;
    }
#ifdef _OPENMP
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    cblas_ssyrk(CblasRowMajor, CblasUpper, trans ? CblasTrans : CblasNoTrans, n, k, alpha, A, lda,
                beta, C, ldc);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
}

typedef struct {
    int e;        /* matrix */
    int bi, bj;   /* block (bi <= bj) */
    double flops;
} syrk_task;

static int syrk_by_flops_desc(const void *pa, const void *pb) {
    const syrk_task *a = pa, *b = pb;
    if (a->flops != b->flops) return a->flops < b->flops ? 1 : -1;
    if (a->e != b->e) return a->e < b->e ? -1 : 1;
    return a->bi != b->bi ? (a->bi < b->bi ? -1 : 1) : (a->bj < b->bj ? -1 : a->bj > b->bj);
}

/* C[r0.., c0..] (rows x cols) copied, transposed, to C[c0.., r0..]; below the diagonal only when
 * the block is a diagonal one (r0 == c0). In 32 x 32 tiles, each written row by row: an
 * element-by-element transpose of a 256 x 256 block strides through 256 rows and cost about 10
 * times as much (0.6 ms against 0.05 ms for the three blocks of a 512 side). */
#define CPU_MIRROR_TILE 32
static void mirror_block(float *C, int ldc, int r0, int c0, int rows, int cols) {
    const int diag = r0 == c0;
    for (int ib = 0; ib < rows; ib += CPU_MIRROR_TILE)
        for (int jb = diag ? ib : 0; jb < cols; jb += CPU_MIRROR_TILE) {
            int ie = ETM_MIN(ib + CPU_MIRROR_TILE, rows), je = ETM_MIN(jb + CPU_MIRROR_TILE, cols);
            for (int j = jb; j < je; j++) {
                float *dst = C + (size_t)(c0 + j) * ldc + r0;
                const float *src = C + c0 + j;
                int iend = diag ? ETM_MIN(j, ie) : ie; /* diagonal block: i < j only */
                for (int i = ib; i < iend; i++) dst[i] = src[(size_t)(r0 + i) * ldc];
            }
        }
}

void cpu_syrk_batched(etm_backend *be, int trans, int count, int n, int k, float alpha,
                      const float *A, int lda, size_t a_stride, float beta, float *C, int ldc,
                      size_t c_stride) {
    (void)be;
    if (count <= 0 || n <= 0) return;
    const int tile = split(n, CPU_SYRK_TILE), blocks = (n + tile - 1) / tile;
    const long per = (long)blocks * (blocks + 1) / 2;
    const long n_tasks = per * count;
    syrk_task *tasks = etm_malloc((size_t)n_tasks * sizeof *tasks);
    long t = 0;
    for (int e = 0; e < count; e++)
        for (int bi = 0; bi < blocks; bi++)
            for (int bj = bi; bj < blocks; bj++) {
                double m = ETM_MIN(tile, n - bi * tile), w = ETM_MIN(tile, n - bj * tile);
                tasks[t++] = (syrk_task){e, bi, bj, (bi == bj ? m * (m + 1) / 2 : m * w) * (k + 1)};
            }
    qsort(tasks, (size_t)n_tasks, sizeof *tasks, syrk_by_flops_desc);
    ETM_OMP(parallel for schedule(dynamic, 1))
    for (long i = 0; i < n_tasks; i++) {
        const syrk_task *tk = &tasks[i];
        const float *a = A + (size_t)tk->e * a_stride;
        float *c = C + (size_t)tk->e * c_stride;
        int r0 = tk->bi * tile, c0 = tk->bj * tile;
        int m = ETM_MIN(tile, n - r0), w = ETM_MIN(tile, n - c0);
        /* op(A)'s rows r0.. : rows of A (no transpose) or its columns (transpose) */
        const float *ar = trans ? a + r0 : a + (size_t)r0 * lda;
        const float *ac = trans ? a + c0 : a + (size_t)c0 * lda;
        if (r0 == c0)
            cpu_ssyrk_1thread(trans, m, k, alpha, ar, lda, beta, c + (size_t)r0 * ldc + r0, ldc);
        else
            cpu_sgemm_1thread(trans, !trans, m, w, k, alpha, ar, lda, ac, lda, beta,
                              c + (size_t)r0 * ldc + c0, ldc);
        mirror_block(c, ldc, r0, c0, m, w);
    }
    free(tasks);
}
