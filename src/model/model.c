/* model.c: building the model (parameter table, initialisation, activation buffers) and its
 * training forward and backward passes. KV-cache decoding is in model_decode.c. */
#include <config.h>

#include "model.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rng.h"
#include "router_pool.h"

/* ---- settings ------------------------------------------------------------------------------ */

static int check_hparams(const etm_hparams *hp, int max_batch, etm_error *err) {
    if (hp->vocab_size < 2) return etm_fail(err, "model: vocab_size must be at least 2 (got %d)", hp->vocab_size);
    if (hp->seq_len < 1) return etm_fail(err, "model: seq_len must be positive (got %d)", hp->seq_len);
    if (hp->n_layer < 1) return etm_fail(err, "model: n_layer must be positive (got %d)", hp->n_layer);
    if (hp->n_layer > 1000000) return etm_fail(err, "model: n_layer %d is over the limit of 1000000", hp->n_layer);
    if (hp->d_model < 2) return etm_fail(err, "model: d_model must be at least 2 (got %d)", hp->d_model);
    if (hp->n_head < 1 || hp->d_model % hp->n_head != 0)
        return etm_fail(err, "model: n_head (%d) must be positive and divide d_model (%d)", hp->n_head,
                        hp->d_model);
    if (etm_head_dim(hp) % 2 != 0)
        return etm_fail(err, "model: head_dim = d_model / n_head = %d must be even (RoPE rotates halves)",
                        etm_head_dim(hp));
    if (hp->n_kv_head < 1 || hp->n_head % hp->n_kv_head != 0)
        return etm_fail(err, "model: n_kv_head (%d) must be positive and divide n_head (%d)", hp->n_kv_head,
                        hp->n_head);
    if (!(hp->rope_base > 1.0f)) return etm_fail(err, "model: rope_base must be > 1 (got %g)", hp->rope_base);
    if (!(hp->logit_cap > 0.0f)) return etm_fail(err, "model: logit_cap must be > 0 (got %g)", hp->logit_cap);
    if (!(hp->norm_eps >= 0.0f)) return etm_fail(err, "model: norm_eps must be >= 0 (got %g)", hp->norm_eps);
    if (!etm_router_kind_name(hp->router))
        return etm_fail(err, "model: unknown router kind %d", (int)hp->router);
    if (hp->dense_layers < 0) return etm_fail(err, "model: dense_layers must be >= 0 (got %d)", hp->dense_layers);
    int any_dense = 0, any_moe = 0;
    for (int l = 0; l < hp->n_layer; l++) {
        if (etm_is_moe_layer(hp, l)) any_moe = 1;
        else any_dense = 1;
    }
    if (any_dense && hp->ffn_hidden < 1)
        return etm_fail(err, "model: ffn_hidden must be positive (got %d)", hp->ffn_hidden);
    if (max_batch < 1) return etm_fail(err, "model: max_batch must be positive (got %d)", max_batch);
    if ((double)max_batch * hp->seq_len * ETM_MAX((double)hp->vocab_size, 4.0 * hp->d_model) > 4e12 ||
        (double)max_batch * hp->seq_len > 2e9)
        return etm_fail(err, "model: batch %d x seq_len %d is too large", max_batch, hp->seq_len);
    if (any_moe && etm_moe_check_hparams(hp, max_batch * hp->seq_len, err) < 0) return -1;
    etm_memory_estimate est;
    etm_model_memory_estimate(hp, max_batch, 0, &est);
    etm_error why = {{0}};
    if (etm_memory_check(&est, &why) != 0) return etm_fail(err, "model: %s", why.msg);
    return 0;
}

/* ---- memory -------------------------------------------------------------------------------- */

void etm_model_memory_estimate(const etm_hparams *hp, int max_batch, int training, etm_memory_estimate *out) {
    const double f = sizeof(float), i32 = sizeof(int32_t);
    double N = (double)(max_batch > 0 ? max_batch : 0) * (hp->seq_len > 0 ? hp->seq_len : 0);
    double V = hp->vocab_size, D = hp->d_model, H = hp->n_head, Hkv = hp->n_kv_head;
    double hd = hp->n_head > 0 ? (double)(hp->d_model / hp->n_head) : 0, HD = H * hd, KVD = Hkv * hd;
    double F = hp->ffn_hidden, E = hp->n_routed, S = hp->n_shared, Hx = hp->expert_hidden;
    double L = hp->n_layer > 0 ? hp->n_layer : 0;
    double moe_layers = 0;
    if (hp->router != ETM_ROUTER_DENSE) {
        moe_layers = L - (hp->dense_layers > 0 ? hp->dense_layers : 0);
        if (moe_layers < 0) moe_layers = 0;
    }
    double dense_layers = L - moe_layers;
    /* parameters: embedding and head, attention per layer, an MLP or experts per layer */
    double attn = HD * D + 2 * KVD * D + D * HD;
    double moe = E * D + 2 * E * Hx * D + 2 * S * Hx * D;
    double P = 2 * V * D + L * attn + dense_layers * 2 * F * D + moe_layers * moe;
    memset(out, 0, sizeof *out);
    out->n_params = P;
    out->params = P * f;
    out->grads = P * f;
    if (training) /* at most two state tensors per parameter (AdamW), plus Muon's update and work */
        out->optimizer = 2 * P * f + 4 * ETM_MAX(E, 1.0) * ETM_MAX(Hx, F) * D * f;
    /* layout_acts and layout_scratch, without their 64-byte rounding (covered below) */
    double acts = N * (3 * D + 1) + N * (2 * D + 1) + N * V + N +
                  L * N * (2 * D + 2 + 2 * HD + 2 * H + 2 * KVD + Hkv) + dense_layers * 2 * N * F;
    double scratch = N * V + 3 * N * D + 3 * N * HD + 3 * N * KVD + (dense_layers > 0 ? 2 * N * F : 0);
    out->activations = (acts + scratch) * f + 2 * N * i32 + 64.0 * (L + 1) * 32;
    if (moe_layers > 0) {
        double NE = N * E;
        double k = hp->top_k > 0 ? hp->top_k : 1;
        double pairs = ETM_MIN(NE, 2 * N * k);
        double layer = N * D * f + 3 * NE * f           /* moe input, logits, dscore, dlogits */
                       + (S > 0 ? (2 * S * N * Hx + 2 * N * Hx) * f : 0) /* shared experts */
                       + 3 * NE * i32 + 2 * (N + E) * i32 /* dispatch tables */
                       + 3 * NE * f + 4 * NE            /* router scores, prob, selection; masks */
                       + pairs * (3 * D + 4 * Hx + 2) * f; /* expert pair buffers, forward and backward */
        out->routing = moe_layers * layer;
        /* ec_pool_scope = step's routing pass over grad_accum micro-batches (one process's; on
         * more ranks the pooled logits, selection and its backend copy grow with the ranks):
         * residual streams, this process's and the pooled logits, the pooled selection on the host
         * and the backend, and every MoE layer's kept selections */
        if (training && (hp->router == ETM_ROUTER_EC || hp->router == ETM_ROUTER_ET) &&
            hp->ec_pool_scope == ETM_EC_POOL_STEP) {
            double A = hp->grad_accum > 0 ? hp->grad_accum : 1;
            out->routing += A * (N * D * f + 3 * NE * f + 2 * NE + moe_layers * NE);
        }
    }
    out->total = out->params + out->grads + out->optimizer + out->activations + out->routing;
}

double etm_host_memory_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return 0;
    return (double)pages * (double)page;
}

static double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

int etm_memory_check(const etm_memory_estimate *est, etm_error *err) {
    double have = etm_host_memory_bytes();
    /* a size_t must hold every single buffer too: the total bounds them all */
    if (est->total < (double)SIZE_MAX / 2 && (have <= 0 || est->total <= have)) return 0;
    return etm_fail(err,
                    "needs %.1f GiB (parameters %.1f, gradients %.1f, optimizer %.1f, activations %.1f, "
                    "routing %.1f GiB for %.3g parameters); this machine has %.1f GiB of memory",
                    gib(est->total), gib(est->params), gib(est->grads), gib(est->optimizer),
                    gib(est->activations), gib(est->routing), est->n_params, gib(have));
}

/* ---- parameter table ----------------------------------------------------------------------- */

/* Walks the parameters in their documented order. In the counting pass (m->params_memory ==
 * NULL) it appends table entries and their initial standard deviations; in the binding pass it
 * points the weight and gradient structs into the blocks. */
typedef struct {
    etm_model *m;
    int idx;
    size_t off;
    float *init_std; /* host (n_tensors) in the counting pass: 0 = zero init */
} layout_walk;

static float matrix_std(int fan_out, int fan_in) {
    double s = sqrt((double)fan_out / fan_in);
    return (float)((s < 1.0 ? s : 1.0) / sqrt((double)fan_in));
}

static void place(layout_walk *w, float **wslot, float **gslot, etm_param_group group, float std,
                  int ndim, int d0, int d1, int d2, const char *fmt, int layer) {
    etm_model *m = w->m;
    etm_param *p = &m->table[w->idx];
    if (!m->params_memory) {
        memset(p, 0, sizeof *p);
        snprintf(p->name, sizeof p->name, fmt, layer);
        p->ndim = ndim;
        p->shape[0] = d0;
        p->shape[1] = d1;
        p->shape[2] = d2;
        p->group = group;
        p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1) * (size_t)(ndim > 2 ? d2 : 1); /* fits: checked by the memory estimate */
        p->offset = w->off;
        if (w->init_std) w->init_std[w->idx] = std;
        w->off += p->numel;
    } else {
        p->data = m->params_memory + p->offset;
        p->grad = m->grads_memory + p->offset;
        *wslot = p->data;
        *gslot = p->grad;
    }
    w->idx++;
}

static void walk_params(layout_walk *w) {
    etm_model *m = w->m;
    const etm_hparams *hp = &m->hp;
    int V = hp->vocab_size, D = hp->d_model, hd = etm_head_dim(hp);
    int HD = hp->n_head * hd, KVD = hp->n_kv_head * hd;
    int F = hp->ffn_hidden, E = hp->n_routed, S = hp->n_shared, Hx = hp->expert_hidden;
    place(w, &m->w.wte, &m->g.wte, ETM_PARAM_EMBED, 1.0f, 2, V, D, 1, "wte", 0);
    for (int l = 0; l < hp->n_layer; l++) {
        etm_layer_weights *lw = &m->w.layers[l], *lg = &m->g.layers[l];
        place(w, &lw->wq, &lg->wq, ETM_PARAM_MATRIX, matrix_std(HD, D), 2, HD, D, 1, "layers.%d.attn.wq", l);
        place(w, &lw->wk, &lg->wk, ETM_PARAM_MATRIX, matrix_std(KVD, D), 2, KVD, D, 1, "layers.%d.attn.wk", l);
        place(w, &lw->wv, &lg->wv, ETM_PARAM_MATRIX, matrix_std(KVD, D), 2, KVD, D, 1, "layers.%d.attn.wv", l);
        place(w, &lw->wo, &lg->wo, ETM_PARAM_MATRIX, 0.0f, 2, D, HD, 1, "layers.%d.attn.wo", l);
        if (!etm_is_moe_layer(hp, l)) {
            place(w, &lw->mlp_up, &lg->mlp_up, ETM_PARAM_MATRIX, matrix_std(F, D), 2, F, D, 1,
                  "layers.%d.mlp.up", l);
            place(w, &lw->mlp_down, &lg->mlp_down, ETM_PARAM_MATRIX, 0.0f, 2, D, F, 1, "layers.%d.mlp.down", l);
        } else {
            place(w, &lw->moe.router, &lg->moe.router, ETM_PARAM_ROUTER, (float)(1.0 / sqrt((double)D)), 2, E,
                  D, 1, "layers.%d.moe.router", l);
            place(w, &lw->moe.up, &lg->moe.up, ETM_PARAM_MATRIX, matrix_std(Hx, D), 3, E, Hx, D,
                  "layers.%d.moe.up", l);
            place(w, &lw->moe.down, &lg->moe.down, ETM_PARAM_MATRIX, 0.0f, 3, E, D, Hx, "layers.%d.moe.down", l);
            if (!m->params_memory) /* the two just placed: lr_expert_scale applies to them (optim.c) */
                m->table[w->idx - 1].routed_expert = m->table[w->idx - 2].routed_expert = 1;
            if (S > 0) {
                place(w, &lw->moe.shared_up, &lg->moe.shared_up, ETM_PARAM_MATRIX, matrix_std(Hx, D), 3, S, Hx,
                      D, "layers.%d.moe.shared_up", l);
                place(w, &lw->moe.shared_down, &lg->moe.shared_down, ETM_PARAM_MATRIX, 0.0f, 3, S, D, Hx,
                      "layers.%d.moe.shared_down", l);
            }
        }
    }
    place(w, &m->w.lm_head, &m->g.lm_head, ETM_PARAM_HEAD, 0.0f, 2, V, D, 1, "lm_head", 0);
}

static int count_tensors(const etm_hparams *hp) {
    int n = 2; /* at most 2 + 9 n_layer: check_hparams caps n_layer so this fits an int */
    for (int l = 0; l < hp->n_layer; l++)
        n += 4 + (!etm_is_moe_layer(hp, l) ? 2 : (hp->n_shared > 0 ? 5 : 3));
    return n;
}

/* Draws the initial values, tensor by tensor in table order, from one RNG. */
static void init_params(etm_model *m, const float *init_std) {
    etm_rng rng;
    etm_rng_seed(&rng, m->hp.seed);
    size_t max_numel = 0;
    for (int i = 0; i < m->n_tensors; i++) max_numel = ETM_MAX(max_numel, m->table[i].numel);
    float *buf = etm_malloc(max_numel * sizeof(float));
    for (int i = 0; i < m->n_tensors; i++) {
        const etm_param *p = &m->table[i];
        size_t n = p->numel;
        if (init_std[i] == 0.0f) {
            m->be->zero(m->be, p->data, n * sizeof(float));
            continue;
        }
        etm_rng_fill_normal(&rng, buf, n, init_std[i]);
        m->be->upload(m->be, p->data, buf, n * sizeof(float));
    }
    free(buf);
}

/* ---- activations --------------------------------------------------------------------------- */

/* Bump allocation inside one block: counts when base is NULL. 16-float (64-byte) alignment. */
static float *bump(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;
    return p;
}

static size_t layout_acts(etm_model *m, float *base) {
    const etm_hparams *hp = &m->hp;
    size_t N = (size_t)m->max_batch * hp->seq_len, D = hp->d_model, V = hp->vocab_size;
    size_t hd = etm_head_dim(hp), H = hp->n_head, Hkv = hp->n_kv_head, F = hp->ffn_hidden;
    size_t off = 0;
    etm_acts *a = &m->acts;
    a->x0 = bump(base, &off, N * D);
    a->x0_rstd = bump(base, &off, N);
    a->resid = bump(base, &off, N * D);
    for (int l = 0; l < hp->n_layer; l++) {
        etm_layer_acts *la = &a->layers[l];
        la->ln1 = bump(base, &off, N * D);
        la->ln1_rstd = bump(base, &off, N);
        la->q = bump(base, &off, N * H * hd);
        la->q_rstd = bump(base, &off, N * H);
        la->k = bump(base, &off, N * Hkv * hd);
        la->k_rstd = bump(base, &off, N * Hkv);
        la->v = bump(base, &off, N * Hkv * hd);
        la->att = bump(base, &off, N * H * hd);
        la->lse = bump(base, &off, N * H);
        la->ln2 = bump(base, &off, N * D);
        la->ln2_rstd = bump(base, &off, N);
        if (!etm_is_moe_layer(hp, l)) {
            la->h = bump(base, &off, N * F);
            la->a = bump(base, &off, N * F);
        } else {
            la->h = la->a = NULL;
        }
    }
    a->mlp_out = bump(base, &off, N * D);
    a->lnf = bump(base, &off, N * D);
    a->lnf_rstd = bump(base, &off, N);
    a->logits = bump(base, &off, N * V);
    a->losses = bump(base, &off, N);
    return off;
}

static size_t layout_scratch(etm_model *m, float *base) {
    const etm_hparams *hp = &m->hp;
    size_t N = (size_t)m->max_batch * hp->seq_len, D = hp->d_model, V = hp->vocab_size;
    size_t hd = etm_head_dim(hp), HD = hp->n_head * hd, KVD = hp->n_kv_head * hd;
    int any_dense = 0;
    for (int l = 0; l < hp->n_layer; l++) any_dense |= !etm_is_moe_layer(hp, l);
    size_t F = any_dense ? (size_t)hp->ffn_hidden : 0;
    size_t off = 0;
    etm_grad_scratch *s = &m->scratch;
    s->dlogits = bump(base, &off, N * V);
    s->dresid = bump(base, &off, N * D);
    s->dln = bump(base, &off, N * D);
    s->datt = bump(base, &off, N * HD);
    s->dqn = bump(base, &off, N * HD);
    s->dq = bump(base, &off, N * HD);
    s->dkn = bump(base, &off, N * KVD);
    s->dk = bump(base, &off, N * KVD);
    s->dv = bump(base, &off, N * KVD);
    s->dh = bump(base, &off, N * F);
    s->da = bump(base, &off, N * F);
    s->demb = bump(base, &off, N * D);
    return off;
}

static void make_rope_tables(etm_model *m) {
    const etm_hparams *hp = &m->hp;
    int T = hp->seq_len, half = etm_head_dim(hp) / 2;
    size_t n = (size_t)T * half;
    float *c = etm_malloc(n * sizeof(float)), *s = etm_malloc(n * sizeof(float));
    for (int i = 0; i < half; i++) {
        double inv_freq = pow((double)hp->rope_base, -2.0 * i / (2.0 * half));
        for (int t = 0; t < T; t++) {
            double angle = t * inv_freq;
            c[(size_t)t * half + i] = (float)cos(angle);
            s[(size_t)t * half + i] = (float)sin(angle);
        }
    }
    m->rope_cos = m->be->alloc(m->be, n * sizeof(float));
    m->rope_sin = m->be->alloc(m->be, n * sizeof(float));
    m->be->upload(m->be, m->rope_cos, c, n * sizeof(float));
    m->be->upload(m->be, m->rope_sin, s, n * sizeof(float));
    free(c);
    free(s);
}

/* ---- create / free ------------------------------------------------------------------------- */

etm_model *etm_model_create(etm_backend *be, const etm_hparams *hp, int max_batch, etm_error *err) {
    if (check_hparams(hp, max_batch, err) < 0) return NULL;
    etm_model *m = etm_calloc(1, sizeof *m);
    m->hp = *hp;
    m->be = be;
    m->max_batch = max_batch;
    int L = hp->n_layer;
    size_t N = (size_t)max_batch * hp->seq_len;

    m->w.layers = etm_calloc(L, sizeof(etm_layer_weights));
    m->g.layers = etm_calloc(L, sizeof(etm_layer_weights));
    m->n_tensors = count_tensors(hp);
    m->table = etm_calloc(m->n_tensors, sizeof(etm_param));
    float *init_std = etm_calloc(m->n_tensors, sizeof(float));
    layout_walk walk = {m, 0, 0, init_std};
    walk_params(&walk);
    m->n_params = walk.off;
    m->params_memory = be->alloc(be, m->n_params * sizeof(float));
    m->grads_memory = be->alloc(be, m->n_params * sizeof(float));
    layout_walk bind = {m, 0, 0, NULL};
    walk_params(&bind);
    init_params(m, init_std);
    free(init_std);

    m->moe = etm_calloc(L, sizeof(etm_moe_layer *));
    for (int l = 0; l < L; l++) {
        if (!etm_is_moe_layer(hp, l)) continue;
        m->moe[l] = etm_moe_create(be, hp, (int)N);
        if (!m->moe[l]) {
            etm_fail(err, "model: could not build the MoE layer %d (check the router settings)", l);
            etm_model_free(m);
            return NULL;
        }
    }

    make_rope_tables(m);
    m->acts.layers = etm_calloc(L, sizeof(etm_layer_acts));
    m->acts_memory = be->alloc(be, layout_acts(m, NULL) * sizeof(float));
    layout_acts(m, m->acts_memory);
    m->acts.tokens = be->alloc(be, N * sizeof(int32_t));
    m->acts.targets = be->alloc(be, N * sizeof(int32_t));
    m->scratch_memory = be->alloc(be, layout_scratch(m, NULL) * sizeof(float));
    layout_scratch(m, m->scratch_memory);
    m->host_losses = etm_calloc(N, sizeof(float));
    return m;
}

void etm_model_free(etm_model *m) {
    if (!m) return;
    etm_backend *be = m->be;
    if (m->moe)
        for (int l = 0; l < m->hp.n_layer; l++) etm_moe_free(m->moe[l]);
    free(m->moe);
    if (m->params_memory) be->free(be, m->params_memory);
    if (m->grads_memory) be->free(be, m->grads_memory);
    if (m->acts_memory) be->free(be, m->acts_memory);
    if (m->scratch_memory) be->free(be, m->scratch_memory);
    if (m->acts.tokens) be->free(be, m->acts.tokens);
    if (m->acts.targets) be->free(be, m->acts.targets);
    if (m->rope_cos) be->free(be, m->rope_cos);
    if (m->rope_sin) be->free(be, m->rope_sin);
    free(m->acts.layers);
    free(m->w.layers);
    free(m->g.layers);
    free(m->table);
    free(m->host_losses);
    etm_ec_pool_free(m->pool);
    if (m->pool_resid) be->free(be, m->pool_resid);
    free(m->pool_mine);
    free(m->pool_logits);
    free(m->pool_all_mask);
    free(m->pool_masks);
    free(m);
}

/* ---- forward ------------------------------------------------------------------------------- */

/* y(N, out) = x(N, in) W^T for W (out, in); beta 1 accumulates into y. */
static void linear(etm_backend *be, float *y, const float *x, const float *W, int N, int out, int in,
                   float beta) {
    be->gemm(be, ETM_NO_TRANS, ETM_TRANS, N, out, in, 1.0f, x, in, W, in, beta, y, out);
}

/* Backward of linear(): dW(out, in) += dy(N, out)^T x(N, in), and dx(N, in) = dy W, or += with
 * dx_beta 1 (the gradient of an input shared by several projections). */
static void linear_backward(etm_backend *be, float *dx, float *dW, const float *dy, const float *x,
                            const float *W, int N, int out, int in, float dx_beta) {
    be->gemm(be, ETM_TRANS, ETM_NO_TRANS, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);
    be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, N, in, out, 1.0f, dy, out, W, in, dx_beta, dx, in);
}

/* a->resid += layer l's attention of norm(a->resid), keeping what backward needs in its acts; q and
 * k before QK-norm live in the (idle) gradient scratch. */
static void attention_forward(etm_model *m, int l, int B, int T) {
    const etm_hparams *hp = &m->hp;
    etm_backend *be = m->be;
    int N = B * T, D = hp->d_model, hd = etm_head_dim(hp);
    int H = hp->n_head, Hkv = hp->n_kv_head, HD = H * hd, KVD = Hkv * hd;
    float eps = hp->norm_eps;
    const etm_layer_weights *w = &m->w.layers[l];
    etm_layer_acts *la = &m->acts.layers[l];
    etm_acts *a = &m->acts;
    etm_grad_scratch *s = &m->scratch;
    be->rmsnorm_forward(be, la->ln1, la->ln1_rstd, a->resid, N, D, eps);
    linear(be, s->dq, la->ln1, w->wq, N, HD, D, 0.0f);
    be->rope_forward(be, s->dq, m->rope_cos, m->rope_sin, B, T, H, hd, 0);
    be->rmsnorm_forward(be, la->q, la->q_rstd, s->dq, N * H, hd, eps);
    linear(be, s->dk, la->ln1, w->wk, N, KVD, D, 0.0f);
    be->rope_forward(be, s->dk, m->rope_cos, m->rope_sin, B, T, Hkv, hd, 0);
    be->rmsnorm_forward(be, la->k, la->k_rstd, s->dk, N * Hkv, hd, eps);
    linear(be, la->v, la->ln1, w->wv, N, KVD, D, 0.0f);
    be->attention_forward(be, la->att, la->lse, la->q, la->k, la->v, B, T, T, H, Hkv, hd);
    linear(be, a->resid, la->att, w->wo, N, D, HD, 1.0f);
}

/* a->x0 = norm(embedding of a->tokens (N, uploaded)); the raw embedding is not needed by backward:
 * mlp_out is free to hold it. */
static void embed_forward(etm_model *m, int N) {
    etm_backend *be = m->be;
    etm_acts *a = &m->acts;
    int D = m->hp.d_model;
    be->embedding_forward(be, a->mlp_out, m->w.wte, a->tokens, N, D);
    be->rmsnorm_forward(be, a->x0, a->x0_rstd, a->mlp_out, N, D, m->hp.norm_eps);
}

/* a->resid += layer l's dense MLP of its ln2 (ReLU^2), keeping h and a for backward. */
static void dense_mlp_forward(etm_model *m, int l, int N) {
    etm_backend *be = m->be;
    const etm_layer_weights *w = &m->w.layers[l];
    etm_layer_acts *la = &m->acts.layers[l];
    int D = m->hp.d_model, F = m->hp.ffn_hidden;
    linear(be, la->h, la->ln2, w->mlp_up, N, F, D, 0.0f);
    be->relu2_forward(be, la->a, la->h, (size_t)N * F);
    linear(be, m->acts.resid, la->a, w->mlp_down, N, D, F, 1.0f);
}

int etm_model_forward(etm_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                      etm_moe_mode mode, double *loss, etm_error *err) {
    const etm_hparams *hp = &m->hp;
    etm_backend *be = m->be;
    if (B < 1 || B > m->max_batch)
        return etm_fail(err, "model forward: batch size %d outside 1..%d", B, m->max_batch);
    if (T < 1 || T > hp->seq_len)
        return etm_fail(err, "model forward: sequence length %d outside 1..%d", T, hp->seq_len);
    int N = B * T, V = hp->vocab_size, D = hp->d_model;
    float eps = hp->norm_eps;
    for (int i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return etm_fail(err, "model forward: token %d at position %d (sequence %d) outside 0..%d",
                            (int)tokens[i], i % T, i / T, V - 1);
    int n_valid = 0;
    if (targets)
        for (int i = 0; i < N; i++) {
            if (targets[i] >= V)
                return etm_fail(err, "model forward: target %d at position %d (sequence %d) outside 0..%d",
                                (int)targets[i], i % T, i / T, V - 1);
            n_valid += targets[i] >= 0;
        }
    m->last_B = B;
    m->last_T = T;
    m->last_has_targets = targets != NULL;
    m->n_valid = n_valid;

    etm_acts *a = &m->acts;
    be->upload(be, a->tokens, tokens, (size_t)N * sizeof(int32_t));
    if (targets) be->upload(be, a->targets, targets, (size_t)N * sizeof(int32_t));

    embed_forward(m, N);
    be->copy(be, a->resid, a->x0, (size_t)N * D * sizeof(float));

    double added_loss = 0.0;
    for (int l = 0; l < hp->n_layer; l++) {
        const etm_layer_weights *w = &m->w.layers[l];
        etm_layer_acts *la = &a->layers[l];
        attention_forward(m, l, B, T);
        /* MLP */
        be->rmsnorm_forward(be, la->ln2, la->ln2_rstd, a->resid, N, D, eps);
        if (m->moe[l]) {
            added_loss += etm_moe_forward(m->moe[l], &w->moe, la->ln2, a->mlp_out, N, mode);
            be->axpy(be, a->resid, 1.0f, a->mlp_out, (size_t)N * D);
        } else {
            dense_mlp_forward(m, l, N);
        }
    }
    be->rmsnorm_forward(be, a->lnf, a->lnf_rstd, a->resid, N, D, eps);
    linear(be, a->logits, a->lnf, m->w.lm_head, N, V, D, 0.0f);

    double total = 0.0;
    if (targets) {
        be->xent_forward(be, a->losses, a->logits, a->targets, N, V, hp->logit_cap);
        be->download(be, m->host_losses, a->losses, (size_t)N * sizeof(float));
        double sum = 0.0; /* in token order, so the loss does not depend on threads */
        for (int i = 0; i < N; i++) sum += m->host_losses[i];
        total = (n_valid > 0 ? sum / n_valid : 0.0) + added_loss;
    }
    if (loss) *loss = total;
    return 0;
}

/* ---- the routing pass of ec_pool_scope = step -------------------------------------------------- */

int etm_model_route_step(etm_model *m, const int32_t *tokens, int n_mb, int B, int T, int first_mb,
                         int n_all, etm_pool_gather_fn gather, void *ctx, etm_error *err) {
    const etm_hparams *hp = &m->hp;
    etm_backend *be = m->be;
    if (n_mb < 1 || first_mb < 0 || first_mb + n_mb > n_all || (!gather && n_all != n_mb))
        return etm_fail(err, "routing pass: micro-batches %d..%d of %d", first_mb, first_mb + n_mb - 1, n_all);
    if (B < 1 || B > m->max_batch || T != hp->seq_len)
        return etm_fail(err, "routing pass: %d sequences of %d tokens (at most %d of %d)", B, T, m->max_batch,
                        hp->seq_len);
    int N = B * T, D = hp->d_model, V = hp->vocab_size, E = hp->n_routed, L = hp->n_layer;
    for (size_t i = 0; i < (size_t)n_mb * N; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return etm_fail(err, "routing pass: token %d outside 0..%d", (int)tokens[i], V - 1);
    size_t ND = (size_t)N * D, NE = (size_t)N * E;
    if (!m->pool || m->pool_mb != n_mb || m->pool_all != n_all || m->pool_N != N) {
        if (!m->pool) m->pool = etm_ec_pool_create(be, hp);
        if (m->pool_resid) be->free(be, m->pool_resid);
        m->pool_resid = be->alloc(be, (size_t)n_mb * ND * sizeof(float));
        m->pool_mine = etm_realloc(m->pool_mine, (size_t)n_mb * NE * sizeof(float));
        m->pool_logits = etm_realloc(m->pool_logits, (size_t)n_all * NE * sizeof(float));
        m->pool_all_mask = etm_realloc(m->pool_all_mask, (size_t)n_all * NE);
        m->pool_masks = etm_realloc(m->pool_masks, (size_t)L * n_mb * NE);
        m->pool_mb = n_mb;
        m->pool_all = n_all;
        m->pool_N = N;
    }
    etm_acts *a = &m->acts;
    /* the stream starts as in etm_model_forward */
    for (int i = 0; i < n_mb; i++) {
        be->upload(be, a->tokens, tokens + (size_t)i * N, (size_t)N * sizeof(int32_t));
        embed_forward(m, N);
        be->copy(be, m->pool_resid + i * ND, a->x0, ND * sizeof(float));
    }
    m->last_B = 0; /* the activations no longer belong to one forward */
    for (int l = 0; l < L; l++) {
        const etm_layer_weights *w = &m->w.layers[l];
        etm_layer_acts *la = &a->layers[l];
        for (int i = 0; i < n_mb; i++) {
            float *ri = m->pool_resid + i * ND;
            be->copy(be, a->resid, ri, ND * sizeof(float));
            attention_forward(m, l, B, T);
            be->rmsnorm_forward(be, la->ln2, la->ln2_rstd, a->resid, N, D, hp->norm_eps);
            if (m->moe[l]) {
                const float *r = etm_moe_router_logits(m->moe[l], &w->moe, la->ln2, N);
                be->download(be, m->pool_mine + i * NE, r, NE * sizeof(float));
            } else {
                dense_mlp_forward(m, l, N);
            }
            be->copy(be, ri, a->resid, ND * sizeof(float));
        }
        if (!m->moe[l]) continue;
        /* every MoE layer of a model has the same kind and step counts, so the same rule */
        if (etm_router_rule(etm_moe_router(m->moe[l]), ETM_MOE_TRAIN) != ETM_RULE_EC)
            return etm_fail(err, "routing pass: layer %d does not route by expert choice now", l);
        if (gather) {
            if (gather(ctx, m->pool_mine, (size_t)n_mb * NE, m->pool_logits, err) != 0) return -1;
        } else {
            memcpy(m->pool_logits, m->pool_mine, (size_t)n_mb * NE * sizeof(float));
        }
        if (etm_ec_pool_select(m->pool, m->pool_logits, (size_t)n_all * N, m->pool_all_mask, err) != 0) return -1;
        uint8_t *mine = m->pool_masks + (size_t)l * n_mb * NE;
        memcpy(mine, m->pool_all_mask + (size_t)first_mb * NE, (size_t)n_mb * NE);
        /* advance each stream through the layer with the step's selection, recording nothing */
        etm_router *rt = etm_moe_router_mut(m->moe[l]);
        for (int i = 0; i < n_mb; i++) {
            float *ri = m->pool_resid + i * ND;
            be->copy(be, a->resid, ri, ND * sizeof(float));
            be->rmsnorm_forward(be, la->ln2, la->ln2_rstd, a->resid, N, D, hp->norm_eps);
            etm_router_use_mask(rt, mine + i * NE, N, 0);
            etm_moe_forward(m->moe[l], &w->moe, la->ln2, a->mlp_out, N, ETM_MOE_TRAIN);
            be->axpy(be, a->resid, 1.0f, a->mlp_out, ND);
            be->copy(be, ri, a->resid, ND * sizeof(float));
        }
    }
    return 0;
}

int etm_model_step_routing_needed(const etm_model *m) {
    if (m->hp.ec_pool_scope != ETM_EC_POOL_STEP) return 0;
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l] && etm_router_rule(etm_moe_router(m->moe[l]), ETM_MOE_TRAIN) == ETM_RULE_EC) return 1;
    return 0;
}

void etm_model_use_step_routing(etm_model *m, int a) {
    size_t NE = (size_t)m->pool_N * m->hp.n_routed;
    assert(m->pool_masks && a >= 0 && a < m->pool_mb);
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l])
            etm_router_use_mask(etm_moe_router_mut(m->moe[l]), m->pool_masks + ((size_t)l * m->pool_mb + a) * NE,
                                m->pool_N, 1);
}

const uint8_t *etm_model_step_mask(const etm_model *m, int l, int a) {
    size_t NE = (size_t)m->pool_N * m->hp.n_routed;
    return m->pool_masks + ((size_t)l * m->pool_mb + a) * NE;
}

int etm_model_logits(etm_model *m, float *out, int first, int rows, etm_error *err) {
    int N = m->last_B * m->last_T;
    if (!m->last_B) return etm_fail(err, "model logits: no forward pass yet");
    if (first < 0 || rows < 1 || first > N - rows)
        return etm_fail(err, "model logits: rows %d..%d outside the last forward's 0..%d", first, first + rows - 1,
                        N - 1);
    size_t V = m->hp.vocab_size;
    float *tmp = m->scratch.dlogits; /* idle until the next backward overwrites it */
    m->be->softcap(m->be, tmp, m->acts.logits + (size_t)first * V, (size_t)rows * V, m->hp.logit_cap);
    m->be->download(m->be, out, tmp, (size_t)rows * V * sizeof(float));
    return 0;
}

/* ---- backward ------------------------------------------------------------------------------ */

int etm_model_backward(etm_model *m, float loss_scale, etm_error *err) {
    if (!m->last_B) return etm_fail(err, "model backward: no forward pass to differentiate");
    if (!m->last_has_targets)
        return etm_fail(err, "model backward: the last forward had no targets, so there is no loss");
    const etm_hparams *hp = &m->hp;
    etm_backend *be = m->be;
    int B = m->last_B, T = m->last_T, N = B * T;
    int V = hp->vocab_size, D = hp->d_model, hd = etm_head_dim(hp);
    int H = hp->n_head, Hkv = hp->n_kv_head, HD = H * hd, KVD = Hkv * hd, F = hp->ffn_hidden;
    etm_acts *a = &m->acts;
    etm_grad_scratch *s = &m->scratch;
    size_t ND = (size_t)N * D * sizeof(float);

    /* head: loss = mean over valid tokens */
    float dloss = m->n_valid > 0 ? loss_scale / (float)m->n_valid : 0.0f;
    be->xent_backward(be, s->dlogits, a->logits, a->targets, N, V, hp->logit_cap, dloss);
    linear_backward(be, s->dln, m->g.lm_head, s->dlogits, a->lnf, m->w.lm_head, N, V, D, 0.0f);
    be->zero(be, s->dresid, ND);
    be->rmsnorm_backward(be, s->dresid, s->dln, a->lnf, a->lnf_rstd, N, D);

    for (int l = hp->n_layer - 1; l >= 0; l--) {
        const etm_layer_weights *w = &m->w.layers[l];
        etm_layer_weights *g = &m->g.layers[l];
        etm_layer_acts *la = &a->layers[l];
        /* MLP: dresid is the gradient of its output */
        if (m->moe[l]) {
            be->zero(be, s->dln, ND);
            etm_moe_backward(m->moe[l], &w->moe, &g->moe, s->dresid, s->dln, loss_scale);
        } else {
            linear_backward(be, s->da, g->mlp_down, s->dresid, la->a, w->mlp_down, N, D, F, 0.0f);
            be->zero(be, s->dh, (size_t)N * F * sizeof(float));
            be->relu2_backward(be, s->dh, s->da, la->h, (size_t)N * F);
            linear_backward(be, s->dln, g->mlp_up, s->dh, la->ln2, w->mlp_up, N, F, D, 0.0f);
        }
        be->rmsnorm_backward(be, s->dresid, s->dln, la->ln2, la->ln2_rstd, N, D);

        /* attention */
        linear_backward(be, s->datt, g->wo, s->dresid, la->att, w->wo, N, D, HD, 0.0f);
        be->zero(be, s->dqn, (size_t)N * HD * sizeof(float));
        be->zero(be, s->dkn, (size_t)N * KVD * sizeof(float));
        be->zero(be, s->dv, (size_t)N * KVD * sizeof(float));
        be->attention_backward(be, s->dqn, s->dkn, s->dv, s->datt, la->q, la->k, la->v, la->att, la->lse, B, T,
                               T, H, Hkv, hd);
        be->zero(be, s->dq, (size_t)N * HD * sizeof(float));
        be->rmsnorm_backward(be, s->dq, s->dqn, la->q, la->q_rstd, N * H, hd);
        be->rope_backward(be, s->dq, m->rope_cos, m->rope_sin, B, T, H, hd, 0);
        be->zero(be, s->dk, (size_t)N * KVD * sizeof(float));
        be->rmsnorm_backward(be, s->dk, s->dkn, la->k, la->k_rstd, N * Hkv, hd);
        be->rope_backward(be, s->dk, m->rope_cos, m->rope_sin, B, T, Hkv, hd, 0);
        linear_backward(be, s->dln, g->wq, s->dq, la->ln1, w->wq, N, HD, D, 0.0f);
        linear_backward(be, s->dln, g->wk, s->dk, la->ln1, w->wk, N, KVD, D, 1.0f);
        linear_backward(be, s->dln, g->wv, s->dv, la->ln1, w->wv, N, KVD, D, 1.0f);
        be->rmsnorm_backward(be, s->dresid, s->dln, la->ln1, la->ln1_rstd, N, D);
    }

    /* x0 = norm(wte[tokens]) */
    be->zero(be, s->demb, ND);
    be->rmsnorm_backward(be, s->demb, s->dresid, a->x0, a->x0_rstd, N, D);
    be->embedding_backward(be, m->g.wte, s->demb, a->tokens, N, D, V);
    return 0;
}

void etm_model_zero_grad(etm_model *m) { m->be->zero(m->be, m->grads_memory, m->n_params * sizeof(float)); }

void etm_model_step_end(etm_model *m) {
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) etm_moe_step_end(m->moe[l]);
}

/* ---- sizes --------------------------------------------------------------------------------- */

size_t etm_model_num_params(const etm_model *m) { return m->n_params; }

double etm_model_active_matmul_params(const etm_model *m, double routed_per_token) {
    return etm_hparams_active_matmul_params(&m->hp, routed_per_token);
}

double etm_model_train_flops_per_token(const etm_model *m, int T, double routed_per_token) {
    return etm_hparams_train_flops_per_token(&m->hp, T, routed_per_token);
}

double etm_hparams_active_matmul_params(const etm_hparams *hp, double routed_per_token) {
    double D = hp->d_model, hd = etm_head_dim(hp), HD = hp->n_head * hd, KVD = hp->n_kv_head * hd;
    double p = (double)hp->vocab_size * D; /* LM head */
    for (int l = 0; l < hp->n_layer; l++) {
        p += 2.0 * D * HD + 2.0 * D * KVD;
        if (etm_is_moe_layer(hp, l))
            p += hp->n_routed * D + (hp->n_shared + routed_per_token) * 2.0 * D * hp->expert_hidden;
        else
            p += 2.0 * D * hp->ffn_hidden;
    }
    return p;
}

double etm_hparams_train_flops_per_token(const etm_hparams *hp, int T, double routed_per_token) {
    double attn = (double)hp->n_layer * 2.0 * 2.0 * hp->n_head * etm_head_dim(hp) * (T + 1) / 2.0;
    return 3.0 * (2.0 * etm_hparams_active_matmul_params(hp, routed_per_token) + attn);
}
