/* cuda_backend.cu: the CUDA backend's constructor and operation table, device memory (alloc,
 * copies, zeroing), the stream and cuBLAS handle, and the grow-on-demand scratch buffer. The
 * kernels live in the other cuda_*.cu files, one op family each. */
#include <string.h>

#include "cuda_backend.h"
#include "cuda_internal.h"

void etm_cuda_fail(const char *what, const char *msg, const char *file, int line) {
    fprintf(stderr, "etmoe: cuda backend: %s failed at %s:%d: %s\n", what, file, line, msg);
    fflush(stderr);
    abort();
}

void *etm_cuda_scratch(etm_backend *be, size_t bytes) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (bytes == 0) bytes = 1;
    if (bytes > c->scratch_bytes) {
        /* Earlier ops queued on the stream may still read the old buffer. */
        ETM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
        if (c->scratch) ETM_CUDA_CHECK(cudaFree(c->scratch));
        size_t grown = c->scratch_bytes * 2 > bytes ? c->scratch_bytes * 2 : bytes;
        ETM_CUDA_CHECK(cudaMalloc(&c->scratch, grown));
        c->scratch_bytes = grown;
    }
    return c->scratch;
}

/* ---- lifetime and memory ------------------------------------------------------------------- */
static void etm_cuda_destroy(etm_backend *be) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (!c) return;
    cudaStreamSynchronize(c->stream);
    if (c->scratch) cudaFree(c->scratch);
    if (c->sum_partials) cudaFree(c->sum_partials);
    if (c->sum_host) cudaFreeHost(c->sum_host);
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
    be->ctx = NULL;
}

static void *etm_cuda_alloc(etm_backend *be, size_t bytes) {
    void *p = NULL;
    if (bytes == 0) return NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        fprintf(stderr, "etmoe: cuda backend: out of device memory allocating %zu bytes: %s\n",
                bytes, cudaGetErrorString(e));
        abort();
    }
    ETM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, etm_cuda(be)->stream));
    return p;
}

static void etm_cuda_free(etm_backend *be, void *p) {
    if (!p) return;
    /* Kernels queued on our stream may still use p. cudaFree does wait for the device in
     * practice, but the runtime documents no such ordering with a cudaStreamNonBlocking stream,
     * so wait for it explicitly (frees are rare: set-up, tear-down, buffer growth). */
    ETM_CUDA_CHECK(cudaStreamSynchronize(etm_cuda(be)->stream));
    ETM_CUDA_CHECK(cudaFree(p));
}

static void etm_cuda_upload(etm_backend *be, void *dst, const void *host_src, size_t bytes) {
    if (bytes == 0) return;
    /* From pageable memory this returns once host_src has been staged, so the caller may reuse
     * it; the copy is ordered with the kernels on the stream. */
    ETM_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice,
                                   etm_cuda(be)->stream));
}

static void etm_cuda_download(etm_backend *be, void *host_dst, const void *src, size_t bytes) {
    if (bytes == 0) return;
    etm_cuda_ctx *c = etm_cuda(be);
    ETM_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    ETM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

static void etm_cuda_copy(etm_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes == 0 || dst == src) return;
    ETM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, etm_cuda(be)->stream));
}

static void etm_cuda_zero(etm_backend *be, void *p, size_t bytes) {
    if (bytes == 0) return;
    ETM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, etm_cuda(be)->stream));
}

static void etm_cuda_synchronize(etm_backend *be) {
    ETM_CUDA_CHECK(cudaStreamSynchronize(etm_cuda(be)->stream));
}

/* ---- construction ----------------------------------------------------------------------------- */
/* Does nothing: etm_cuda_backend_create asks the runtime about it to learn whether this build
 * has machine code for the device (every .cu file is compiled with the same -gencode list). */
__global__ void k_probe_image(void) {}

extern "C" int etm_cuda_gemm_math_parse(const char *name) {
    if (!strcmp(name, "fp32")) return ETM_CUDA_GEMM_FP32;
    if (!strcmp(name, "tf32")) return ETM_CUDA_GEMM_TF32;
    if (!strcmp(name, "bf16")) return ETM_CUDA_GEMM_BF16;
    return -1;
}

/* The precision is chosen per call by cublasGemmEx's compute type (cuda_gemm.cu); the handle's
 * math mode stays CUBLAS_DEFAULT_MATH so nothing else can lower it. */
extern "C" void etm_cuda_set_gemm_math(etm_backend *be, etm_cuda_gemm_math math) {
    etm_cuda(be)->gemm_math = math;
}

extern "C" etm_backend *etm_cuda_backend_create(etm_error *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        etm_fail(err, "cuda backend: no usable CUDA device: cudaGetDeviceCount failed: %s",
                 cudaGetErrorString(e));
        return NULL;
    }
    if (count == 0) {
        etm_fail(err, "cuda backend: no CUDA device found (cudaGetDeviceCount returned 0)");
        return NULL;
    }
    int device = 0;
    if ((e = cudaGetDevice(&device)) != cudaSuccess || (e = cudaSetDevice(device)) != cudaSuccess) {
        etm_fail(err, "cuda backend: cannot select a CUDA device: %s", cudaGetErrorString(e));
        return NULL;
    }
    /* nvcc builds only for the architectures configure was given (sm_80 and sm_90 code plus
     * compute_90 PTX by default; --with-cuda-arch may give fewer), so a GPU the build has neither
     * code nor usable PTX for has no kernel to run, and every op would abort with "no kernel
     * image is available". Report that here as "no usable device", naming the fix, before
     * anything is allocated. */
    cudaFuncAttributes image;
    if ((e = cudaFuncGetAttributes(&image, k_probe_image)) != cudaSuccess) {
        int major = 0, minor = 0;
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
        (void)cudaGetLastError(); /* not sticky: clear it for whoever uses CUDA next */
        etm_fail(err,
                 "cuda backend: no usable CUDA device: this build has no kernels for device %d "
                 "(compute capability %d.%d): %s; reconfigure with "
                 "--with-cuda-arch=\"-gencode arch=compute_%d%d,code=sm_%d%d\"",
                 device, major, minor, cudaGetErrorString(e), major, minor, major, minor);
        return NULL;
    }
    etm_cuda_ctx *c = (etm_cuda_ctx *)etm_calloc(1, sizeof *c);
    c->device = device;
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        etm_fail(err, "cuda backend: cannot create a stream on device %d: %s", device,
                 cudaGetErrorString(e));
        free(c);
        return NULL;
    }
    cublasStatus_t s = cublasCreate(&c->cublas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        etm_fail(err, "cuda backend: cublasCreate failed on device %d: %s", device,
                 cublasGetStatusString(s));
        cudaStreamDestroy(c->stream);
        free(c);
        return NULL;
    }
    ETM_CUBLAS_CHECK(cublasSetStream(c->cublas, c->stream));
    ETM_CUBLAS_CHECK(cublasSetPointerMode(c->cublas, CUBLAS_POINTER_MODE_HOST));
    ETM_CUBLAS_CHECK(cublasSetAtomicsMode(c->cublas, CUBLAS_ATOMICS_NOT_ALLOWED));
    ETM_CUBLAS_CHECK(cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH));
    c->gemm_math = ETM_CUDA_GEMM_FP32;
    const char *math = getenv("ETM_CUDA_GEMM");
    if (math && *math) {
        int m = etm_cuda_gemm_math_parse(math);
        if (m < 0) {
            etm_fail(err, "cuda backend: ETM_CUDA_GEMM='%s': expected fp32, tf32 or bf16", math);
            cublasDestroy(c->cublas);
            cudaStreamDestroy(c->stream);
            free(c);
            return NULL;
        }
        c->gemm_math = (etm_cuda_gemm_math)m;
    }
    ETM_CUDA_CHECK(cudaDeviceGetAttribute(&c->max_smem_optin,
                                          cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    ETM_CUDA_CHECK(cudaMalloc(&c->sum_partials, (ETM_CUDA_SUM_BLOCKS + 1) * sizeof(double)));
    ETM_CUDA_CHECK(cudaMallocHost(&c->sum_host, sizeof(double)));

    etm_backend *be = (etm_backend *)etm_calloc(1, sizeof *be);
    be->name = "cuda";
    be->ctx = c;
    /* One entry per operation of backends/backend.h's list: operation X is etm_cuda_X (the memory
     * functions above, the kernels' launchers in the other .cu files, cuda_internal.h). */
#define CUDA_OP(name, kind) be->name = etm_cuda_##name;
    ETM_BACKEND_OPS(CUDA_OP)
#undef CUDA_OP
    return be;
}
