/* cuda_gemm.cu: row-major GEMM, grouped GEMM and batched symmetric products (syrk) on cuBLAS.
 *
 * cuBLAS is column-major. A row-major matrix X with leading dimension ldx is, read column-major,
 * X^T with the same leading dimension, so the row-major C = op(A) op(B) is computed as the
 * column-major C^T = op(B)^T op(A)^T: swap the operands and the sizes M and N, keep the
 * transpose flags. cuBLAS with atomics disallowed is deterministic on a given GPU.
 *
 * Every product is one cublasGemmEx on fp32 matrices; its compute type carries the backend's
 * precision mode (plain fp32, or TF32 / bf16 tensor cores accumulating in fp32). */
#include "cuda_internal.h"

/* C(M,N) = beta * C, the K == 0 case (cuBLAS requires lda >= 1 and is not asked). beta == 0
 * writes zeros even over NaN, as BLAS does. */
__global__ void k_scale_matrix(float *C, int M, int N, int ldc, float beta) {
    size_t total = (size_t)M * N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / N, col = i % N;
        float *c = C + r * ldc + col;
        *c = beta == 0.0f ? 0.0f : beta * *c;
    }
}

static void gemm_one(etm_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (beta != 1.0f) {
            k_scale_matrix<<<etm_cuda_blocks((size_t)M * N), ETM_CUDA_THREADS, 0, c->stream>>>(
                C, M, N, ldc, beta);
            ETM_CUDA_LAUNCHED();
        }
        return;
    }
    cublasOperation_t op_a = trans_a == ETM_TRANS ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = trans_b == ETM_TRANS ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    if (c->gemm_math == ETM_CUDA_GEMM_TF32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    if (c->gemm_math == ETM_CUDA_GEMM_BF16) compute = CUBLAS_COMPUTE_32F_FAST_16BF;
    ETM_CUBLAS_CHECK(cublasGemmEx(c->cublas, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, ldb, A,
                                  CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc,
                                  compute, CUBLAS_GEMM_DEFAULT));
}

void etm_cuda_gemm(etm_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C,
                   int ldc) {
    gemm_one(be, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* One cuBLAS call per group, in group order. The groups are few (one per expert) and each is a
 * full-sized GEMM, so a loop keeps every group on cuBLAS's best kernel for its shape. */
void etm_cuda_gemm_grouped(etm_backend *be, int trans_a, int trans_b, int count,
                           const etm_gemm_group *groups, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc) {
    for (int g = 0; g < count; g++) {
        const etm_gemm_group *gr = &groups[g];
        gemm_one(be, trans_a, trans_b, gr->M, gr->N, gr->K, alpha, A + gr->a_off, lda,
                 B + gr->b_off, ldb, beta, C + gr->c_off, ldc);
    }
}

/* C(n,n): the lower triangle (row-major) = the mirror of the upper one. */
__global__ void k_mirror_upper(float *C, int n, int ldc) {
    size_t total = (size_t)n * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / n, col = i % n;
        if (col < r) C[r * ldc + col] = C[col * ldc + r];
    }
}

/* One cublasSsyrk per matrix (fp32 whatever the GEMM precision mode: cuBLAS's syrk has no tensor
 * core compute type), then the mirror. Row-major (n,k) A read column-major is A^T (k,n), so the
 * row-major A A^T is syrk with CUBLAS_OP_T, A^T A with CUBLAS_OP_N, and the row-major upper
 * triangle is the column-major lower one. */
void etm_cuda_syrk_batched(etm_backend *be, int trans, int count, int n, int k, float alpha,
                           const float *A, int lda, size_t a_stride, float beta, float *C, int ldc,
                           size_t c_stride) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (n <= 0) return;
    for (int e = 0; e < count; e++) {
        float *ce = C + (size_t)e * c_stride;
        if (k <= 0) {
            if (beta != 1.0f) {
                k_scale_matrix<<<etm_cuda_blocks((size_t)n * n), ETM_CUDA_THREADS, 0, c->stream>>>(
                    ce, n, n, ldc, beta);
                ETM_CUDA_LAUNCHED();
            }
        } else {
            ETM_CUBLAS_CHECK(cublasSsyrk(c->cublas, CUBLAS_FILL_MODE_LOWER,
                                         trans == ETM_TRANS ? CUBLAS_OP_N : CUBLAS_OP_T, n, k, &alpha,
                                         A + (size_t)e * a_stride, lda, &beta, ce, ldc));
        }
        k_mirror_upper<<<etm_cuda_blocks((size_t)n * n), ETM_CUDA_THREADS, 0, c->stream>>>(ce, n, ldc);
        ETM_CUDA_LAUNCHED();
    }
}
