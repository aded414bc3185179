/* backend.h: the operations the model needs, as a table of function pointers.
 *
 * The model and trainer in src/ call only these. A backend fills an etm_backend with its
 * functions (see backends/cpu/cpu_backend.c) and registers a constructor in backend.c; the CUDA
 * backend swaps in without touching model code.
 *
 * Conventions, for every operation:
 *  - Pointers named as tensors (float *x, int32_t *idx, uint8_t *mask) are backend memory from
 *    alloc(); pointers marked "host" are ordinary memory. On the CPU backend both are the same.
 *  - Matrices are row-major and dense unless a leading dimension says otherwise. Shapes are given
 *    in the comment of each parameter, e.g. (N, D).
 *  - Forward operations write their outputs. Backward operations ACCUMULATE (+=) into the
 *    gradients of their inputs, so a tensor used twice gets both contributions; the caller zeroes
 *    gradient buffers once per step. Exceptions are marked "(writes)".
 *  - Results must not depend on the number of threads: partition outputs, reduce in a fixed
 *    order, no atomics. Each backend documents which results are bit-identical to the CPU's.
 *  - Routing ties are broken towards the lower index (token or expert), always; NaN scores rank
 *    below every number.
 */
#ifndef ETM_BACKEND_H
#define ETM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct etm_backend etm_backend;

/* The router gate functions beside sigmoid_forward and the row softmax (src/router/router.h defines
 * where each is used). */
typedef enum {
    ETM_GATE_OP_RELU = 0,        /* out = max(x, 0), elementwise */
    ETM_GATE_OP_SOFTMAX_ANCHOR,  /* per row: softmax over [0, x_1..x_E] (a zero-logit anchor
                                    first); out the E routed shares, anchor(N) the anchor's */
    ETM_GATE_OP_SOFTMAX_COLUMNS  /* per column: softmax over the N rows */
} etm_gate_op;

/* One GEMM of a grouped call: C[c_off..] = alpha * op(A[a_off..]) * op(B[b_off..]) + beta * C.
 * Offsets are in elements from the base pointers given to gemm_grouped; lda/ldb/ldc are shared. */
typedef struct {
    int M, N, K;                /* this group's sizes; groups with M, N or K == 0 are skipped
                                   (K == 0 with beta != 1 still scales C) */
    size_t a_off, b_off, c_off; /* element offsets of this group's A, B and C */
} etm_gemm_group;

/* Routing of N tokens to E experts as (token, expert) pairs, grouped two ways. Built by
 * build_dispatch from a 0/1 mask; capacity for N*E pairs is allocated by dispatch_alloc. */
typedef struct {
    int n_tokens;              /* N */
    int n_experts;             /* E */
    int n_pairs;               /* P = number of ones in the mask */
    int32_t *expert_offsets;   /* (E+1) pairs of expert e are [expert_offsets[e], expert_offsets[e+1]) */
    int32_t *pair_token;       /* (N*E) token of each pair; ascending within an expert */
    int32_t *pair_expert;      /* (N*E) expert of each pair */
    int32_t *token_offsets;    /* (N+1) token t's pairs are token_pairs[token_offsets[t] .. t+1) */
    int32_t *token_pairs;      /* (N*E) pair indices grouped by token, ascending expert order */
    int32_t *host_expert_offsets; /* (E+1) host: copy of expert_offsets, for GEMM sizes */
} etm_dispatch;

enum { ETM_NO_TRANS = 0, ETM_TRANS = 1 };

struct etm_backend {
    const char *name; /* "cpu", "cuda" */
    void *ctx;        /* the backend's private state */

    /* ---- lifetime and memory ---------------------------------------------------------------- */
    void (*destroy)(etm_backend *be);                       /* frees ctx; not the etm_backend itself */
    void *(*alloc)(etm_backend *be, size_t bytes);          /* zero-filled; aborts on failure */
    void (*free)(etm_backend *be, void *p);
    void (*upload)(etm_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(etm_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(etm_backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(etm_backend *be, void *p, size_t bytes);
    void (*synchronize)(etm_backend *be);                   /* waits for queued work (no-op on CPU) */

    /* ---- matrix products (row-major, like cblas_sgemm with CblasRowMajor) --------------------- */
    /* C(M,N) = alpha * op(A) * op(B) + beta * C; op(A) is (M,K), op(B) is (K,N). */
    void (*gemm)(etm_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* Several independent GEMMs (one per expert); groups (host) has count entries. */
    void (*gemm_grouped)(etm_backend *be, int trans_a, int trans_b, int count,
                         const etm_gemm_group *groups, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc);
    /* Symmetric products of count matrices at fixed strides (Muon's Newton-Schulz with
     * muon_ns_gram = symmetric): C_e(n,n) = alpha * op(A_e) * op(A_e)^T + beta * C_e, op(A_e)
     * (n,k): A_e = A + e a_stride is (n,k) for ETM_NO_TRANS (C = A A^T), (k,n) for ETM_TRANS
     * (C = A^T A); C_e = C + e c_stride. Reads only C_e's upper triangle (for beta), computes the
     * upper triangle (about half a GEMM's FLOPs) and writes the lower one as its mirror, so C_e is
     * exactly symmetric. Its bits need not equal gemm's. */
    void (*syrk_batched)(etm_backend *be, int trans, int count, int n, int k, float alpha,
                         const float *A, int lda, size_t a_stride, float beta, float *C, int ldc,
                         size_t c_stride);

    /* ---- elementwise and reductions --------------------------------------------------------- */
    void (*fill)(etm_backend *be, float *x, float value, size_t n);
    void (*scale)(etm_backend *be, float *x, float a, size_t n);                   /* x *= a */
    void (*axpy)(etm_backend *be, float *y, float a, const float *x, size_t n);    /* y += a x */
    /* sum of x[i]^2 in double, in a fixed order; returned to the host. */
    double (*sum_squares)(etm_backend *be, const float *x, size_t n);
    /* out(E) (writes) = sum over rows of in(N,E), in row order. */
    void (*column_sum)(etm_backend *be, float *out, const float *in, int N, int E);
    /* y(N,E) += v(E) broadcast over rows. */
    void (*add_row_vector)(etm_backend *be, float *y, const float *v, int N, int E);
    /* y(N,E) += a(N)[row] * x(N,E): a per-row scale. */
    void (*add_scaled_rows)(etm_backend *be, float *y, const float *a, const float *x, int N, int E);

    /* ---- transformer pieces ----------------------------------------------------------------- */
    /* out(N,D) = wte[tokens[n]]; wte (V,D); tokens (N). */
    void (*embedding_forward)(etm_backend *be, float *out, const float *wte, const int32_t *tokens,
                              int N, int D);
    /* dwte(V,D) += scatter of dout(N,D) by tokens; deterministic (fixed order per row of dwte). */
    void (*embedding_backward)(etm_backend *be, float *dwte, const float *dout, const int32_t *tokens,
                               int N, int D, int V);
    /* RMSNorm without weights: out = x * rstd, rstd(N) = 1/sqrt(mean(x^2) + eps); x (N,C). */
    void (*rmsnorm_forward)(etm_backend *be, float *out, float *rstd, const float *x, int N, int C,
                            float eps);
    /* dx += rstd * (dout - out * mean(dout * out)) per row. */
    void (*rmsnorm_backward)(etm_backend *be, float *dx, const float *dout, const float *out,
                             const float *rstd, int N, int C);
    /* In-place rotary embedding of x (B,T,H,hd) at positions pos0..pos0+T-1, on halves of each head:
     * y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos; cos/sin tables (T_max, hd/2). */
    void (*rope_forward)(etm_backend *be, float *x, const float *cos_t, const float *sin_t, int B,
                         int T, int H, int hd, int pos0);
    /* In-place: turns dy into dx (the inverse rotation). */
    void (*rope_backward)(etm_backend *be, float *dx, const float *cos_t, const float *sin_t, int B,
                          int T, int H, int hd, int pos0);
    /* Causal grouped-query attention, scale 1/sqrt(hd). q (B,T,H,hd); k, v (B,S,Hkv,hd) with S >= T:
     * query i sits at position S-T+i and sees keys 0..S-T+i. H is a multiple of Hkv; query head h
     * uses kv head h / (H/Hkv). out (B,T,H,hd); lse (B,H,T) log-sum-exp of each row's scores. */
    void (*attention_forward)(etm_backend *be, float *out, float *lse, const float *q, const float *k,
                              const float *v, int B, int T, int S, int H, int Hkv, int hd);
    void (*attention_backward)(etm_backend *be, float *dq, float *dk, float *dv, const float *dout,
                               const float *q, const float *k, const float *v, const float *out,
                               const float *lse, int B, int T, int S, int H, int Hkv, int hd);
    /* out = relu(x)^2 ; dx += dout * 2 relu(x). n elements. */
    void (*relu2_forward)(etm_backend *be, float *out, const float *x, size_t n);
    void (*relu2_backward)(etm_backend *be, float *dx, const float *dout, const float *x, size_t n);
    /* out = cap * tanh(x / cap), n elements (logits for sampling). */
    void (*softcap)(etm_backend *be, float *out, const float *x, size_t n, float cap);
    /* Soft-capped cross-entropy: losses(N) (writes) = -log softmax(cap*tanh(logits/cap))[target];
     * logits (N,V) raw; targets (N), a negative target means "ignore" and gives loss 0. */
    void (*xent_forward)(etm_backend *be, float *losses, const float *logits, const int32_t *targets,
                         int N, int V, float cap);
    /* dlogits(N,V) (writes) = dloss * d loss_n / d logits for every valid row, 0 for ignored rows. */
    void (*xent_backward)(etm_backend *be, float *dlogits, const float *logits, const int32_t *targets,
                          int N, int V, float cap, float dloss);

    /* ---- router scores ---------------------------------------------------------------------- */
    void (*sigmoid_forward)(etm_backend *be, float *out, const float *x, size_t n);
    void (*sigmoid_backward)(etm_backend *be, float *dx, const float *dout, const float *out, size_t n);
    void (*softmax_forward)(etm_backend *be, float *out, const float *x, int N, int E);  /* per row */
    void (*softmax_backward)(etm_backend *be, float *dx, const float *dout, const float *out, int N,
                             int E);
    void (*logsumexp_rows)(etm_backend *be, float *out, const float *x, int N, int E); /* out(N) */
    /* out(N,E) = gate op of x(N,E); anchor(N) (writes) the anchor's share for
     * ETM_GATE_OP_SOFTMAX_ANCHOR (may be NULL; unused by the other ops). */
    void (*gate_forward)(etm_backend *be, etm_gate_op op, float *out, float *anchor, const float *x,
                         int N, int E);
    /* dx(N,E) += the gradient through gate_forward, from dout(N,E) and, for the anchor op,
     * danchor(N) (NULL: zero); out and anchor as gate_forward wrote them. */
    void (*gate_backward)(etm_backend *be, etm_gate_op op, float *dx, const float *dout,
                          const float *danchor, const float *out, const float *anchor, int N, int E);
    /* out(N) (writes) = sum_d a[n,d] b[n,d], each row summed in a fixed order. */
    void (*rows_dot)(etm_backend *be, float *out, const float *a, const float *b, int N, int D);

    /* ---- routing decisions (mask z (N,E): 1 = token n goes to expert e) ----------------------- */
    /* z (writes) = the k largest of score(N,E) in each row. */
    void (*topk_rows)(etm_backend *be, uint8_t *z, const float *score, int N, int E, int k);
    /* Column selection within pools of pool_rows consecutive rows (N a multiple of pool_rows).
     * For each pool and expert e: candidates are the rows with eligible[n,e] != 0 (all rows when
     * eligible is NULL); n_above = candidates with score >= threshold[e] (0 when threshold is
     * NULL); the expert takes its top min(max(n_above, lo), hi) candidates by score (never more
     * than there are). z (writes) marks them. Expert choice: threshold NULL, lo = hi = k_target.
     * Expert threshold: threshold c, lo = 0, hi = pool_rows (or the capacity clamp).
     * TC capacity: eligible = top-k mask, threshold NULL, lo = hi = capacity. */
    void (*select_columns)(etm_backend *be, uint8_t *z, const float *score, const uint8_t *eligible,
                           const float *threshold, int N, int E, int pool_rows, int lo, int hi);
    /* out(N/pool_rows, E) (writes) = the k-th largest score of each column within each pool
     * (+infinity when k < 1, -infinity when k > pool_rows). */
    void (*kth_largest_columns)(etm_backend *be, float *out, const float *score, int N, int E,
                                int pool_rows, int k);

    /* ---- dropless dispatch ------------------------------------------------------------------ */
    /* Allocates d's arrays for up to N tokens and E experts; dispatch_free releases them. */
    void (*dispatch_alloc)(etm_backend *be, etm_dispatch *d, int N, int E);
    void (*dispatch_free)(etm_backend *be, etm_dispatch *d);
    /* Fills d from mask z (N,E) (counting sort by expert, tokens ascending) and copies the expert
     * offsets to the host. */
    void (*build_dispatch)(etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E);
    /* dst(P,D) (writes) = src[pair_token[p]] for p < P. */
    void (*gather_rows)(etm_backend *be, float *dst, const float *src, const int32_t *pair_token,
                        int P, int D);
    /* dst(N,D) += sum over token n's pairs p (ascending expert) of src[p]; deterministic. */
    void (*scatter_add_rows)(etm_backend *be, float *dst, const float *src, const etm_dispatch *d,
                             int D);
    /* out(P) (writes) = x(N,E)[pair_token[p], pair_expert[p]]. */
    void (*gather_pairs)(etm_backend *be, float *out, const float *x, const etm_dispatch *d);
    /* dx(N,E) += scatter of dpair(P) to (pair_token[p], pair_expert[p]); pairs are distinct. */
    void (*scatter_add_pairs)(etm_backend *be, float *dx, const float *dpair, const etm_dispatch *d);
    /* y(N,D) += sum over token n's pairs p (ascending expert) of gate[p] * ye[p] (P,D). */
    void (*combine_forward)(etm_backend *be, float *y, const float *ye, const float *gate,
                            const etm_dispatch *d, int D);
    /* dye(P,D) (writes) = gate[p] * dy[token]; dgate(P) (writes) = dot(dy[token], ye[p]). */
    void (*combine_backward)(etm_backend *be, float *dye, float *dgate, const float *dy,
                             const float *ye, const float *gate, const etm_dispatch *d, int D);

    /* ---- optimizers ------------------------------------------------------------------------- */
    /* AdamW on n elements: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * p), with bc1 = 1-b1^t, bc2 = 1-b2^t. */
    void (*adamw_update)(etm_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                         float lr, float b1, float b2, float eps, float wd, float bc1, float bc2);
};

/* ---- the list of operations ------------------------------------------------------------------
 * Every function pointer of etm_backend, in declaration order, as X(name, kind). This list is the
 * one place an operation is named; everything that must cover every operation follows from it:
 *  - the backend tables: cpu_backend.c fills `.name = cpu_<name>` and cuda_backend.cu
 *    `etm_cuda_<name>` (memory functions: `cuda_<name>`) for each entry, so a backend without the
 *    function does not compile; etm_backend_create refuses a table with a NULL entry;
 *  - the profiler (src/bench/profiler.c) wraps each entry as `prof_<name>`: a missing wrapper does not
 *    compile;
 *  - the op-by-op comparison's coverage: tests/check_compare_ops.c runs etm_check_backend_ops
 *    (src/validate/compare_ops.c) through the profiler and fails for any entry it never calls;
 *  - backend.c checks at compile time that this list and the struct above agree, field by field.
 * kind: ETM_OP_LIFETIME (destroy: called by etm_backend_free, not profiled or op-checked),
 * ETM_OP_MEMORY (allocation and synchronisation: counted by the profiler, not timed),
 * ETM_OP_TIMED (data movement and compute: timed by the profiler).
 * Adding an operation: a field with its contract in etm_backend, a line here at the same place,
 * then the compiler names every file that still lacks it (doc/architecture.md, "Add an op"). */
#define ETM_BACKEND_OPS(X)                                                                         \
    X(destroy, ETM_OP_LIFETIME)                                                                    \
    X(alloc, ETM_OP_MEMORY)                                                                        \
    X(free, ETM_OP_MEMORY)                                                                         \
    X(upload, ETM_OP_TIMED)                                                                        \
    X(download, ETM_OP_TIMED)                                                                      \
    X(copy, ETM_OP_TIMED)                                                                          \
    X(zero, ETM_OP_TIMED)                                                                          \
    X(synchronize, ETM_OP_MEMORY)                                                                  \
    X(gemm, ETM_OP_TIMED)                                                                          \
    X(gemm_grouped, ETM_OP_TIMED)                                                                  \
    X(syrk_batched, ETM_OP_TIMED)                                                                  \
    X(fill, ETM_OP_TIMED)                                                                          \
    X(scale, ETM_OP_TIMED)                                                                         \
    X(axpy, ETM_OP_TIMED)                                                                          \
    X(sum_squares, ETM_OP_TIMED)                                                                   \
    X(column_sum, ETM_OP_TIMED)                                                                    \
    X(add_row_vector, ETM_OP_TIMED)                                                                \
    X(add_scaled_rows, ETM_OP_TIMED)                                                               \
    X(embedding_forward, ETM_OP_TIMED)                                                             \
    X(embedding_backward, ETM_OP_TIMED)                                                            \
    X(rmsnorm_forward, ETM_OP_TIMED)                                                               \
    X(rmsnorm_backward, ETM_OP_TIMED)                                                              \
    X(rope_forward, ETM_OP_TIMED)                                                                  \
    X(rope_backward, ETM_OP_TIMED)                                                                 \
    X(attention_forward, ETM_OP_TIMED)                                                             \
    X(attention_backward, ETM_OP_TIMED)                                                            \
    X(relu2_forward, ETM_OP_TIMED)                                                                 \
    X(relu2_backward, ETM_OP_TIMED)                                                                \
    X(softcap, ETM_OP_TIMED)                                                                       \
    X(xent_forward, ETM_OP_TIMED)                                                                  \
    X(xent_backward, ETM_OP_TIMED)                                                                 \
    X(sigmoid_forward, ETM_OP_TIMED)                                                               \
    X(sigmoid_backward, ETM_OP_TIMED)                                                              \
    X(softmax_forward, ETM_OP_TIMED)                                                               \
    X(softmax_backward, ETM_OP_TIMED)                                                              \
    X(logsumexp_rows, ETM_OP_TIMED)                                                                \
    X(gate_forward, ETM_OP_TIMED)                                                                  \
    X(gate_backward, ETM_OP_TIMED)                                                                 \
    X(rows_dot, ETM_OP_TIMED)                                                                      \
    X(topk_rows, ETM_OP_TIMED)                                                                     \
    X(select_columns, ETM_OP_TIMED)                                                                \
    X(kth_largest_columns, ETM_OP_TIMED)                                                           \
    X(dispatch_alloc, ETM_OP_MEMORY)                                                               \
    X(dispatch_free, ETM_OP_MEMORY)                                                                \
    X(build_dispatch, ETM_OP_TIMED)                                                                \
    X(gather_rows, ETM_OP_TIMED)                                                                   \
    X(scatter_add_rows, ETM_OP_TIMED)                                                              \
    X(gather_pairs, ETM_OP_TIMED)                                                                  \
    X(scatter_add_pairs, ETM_OP_TIMED)                                                             \
    X(combine_forward, ETM_OP_TIMED)                                                               \
    X(combine_backward, ETM_OP_TIMED)                                                              \
    X(adamw_update, ETM_OP_TIMED)

typedef enum { ETM_OP_LIFETIME, ETM_OP_MEMORY, ETM_OP_TIMED } etm_op_kind;

/* ETM_OPI_<name>: an operation's index in the list; ETM_BACKEND_N_OPS of them. */
#define ETM_OP_INDEX_(name, kind) ETM_OPI_##name,
enum { ETM_BACKEND_OPS(ETM_OP_INDEX_) ETM_BACKEND_N_OPS };
#undef ETM_OP_INDEX_

/* The list at run time: name and kind of operation i < ETM_BACKEND_N_OPS. */
const char *etm_backend_op_name(int i);
etm_op_kind etm_backend_op_kind(int i);
/* Index of the operation called name, or -1. */
int etm_backend_op_index(const char *name);
/* Operation i of a table as a generic pointer (NULL when the backend left it out). */
void (*etm_backend_op(const etm_backend *be, int i))(void);

/* ---- the registry (the only global state in etmoe) ---------------------------------------- */
/* Creates the backend called name ("cpu", "cuda"); NULL with a message when it is unknown, not
 * built in, or has no device. */
etm_backend *etm_backend_create(const char *name, etm_error *err);
void etm_backend_free(etm_backend *be);
/* Names of the backends built into this program, NULL-terminated. */
const char *const *etm_backend_names(void);

#endif
