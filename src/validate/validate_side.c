/* validate_side.c: what the parts of the whole-model validation share (validate_side.h): the
 * seeded random token source, and one backend's model and optimizer with its training step. */
#include <config.h>

#include "validate_side.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the data: a seeded random Markov chain -------------------------------------------------- */

void etm_cbk_source_init(token_source *s, uint64_t seed, int V) {
    etm_rng_seed(&s->rng, seed);
    s->V = V;
    s->next = etm_malloc((size_t)V * SUCCESSORS * sizeof(int32_t));
    for (size_t i = 0; i < (size_t)V * SUCCESSORS; i++) s->next[i] = (int32_t)etm_rng_below(&s->rng, (uint64_t)V);
}

void etm_cbk_source_free(token_source *s) { free(s->next); }

/* B sequences of T inputs and their T next-token targets. */
void etm_cbk_source_batch(token_source *s, int B, int T, int32_t *inputs, int32_t *targets) {
    for (int b = 0; b < B; b++) {
        int32_t tok = (int32_t)etm_rng_below(&s->rng, (uint64_t)s->V);
        for (int t = 0; t < T; t++) {
            inputs[(size_t)b * T + t] = tok;
            tok = s->next[(size_t)tok * SUCCESSORS + etm_rng_below(&s->rng, SUCCESSORS)];
            targets[(size_t)b * T + t] = tok;
        }
    }
}

/* ---- one backend's model and optimizer ------------------------------------------------------- */

void etm_cbk_side_free(side *s) {
    etm_optim_free(s->opt);
    etm_model_free(s->m);
    s->opt = NULL;
    s->m = NULL;
}

int etm_cbk_side_create(side *s, etm_backend *be, const etm_hparams *hp, etm_error *err) {
    memset(s, 0, sizeof *s);
    s->be = be;
    s->m = etm_model_create(be, hp, hp->batch_size, err);
    if (!s->m) return -1;
    s->opt = etm_optim_create(be, hp, s->m->table, s->m->n_tensors, err);
    if (!s->opt) {
        etm_cbk_side_free(s);
        return -1;
    }
    return 0;
}

/* One optimizer step (number step, 0-based) over grad_accum micro-batches stored one after the
 * other in inputs/targets, as the trainer does it; *loss gets the micro-batches' mean loss. */
int etm_cbk_train_step(side *s, int step, const int32_t *inputs, const int32_t *targets,
                       double *loss, etm_error *err) {
    const etm_hparams *hp = &s->m->hp;
    int B = hp->batch_size, T = hp->seq_len, A = hp->grad_accum;
    size_t BT = (size_t)B * T;
    etm_error e2 = {{0}};
    etm_model_zero_grad(s->m);
    double sum = 0.0;
    for (int a = 0; a < A; a++) {
        double l = 0.0;
        if (etm_model_forward(s->m, inputs + a * BT, targets + a * BT, B, T, ETM_MOE_TRAIN, &l, &e2) != 0)
            return etm_fail(err, "%s: step %d: %s", s->be->name, step + 1, e2.msg);
        if (!isfinite(l))
            return etm_fail(err, "%s: step %d: the loss is %g", s->be->name, step + 1, l);
        sum += l;
        if (etm_model_backward(s->m, 1.0f / (float)A, &e2) != 0)
            return etm_fail(err, "%s: step %d: %s", s->be->name, step + 1, e2.msg);
    }
    if (etm_optim_step(s->opt, step, NULL, &e2) != 0)
        return etm_fail(err, "%s: step %d: %s", s->be->name, step + 1, e2.msg);
    etm_model_step_end(s->m);
    *loss = sum / A;
    return 0;
}

/* n floats from one backend's memory to another's, through the host. */
