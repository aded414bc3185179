/* cuda_elementwise.cu: the operations where each output element depends on a fixed, small set of
 * inputs: fill, scale, axpy, row broadcasts, rotary embedding, ReLU^2, soft cap and sigmoid.
 *
 * Plain arithmetic is written with the round-to-nearest intrinsics (__fmul_rn, __fadd_rn) so
 * that nvcc cannot fuse it into FMAs: those ops then round exactly as the C code of the CPU
 * backend does and give the same bits. Ops that call expf/tanhf agree to a few ulp (the CUDA
 * and C library functions differ in their last bits). */
#include "cuda_internal.h"

#define GRID_STRIDE(i, n)                                                                        \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                     \
         i += (size_t)gridDim.x * blockDim.x)
#define LAUNCH(n) etm_cuda_blocks(n), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream

__global__ void k_fill(float *x, float value, size_t n) {
    GRID_STRIDE(i, n) x[i] = value;
}
void etm_cuda_fill(etm_backend *be, float *x, float value, size_t n) {
    if (n == 0) return;
    k_fill<<<LAUNCH(n)>>>(x, value, n);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_scale(float *x, float a, size_t n) {
    GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], a);
}
void etm_cuda_scale(etm_backend *be, float *x, float a, size_t n) {
    if (n == 0) return;
    k_scale<<<LAUNCH(n)>>>(x, a, n);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_axpy(float *y, float a, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], __fmul_rn(a, x[i]));
}
void etm_cuda_axpy(etm_backend *be, float *y, float a, const float *x, size_t n) {
    if (n == 0) return;
    k_axpy<<<LAUNCH(n)>>>(y, a, x, n);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_add_row_vector(float *y, const float *v, size_t n, int E) {
    GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], v[i % E]);
}
void etm_cuda_add_row_vector(etm_backend *be, float *y, const float *v, int N, int E) {
    size_t n = (size_t)N * E;
    if (n == 0) return;
    k_add_row_vector<<<LAUNCH(n)>>>(y, v, n, E);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_add_scaled_rows(float *y, const float *a, const float *x, size_t n, int E) {
    GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], __fmul_rn(a[i / E], x[i]));
}
void etm_cuda_add_scaled_rows(etm_backend *be, float *y, const float *a, const float *x, int N,
                              int E) {
    size_t n = (size_t)N * E;
    if (n == 0) return;
    k_add_scaled_rows<<<LAUNCH(n)>>>(y, a, x, n, E);
    ETM_CUDA_LAUNCHED();
}

/* ---- rotary embedding: one thread per (b, t, h, i < hd/2) pair of elements ----------------- */
/* inverse = 0: y1 = x1 c + x2 s, y2 = -x1 s + x2 c. inverse = 1 (the transpose, for gradients):
 * x1 = y1 c - y2 s, x2 = y1 s + y2 c. */
__global__ void k_rope(float *x, const float *cos_t, const float *sin_t, int T, int H, int hd,
                       int pos0, size_t pairs, int inverse) {
    int half = hd / 2;
    GRID_STRIDE(i, pairs) {
        int j = (int)(i % half);
        size_t row = i / half; /* (b, t, h) */
        int t = (int)((row / H) % T);
        float *p = x + row * hd;
        float c = cos_t[(size_t)(pos0 + t) * half + j], s = sin_t[(size_t)(pos0 + t) * half + j];
        float x1 = p[j], x2 = p[j + half];
        if (!inverse) {
            p[j] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            p[j + half] = __fadd_rn(__fmul_rn(-x1, s), __fmul_rn(x2, c));
        } else {
            p[j] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            p[j + half] = __fadd_rn(__fmul_rn(x1, s), __fmul_rn(x2, c));
        }
    }
}
void etm_cuda_rope_forward(etm_backend *be, float *x, const float *cos_t, const float *sin_t,
                           int B, int T, int H, int hd, int pos0) {
    size_t pairs = (size_t)B * T * H * (hd / 2);
    if (pairs == 0) return;
    k_rope<<<LAUNCH(pairs)>>>(x, cos_t, sin_t, T, H, hd, pos0, pairs, 0);
    ETM_CUDA_LAUNCHED();
}
void etm_cuda_rope_backward(etm_backend *be, float *dx, const float *cos_t, const float *sin_t,
                            int B, int T, int H, int hd, int pos0) {
    size_t pairs = (size_t)B * T * H * (hd / 2);
    if (pairs == 0) return;
    k_rope<<<LAUNCH(pairs)>>>(dx, cos_t, sin_t, T, H, hd, pos0, pairs, 1);
    ETM_CUDA_LAUNCHED();
}

/* ---- activations ------------------------------------------------------------------------------ */
__global__ void k_relu2_forward(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) {
        float r = x[i] > 0.0f ? x[i] : 0.0f;
        out[i] = __fmul_rn(r, r);
    }
}
void etm_cuda_relu2_forward(etm_backend *be, float *out, const float *x, size_t n) {
    if (n == 0) return;
    k_relu2_forward<<<LAUNCH(n)>>>(out, x, n);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_relu2_backward(float *dx, const float *dout, const float *x, size_t n) {
    GRID_STRIDE(i, n) {
        float r = x[i] > 0.0f ? x[i] : 0.0f;
        /* dout * 2 * r: the doubling is exact, so any grouping gives the same product */
        dx[i] = __fadd_rn(dx[i], __fmul_rn(__fmul_rn(dout[i], 2.0f), r));
    }
}
void etm_cuda_relu2_backward(etm_backend *be, float *dx, const float *dout, const float *x,
                             size_t n) {
    if (n == 0) return;
    k_relu2_backward<<<LAUNCH(n)>>>(dx, dout, x, n);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_softcap(float *out, const float *x, size_t n, float cap) {
    GRID_STRIDE(i, n) out[i] = cap > 0.0f ? cap * tanhf(x[i] / cap) : x[i]; /* cap <= 0: no cap */
}
void etm_cuda_softcap(etm_backend *be, float *out, const float *x, size_t n, float cap) {
    if (n == 0) return;
    k_softcap<<<LAUNCH(n)>>>(out, x, n, cap);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_sigmoid_forward(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) out[i] = 1.0f / (1.0f + expf(-x[i]));
}
void etm_cuda_sigmoid_forward(etm_backend *be, float *out, const float *x, size_t n) {
    if (n == 0) return;
    k_sigmoid_forward<<<LAUNCH(n)>>>(out, x, n);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_sigmoid_backward(float *dx, const float *dout, const float *out, size_t n) {
    GRID_STRIDE(i, n) {
        float s = out[i];
        dx[i] = __fadd_rn(dx[i], __fmul_rn(__fmul_rn(dout[i], s), __fsub_rn(1.0f, s)));
    }
}
void etm_cuda_sigmoid_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                               size_t n) {
    if (n == 0) return;
    k_sigmoid_backward<<<LAUNCH(n)>>>(dx, dout, out, n);
    ETM_CUDA_LAUNCHED();
}
