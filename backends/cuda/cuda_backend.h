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
 * be->destroy followed by free(be)). TF32 tensor-core GEMMs start off; the environment variable
 * ETM_CUDA_TF32=1 turns them on at creation. */
etm_backend *etm_cuda_backend_create(etm_error *err);

/* Turns TF32 tensor-core arithmetic for gemm / gemm_grouped on (1) or off (0, the default:
 * plain fp32, what the CPU comparison tolerances assume). be must be a CUDA backend. */
void etm_cuda_set_tf32(etm_backend *be, int on);

#ifdef __cplusplus
}
#endif

#endif
