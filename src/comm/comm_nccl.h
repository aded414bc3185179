/* comm_nccl.h: the NCCL etm_comm (comm.h) for GPU ranks, in the etmoe program only (configure
 * finds MPI, the CUDA backend and NCCL). */
#ifndef ETM_COMM_NCCL_H
#define ETM_COMM_NCCL_H

#include "comm.h"

/* Picks this rank's GPU (node-local rank modulo the devices; call before the CUDA backend is
 * created), sets up NCCL (rank 0's unique id sent with MPI_Bcast) and returns a communicator
 * whose fold_sum and bcast take device memory; it owns mpi from then on (destroy frees both).
 * NULL with a message on failure (mpi is then still the caller's). */
etm_comm *etm_comm_nccl_create(etm_comm *mpi, etm_error *err);

/* "NCCL 2.x.y", for etmoe --version. */
void etm_comm_nccl_version(char *buf, size_t len);

#endif
