/* comm_timed.c: the timing etm_comm (comm_timed.h) and the byte counts of the collective
 * operations, from the sharding comm_mpi.c uses (etm_comm_shard), so the reported bytes are what
 * is sent. */
#include "comm_timed.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    etm_comm *inner;
    etm_comm_timing t;
} timed_ctx;

static const char *const op_names[ETM_COMM_N_OPS] = {"allgather", "fold_sum", "bcast"};

const char *etm_comm_op_name(etm_comm_op op) {
    return (unsigned)op < ETM_COMM_N_OPS ? op_names[op] : "(invalid)";
}

void etm_comm_fold_bytes(size_t n, int A, int size, int rank, double *sent, double *received) {
    size_t lo, mine;
    etm_comm_shard(n, size, rank, &lo, &mine);
    const double f = (double)sizeof(float);
    *sent = f * ((double)A * (double)(n - mine) + (double)mine * (size - 1));
    *received = f * ((double)(size - 1) * A * (double)mine + (double)(n - mine));
}

static void record(etm_comm *c, etm_comm_op op, double t0, double sent, double received) {
    timed_ctx *x = c->ctx;
    x->t.seconds[op] += etm_now() - t0;
    x->t.sent[op] += sent;
    x->t.received[op] += received;
    x->t.calls[op]++;
}

static int timed_allgather(etm_comm *c, const void *send, size_t bytes, void *recv, etm_error *err) {
    timed_ctx *x = c->ctx;
    double t0 = etm_now();
    int rc = x->inner->allgather(x->inner, send, bytes, recv, err);
    double others = (double)bytes * (c->size - 1);
    record(c, ETM_COMM_ALLGATHER, t0, others, others);
    return rc;
}

static int timed_fold_sum(etm_comm *c, const float *local, int A, size_t n, float *out, etm_error *err) {
    timed_ctx *x = c->ctx;
    double t0 = etm_now(), sent = 0.0, received = 0.0;
    int rc = x->inner->fold_sum(x->inner, local, A, n, out, err);
    if (c->size > 1) etm_comm_fold_bytes(n, A, c->size, c->rank, &sent, &received);
    record(c, ETM_COMM_FOLD_SUM, t0, sent, received);
    return rc;
}

static int timed_bcast(etm_comm *c, void *buf, size_t bytes, int root, etm_error *err) {
    timed_ctx *x = c->ctx;
    double t0 = etm_now();
    int rc = x->inner->bcast(x->inner, buf, bytes, root, err);
    int me = c->rank == root;
    record(c, ETM_COMM_BCAST, t0, me ? (double)bytes * (c->size - 1) : 0.0, me ? 0.0 : (double)bytes);
    return rc;
}

static void timed_abort(etm_comm *c, int code) {
    timed_ctx *x = c->ctx;
    x->inner->abort(x->inner, code);
}

static void timed_destroy(etm_comm *c) {
    free(c->ctx);
    free(c);
}

etm_comm *etm_comm_timed_create(etm_comm *inner) {
    etm_comm *c = etm_calloc(1, sizeof *c);
    timed_ctx *x = etm_calloc(1, sizeof *x);
    x->inner = inner;
    *c = *inner; /* name, rank, size, device_memory */
    c->allgather = timed_allgather;
    c->fold_sum = timed_fold_sum;
    c->bcast = timed_bcast;
    c->abort = timed_abort;
    c->destroy = timed_destroy;
    c->ctx = x;
    return c;
}

const etm_comm_timing *etm_comm_timed_totals(const etm_comm *timed) {
    return &((const timed_ctx *)timed->ctx)->t;
}

void etm_comm_timed_reset(etm_comm *timed) {
    timed_ctx *x = timed->ctx;
    memset(&x->t, 0, sizeof x->t);
}
