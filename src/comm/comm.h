/* comm.h: the few collective operations data-parallel training needs (doc/distributed.md),
 * behind one interface, so that the library and non-MPI builds never see an MPI header:
 * etm_comm_single (this file's implementation, comm.c) is one process; the MPI implementation
 * (comm_mpi.c, built into the etmoe program only with configure --with-mpi) spans the ranks of
 * an mpirun job.
 *
 * Every operation is collective (all ranks call it, in the same order) and deterministic: its
 * result is a function of the ranks' inputs in rank order, never of message timing. */
#ifndef ETM_COMM_H
#define ETM_COMM_H

#include <stddef.h>

#include "common.h"

typedef struct etm_comm etm_comm;
struct etm_comm {
    const char *name;       /* "single" or "mpi" */
    int rank;               /* this process, 0..size-1 */
    int size;               /* processes in the job */
    int device_memory;      /* 1: fold_sum's and bcast's buffers are backend (GPU) memory
                               (comm_nccl.c); 0: host memory */
    /* recv (size x bytes) = every rank's send (bytes), concatenated in rank order. */
    int (*allgather)(etm_comm *c, const void *send, size_t bytes, void *recv, etm_error *err);
    /* The ordered sum of size x A vectors of n floats: local holds this rank's A vectors (A x n),
     * global vector j = rank x A + a; out (n) = (((v_0 + v_1) + v_2) + ...) + v_{size A - 1}, the
     * left fold over j in float, the same bits on every rank whatever the split. */
    int (*fold_sum)(etm_comm *c, const float *local, int A, size_t n, float *out, etm_error *err);
    /* buf (bytes) on every rank = root's. */
    int (*bcast)(etm_comm *c, void *buf, size_t bytes, int root, etm_error *err);
    /* Ends the whole job now (after a rank's failure that the others cannot learn of). */
    void (*abort)(etm_comm *c, int code);
    void (*destroy)(etm_comm *c);
    void *ctx;
};

/* The one-process communicator (rank 0 of 1); a static object, destroy is a no-op. */
etm_comm *etm_comm_single(void);

/* Shard r of n floats over size ranks, as fold_sum cuts its vector: [*lo, *lo + *len), the first
 * n % size shards one float longer. */
void etm_comm_shard(size_t n, int size, int r, size_t *lo, size_t *len);

/* out (n) = left fold of the A vectors in local (A x n): the reference the MPI fold_sum matches. */
void etm_fold_vectors(const float *local, int A, size_t n, float *out);

#endif
