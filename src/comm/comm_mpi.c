/* comm_mpi.c: etm_comm (comm.h) over MPI_COMM_WORLD. fold_sum is an ordered reduce-scatter then
 * an all-gather: the float vector is cut into size shards; rank r receives every rank's A slices
 * of shard r (point-to-point, no MPI reduction: MPI_Reduce does not promise an order), folds them
 * in global order j = rank x A + a with etm_fold_vectors' arithmetic, and MPI_Allgatherv gives
 * every rank the whole sum. Memory: the receive buffer holds A x n / size floats per rank for
 * each of the size senders, A x n in all, kept between calls. */
#include "comm_mpi.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int initialised_here; /* 1: MPI_Finalize at destroy */
    float *recv;          /* (recv_cap) fold_sum's receive buffer, kept from call to call: a fresh
                             buffer of A x n floats every step costs its page faults every step
                             (seconds per GiB on a loaded VM, doc/distributed.md) */
    size_t recv_cap;      /* floats */
} mpi_ctx;

static int mpi_fail(etm_error *err, const char *what, int rc) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "code %d", rc);
    return etm_fail(err, "MPI: %s failed: %s", what, text);
}

static int mpi_allgather(etm_comm *c, const void *send, size_t bytes, void *recv, etm_error *err) {
    (void)c;
    if (bytes > INT_MAX) return etm_fail(err, "MPI: allgather of %zu bytes is over INT_MAX", bytes);
    int rc = MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Allgather", rc);
}

static int mpi_fold_sum(etm_comm *c, const float *local, int A, size_t n, float *out, etm_error *err) {
    int P = c->size, me = c->rank;
    if (n / (size_t)P + 1 > INT_MAX) return etm_fail(err, "MPI: a shard of %zu floats is over INT_MAX", n);
    size_t my_lo, my_len;
    etm_comm_shard(n, P, me, &my_lo, &my_len);
    size_t total = (size_t)P * A;
    mpi_ctx *ctx = c->ctx;
    if (ctx->recv_cap < total * my_len + 1) {
        free(ctx->recv);
        ctx->recv_cap = total * my_len + 1;
        ctx->recv = etm_malloc(ctx->recv_cap * sizeof(float));
    }
    float *recv = ctx->recv;
    MPI_Request *req = etm_malloc(2 * total * sizeof(MPI_Request));
    int nreq = 0, rc = MPI_SUCCESS;
    /* receives first: vector j = src x A + a lands at recv + j x my_len, global order */
    for (int src = 0; src < P && rc == MPI_SUCCESS; src++)
        for (int a = 0; a < A && rc == MPI_SUCCESS; a++)
            rc = MPI_Irecv(recv + ((size_t)src * A + a) * my_len, (int)my_len, MPI_FLOAT, src, a,
                           MPI_COMM_WORLD, &req[nreq++]);
    for (int dst = 0; dst < P && rc == MPI_SUCCESS; dst++) {
        size_t lo, len;
        etm_comm_shard(n, P, dst, &lo, &len);
        for (int a = 0; a < A && rc == MPI_SUCCESS; a++)
            rc = MPI_Isend(local + (size_t)a * n + lo, (int)len, MPI_FLOAT, dst, a, MPI_COMM_WORLD,
                           &req[nreq++]);
    }
    if (rc == MPI_SUCCESS) rc = MPI_Waitall(nreq, req, MPI_STATUSES_IGNORE);
    free(req);
    if (rc != MPI_SUCCESS) return mpi_fail(err, "the gradient reduce-scatter", rc);
    /* this rank's shard of the sum, then everybody's */
    etm_fold_vectors(recv, (int)total, my_len, out + my_lo);
    int *counts = etm_malloc((size_t)P * sizeof(int)), *displs = etm_malloc((size_t)P * sizeof(int));
    int ok = 1;
    for (int r = 0; r < P; r++) {
        size_t lo, len;
        etm_comm_shard(n, P, r, &lo, &len);
        if (lo > INT_MAX) ok = 0;
        counts[r] = (int)len;
        displs[r] = (int)lo;
    }
    if (!ok) {
        free(counts);
        free(displs);
        return etm_fail(err, "MPI: a vector of %zu floats is over INT_MAX for MPI_Allgatherv", n);
    }
    rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, out, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
    free(counts);
    free(displs);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Allgatherv", rc);
}

static int mpi_bcast(etm_comm *c, void *buf, size_t bytes, int root, etm_error *err) {
    (void)c;
    char *p = buf;
    while (bytes > 0) { /* in pieces: MPI counts are ints */
        int n = bytes > (size_t)1 << 30 ? 1 << 30 : (int)bytes;
        int rc = MPI_Bcast(p, n, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
        p += n;
        bytes -= (size_t)n;
    }
    return 0;
}

static void mpi_abort(etm_comm *c, int code) {
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, code);
}

static void mpi_destroy(etm_comm *c) {
    mpi_ctx *ctx = c->ctx;
    if (ctx->initialised_here) MPI_Finalize();
    free(ctx->recv);
    free(ctx);
    free(c);
}

etm_comm *etm_comm_mpi_create(int *argc, char ***argv, etm_error *err) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int rc = MPI_Init(argc, argv);
        if (rc != MPI_SUCCESS) {
            mpi_fail(err, "MPI_Init", rc);
            return NULL;
        }
    }
    etm_comm *c = etm_calloc(1, sizeof *c);
    mpi_ctx *ctx = etm_calloc(1, sizeof *ctx);
    ctx->initialised_here = !inited;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    c->name = "mpi";
    c->allgather = mpi_allgather;
    c->fold_sum = mpi_fold_sum;
    c->bcast = mpi_bcast;
    c->abort = mpi_abort;
    c->destroy = mpi_destroy;
    c->ctx = ctx;
    return c;
}

void etm_comm_mpi_version(char *buf, size_t len) {
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_Get_library_version(v, &n);
    for (int i = 0; i < n; i++)
        if (v[i] == '\n' || v[i] == ',') {
            v[i] = '\0';
            break;
        }
    snprintf(buf, len, "%s", v);
}
