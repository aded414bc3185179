/* validate_side.h: what the parts of the whole-model validation share (internal to
 * src/validate/): the seeded random token source they train on, and one backend's model and
 * optimizer ("side") with its training step. Defined in validate_side.c. */
#ifndef ETM_VALIDATE_SIDE_H
#define ETM_VALIDATE_SIDE_H

#include "validate_backend.h"

#include <stdint.h>

#include "model.h"
#include "optim.h"
#include "rng.h"

/* ---- the data: a seeded random Markov chain -------------------------------------------------- */
#define SUCCESSORS 4

typedef struct {
    etm_rng rng;
    int V;
    int32_t *next; /* (V, SUCCESSORS) the possible successors of each token */
} token_source;

/* Seeds the chain (each of the V tokens gets SUCCESSORS random successors) / frees it. */
void etm_cbk_source_init(token_source *s, uint64_t seed, int V);
void etm_cbk_source_free(token_source *s);
/* B sequences of T inputs and their T next-token targets. */
void etm_cbk_source_batch(token_source *s, int B, int T, int32_t *inputs, int32_t *targets);

/* ---- one backend's model and optimizer ------------------------------------------------------- */
typedef struct {
    etm_backend *be;
    etm_model *m;
    etm_optim *opt;
} side;

/* The model and optimizer of hp on backend be / frees them (s stays reusable). */
int etm_cbk_side_create(side *s, etm_backend *be, const etm_hparams *hp, etm_error *err);
void etm_cbk_side_free(side *s);
/* One optimizer step (number step, 0-based) over grad_accum micro-batches stored one after the
 * other in inputs/targets, as the trainer does it; *loss gets the micro-batches' mean loss. */
int etm_cbk_train_step(side *s, int step, const int32_t *inputs, const int32_t *targets,
                       double *loss, etm_error *err);

#endif
