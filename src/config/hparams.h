/* hparams.h: every setting of a run (model shape, router, optimiser, schedule, data, output) in
 * one struct. Config files and key=value overrides fill it (hparams.c); it is written, complete,
 * into every run directory and checkpoint. Field names are the config keys. */
#ifndef ETM_HPARAMS_H
#define ETM_HPARAMS_H

#include <stdint.h>

#include "common.h"

typedef enum {
    ETM_ROUTER_DENSE = 0,
    ETM_ROUTER_TC,
    ETM_ROUTER_EC,
    ETM_ROUTER_ET,
    ETM_ROUTER_N_KINDS /* the number of kinds, not a kind */
} etm_router_kind;
/* The config value of a kind ("dense", "tc", "ec", "et"); NULL for a value that is no kind. The
 * one place that spells the names: printers and the config parser use it. */
const char *etm_router_kind_name(etm_router_kind kind);
typedef enum { ETM_SCORE_SIGMOID = 0, ETM_SCORE_SOFTMAX } etm_score_kind;
/* The gate function of ec and et (and tc's relu): the authors' router_activation
 * (src/models/router_utils.py); router.h defines each. */
typedef enum {
    ETM_GATE_SIGMOID = 0,         /* sigmoid(r) (the paper; tc: tc_score decides) */
    ETM_GATE_RELU,                /* max(r, 0) */
    ETM_GATE_SOFTMAX_E,           /* softmax over [0, r_1..r_E]; shared experts scaled by the anchor's share */
    ETM_GATE_SOFTMAX_E_SHARED_OUT,/* routed as softmax_e; shared experts scaled by 1 / G */
    ETM_GATE_SOFTMAX_K            /* softmax over the micro-batch's tokens per expert (ec, et) */
} etm_gate_fn;
typedef enum {
    ETM_CLAMP_POSITIVE = 0, /* et's clamp is on when et_capacity > 0 (0 = off) */
    ETM_CLAMP_ALWAYS        /* on at every et_capacity: 0 = exactly k_target per pool (the authors'
                               expert_capacity_factor = 0) */
} etm_clamp_mode;
typedef enum {
    ETM_BALANCE_NONE = 0,
    ETM_BALANCE_AUX,      /* alpha * sum_i f_i P_i, f_i = count_i * E / (N k) (the paper's form) */
    ETM_BALANCE_SWITCH,   /* alpha * E * sum_i f_i P_i, f_i = count_i / (N k) (Switch Transformer) */
    ETM_BALANCE_LOSSFREE, /* per-expert selection bias, b_i += u * sign(mean - count_i) per step */
    ETM_BALANCE_AUX_ERROR /* alpha * sum_i (f_i - 1) P_i, f_i as aux (the authors' aux_error) */
} etm_balance_kind;
typedef enum {
    ETM_CUTOFF_POOL = 0,   /* mean over the micro-batch's routing pools of each pool's cut-off */
    ETM_CUTOFF_MICROBATCH, /* the whole micro-batch as one pool (the authors' threshold mode) */
    ETM_CUTOFF_STEP        /* every token of the optimizer step as one pool ("global") */
} etm_cutoff_scope;
typedef enum {
    ETM_EC_POOL_MICROBATCH = 0, /* ec training (et's EC phase) selects within each micro-batch's pools */
    ETM_EC_POOL_STEP            /* ... selects over every token of the optimizer step (all
                                   micro-batches, all ranks): src/router/router_pool.h */
} etm_ec_pool_scope;
typedef enum { ETM_OPT_MUON = 0, ETM_OPT_ADAMW } etm_matrix_optimizer;
typedef enum {
    ETM_MUON_PER_EXPERT = 0, /* an (E, rows, cols) expert tensor is E matrices, each orthogonalised */
    ETM_MUON_STACKED         /* ... one (E rows, cols) matrix, as the authors' token-choice code */
} etm_muon_layout;
typedef enum {
    ETM_NS_GRAM_FULL = 0,  /* Newton-Schulz's symmetric products as full GEMMs (the original bits) */
    ETM_NS_GRAM_SYMMETRIC  /* ... as upper triangles mirrored (backend syrk_batched): fewer FLOPs,
                              other bits */
} etm_ns_gram;

typedef struct {
    /* ---- model ---- */
    int vocab_size;      /* V */
    int seq_len;         /* T, tokens per sequence */
    int n_layer;         /* L */
    int d_model;         /* D */
    int n_head;          /* H, query heads; head_dim = D / H */
    int n_kv_head;       /* Hkv, key/value heads (GQA); divides n_head */
    int ffn_hidden;      /* width of the dense MLP (default 4 D) */
    float rope_base;     /* 10000 */
    float logit_cap;     /* soft cap of the logits (15) */
    float norm_eps;      /* RMSNorm epsilon */

    /* ---- mixture of experts ---- */
    etm_router_kind router; /* dense | tc | ec | et */
    int dense_layers;       /* the first layers keep a dense MLP (default 1) */
    int n_routed;           /* E, routed experts per MoE layer */
    int n_shared;           /* shared experts (gate 1) per MoE layer */
    int expert_hidden;      /* width of each expert (default 2 D) */
    int top_k;              /* k, average routed experts per token; k_target = N k / E */
    etm_score_kind tc_score;    /* tc: sigmoid (paper) or softmax scores */
    etm_balance_kind tc_balance;/* tc: none | aux | switch | lossfree | aux_error */
    etm_gate_fn router_activation; /* gate function (router.h); sigmoid by default */
    float aux_alpha;        /* tc aux/switch/aux_error loss coefficient (0.001) */
    float lossfree_rate;    /* tc lossfree bias step u (0.001) */
    float z_loss;           /* router z-loss coefficient (0 = off) */
    float capacity_factor;  /* tc: tokens per expert capped at cf * N k / E, overflow dropped (0 = off) */
    int pool_seqs;          /* ec/et: routing pool in sequences (0 = the whole micro-batch) */
    float et_beta;          /* et: EMA decay of the cut-off (0.999 in the paper) */
    int et_warmup_steps;    /* et: route with EC for the first W optimizer steps */
    int ema_start_steps;    /* ec, et: cut-offs of the first N optimizer steps are not folded into
                               the EMA (the authors' ema_start_steps; 0 = from the first step) */
    float et_capacity;      /* et: capacity clamp C, counts kept in [(1-C), (1+C)] k_target (0 = off) */
    etm_clamp_mode et_capacity_mode; /* et: positive (clamp when C > 0) | always (C = 0: exactly k_target) */
    etm_cutoff_scope et_cutoff_scope; /* ec, et: the tokens one cut-off is taken over: pool |
                                         microbatch | step (router.h) */
    etm_ec_pool_scope ec_pool_scope; /* ec, et's EC phase: the tokens an expert picks its k_target from in training:
                                        microbatch (pools of pool_seqs) | step (router_pool.h) */

    /* ---- optimisation ---- */
    uint64_t seed;
    int batch_size;         /* sequences per micro-batch */
    int grad_accum;         /* micro-batches per optimizer step */
    int max_steps;          /* optimizer steps */
    etm_matrix_optimizer matrix_optimizer; /* muon | adamw for hidden matrices */
    float lr_matrix;        /* hidden matrices (Muon or AdamW) */
    float lr_embed;         /* token embedding (AdamW) */
    float lr_head;          /* LM head (AdamW) */
    float lr_router;        /* router weights (AdamW) */
    float adam_beta1, adam_beta2, adam_eps;
    float weight_decay;     /* decoupled decay of every group (AdamW and Muon) */
    float matrix_weight_decay; /* decay of the hidden matrices (group matrix: Muon or AdamW);
                               ETM_INHERIT (-1, config text "inherit") = weight_decay */
    float lr_expert_scale;  /* multiplies lr_matrix for the routed experts' up and down projections */
    float muon_momentum_start, muon_momentum_end; /* warmed up linearly over muon_warmup_steps */
    int muon_warmup_steps;
    int ns_steps;           /* Newton-Schulz iterations */
    etm_muon_layout muon_expert_layout; /* Muon over expert tensors: per expert or stacked */
    etm_ns_gram muon_ns_gram; /* Newton-Schulz's X X^T and A A: full GEMMs or symmetric halves */
    int warmup_steps;       /* linear LR warm-up */
    float decay_fraction;   /* linear decay to final_lr_frac over the last fraction of steps */
    float final_lr_frac;
    float grad_clip;        /* global gradient-norm clip (0 = off) */

    /* ---- data, evaluation, output ---- */
    char train_data[1024];  /* shard glob */
    char val_data[1024];    /* shard glob */
    char tokenizer[1024];   /* merges file path or "gpt2" */
    char out_dir[1024];     /* run directory */
    char backend[32];       /* cpu | cuda */
    int eval_every;         /* steps between validation losses (0 = only at the end) */
    int eval_batches;       /* micro-batches per validation */
    int ckpt_every;         /* steps between checkpoints (0 = only at the end) */
    int log_every;          /* steps between progress lines */
    int thresholds_every;   /* steps between threshold records in the metrics */
} etm_hparams;

/* The value of matrix_weight_decay that means "the same as weight_decay" (written "inherit"). */
#define ETM_INHERIT (-1.0f)

/* Fills every field with its default (the demo-sized model, identical to data/configs/demo.conf). */
void etm_hparams_defaults(etm_hparams *hp);

/* ---- configuration text (hparams.c; the format is described in doc/config.md) ---------------
 * Every function below that fails returns -1 with a message naming the key (and the file and line
 * for files) and leaves the fields it did not get to unchanged. */

/* Sets one key from its text value ("d_model", "256"): numbers must be whole and in range, enums
 * one of their names, strings fit their field. No cross-key checks (see etm_hparams_validate). */
int etm_hparams_set(etm_hparams *hp, const char *key, const char *value, etm_error *err);
/* The same for one "key=value" command-line argument. */
int etm_hparams_set_arg(etm_hparams *hp, const char *key_eq_value, etm_error *err);
/* Cross-key consistency and ranges: head sizes, top_k <= n_routed, et_beta in [0, 1), ... */
int etm_hparams_validate(const etm_hparams *hp, etm_error *err);

/* Defaults, then the config file (a path, or a preset name such as "demo" for
 * <data dir>/configs/demo.conf), then validation. */
int etm_hparams_load(etm_hparams *hp, const char *path_or_preset, etm_error *err);
/* Defaults, then the config (NULL: none), then n_args "key=value" overrides in order, then
 * validation; errors say which file line or argument set each key involved. */
int etm_hparams_configure(etm_hparams *hp, const char *path_or_preset, int n_args,
                          char *const *args, etm_error *err);
/* Defaults, then config text (name is used in messages, e.g. a checkpoint's path), then
 * validation. Reads back etm_hparams_to_string's output to the identical struct. */
int etm_hparams_from_string(etm_hparams *hp, const char *text, const char *name, etm_error *err);
/* The complete effective configuration, every key, in config-file syntax (malloc'd). Floats are
 * printed as the shortest %g (at most %.9g) that reads back bit-identical. */
char *etm_hparams_to_string(const etm_hparams *hp);

/* The keys, in table order: etm_hparams_key(i) for i < etm_hparams_n_keys(); NULL past the end. */
int etm_hparams_n_keys(void);
const char *etm_hparams_key(int i);
/* One key's value as config text (strings unquoted); -1 for an unknown key. */
int etm_hparams_get(const etm_hparams *hp, const char *key, char *buf, size_t len, etm_error *err);
/* The first key whose value differs between a and b (floats compared bit for bit), or NULL. */
const char *etm_hparams_first_difference(const etm_hparams *a, const etm_hparams *b);
/* Every key with its type, default and meaning, for --help. */
void etm_hparams_print_help(FILE *f);
/* Derived sizes. */
static inline int etm_head_dim(const etm_hparams *hp) { return hp->d_model / hp->n_head; }
/* The decay the hidden matrices get: matrix_weight_decay, or weight_decay when it inherits. */
static inline float etm_matrix_weight_decay(const etm_hparams *hp) {
    return hp->matrix_weight_decay == ETM_INHERIT ? hp->weight_decay : hp->matrix_weight_decay;
}
static inline int etm_is_moe_layer(const etm_hparams *hp, int layer) {
    return hp->router != ETM_ROUTER_DENSE && layer >= hp->dense_layers;
}

#endif
