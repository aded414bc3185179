/* cuda_optim.cu: the AdamW update, one thread per parameter.
 *
 * Written with round-to-nearest intrinsics in the order of the C expression
 *     m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g g;  p -= lr (m / bc1 / (sqrt(v / bc2) + eps) + wd p)
 * so nvcc does not contract it into FMAs and each step rounds like the CPU backend's C code. */
#include "cuda_internal.h"

__global__ void k_adamw_update(float *p, const float *g, float *m, float *v, size_t n, float lr,
                               float b1, float b2, float eps, float wd, float bc1, float bc2) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(__fsub_rn(1.0f, b1), gi));
        float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, b2), gi), gi));
        m[i] = mi;
        v[i] = vi;
        float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, bc2)), eps);
        float step = __fadd_rn(__fdiv_rn(__fdiv_rn(mi, bc1), denom), __fmul_rn(wd, p[i]));
        p[i] = __fsub_rn(p[i], __fmul_rn(lr, step));
    }
}

void etm_cuda_adamw_update(etm_backend *be, float *p, const float *g, float *m, float *v,
                           size_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                           float bc2) {
    if (n == 0) return;
    k_adamw_update<<<etm_cuda_blocks(n), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(
        p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);
    ETM_CUDA_LAUNCHED();
}
