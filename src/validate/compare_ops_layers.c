/* compare_ops_layers.c: the op-by-op comparison of the transformer's operations: embedding, RMSNorm, RoPE, attention, activations, router scores and cross-entropy (compare_ops_case.h). */
#include <config.h>

#include "compare_ops_case.h"

/* ---- embedding, RMSNorm, RoPE ------------------------------------------------------------- */
typedef struct {
    int backward;
    const float *wte, *dout, *dwte;
    const int32_t *tokens;
    int N, D, V;
} emb_args;
static void run_embedding(etm_backend *be, const void *va, float *out) {
    const emb_args *a = va;
    size_t nd = (size_t)a->N * a->D, vd = (size_t)a->V * a->D;
    int32_t *tok = dput(be, a->tokens, (size_t)a->N * sizeof(int32_t));
    if (!a->backward) {
        float *wte = dput(be, a->wte, vd * sizeof(float));
        float *o = dput(be, NULL, nd * sizeof(float));
        be->embedding_forward(be, o, wte, tok, a->N, a->D);
        dget(be, out, o, nd);
        be->free(be, wte);
        be->free(be, o);
    } else {
        float *dwte = dput(be, a->dwte, vd * sizeof(float));
        float *dout = dput(be, a->dout, nd * sizeof(float));
        be->embedding_backward(be, dwte, dout, tok, a->N, a->D, a->V);
        dget(be, out, dwte, vd);
        be->free(be, dwte);
        be->free(be, dout);
    }
    be->free(be, tok);
}
void etm_cmp_embedding(chk *c) {
    int N = 211, D = 37, V = 53; /* N > V: many repeated tokens */
    int32_t *tokens = etm_malloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)etm_rng_below(&c->rng, (uint64_t)V);
    tokens[0] = V - 1;
    emb_args a = {0, h_normal(c, (size_t)V * D, 1.0f), h_normal(c, (size_t)N * D, 1.0f),
                  h_normal(c, (size_t)V * D, 1.0f), tokens, N, D, V};
    part pf = {"out", (size_t)N * D, EXACT}, pb = {"dwte", (size_t)V * D, TOL_ROUND};
    etm_cmp_case(c, "embedding_forward", run_embedding, &a, 1, &pf);
    a.backward = 1;
    etm_cmp_case(c, "embedding_backward", run_embedding, &a, 1, &pb);
    free((void *)a.wte);
    free((void *)a.dout);
    free((void *)a.dwte);
    free(tokens);
}

typedef struct {
    const float *x, *dout, *dx;
    int N, C;
    float eps;
} rms_args;
static void run_rmsnorm(etm_backend *be, const void *va, float *out) {
    const rms_args *a = va;
    size_t n = (size_t)a->N * a->C;
    float *x = dput(be, a->x, n * sizeof(float));
    float *o = dput(be, NULL, n * sizeof(float));
    float *rstd = dput(be, NULL, (size_t)a->N * sizeof(float));
    float *dout = dput(be, a->dout, n * sizeof(float));
    float *dx = dput(be, a->dx, n * sizeof(float));
    be->rmsnorm_forward(be, o, rstd, x, a->N, a->C, a->eps);
    dget(be, out, o, n);
    dget(be, out + n, rstd, (size_t)a->N);
    be->rmsnorm_backward(be, dx, dout, o, rstd, a->N, a->C);
    dget(be, out + n + a->N, dx, n);
    be->free(be, x);
    be->free(be, o);
    be->free(be, rstd);
    be->free(be, dout);
    be->free(be, dx);
}
void etm_cmp_rmsnorm(chk *c) {
    int N = 29, C = 77;
    size_t n = (size_t)N * C;
    rms_args a = {h_normal(c, n, 2.0f), h_normal(c, n, 1.0f), h_normal(c, n, 1.0f), N, C, 1e-5f};
    part p[] = {{"out", n, TOL_LIBM}, {"rstd", (size_t)N, TOL_LIBM}, {"dx (+=)", n, TOL_LIBM}};
    etm_cmp_case(c, "rmsnorm forward+backward", run_rmsnorm, &a, 3, p);
    free((void *)a.x);
    free((void *)a.dout);
    free((void *)a.dx);
}

typedef struct {
    const float *x, *cos_t, *sin_t;
    int B, T, H, hd, pos0, t_max;
} rope_args;
static void run_rope(etm_backend *be, const void *va, float *out) {
    const rope_args *a = va;
    size_t n = (size_t)a->B * a->T * a->H * a->hd, tn = (size_t)a->t_max * (a->hd / 2);
    float *x = dput(be, a->x, n * sizeof(float));
    float *ct = dput(be, a->cos_t, tn * sizeof(float));
    float *st = dput(be, a->sin_t, tn * sizeof(float));
    be->rope_forward(be, x, ct, st, a->B, a->T, a->H, a->hd, a->pos0);
    dget(be, out, x, n);
    be->rope_backward(be, x, ct, st, a->B, a->T, a->H, a->hd, a->pos0);
    dget(be, out + n, x, n);
    be->free(be, x);
    be->free(be, ct);
    be->free(be, st);
}
void etm_cmp_rope(chk *c) {
    int B = 2, T = 7, H = 3, hd = 10, pos0 = 5, t_max = 16;
    size_t n = (size_t)B * T * H * hd, tn = (size_t)t_max * (hd / 2);
    float *ct = etm_malloc(tn * sizeof(float)), *st = etm_malloc(tn * sizeof(float));
    for (size_t i = 0; i < tn; i++) {
        double angle = 6.283185307179586 * etm_rng_uniform(&c->rng);
        ct[i] = (float)cos(angle);
        st[i] = (float)sin(angle);
    }
    rope_args a = {h_normal(c, n, 1.0f), ct, st, B, T, H, hd, pos0, t_max};
    part p[] = {{"y", n, TOL_ROUND}, {"dx of y", n, TOL_ROUND}};
    etm_cmp_case(c, "rope forward, backward", run_rope, &a, 2, p);
    free((void *)a.x);
    free(ct);
    free(st);
}

/* ---- attention ---------------------------------------------------------------------------- */
typedef struct {
    int backward;
    const float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
    int B, T, S, H, Hkv, hd;
} attn_args;
static void run_attention(etm_backend *be, const void *va, float *out) {
    const attn_args *a = va;
    size_t nq = (size_t)a->B * a->T * a->H * a->hd, nk = (size_t)a->B * a->S * a->Hkv * a->hd;
    size_t nl = (size_t)a->B * a->H * a->T;
    float *q = dput(be, a->q, nq * sizeof(float));
    float *k = dput(be, a->k, nk * sizeof(float));
    float *v = dput(be, a->v, nk * sizeof(float));
    if (!a->backward) {
        float *o = dput(be, NULL, nq * sizeof(float));
        float *lse = dput(be, NULL, nl * sizeof(float));
        be->attention_forward(be, o, lse, q, k, v, a->B, a->T, a->S, a->H, a->Hkv, a->hd);
        dget(be, out, o, nq);
        dget(be, out + nq, lse, nl);
        be->free(be, o);
        be->free(be, lse);
    } else {
        float *o = dput(be, a->out, nq * sizeof(float));
        float *lse = dput(be, a->lse, nl * sizeof(float));
        float *dout = dput(be, a->dout, nq * sizeof(float));
        float *dq = dput(be, a->dq, nq * sizeof(float));
        float *dk = dput(be, a->dk, nk * sizeof(float));
        float *dv = dput(be, a->dv, nk * sizeof(float));
        be->attention_backward(be, dq, dk, dv, dout, q, k, v, o, lse, a->B, a->T, a->S, a->H,
                               a->Hkv, a->hd);
        dget(be, out, dq, nq);
        dget(be, out + nq, dk, nk);
        dget(be, out + nq + nk, dv, nk);
        be->free(be, o);
        be->free(be, lse);
        be->free(be, dout);
        be->free(be, dq);
        be->free(be, dk);
        be->free(be, dv);
    }
    be->free(be, q);
    be->free(be, k);
    be->free(be, v);
}
void etm_cmp_attention(chk *c) {
    static const int shapes[][6] = {/* B, T, S, H, Hkv, hd */
                                    {2, 37, 37, 4, 2, 20},
                                    {1, 5, 70, 3, 1, 72},
                                    {1, 33, 40, 2, 2, 130}};
    for (size_t s = 0; s < ETM_ARRAY_LEN(shapes); s++) {
        const int *sh = shapes[s];
        attn_args a = {0};
        a.B = sh[0];
        a.T = sh[1];
        a.S = sh[2];
        a.H = sh[3];
        a.Hkv = sh[4];
        a.hd = sh[5];
        size_t nq = (size_t)a.B * a.T * a.H * a.hd, nk = (size_t)a.B * a.S * a.Hkv * a.hd;
        size_t nl = (size_t)a.B * a.H * a.T;
        a.q = h_normal(c, nq, 1.0f);
        a.k = h_normal(c, nk, 1.0f);
        a.v = h_normal(c, nk, 1.0f);
        char name[64];
        snprintf(name, sizeof name, "attention_forward B%d T%d S%d H%d/%d hd%d", a.B, a.T, a.S,
                 a.H, a.Hkv, a.hd);
        part pf[] = {{"out", nq, TOL_ATTN}, {"lse", nl, TOL_ATTN}};
        etm_cmp_case(c, name, run_attention, &a, 2, pf);
        /* The backward gets the reference's forward outputs, so both sides start equal. */
        float *fwd = etm_malloc((nq + nl) * sizeof(float));
        run_attention(c->ref, &a, fwd);
        a.out = fwd;
        a.lse = fwd + nq;
        a.dout = h_normal(c, nq, 1.0f);
        a.dq = h_normal(c, nq, 1.0f);
        a.dk = h_normal(c, nk, 1.0f);
        a.dv = h_normal(c, nk, 1.0f);
        a.backward = 1;
        snprintf(name, sizeof name, "attention_backward B%d T%d S%d H%d/%d hd%d", a.B, a.T, a.S,
                 a.H, a.Hkv, a.hd);
        part pb[] = {{"dq (+=)", nq, TOL_ATTN}, {"dk (+=)", nk, TOL_ATTN}, {"dv (+=)", nk, TOL_ATTN}};
        etm_cmp_case(c, name, run_attention, &a, 3, pb);
        free(fwd);
        free((void *)a.q);
        free((void *)a.k);
        free((void *)a.v);
        free((void *)a.dout);
        free((void *)a.dq);
        free((void *)a.dk);
        free((void *)a.dv);
    }
}

/* ---- activations, cross-entropy, router scores ------------------------------------------- */
typedef struct {
    int op;
    const float *x, *dout, *dx;
    int N, E;
    float cap;
    etm_gate_op gate; /* A_GATE: which gate op */
    const float *danchor; /* A_GATE with the anchor: (N) gradient of the anchor's share, or NULL */
} act_args;
enum { A_RELU2, A_SOFTCAP, A_SIGMOID, A_SOFTMAX, A_LSE, A_GATE, A_ROWS_DOT };
static void run_act(etm_backend *be, const void *va, float *out) {
    const act_args *a = va;
    size_t n = (size_t)a->N * a->E;
    float *x = dput(be, a->x, n * sizeof(float));
    float *dout = dput(be, a->dout, n * sizeof(float));
    float *dx = dput(be, a->dx, n * sizeof(float));
    float *o = dput(be, NULL, n * sizeof(float));
    switch (a->op) {
    case A_RELU2:
        be->relu2_forward(be, o, x, n);
        be->relu2_backward(be, dx, dout, x, n);
        break;
    case A_SOFTCAP: be->softcap(be, o, x, n, a->cap); break;
    case A_SIGMOID:
        be->sigmoid_forward(be, o, x, n);
        be->sigmoid_backward(be, dx, dout, o, n);
        break;
    case A_SOFTMAX:
        be->softmax_forward(be, o, x, a->N, a->E);
        be->softmax_backward(be, dx, dout, o, a->N, a->E);
        break;
    case A_GATE: {
        /* out, dx (+=), then the anchor's share (anchor op only) */
        int anch = a->gate == ETM_GATE_OP_SOFTMAX_ANCHOR;
        float *an = anch ? dput(be, NULL, (size_t)a->N * sizeof(float)) : NULL;
        float *dan = anch && a->danchor ? dput(be, a->danchor, (size_t)a->N * sizeof(float)) : NULL;
        be->gate_forward(be, a->gate, o, an, x, a->N, a->E);
        be->gate_backward(be, a->gate, dx, dout, dan, o, an, a->N, a->E);
        if (an) dget(be, out + 2 * n, an, (size_t)a->N);
        if (an) be->free(be, an);
        if (dan) be->free(be, dan);
        break;
    }
    case A_ROWS_DOT: be->rows_dot(be, o, x, dout, a->N, a->E); break;
    default: be->logsumexp_rows(be, o, x, a->N, a->E); break;
    }
    dget(be, out, o, a->op == A_LSE || a->op == A_ROWS_DOT ? (size_t)a->N : n);
    if (a->op != A_LSE && a->op != A_SOFTCAP && a->op != A_ROWS_DOT) dget(be, out + n, dx, n);
    be->free(be, x);
    be->free(be, dout);
    be->free(be, dx);
    be->free(be, o);
}
void etm_cmp_act(chk *c) {
    int N = 37, E = 19;
    size_t n = (size_t)N * E;
    act_args a = {0, h_normal(c, n, 3.0f), h_normal(c, n, 1.0f), h_normal(c, n, 1.0f), N, E, 15.0f,
                  ETM_GATE_OP_RELU, NULL};
    part two[] = {{"out", n, TOL_ROUND}, {"dx (+=)", n, TOL_ROUND}};
    a.op = A_RELU2;
    etm_cmp_case(c, "relu2 forward, backward", run_act, &a, 2, two);
    two[0].tol = two[1].tol = TOL_LIBM;
    a.op = A_SIGMOID;
    etm_cmp_case(c, "sigmoid forward, backward", run_act, &a, 2, two);
    a.op = A_SOFTMAX;
    etm_cmp_case(c, "softmax forward, backward", run_act, &a, 2, two);
    /* the gate functions of router_activation (router.h) */
    a.op = A_GATE;
    a.gate = ETM_GATE_OP_RELU;
    etm_cmp_case(c, "gate relu forward, backward", run_act, &a, 2, two);
    a.gate = ETM_GATE_OP_SOFTMAX_COLUMNS;
    etm_cmp_case(c, "gate softmax over columns forward, backward", run_act, &a, 2, two);
    a.gate = ETM_GATE_OP_SOFTMAX_ANCHOR;
    part three[] = {{"out", n, TOL_LIBM}, {"dx (+=)", n, TOL_LIBM}, {"anchor", (size_t)N, TOL_LIBM}};
    etm_cmp_case(c, "gate softmax with anchor forward, backward", run_act, &a, 3, three);
    float *danchor = h_normal(c, (size_t)N, 1.0f);
    a.danchor = danchor;
    etm_cmp_case(c, "gate softmax with anchor, anchor gradient", run_act, &a, 3, three);
    a.danchor = NULL;
    free(danchor);
    part one = {"out", (size_t)N, TOL_LIBM};
    a.op = A_LSE;
    etm_cmp_case(c, "logsumexp_rows", run_act, &a, 1, &one);
    one.tol = TOL_ROUND;
    a.op = A_ROWS_DOT;
    etm_cmp_case(c, "rows_dot", run_act, &a, 1, &one);
    const float *x = a.x;
    float *big = h_normal(c, n, 20.0f); /* reaches the cap's flat ends */
    a.x = big;
    a.op = A_SOFTCAP;
    part cap = {"out", n, TOL_LIBM};
    etm_cmp_case(c, "softcap cap=15", run_act, &a, 1, &cap);
    a.cap = 2.5f;
    etm_cmp_case(c, "softcap cap=2.5", run_act, &a, 1, &cap);
    free(big);
    free((void *)x);
    free((void *)a.dout);
    free((void *)a.dx);
}

typedef struct {
    const float *logits, *dlogits;
    const int32_t *targets;
    int N, V;
    float cap, dloss;
} xent_args;
static void run_xent(etm_backend *be, const void *va, float *out) {
    const xent_args *a = va;
    size_t n = (size_t)a->N * a->V;
    float *l = dput(be, a->logits, n * sizeof(float));
    float *dl = dput(be, a->dlogits, n * sizeof(float)); /* (writes): old contents ignored */
    int32_t *t = dput(be, a->targets, (size_t)a->N * sizeof(int32_t));
    float *loss = dput(be, NULL, (size_t)a->N * sizeof(float));
    be->fill(be, loss, NAN, (size_t)a->N);
    be->xent_forward(be, loss, l, t, a->N, a->V, a->cap);
    be->xent_backward(be, dl, l, t, a->N, a->V, a->cap, a->dloss);
    dget(be, out, loss, (size_t)a->N);
    dget(be, out + a->N, dl, n);
    be->free(be, l);
    be->free(be, dl);
    be->free(be, t);
    be->free(be, loss);
}
void etm_cmp_xent(chk *c) {
    int N = 9, V = 1001;
    int32_t targets[9];
    for (int i = 0; i < N; i++) targets[i] = (int32_t)etm_rng_below(&c->rng, (uint64_t)V);
    targets[2] = -1; /* ignored rows */
    targets[7] = -100;
    targets[4] = V - 1;
    xent_args a = {h_normal(c, (size_t)N * V, 10.0f), h_normal(c, (size_t)N * V, 1.0f), targets,
                   N, V, 15.0f, 0.37f};
    part p[] = {{"losses", (size_t)N, TOL_LIBM}, {"dlogits", (size_t)N * V, TOL_XENT}};
    etm_cmp_case(c, "xent forward, backward cap=15", run_xent, &a, 2, p);
    free((void *)a.logits);
    free((void *)a.dlogits);
}
