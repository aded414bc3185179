/* comm_timed.h: an etm_comm (comm.h) that forwards every operation to another one and records
 * how long each kind took, how often it was called and how many bytes this rank sent and
 * received through it: what `etmoe bench` reports as the time spent communicating (the gradient
 * reduce is fold_sum, the Muon exchange is bcast, the router records and statuses are
 * allgather). The time is measured inside the call, so it includes the wait for the slowest
 * rank to reach it (an unbalanced step shows up as communication time on the faster ranks). */
#ifndef ETM_COMM_TIMED_H
#define ETM_COMM_TIMED_H

#include "comm.h"

typedef enum { ETM_COMM_ALLGATHER, ETM_COMM_FOLD_SUM, ETM_COMM_BCAST, ETM_COMM_N_OPS } etm_comm_op;

typedef struct {
    double seconds[ETM_COMM_N_OPS]; /* wall time inside the calls of each kind */
    double sent[ETM_COMM_N_OPS];    /* bytes this rank sent (payload, as the algorithm below says) */
    double received[ETM_COMM_N_OPS];/* bytes this rank received */
    long calls[ETM_COMM_N_OPS];     /* calls of each kind */
} etm_comm_timing;

/* The name of an operation kind: "allgather", "fold_sum", "bcast". */
const char *etm_comm_op_name(etm_comm_op op);

/* Bytes rank `rank` of `size` sends and receives in fold_sum of A vectors of n floats, with the
 * algorithm of comm_mpi.c and comm_nccl.c (doc/distributed.md): the vector is cut into size
 * shards (etm_comm_shard, comm.h); the owner of each shard receives the other ranks' A slices of it, then
 * every rank receives the other shards of the sum. sent: A x (n - own shard) floats in the
 * reduce-scatter plus own shard x (size - 1) in the all-gather; received: (size - 1) x A x own
 * shard plus (n - own shard). Broadcasts: the root sends bytes to each other rank, the others
 * receive bytes (whatever tree MPI uses, this is what each rank must get or give at least). */
void etm_comm_fold_bytes(size_t n, int A, int size, int rank, double *sent, double *received);

/* A communicator that times `inner` (which it does not own: destroy frees the wrapper only). */
etm_comm *etm_comm_timed_create(etm_comm *inner);
/* The totals since creation or the last reset. */
const etm_comm_timing *etm_comm_timed_totals(const etm_comm *timed);
void etm_comm_timed_reset(etm_comm *timed);

#endif
