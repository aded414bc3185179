/* router_kind.h: what one router kind supplies (a row of the table in router.c) and the state
 * every kind shares, for the kind files router_tc.c, router_ec.c and router_et.c (the cut-off
 * EMA that ec and et share is router_cutoff.c). Internal to the router: the MoE layer and the
 * rest of the program use router.h.
 *
 * A forward is: scores (router.c) -> the kind's route (selection into mask, mask_before) ->
 * router.c downloads the mask and counts (load, histogram, drops and pads) -> the kind's
 * routed hook (its own statistics and loss coefficients) -> the kind's loss -> z-loss. */
#ifndef ETM_ROUTER_KIND_H
#define ETM_ROUTER_KIND_H

#include "router.h"

typedef struct etm_router_ops {
    etm_router_kind kind;
    const char *name; /* the config value; equals etm_router_kind_name(kind) (checked by a test) */
    /* The kind's own settings (the shared ones are checked by router.c); 0 or -1 and a message. */
    int (*check)(const etm_hparams *hp, int tokens_per_batch, etm_error *err);
    /* Builds rt->state (and may set rt->score_kind, rt->want_prob) / frees it. */
    void (*create)(etm_router *rt);
    void (*destroy)(etm_router *rt);
    etm_route_rule (*rule)(const etm_router *rt, etm_moe_mode mode);
    /* Writes rt->mask for N tokens (not in REPLAY); records what TRAIN records. Returns 1 when
     * rt->mask_before holds the selection before a capacity or clamp, with *pool_rows the rows
     * of one group for the drop/pad counts; 0 otherwise. */
    int (*route)(etm_router *rt, const float *logits, int N, etm_moe_mode mode, int *pool_rows);
    /* After the host masks are downloaded (NULL: nothing to do). */
    void (*routed)(etm_router *rt, int N, etm_moe_mode mode, int before);
    /* Balance loss of the last routing, from rt->score / rt->prob (NULL: none). */
    double (*loss)(etm_router *rt, int N);
    /* Its gradient: added to dscore before the score backward, and to dlogits after it. */
    void (*loss_backward_scores)(etm_router *rt, float *dscore, float loss_scale);
    void (*loss_backward_logits)(etm_router *rt, float *dlogits);
    void (*step_end)(etm_router *rt); /* NULL: nothing beyond the step count */
    /* Views of the kind's saved state (NULL for parts it lacks) and their restore (NULL
     * arguments: unchanged); set also clears the accumulators of the current step. */
    void (*get_state)(const etm_router *rt, etm_router_state *out);
    void (*set_state)(etm_router *rt, const float *threshold, const float *ema, const float *bias);
    /* Rebuilds the kind's step accumulators from rt->rec (etm_router_set_step_records), adding
     * the records in their order exactly as the TRAIN forwards that made them would have (NULL:
     * the kind keeps no records). */
    void (*resum)(etm_router *rt);
    /* The kind's cut-off EMA state (router_cutoff.c); NULL: it has none (tc). */
    const struct etm_cutoff_state *(*cutoff)(const etm_router *rt);
} etm_router_ops;

extern const etm_router_ops etm_router_tc_ops, etm_router_ec_ops, etm_router_et_ops;
/* The table's row of a kind; NULL for dense and unknown kinds. */
const etm_router_ops *etm_router_ops_of(etm_router_kind kind);

struct etm_router {
    const etm_router_ops *ops;
    etm_backend *be;
    etm_hparams hp;            /* the settings it was built with (sizes: etm_router_sizes) */
    int E, k, max_tokens;
    etm_score_kind score_kind; /* gate of every pair: sigmoid (ec, et, tc default) or softmax */
    int want_prob;             /* the kind needs softmax(r) beside sigmoid scores */
    etm_gate_fn gate;          /* hp.router_activation (router.h: the gate functions) */
    float shared_const;        /* constant gate of the shared experts (1, or 1 / G) */
    float z_coef;

    /* backend tensors */
    float *score;         /* (max_tokens, E) gate value of every pair */
    float *prob;          /* (max_tokens, E) softmax(r) when it differs from score and is needed */
    float *shared_gate;   /* (max_tokens) softmax_e with shared experts: the anchor's share */
    float *lse;           /* (max_tokens) logsumexp of each row, when the z-loss is on */
    float *row_scale;     /* (max_tokens) z-loss gradient scale per row */
    uint8_t *mask;        /* (max_tokens, E) the routing */
    uint8_t *mask_before; /* (max_tokens, E) top-k before capacity / threshold before clamp */

    /* host */
    uint8_t *host_mask;        /* (max_tokens, E) */
    uint8_t *host_mask_before; /* (max_tokens, E) */
    int64_t *cnt_before;       /* (E) scratch: counts of mask_before in one group */
    int64_t *cnt_after;        /* (E) scratch: counts of mask in one group */
    float *host_score;         /* (max_tokens, E) scratch: the scores, for the gate statistics */
    float *host_logits;        /* (max_tokens, E) scratch: the logits, for their statistics */
    float *zeros;              /* (E) the state view of parts a kind lacks */
    int64_t counters[2];       /* saved: [0] EMA updates s (ec, et), [1] optimizer steps ended */
    void *state;               /* the kind's own state (router_tc.c, router_ec.c, router_et.c) */
    double *rec;               /* (cap_rec, E) this step's records, one per TRAIN forward, in order:
                                  what step_end will use (router.h: etm_router_step_records) */
    int n_rec, cap_rec;        /* records held, room */

    /* etm_router_use_mask: the next TRAIN forward's given selection (ec) */
    const uint8_t *preset;     /* (preset_N, E) host, or NULL */
    int preset_N, preset_record;

    /* the last forward */
    int N;        /* tokens */
    int routed;   /* a mask exists */
    float last_aux, last_z;
};

/* Room for this step's next record (E doubles, the kind fills it); grows rt->rec. */
double *etm_router_new_record(etm_router *rt);

/* Counts per expert of a host mask over rows [r0, r1). */
void etm_router_column_counts(const uint8_t *m, int r0, int r1, int E, int64_t *out);

/* ---- the cut-off EMA and thresholds of ec and et (router_cutoff.c) ---- */
typedef struct etm_cutoff_state {
    float beta;           /* EMA decay */
    int max_pools;        /* pools of one forward at most */
    float *cut;           /* (max_pools, E) backend: cut-offs of one forward */
    float *threshold_dev; /* (E) backend: c */
    float *host_cut;      /* (max_pools, E) */
    float *threshold;     /* (E) c_i */
    float *ema;           /* (E) m_i */
    double *cut_sum;      /* (E) this step's micro-batch cut-offs, summed (scopes pool, microbatch) */
    int cut_batches;      /* micro-batches recorded this step (in cut_sum, or in step_logits) */
    etm_cutoff_scope scope;   /* hp.et_cutoff_scope */
    float *step_logits;       /* (step_rows, E) host: this step's TRAIN logits (scope step) */
    size_t step_rows;         /* rows in step_logits */
    size_t step_cap;          /* rows step_logits (and step_scratch) can hold */
    float *step_scratch;      /* (step_cap) one column, reordered by the selection */
    float *last_cut;          /* (E) the cut-off the last step_end computed (what the EMA took in) */
    float *last_gap;          /* (E) last_cut minus the threshold in force during that step */
    int has_last;             /* last_cut / last_gap hold a step */
} etm_cutoff_state;

void etm_cutoff_init(etm_cutoff_state *cs, etm_router *rt);
void etm_cutoff_release(etm_cutoff_state *cs, etm_router *rt);
/* The rule of ec and et outside TRAIN (and before the first EMA update in every mode). */
int etm_cutoff_rule_fixed(const etm_router *rt, etm_moe_mode mode, etm_route_rule *rule);
/* Records one TRAIN micro-batch for this step's cut-off (router.h, et_cutoff_scope): pool adds
 * the mean over pools of each expert's k_target-th largest logit to the step's sum, microbatch
 * the micro-batch's floor(N k / E)-th largest, step keeps the logits on the host. */
void etm_cutoff_record(etm_cutoff_state *cs, etm_router *rt, const float *logits, int N);
void etm_cutoff_step_end(etm_cutoff_state *cs, etm_router *rt);
/* scope step: replaces the kept logits with rows x E (router.h etm_router_set_step_logits). */
void etm_cutoff_set_step_logits(etm_cutoff_state *cs, etm_router *rt, const float *logits, size_t rows, int n_forwards);
void etm_cutoff_resum(etm_cutoff_state *cs, etm_router *rt); /* ops->resum for ec and et */
void etm_cutoff_get_state(const etm_cutoff_state *cs, etm_router_state *out);
void etm_cutoff_set_state(etm_cutoff_state *cs, etm_router *rt, const float *threshold, const float *ema);
/* The settings ec and et share (pool, k_target, beta). */
int etm_cutoff_check(const etm_hparams *hp, int tokens_per_batch, etm_error *err);

#endif
