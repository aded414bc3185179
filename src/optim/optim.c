/* optim.c: AdamW and Muon over backend memory, the learning-rate and momentum schedules, global
 * gradient-norm clipping, and the optimizer state as named tensors for checkpoints (optim.h). */
#include <config.h>

#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keller Jordan's quintic Newton-Schulz coefficients (also nanochat's). */
#define NS_A 3.4445f
#define NS_B (-4.7750f)
#define NS_C 2.0315f
#define NS_EPS 1e-7 /* added to the Frobenius norm before dividing */

static const char *const group_names[ETM_N_PARAM_GROUPS] = {"embed", "head", "matrix", "router"};

const char *etm_param_group_name(etm_param_group g) {
    return (unsigned)g < ETM_N_PARAM_GROUPS ? group_names[g] : "(invalid group)";
}

/* One parameter with its optimizer and state. */
typedef struct {
    etm_param p;          /* name owned */
    size_t numel;
    int muon;             /* 1: Muon, 0: AdamW */
    int count, rows, cols; /* Muon: count matrices of (rows, cols) */
    float *m, *v;         /* AdamW moments (numel), backend memory */
    float *momentum;      /* Muon momentum (numel), backend memory */
    int owner;            /* Muon: the rank that updates it (etm_optim_share); 0 in one process */
} opt_param;

struct etm_optim {
    etm_backend *be;
    etm_hparams hp;
    opt_param *params;       /* (n) */
    int n;
    etm_optim_state *states; /* (n_states) views of the params' state buffers */
    int n_states;
    float *update;           /* Muon: the update of the largest Muon parameter (backend) */
    float *ns_work;          /* Muon: Newton-Schulz workspace (backend) */
    int rank;                /* this rank: it updates the Muon parameters it owns (etm_optim_share) */
    int momentum_stale;      /* 1: the momenta of Muon parameters other ranks own are out of date
                                (etm_optim_exchange; etm_optim_sync_state brings them) */
    float *xhost;            /* (xhost_cap) host staging of the Muon exchange, kept between steps:
                                a fresh buffer costs its page faults every step */
    size_t xhost_cap;        /* floats */
};

/* ---- schedules ------------------------------------------------------------------------------- */

float etm_lr_multiplier(const etm_hparams *hp, int step) {
    double warm = 1.0, decay = 1.0;
    if (hp->warmup_steps > 0 && step < hp->warmup_steps) warm = (double)(step + 1) / hp->warmup_steps;
    long decay_steps = lround((double)hp->decay_fraction * hp->max_steps);
    if (decay_steps > 0 && step > hp->max_steps - decay_steps) {
        double progress = (double)(hp->max_steps - step) / (double)decay_steps;
        if (progress < 0) progress = 0;
        decay = progress + (1.0 - progress) * hp->final_lr_frac;
    }
    return (float)(warm < decay ? warm : decay);
}

float etm_muon_momentum(const etm_hparams *hp, int step) {
    double frac = 1.0;
    if (hp->muon_warmup_steps > 0 && step < hp->muon_warmup_steps)
        frac = step > 0 ? (double)step / hp->muon_warmup_steps : 0.0; /* before step 0: the start */
    return (float)((1.0 - frac) * hp->muon_momentum_start + frac * hp->muon_momentum_end);
}

/* ---- Newton-Schulz --------------------------------------------------------------------------- */

size_t etm_newton_schulz_work(int count, int rows, int cols) {
    size_t s = (size_t)ETM_MIN(rows, cols);
    return (size_t)count * ((size_t)rows * cols + 2 * s * s);
}

/* C_e = alpha op(A_e) op(B_e) + beta C_e for count matrices at fixed strides: one GEMM, or one
 * grouped call so the backend can spread the matrices over its threads. */
static void batched_gemm(etm_backend *be, int ta, int tb, int count, int M, int N, int K, float alpha,
                         const float *A, int lda, size_t sa, const float *B, int ldb, size_t sb,
                         float beta, float *C, int ldc, size_t sc) {
    if (count == 1) {
        be->gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    etm_gemm_group *g = etm_malloc((size_t)count * sizeof *g);
    for (int e = 0; e < count; e++) {
        g[e].M = M;
        g[e].N = N;
        g[e].K = K;
        g[e].a_off = (size_t)e * sa;
        g[e].b_off = (size_t)e * sb;
        g[e].c_off = (size_t)e * sc;
    }
    be->gemm_grouped(be, ta, tb, count, g, alpha, A, lda, B, ldb, beta, C, ldc);
    free(g);
}

/* The iteration, ping-ponging between X and work; returns the buffer holding the result (X after
 * an even number of steps, else work), so that a caller with a scratch X need not copy it back. */
static float *newton_schulz_into(etm_backend *be, float *X, int count, int rows, int cols, int steps,
                                 etm_ns_gram gram, float *work) {
    const size_t rc = (size_t)rows * cols;
    const int tall = rows > cols;
    const int s = tall ? cols : rows; /* side of the Gram matrix A */
    const size_t ss = (size_t)s * s;
    float *next = work, *A = work + (size_t)count * rc, *B = A + (size_t)count * ss;

    for (int e = 0; e < count; e++) {
        float *x = X + (size_t)e * rc;
        double norm = sqrt(be->sum_squares(be, x, rc));
        be->scale(be, x, (float)(1.0 / (norm + NS_EPS)), rc);
    }
    float *cur = X;
    for (int it = 0; it < steps; it++) {
        if (gram == ETM_NS_GRAM_SYMMETRIC) {
            /* The same iteration on the symmetric products' upper triangles, mirrored
             * (syrk_batched): A = X X^T (or X^T X) on half the FLOPs; A is then exactly
             * symmetric, so A A = A A^T, another half; B starts as a copy of A (its upper
             * triangle is what syrk reads). 3 s^2 l + s^3 FLOPs instead of 4 s^2 l + 2 s^3. */
            be->syrk_batched(be, tall ? ETM_TRANS : ETM_NO_TRANS, count, s, tall ? rows : cols, 1.0f,
                             cur, cols, rc, 0.0f, A, s, ss);
            be->copy(be, B, A, (size_t)count * ss * sizeof *B);
            be->syrk_batched(be, ETM_NO_TRANS, count, s, s, NS_C, A, s, ss, NS_B, B, s, ss);
        } else {
            if (tall) /* A = X^T X (cols, cols) */
                batched_gemm(be, ETM_TRANS, ETM_NO_TRANS, count, s, s, rows, 1.0f, cur, cols, rc, cur,
                             cols, rc, 0.0f, A, s, ss);
            else /* A = X X^T (rows, rows) */
                batched_gemm(be, ETM_NO_TRANS, ETM_TRANS, count, s, s, cols, 1.0f, cur, cols, rc, cur,
                             cols, rc, 0.0f, A, s, ss);
            /* B = b A + c A A */
            be->copy(be, B, A, (size_t)count * ss * sizeof *B);
            batched_gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, count, s, s, s, NS_C, A, s, ss, A, s, ss, NS_B, B,
                         s, ss);
        }
        /* next = a X + B X (wide) or a X + X B (tall) */
        be->copy(be, next, cur, (size_t)count * rc * sizeof *next);
        if (tall)
            batched_gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, count, rows, cols, cols, 1.0f, cur, cols, rc, B, s,
                         ss, NS_A, next, cols, rc);
        else
            batched_gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, count, rows, cols, rows, 1.0f, B, s, ss, cur, cols,
                         rc, NS_A, next, cols, rc);
        float *t = cur;
        cur = next;
        next = t;
    }
    return cur;
}

void etm_newton_schulz(etm_backend *be, float *X, int count, int rows, int cols, int steps,
                       etm_ns_gram gram, float *work) {
    float *cur = newton_schulz_into(be, X, count, rows, cols, steps, gram, work);
    if (cur != X) be->copy(be, X, cur, (size_t)count * (size_t)rows * cols * sizeof *X);
}

/* ---- creation -------------------------------------------------------------------------------- */

static void add_state(etm_optim *opt, const opt_param *op, const char *suffix, float *data) {
    etm_optim_state *st = &opt->states[opt->n_states++];
    size_t len = strlen(op->p.name) + strlen(suffix) + 6;
    st->name = etm_malloc(len);
    snprintf(st->name, len, "opt.%s.%s", op->p.name, suffix);
    st->data = data;
    st->ndim = op->p.ndim;
    for (int d = 0; d < 3; d++) st->shape[d] = d < op->p.ndim ? op->p.shape[d] : 0;
}

static int check_param(const etm_param *p, int i, const etm_param *all, int muon, int stacked,
                       etm_error *err) {
    if (!p->name[0]) return etm_fail(err, "optimizer: parameter %d has no name", i);
    for (int j = 0; j < i; j++)
        if (!strcmp(all[j].name, p->name)) return etm_fail(err, "optimizer: parameter '%s' listed twice", p->name);
    if ((unsigned)p->group >= ETM_N_PARAM_GROUPS)
        return etm_fail(err, "optimizer: parameter '%s': invalid group %d", p->name, (int)p->group);
    if (p->ndim < 1 || p->ndim > 3)
        return etm_fail(err, "optimizer: parameter '%s' has %d dimensions (1 to 3 allowed)", p->name, p->ndim);
    for (int d = 0; d < p->ndim; d++)
        if (p->shape[d] < 1 || p->shape[d] > INT32_MAX)
            return etm_fail(err, "optimizer: parameter '%s': dimension %d is %lld", p->name, d,
                            (long long)p->shape[d]);
    if (!p->data || !p->grad) return etm_fail(err, "optimizer: parameter '%s' has no data or gradient", p->name);
    if (muon && p->ndim < 2)
        return etm_fail(err, "optimizer: parameter '%s' (group matrix) is 1-D; Muon needs a 2-D (rows, cols) "
                        "or 3-D (E, rows, cols) tensor", p->name);
    if (muon && stacked && p->ndim == 3 && p->shape[0] * p->shape[1] > INT32_MAX)
        return etm_fail(err, "optimizer: parameter '%s': %lld stacked rows are too many for "
                        "muon_expert_layout = stacked", p->name, (long long)(p->shape[0] * p->shape[1]));
    return 0;
}

etm_optim *etm_optim_create(etm_backend *be, const etm_hparams *hp, const etm_param *params,
                            int n_params, etm_error *err) {
    if (n_params < 0) {
        etm_fail(err, "optimizer: %d parameters", n_params);
        return NULL;
    }
    for (int i = 0; i < n_params; i++) {
        int muon = params[i].group == ETM_PARAM_MATRIX && hp->matrix_optimizer == ETM_OPT_MUON;
        if (check_param(&params[i], i, params, muon, hp->muon_expert_layout == ETM_MUON_STACKED, err) != 0)
            return NULL;
    }
    etm_optim *opt = etm_calloc(1, sizeof *opt);
    opt->be = be;
    opt->hp = *hp;
    opt->n = n_params;
    opt->params = etm_calloc((size_t)(n_params ? n_params : 1), sizeof *opt->params);
    opt->states = etm_calloc((size_t)(2 * n_params + 1), sizeof *opt->states);
    size_t max_update = 0, max_work = 0;
    for (int i = 0; i < n_params; i++) {
        opt_param *op = &opt->params[i];
        op->p = params[i];
        op->numel = 1;
        for (int d = 0; d < op->p.ndim; d++) op->numel *= (size_t)op->p.shape[d];
        op->muon = op->p.group == ETM_PARAM_MATRIX && hp->matrix_optimizer == ETM_OPT_MUON;
        if (op->muon) {
            op->count = op->p.ndim == 3 ? (int)op->p.shape[0] : 1;
            op->rows = (int)op->p.shape[op->p.ndim - 2];
            op->cols = (int)op->p.shape[op->p.ndim - 1];
            /* Stacked: the (E, rows, cols) tensor, contiguous, is already the (E rows, cols) matrix. */
            if (hp->muon_expert_layout == ETM_MUON_STACKED && op->count > 1) {
                op->rows *= op->count;
                op->count = 1;
            }
            op->momentum = be->alloc(be, op->numel * sizeof(float));
            add_state(opt, op, "momentum", op->momentum);
            max_update = ETM_MAX(max_update, op->numel);
            max_work = ETM_MAX(max_work, etm_newton_schulz_work(op->count, op->rows, op->cols));
        } else {
            op->m = be->alloc(be, op->numel * sizeof(float));
            op->v = be->alloc(be, op->numel * sizeof(float));
            add_state(opt, op, "m", op->m);
            add_state(opt, op, "v", op->v);
        }
    }
    if (max_update) {
        opt->update = be->alloc(be, max_update * sizeof(float));
        opt->ns_work = be->alloc(be, max_work * sizeof(float));
    }
    return opt;
}

void etm_optim_free(etm_optim *opt) {
    if (!opt) return;
    etm_backend *be = opt->be;
    for (int i = 0; i < opt->n; i++) {
        opt_param *op = &opt->params[i];
        if (op->m) be->free(be, op->m);
        if (op->v) be->free(be, op->v);
        if (op->momentum) be->free(be, op->momentum);
    }
    for (int i = 0; i < opt->n_states; i++) free(opt->states[i].name);
    if (opt->update) be->free(be, opt->update);
    if (opt->ns_work) be->free(be, opt->ns_work);
    free(opt->xhost);
    free(opt->params);
    free(opt->states);
    free(opt);
}

/* ---- the step -------------------------------------------------------------------------------- */

static float group_lr(const etm_hparams *hp, etm_param_group g) {
    switch (g) {
    case ETM_PARAM_EMBED: return hp->lr_embed;
    case ETM_PARAM_HEAD: return hp->lr_head;
    case ETM_PARAM_MATRIX: return hp->lr_matrix;
    case ETM_PARAM_ROUTER: return hp->lr_router;
    default: return 0.0f;
    }
}

/* A parameter's peak rate: its group's, times lr_expert_scale for the routed experts' matrices
 * (only in group matrix: a routed_expert flag elsewhere is ignored). The scale is applied to the
 * peak rate before the schedule's multiplier, so a scale of 1 changes no bit. */
static float param_lr(const etm_hparams *hp, const etm_param *p) {
    float lr = group_lr(hp, p->group);
    if (p->group == ETM_PARAM_MATRIX && p->routed_expert) lr *= hp->lr_expert_scale;
    return lr;
}

/* A parameter's decoupled weight decay: matrix_weight_decay (or weight_decay, when it inherits)
 * for group matrix, weight_decay for the others (the router included: it is its own AdamW group,
 * and decaying it rescales the logits the thresholds track). */
static float param_wd(const etm_hparams *hp, const etm_param *p) {
    return p->group == ETM_PARAM_MATRIX ? etm_matrix_weight_decay(hp) : hp->weight_decay;
}

static void muon_update(etm_optim *opt, opt_param *op, float lr, float mu) {
    etm_backend *be = opt->be;
    const etm_hparams *hp = &opt->hp;
    const size_t n = op->numel;
    float *u = opt->update;
    /* m = mu m + (1 - mu) g;  u = (1 - mu) g + mu m */
    be->scale(be, op->momentum, mu, n);
    be->axpy(be, op->momentum, 1.0f - mu, op->p.grad, n);
    be->copy(be, u, op->p.grad, n * sizeof *u);
    be->scale(be, u, 1.0f - mu, n);
    be->axpy(be, u, mu, op->momentum, n);
    /* The result stays wherever the iteration left it (the update buffer or the workspace): no
     * copy back. */
    u = newton_schulz_into(be, u, op->count, op->rows, op->cols, hp->ns_steps, hp->muon_ns_gram,
                           opt->ns_work);
    const float wd = param_wd(hp, &op->p);
    if (wd > 0.0f) be->scale(be, op->p.data, 1.0f - lr * wd, n);
    double shape_scale = sqrt(ETM_MAX(1.0, (double)op->rows / op->cols));
    be->axpy(be, op->p.data, (float)(-lr * shape_scale), u, n);
}

int etm_optim_step(etm_optim *opt, int step, etm_optim_stats *stats, etm_error *err) {
    etm_backend *be = opt->be;
    const etm_hparams *hp = &opt->hp;
    if (step < 0) return etm_fail(err, "optimizer: step %d is negative", step);

    double sum = 0.0;
    for (int i = 0; i < opt->n; i++) sum += be->sum_squares(be, opt->params[i].p.grad, opt->params[i].numel);
    double norm = sqrt(sum);
    if (!isfinite(norm)) {
        for (int i = 0; i < opt->n; i++) {
            double s = be->sum_squares(be, opt->params[i].p.grad, opt->params[i].numel);
            if (!isfinite(s))
                return etm_fail(err, "the gradient of '%s' is not finite (sum of squares %g); "
                                "nothing was updated", opt->params[i].p.name, s);
        }
        return etm_fail(err, "the gradient norm is not finite; nothing was updated"); /* the caller names the step */
    }
    float clip = 1.0f;
    if (hp->grad_clip > 0.0f && norm > hp->grad_clip) {
        clip = (float)(hp->grad_clip / norm);
        for (int i = 0; i < opt->n; i++) be->scale(be, opt->params[i].p.grad, clip, opt->params[i].numel);
    }

    const float mult = etm_lr_multiplier(hp, step);
    const float mu = etm_muon_momentum(hp, step);
    const double t = (double)step + 1.0;
    const float bc1 = (float)(1.0 - pow(hp->adam_beta1, t));
    const float bc2 = (float)(1.0 - pow(hp->adam_beta2, t));
    for (int i = 0; i < opt->n; i++) {
        opt_param *op = &opt->params[i];
        float lr = param_lr(hp, &op->p) * mult;
        if (op->muon) {
            if (op->owner == opt->rank) muon_update(opt, op, lr, mu); /* else: etm_optim_exchange */
        }
        else
            be->adamw_update(be, op->p.data, op->p.grad, op->m, op->v, op->numel, lr, hp->adam_beta1,
                             hp->adam_beta2, hp->adam_eps, param_wd(hp, &op->p), bc1, bc2);
    }
    if (stats) {
        stats->grad_norm = norm;
        stats->clip_scale = clip;
        stats->lr_mult = mult;
        stats->muon_momentum = mu;
    }
    return 0;
}

/* ---- state ----------------------------------------------------------------------------------- */

int etm_optim_state_count(const etm_optim *opt) { return opt->n_states; }

const etm_optim_state *etm_optim_state_at(const etm_optim *opt, int i) {
    return i >= 0 && i < opt->n_states ? &opt->states[i] : NULL;
}

etm_backend *etm_optim_backend(const etm_optim *opt) { return opt->be; }

/* ---- distributed Muon ------------------------------------------------------------------------ */

double etm_newton_schulz_flops(const etm_hparams *hp, int rows, int cols) {
    double s = ETM_MIN(rows, cols), l = ETM_MAX(rows, cols);
    if (hp->muon_ns_gram == ETM_NS_GRAM_SYMMETRIC) return hp->ns_steps * (3.0 * s * s * l + s * s * s);
    return hp->ns_steps * (4.0 * s * s * l + 2.0 * s * s * s);
}

/* Newton-Schulz FLOPs of one Muon parameter's update (its count matrices of rows x cols), the
 * cost etm_optim_share balances. */
static double muon_cost(const opt_param *op, const etm_hparams *hp) {
    return (double)op->count * etm_newton_schulz_flops(hp, op->rows, op->cols);
}

void etm_optim_share(etm_optim *opt, int rank, int size) {
    /* Longest first: the costliest parameter goes to the least loaded rank (by Newton-Schulz
     * FLOPs, which grow with min(rows, cols): elements alone would give a rank all the cheap
     * thin matrices), the lowest rank on a tie, ties between parameters in parameter order.
     * Every rank computes the same shares; which rank updates a parameter never changes its
     * bits. */
    double *load = etm_calloc((size_t)size, sizeof *load);
    int *order = etm_malloc((size_t)(opt->n ? opt->n : 1) * sizeof *order);
    int n = 0;
    opt->rank = rank;
    for (int i = 0; i < opt->n; i++)
        if (opt->params[i].muon) {
            int j = n++; /* insertion sort by decreasing cost, stable */
            double c = muon_cost(&opt->params[i], &opt->hp);
            while (j > 0 && muon_cost(&opt->params[order[j - 1]], &opt->hp) < c) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = i;
        }
    for (int k = 0; k < n; k++) {
        opt_param *op = &opt->params[order[k]];
        int best = 0;
        for (int r = 1; r < size; r++)
            if (load[r] < load[best]) best = r;
        op->owner = best;
        load[best] += muon_cost(op, &opt->hp);
    }
    free(order);
    free(load);
}

int etm_optim_muon_owner(const etm_optim *opt, int i) {
    return i >= 0 && i < opt->n && opt->params[i].muon ? opt->params[i].owner : -1;
}

/* Every Muon parameter's tensor (parameter data or momentum) from its owner to the other ranks.
 * Host-staged: one broadcast per owner of all its tensors packed in parameter order, not one per
 * tensor: on a loaded machine each message's handshake waits for both processes to be scheduled
 * (measured on 2 shared cores: about 2.7 s per step for bench.conf's 120 broadcasts, 0.5 s when
 * the ranks had cores of their own; doc/distributed.md). GPU memory (NCCL): one per tensor. */
static int bcast_from_owners(etm_optim *opt, etm_comm *c, int momentum, etm_error *err) {
    etm_backend *be = opt->be;
    if (c->device_memory) { /* NCCL: from GPU memory, once the backend's work is done */
        be->synchronize(be);
        for (int i = 0; i < opt->n; i++) {
            opt_param *op = &opt->params[i];
            if (op->muon && c->bcast(c, momentum ? op->momentum : op->p.data, op->numel * sizeof(float),
                                     op->owner, err) != 0)
                return -1;
        }
        return 0;
    }
    size_t *owned = etm_calloc((size_t)c->size, sizeof *owned), max = 0;
    for (int i = 0; i < opt->n; i++)
        if (opt->params[i].muon) owned[opt->params[i].owner] += opt->params[i].numel;
    for (int r = 0; r < c->size; r++) max = ETM_MAX(max, owned[r]);
    if (opt->xhost_cap < max + 1) {
        free(opt->xhost);
        opt->xhost_cap = max + 1;
        opt->xhost = etm_malloc(opt->xhost_cap * sizeof(float));
    }
    float *host = opt->xhost;
    int rc = 0;
    for (int root = 0; root < c->size && rc == 0; root++) {
        if (!owned[root]) continue;
        size_t off = 0;
        if (root == opt->rank)
            for (int i = 0; i < opt->n; i++) {
                opt_param *op = &opt->params[i];
                if (!op->muon || op->owner != root) continue;
                be->download(be, host + off, momentum ? op->momentum : op->p.data, op->numel * sizeof(float));
                off += op->numel;
            }
        rc = c->bcast(c, host, owned[root] * sizeof(float), root, err);
        if (rc != 0 || root == opt->rank) continue;
        for (int i = 0; i < opt->n; i++) {
            opt_param *op = &opt->params[i];
            if (!op->muon || op->owner != root) continue;
            be->upload(be, momentum ? op->momentum : op->p.data, host + off, op->numel * sizeof(float));
            off += op->numel;
        }
    }
    free(owned);
    return rc;
}

int etm_optim_exchange(etm_optim *opt, etm_comm *c, etm_error *err) {
    if (c->size == 1) return 0;
    /* the parameters only: a rank reads only the momenta of the parameters it owns, so the
     * others' copies are brought up to date when someone reads them (etm_optim_sync_state) */
    opt->momentum_stale = 1;
    return bcast_from_owners(opt, c, 0, err);
}

int etm_optim_sync_state(etm_optim *opt, etm_comm *c, etm_error *err) {
    if (c->size == 1 || !opt->momentum_stale) return 0;
    if (bcast_from_owners(opt, c, 1, err) != 0) return -1;
    opt->momentum_stale = 0;
    return 0;
}
