/* comm_mpi.h: the MPI etm_comm (comm.h), in the etmoe program only (configure --with-mpi). */
#ifndef ETM_COMM_MPI_H
#define ETM_COMM_MPI_H

#include "comm.h"

/* Initialises MPI (a process started without mpirun is a job of one rank) and returns the
 * communicator of MPI_COMM_WORLD; destroy finalises MPI. NULL with a message on failure. */
etm_comm *etm_comm_mpi_create(int *argc, char ***argv, etm_error *err);

/* The MPI library's version line, for etmoe --version. */
void etm_comm_mpi_version(char *buf, size_t len);

#endif
