/* cuda_backend.h: the public constructor of the CUDA backend (plain C, callable from the C code
 * of etmoe; the implementation is in CUDA C++ under backends/cuda/).
 *
 * The backend runs every operation of backends/backend.h on one GPU, on one CUDA stream, with
 * cuBLAS for the matrix products. Every reduction runs in a fixed order without floating-point
 * atomics, so two runs of the same program on the same GPU model give identical bits.
 * doc/cuda.md says what is bit-identical to the CPU backend and what agrees within a tolerance. */
#ifndef ETM_CUDA_BACKEND_H
#define ETM_CUDA_BACKEND_H

#ifdef __cplusplus
extern "C" { /* backend.h and common.h are C: their functions have C linkage */
#endif

#include "backend.h"

/* Creates the CUDA backend on the current device (device 0 unless CUDA_VISIBLE_DEVICES or
 * cudaSetDevice say otherwise). Returns NULL with a message naming the reason when there is no
 * usable device (no driver, no GPU, or cuBLAS cannot start). Free with etm_backend_free (or
 * be->destroy followed by free(be)). The GEMMs start in plain fp32 unless the environment
 * variable ETM_CUDA_GEMM names another precision (fp32, tf32 or bf16); an unknown name is an
 * error. */
etm_backend *etm_cuda_backend_create(etm_error *err);

/* The arithmetic of gemm / gemm_grouped. Inputs and outputs stay fp32 in every mode; the
 * reduced modes let cuBLAS round the products' inputs for tensor cores (TF32 keeps 10 mantissa
 * bits, bf16 keeps 7) and accumulate in fp32. FP32 is what the CPU comparison tolerances
 * assume; the others are speed options for full-scale runs. */
typedef enum {
    ETM_CUDA_GEMM_FP32 = 0,
    ETM_CUDA_GEMM_TF32,
    ETM_CUDA_GEMM_BF16
} etm_cuda_gemm_math;

/* The mode named by text ("fp32", "tf32", "bf16"); -1 for anything else. */
int etm_cuda_gemm_math_parse(const char *name);

/* Switches gemm / gemm_grouped to the given mode. be must be a CUDA backend. */
void etm_cuda_set_gemm_math(etm_backend *be, etm_cuda_gemm_math math);

#ifdef __cplusplus
}
#endif

#endif
