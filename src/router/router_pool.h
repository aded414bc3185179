/* router_pool.h: expert choice over the whole optimizer step (ec_pool_scope = step,
 * doc/distributed.md). Each expert takes the top k_target tokens of the step's pool: every token
 * of every micro-batch of the step, on every rank, in global micro-batch order, with
 * k_target = floor(pool_rows top_k / E) clamped to [1, pool_rows] (router.h's definition for one
 * pool of all those rows) and router.h's tie rule (within a column the earlier row wins; the count
 * is exact). The selection is the backend's own select_columns over the pooled logits, so it is
 * the micro-batch rule with a larger pool.
 *
 * The logits of layer l depend on the routing of layers < l, so the model runs a routing pass
 * (model.h etm_model_route_step) that advances all micro-batches together layer by layer and
 * calls etm_ec_pool_select at each MoE layer; the training forwards then use the stored
 * selections (router.h etm_router_use_mask). */
#ifndef ETM_ROUTER_POOL_H
#define ETM_ROUTER_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "common.h"
#include "hparams.h"

typedef struct etm_ec_pool etm_ec_pool;

/* A selector for hp's E and top_k on backend be (its buffers grow with the pool). */
etm_ec_pool *etm_ec_pool_create(etm_backend *be, const etm_hparams *hp);
void etm_ec_pool_free(etm_ec_pool *p);

/* mask (rows, E) host (writes; 1 = routed) = each expert's top k_target rows of logits (rows, E)
 * host, row-major, ties to the earlier row. rows must fit an int. Returns 0, or -1 with a
 * message when the pool is too large to select over. */
int etm_ec_pool_select(etm_ec_pool *p, const float *logits, size_t rows, uint8_t *mask, etm_error *err);

#endif
