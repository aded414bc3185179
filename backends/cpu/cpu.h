/* cpu.h: the constructor of the CPU backend (OpenBLAS + OpenMP), for the registry in backend.c. */
#ifndef ETM_CPU_H
#define ETM_CPU_H

#include "backend.h"

/* A new CPU backend; never fails (err is unused), free it with etm_backend_free. */
etm_backend *etm_cpu_backend_create(etm_error *err);

#endif
