/* cpu_backend.c: the CPU backend's operation table and its memory (ordinary host memory, 64-byte
 * aligned). The operations live in the other cpu_*.c files, one family per file.
 *
 * Bit-identical results whatever the OpenMP thread count (1, 2, 64, ...), and why:
 *  - GEMMs: OpenBLAS's own threading is NOT thread-count invariant (measured with 0.3.21: a
 *    512x512x513 product differs in its last bits between 1 and 2 threads, because the threaded
 *    driver splits K into different blocks). So cpu_gemm.c never lets OpenBLAS thread: it cuts C
 *    into tiles whose sizes depend only on (M, N, K) and calls a single-threaded sgemm per tile
 *    from our own parallel region. Every element of C is then computed by the same sgemm call,
 *    over the full K, whichever thread runs it.
 *  - Elementwise operations compute each element by the same expression on any thread.
 *  - Per-row operations (RMSNorm, softmax, log-sum-exp, cross-entropy, rope, attention rows) give
 *    each row to one thread, which reduces it in a fixed sequential order.
 *  - Long reductions (sum_squares) sum fixed blocks of CPU_REDUCE_BLOCK elements, then the block
 *    partials in block order; column_sum sums each column in row order.
 *  - Scatters (embedding_backward, scatter_add_rows, combine, attention's dK/dV over the query
 *    heads sharing a kv head) partition the OUTPUT and add contributions in a fixed order (token
 *    order, ascending expert, ascending query head); there are no atomics anywhere.
 *  - Routing decisions compare exact keys and break ties by index, so they are exact.
 *  - exp and tanh in the row loops are our own (cpu_math.h), vectorised and compiled per
 *    instruction set (cpu_vector.c) without fused multiply-adds: every clone rounds alike, so the
 *    results do not depend on the machine's vector width either (tested). They differ from
 *    libm's expf/tanhf by an ulp or two.
 * tests/check_ops_determinism.c runs every operation with 1, 2 and 3 threads and compares bytes.
 *
 * Operations must be called from serial code (not from inside an OpenMP parallel region). */
/* madvise and MADV_HUGEPAGE are not POSIX (the build asks for POSIX 2008 only); glibc shows them
 * with _DEFAULT_SOURCE, and without them cpu_alloc simply gives no hint. */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE 1
#endif
#include <config.h>

#include "cpu.h"
#include "cpu_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The backend's private state: the scratch buffers of cpu_scratch. */
typedef struct {
    void *buf[CPU_SCRATCH_SLOTS];   /* (bytes[slot]) each, 64-byte aligned */
    size_t bytes[CPU_SCRATCH_SLOTS];
} cpu_ctx;

static void cpu_destroy(etm_backend *be) {
    cpu_ctx *ctx = be->ctx;
    if (ctx)
        for (int i = 0; i < CPU_SCRATCH_SLOTS; i++) free(ctx->buf[i]);
    free(ctx);
    be->ctx = NULL;
}

void *cpu_scratch(etm_backend *be, int slot, size_t bytes) {
    cpu_ctx *ctx = be->ctx;
    if (bytes <= ctx->bytes[slot]) return ctx->buf[slot];
    free(ctx->buf[slot]);
    ctx->buf[slot] = NULL;
    ctx->bytes[slot] = 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0 || !p) {
        fprintf(stderr, "etmoe: cpu backend: out of memory allocating %zu bytes of scratch\n", bytes);
        abort();
    }
    ctx->buf[slot] = p;
    ctx->bytes[slot] = bytes;
    return p;
}

/* Backend memory is calloc'd and aligned by hand: calloc hands out fresh pages from the kernel
 * already zero and maps them only when first written, where posix_memalign + memset wrote every
 * page up front on the host. The MoE layer's pair buffers are re-allocated whenever the routed
 * count outgrows them (src/model/moe.c), hundreds of MB at once: with the memset, that zeroing was
 * most of the ET step's host time outside the operations (doc/performance.md). The pointer
 * calloc returned sits just below the aligned block, for cpu_free.
 *
 * Buffers of CPU_HUGE_MIN bytes and more are also advised to use transparent huge pages where
 * the system has them (Linux, THP mode "madvise"): the first write to a fresh 4 KiB page costs a
 * page fault, and on the virtual machines we measured 1 GiB of them took 2.7-3.5 s against
 * 0.07-1.8 s in 2 MiB pages. Contents and results do not depend on it; it is a hint, and its
 * failure changes nothing. */
#define CPU_ALIGN 64
#define CPU_HUGE_MIN ((size_t)8 << 20)

static void advise_huge_pages(void *raw, size_t bytes) {
#ifdef MADV_HUGEPAGE
    long page = sysconf(_SC_PAGESIZE);
    if (bytes < CPU_HUGE_MIN || page <= 0) return;
    uintptr_t begin = ((uintptr_t)raw + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    uintptr_t end = ((uintptr_t)raw + bytes) / (uintptr_t)page * (uintptr_t)page;
    if (end > begin) (void)madvise((void *)begin, end - begin, MADV_HUGEPAGE);
#else
    (void)raw;
    (void)bytes;
#endif
}

static void *cpu_alloc(etm_backend *be, size_t bytes) {
    (void)be;
    size_t total = bytes + CPU_ALIGN + sizeof(void *);
    char *raw = total > bytes ? calloc(1, total) : NULL;
    if (!raw) {
        fprintf(stderr, "etmoe: cpu backend: out of memory allocating %zu bytes\n", bytes);
        abort();
    }
    advise_huge_pages(raw, total);
    uintptr_t at = ((uintptr_t)raw + sizeof(void *) + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    void *p = (void *)at;
    memcpy((char *)p - sizeof(void *), &raw, sizeof raw);
    return p;
}

static void cpu_free(etm_backend *be, void *p) {
    (void)be;
    if (!p) return;
    void *raw;
    memcpy(&raw, (char *)p - sizeof(void *), sizeof raw);
    free(raw);
}

static void cpu_upload(etm_backend *be, void *dst, const void *host_src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, host_src, bytes);
}

static void cpu_download(etm_backend *be, void *host_dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(host_dst, src, bytes);
}

static void cpu_copy(etm_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}

static void cpu_zero(etm_backend *be, void *p, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}

static void cpu_synchronize(etm_backend *be) { (void)be; }

/* The table, one entry per operation of backends/backend.h's list: operation X is cpu_X (defined
 * here or in the cpu_*.c file of its family, declared in cpu_internal.h). */
#define CPU_OP(name, kind) .name = cpu_##name,
static const etm_backend cpu_table = {.name = "cpu", .ctx = NULL, ETM_BACKEND_OPS(CPU_OP)};
#undef CPU_OP

etm_backend *etm_cpu_backend_create(etm_error *err) {
    (void)err;
    etm_backend *be = etm_malloc(sizeof *be);
    *be = cpu_table;
    be->ctx = etm_calloc(1, sizeof(cpu_ctx));
    return be;
}
