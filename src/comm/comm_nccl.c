/* comm_nccl.c: etm_comm (comm.h) for GPU ranks: MPI starts the ranks and carries the small host
 * messages (allgather), NCCL moves the gradients and Muon parameters between GPUs. Built into
 * the etmoe program when configure finds MPI, the CUDA backend and a NCCL that links.
 *
 * fold_sum keeps the ordered contract of comm.h on the GPU: NCCL's own reductions promise no
 * order, so none is used. Rank r receives every rank's A slices of its shard with
 * ncclSend/ncclRecv (one group), folds them in global order j = rank x A + a with cuBLAS saxpy
 * (alpha = 1: y + 1 x x is one float add, the same as the CUDA backend's axpy and the host fold),
 * and each shard is broadcast from its owner. Pointers given to fold_sum and bcast are device
 * memory (etm_comm.device_memory); every operation has finished when it returns. */
#include <config.h>

#include "comm_nccl.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    etm_comm *mpi;       /* the job's MPI communicator (owned) */
    ncclComm_t nccl;
    cudaStream_t stream; /* NCCL's and the fold's stream */
    cublasHandle_t blas;
    float *recv;         /* device scratch for fold_sum, recv_floats long */
    size_t recv_floats;
} nccl_ctx;

static int nccl_fail(etm_error *err, const char *what, ncclResult_t rc) {
    return etm_fail(err, "NCCL: %s failed: %s", what, ncclGetErrorString(rc));
}

static int cuda_fail(etm_error *err, const char *what, cudaError_t rc) {
    return etm_fail(err, "CUDA: %s failed: %s", what, cudaGetErrorString(rc));
}

static void shard(size_t n, int size, int r, size_t *lo, size_t *len) {
    size_t base = n / (size_t)size, rem = n % (size_t)size;
    *lo = (size_t)r * base + ((size_t)r < rem ? (size_t)r : rem);
    *len = base + ((size_t)r < rem ? 1 : 0);
}

static int nc_allgather(etm_comm *c, const void *send, size_t bytes, void *recv, etm_error *err) {
    nccl_ctx *x = c->ctx;
    return x->mpi->allgather(x->mpi, send, bytes, recv, err);
}

static int nc_fold_sum(etm_comm *c, const float *local, int A, size_t n, float *out, etm_error *err) {
    nccl_ctx *x = c->ctx;
    int P = c->size, me = c->rank;
    size_t my_lo, my_len, total = (size_t)P * A;
    shard(n, P, me, &my_lo, &my_len);
    if (my_len > (size_t)1 << 30) return etm_fail(err, "NCCL: a shard of %zu floats is too large", my_len);
    if (x->recv_floats < total * my_len) {
        cudaFree(x->recv);
        x->recv = NULL;
        cudaError_t ce = cudaMalloc((void **)&x->recv, (total * my_len + 1) * sizeof(float));
        if (ce != cudaSuccess) return cuda_fail(err, "cudaMalloc of the gradient shards", ce);
        x->recv_floats = total * my_len;
    }
    ncclResult_t rc = ncclGroupStart();
    for (int src = 0; src < P && rc == ncclSuccess; src++)
        for (int a = 0; a < A && rc == ncclSuccess; a++)
            rc = ncclRecv(x->recv + ((size_t)src * A + a) * my_len, my_len, ncclFloat, src, x->nccl, x->stream);
    for (int dst = 0; dst < P && rc == ncclSuccess; dst++) {
        size_t lo, len;
        shard(n, P, dst, &lo, &len);
        for (int a = 0; a < A && rc == ncclSuccess; a++)
            rc = ncclSend(local + (size_t)a * n + lo, len, ncclFloat, dst, x->nccl, x->stream);
    }
    ncclResult_t end = ncclGroupEnd();
    if (rc == ncclSuccess) rc = end;
    if (rc != ncclSuccess) return nccl_fail(err, "the gradient reduce-scatter", rc);
    /* the left fold of this rank's shard, in global order */
    float *dst = out + my_lo;
    cudaError_t ce = cudaMemcpyAsync(dst, x->recv, my_len * sizeof(float), cudaMemcpyDeviceToDevice, x->stream);
    if (ce != cudaSuccess) return cuda_fail(err, "cudaMemcpyAsync", ce);
    const float one = 1.0f;
    for (size_t j = 1; j < total; j++)
        if (cublasSaxpy(x->blas, (int)my_len, &one, x->recv + j * my_len, 1, dst, 1) != CUBLAS_STATUS_SUCCESS)
            return etm_fail(err, "cuBLAS: saxpy of the gradient fold failed");
    rc = ncclGroupStart();
    for (int r = 0; r < P && rc == ncclSuccess; r++) {
        size_t lo, len;
        shard(n, P, r, &lo, &len);
        rc = ncclBroadcast(out + lo, out + lo, len, ncclFloat, r, x->nccl, x->stream);
    }
    end = ncclGroupEnd();
    if (rc == ncclSuccess) rc = end;
    if (rc != ncclSuccess) return nccl_fail(err, "the gradient all-gather", rc);
    ce = cudaStreamSynchronize(x->stream);
    return ce == cudaSuccess ? 0 : cuda_fail(err, "cudaStreamSynchronize", ce);
}

static int nc_bcast(etm_comm *c, void *buf, size_t bytes, int root, etm_error *err) {
    nccl_ctx *x = c->ctx;
    ncclResult_t rc = ncclBroadcast(buf, buf, bytes, ncclChar, root, x->nccl, x->stream);
    if (rc != ncclSuccess) return nccl_fail(err, "ncclBroadcast", rc);
    cudaError_t ce = cudaStreamSynchronize(x->stream);
    return ce == cudaSuccess ? 0 : cuda_fail(err, "cudaStreamSynchronize", ce);
}

static void nc_abort(etm_comm *c, int code) {
    nccl_ctx *x = c->ctx;
    x->mpi->abort(x->mpi, code);
}

static void nc_destroy(etm_comm *c) {
    nccl_ctx *x = c->ctx;
    ncclCommDestroy(x->nccl);
    cublasDestroy(x->blas);
    cudaStreamDestroy(x->stream);
    cudaFree(x->recv);
    x->mpi->destroy(x->mpi);
    free(x);
    free(c);
}

etm_comm *etm_comm_nccl_create(etm_comm *mpi, etm_error *err) {
    /* the GPU: by rank among the ranks of this node, before the CUDA backend picks the current one */
    MPI_Comm node;
    int local = 0, n_dev = 0;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, mpi->rank, MPI_INFO_NULL, &node) != MPI_SUCCESS) {
        etm_fail(err, "MPI: MPI_Comm_split_type failed");
        return NULL;
    }
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    cudaError_t ce = cudaGetDeviceCount(&n_dev);
    if (ce != cudaSuccess || n_dev < 1) {
        etm_fail(err, "rank %d: no CUDA device (%s)", mpi->rank, ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices");
        return NULL;
    }
    if ((ce = cudaSetDevice(local % n_dev)) != cudaSuccess) {
        cuda_fail(err, "cudaSetDevice", ce);
        return NULL;
    }
    /* rank 0's unique id, sent to the others with MPI_Bcast */
    ncclUniqueId id;
    ncclResult_t rc = ncclSuccess;
    if (mpi->rank == 0) rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) {
        nccl_fail(err, "ncclGetUniqueId", rc);
        return NULL;
    }
    if (MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
        etm_fail(err, "MPI: broadcasting the NCCL id failed");
        return NULL;
    }
    nccl_ctx *x = calloc(1, sizeof *x);
    if (!x) {
        etm_fail(err, "out of memory");
        return NULL;
    }
    x->mpi = mpi;
    if ((ce = cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        cuda_fail(err, "cudaStreamCreate", ce);
        free(x);
        return NULL;
    }
    if (cublasCreate(&x->blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(x->blas, x->stream) != CUBLAS_STATUS_SUCCESS) {
        etm_fail(err, "cuBLAS: cublasCreate failed");
        cudaStreamDestroy(x->stream);
        free(x);
        return NULL;
    }
    if ((rc = ncclCommInitRank(&x->nccl, mpi->size, id, mpi->rank)) != ncclSuccess) {
        nccl_fail(err, "ncclCommInitRank", rc);
        cublasDestroy(x->blas);
        cudaStreamDestroy(x->stream);
        free(x);
        return NULL;
    }
    etm_comm *c = etm_calloc(1, sizeof *c);
    c->name = "nccl";
    c->rank = mpi->rank;
    c->size = mpi->size;
    c->device_memory = 1;
    c->allgather = nc_allgather;
    c->fold_sum = nc_fold_sum;
    c->bcast = nc_bcast;
    c->abort = nc_abort;
    c->destroy = nc_destroy;
    c->ctx = x;
    return c;
}

void etm_comm_nccl_version(char *buf, size_t len) {
    int v = 0;
    ncclGetVersion(&v);
    snprintf(buf, len, "NCCL %d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
}
