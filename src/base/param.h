/* param.h: one trainable tensor as the model lists it and the optimizer and checkpoints see it.
 * The model's parameter table (model.h) is an array of these; etm_optim_create takes it as is. */
#ifndef ETM_PARAM_H
#define ETM_PARAM_H

#include <stddef.h>
#include <stdint.h>

/* Which optimizer family a parameter belongs to (each has its own learning rate). */
typedef enum {
    ETM_PARAM_EMBED = 0, /* token embedding: AdamW at lr_embed */
    ETM_PARAM_HEAD,      /* LM head: AdamW at lr_head */
    ETM_PARAM_MATRIX,    /* hidden matrices: Muon (or AdamW) at lr_matrix */
    ETM_PARAM_ROUTER,    /* router weights: AdamW at lr_router */
    ETM_N_PARAM_GROUPS
} etm_param_group;

const char *etm_param_group_name(etm_param_group g); /* "embed", "head", "matrix", "router" */

typedef struct {
    char name[48];         /* checkpoint tensor name, e.g. "layers.3.moe.up" */
    etm_param_group group;
    int routed_expert;     /* 1: the routed experts' up or down projections of an MoE layer (group
                              matrix; their rate is lr_matrix * lr_expert_scale); 0 otherwise */
    float *data;           /* (numel) backend memory */
    float *grad;           /* (numel) backend memory, same shape */
    int ndim;              /* 1, 2 or 3; Muon treats (E, rows, cols) as E matrices */
    int64_t shape[3];      /* row-major sizes; entries past ndim are ignored (the model sets 1) */
    size_t numel;          /* product of the first ndim sizes (set by the model) */
    size_t offset;         /* element offset of data in the model's parameter block */
} etm_param;

#endif
