/* profiler.h: a backend that measures another. Its operation table is a copy of the real one
 * whose entries call the real functions and record, per phase, how often each operation of
 * backends/backend.h's list ran and (for ETM_OP_TIMED operations) for how long, synchronising the
 * real backend after each call so that an asynchronous one is timed, not queued. Used by
 * `etmoe bench --profile` (bench.c) and by the coverage test of the op-by-op comparison
 * (tests/check_compare_ops.c). The profile types are those of bench.h's result. */
#ifndef ETM_PROFILER_H
#define ETM_PROFILER_H

#include "backend.h"

/* Time of one backend operation (or one kind of GEMM) in one phase, per step. */
typedef struct {
    const char *name; /* static: "gemm", "gemm nt", "attention_backward", ... */
    double calls;     /* per step */
    double seconds;   /* per step */
    double gflop;     /* per step; matrix products only, else 0 */
} etm_bench_op;

#define ETM_BENCH_MAX_OPS 64

typedef struct {
    int n_ops;
    etm_bench_op ops[ETM_BENCH_MAX_OPS]; /* (n_ops) operations that ran, in the table's order; a
                                            GEMM entry is followed by its split by transposes */
    double step_s;                       /* the phase's mean wall time per step */
    double ops_s;                        /* sum of the operations' times (sub-entries excluded) */
} etm_bench_profile;

typedef enum { ETM_BENCH_FWDBWD = 0, ETM_BENCH_OPTIM, ETM_BENCH_PHASES } etm_bench_phase;

typedef struct etm_profiler etm_profiler;

/* Wraps orig (which must outlive the profiler); build/free pair. Timings go to phase 0 until
 * etm_profiler_set_phase says otherwise. */
etm_profiler *etm_profiler_create(etm_backend *orig);
void etm_profiler_free(etm_profiler *pr);

/* The table to run on instead of orig (owned by the profiler; do not etm_backend_free it). */
etm_backend *etm_profiler_backend(etm_profiler *pr);

/* Where the following calls are recorded: 0 <= phase < ETM_BENCH_PHASES. */
void etm_profiler_set_phase(etm_profiler *pr, int phase);

/* Forgets every count and time. */
void etm_profiler_reset(etm_profiler *pr);

/* Calls of operation op (an index into backend.h's list) recorded in phase. */
double etm_profiler_calls(const etm_profiler *pr, int phase, int op);

/* The phase's timed operations per step (steps >= 1), into out: every ETM_OP_TIMED operation that
 * ran, the matrix products first (each followed by its split by transposes, with FLOPs), then the
 * others in the list's order. step_s is the phase's mean wall time per step. */
void etm_profiler_fill(const etm_profiler *pr, int phase, double step_s, int steps,
                       etm_bench_profile *out);

#endif
