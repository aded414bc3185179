/* dump.h: diagnostics of one model state.
 *
 *  - The dump file (doc/dump-format.md): everything one TRAIN-mode forward and backward computes
 *    on a fixed batch (inputs, targets, logits, per-token losses, loss, every parameter gradient,
 *    each MoE layer's routing mask, router logits, gates and thresholds) in one safetensors file,
 *    the interchange format for checking one backend or framework against another.
 *  - Comparing two dump files tensor by tensor (`etmoe compare`).
 *  - Routing statistics over data in EVAL mode (`etmoe inspect`): per-expert load, the
 *    experts-per-token histogram, tokens without a routed expert, and the tokens each expert
 *    takes most often. */
#ifndef ETM_DUMP_H
#define ETM_DUMP_H

#include <stdint.h>
#include <stdio.h>

#include "common.h"
#include "model.h"
#include "routing_metrics.h"

/* The value of __metadata__["format"] in dump files. */
#define ETM_DUMP_FORMAT "etmoe-dump-1"

/* ---- the dump file ------------------------------------------------------------------------- */
/* Zeroes the gradients, runs forward (ETM_MOE_TRAIN) and backward (loss scale 1) of m on B
 * sequences of m->hp.seq_len tokens (host inputs and targets, (B, T) each) and writes every tensor
 * of doc/dump-format.md to path (atomically). source names the model's origin (a checkpoint path)
 * in the metadata; may be NULL. The router state is not stepped. *loss (may be NULL) gets the
 * loss. Returns 0 or -1 with a message. */
int etm_dump_write(etm_model *m, const int32_t *inputs, const int32_t *targets, int B,
                   const char *source, const char *path, double *loss, etm_error *err);

/* ---- comparing dump files ------------------------------------------------------------------ */
typedef struct {
    double rtol, atol; /* a float element passes when |a - b| <= atol + rtol * max(|a|, |b|) */
    long max_flips;    /* routing disagreements (mask entries that differ) allowed in total */
    int max_listed;    /* disagreements listed per mask tensor in the report */
} etm_compare_opts;

void etm_compare_opts_default(etm_compare_opts *o); /* rtol 1e-4, atol 1e-6, 0 flips, 10 listed */

typedef enum {
    ETM_CMP_OK = 0,      /* within tolerance (or identical, for integers) */
    ETM_CMP_DIFFERS,     /* some elements beyond tolerance, NaN in one file only, or integers differ */
    ETM_CMP_ONLY_A,      /* the tensor is missing from B */
    ETM_CMP_ONLY_B,      /* the tensor is missing from A */
    ETM_CMP_MISMATCH     /* different dtype or shape: not comparable */
} etm_compare_status;

/* One tensor's comparison. */
typedef struct {
    char name[96];
    etm_compare_status status;
    int is_mask;         /* a routing mask (U8 "routing.<l>.mask") */
    uint64_t numel;
    uint64_t n_bad;      /* elements beyond tolerance (floats), differing elements (integers, masks) */
    double max_abs;      /* max |a - b| over elements that are finite in both */
    double max_rel;      /* max |a - b| / max(|a|, |b|) over the same (0 where both are 0) */
    double norm_err;     /* ||a - b||_2 / max(||a||_2, ||b||_2), finite elements only (0 for zeros) */
    uint64_t worst;      /* flat index of the element with the largest excess over tolerance */
    uint64_t nan_a, nan_b; /* NaN elements in A and in B */
} etm_compare_row;

typedef struct {
    int n_rows;
    etm_compare_row *rows;  /* (n_rows) every tensor of either file, by name */
    int n_failed;           /* rows not ETM_CMP_OK (masks count as failed only beyond max_flips) */
    long routing_flips;     /* mask entries that differ, over every mask */
    int config_differs;     /* the two dumps' "config" metadata differ (reported, not a failure) */
} etm_compare_result;

void etm_compare_result_free(etm_compare_result *r);

/* Compares dump files a and b and prints a table (and each routing disagreement, with the router
 * logits on both sides and how far they were from the threshold when the dumps hold thresholds)
 * to out (NULL: nothing printed). Returns 1 when everything is within tolerance, 0 when not, -1
 * with a message when a file cannot be read. *r is filled for 0 and 1. */
int etm_dump_compare(const char *a, const char *b, const etm_compare_opts *o, FILE *out,
                     etm_compare_result *r, etm_error *err);

/* ---- routing statistics (inspect) ---------------------------------------------------------- */
typedef struct {
    int layer;               /* transformer layer index */
    int64_t *load;           /* (E) tokens routed to each expert */
    int64_t *hist;           /* (E+1) tokens by number of routed experts, 0..E */
    int64_t n_pairs;         /* routed (token, expert) pairs = sum of load */
    uint64_t *pair_keys;     /* (n_keys) expert * V + token of every pair seen, for top tokens */
    size_t n_keys, cap_keys;
    int sorted;              /* pair_keys sorted (after etm_inspect_top_tokens) */
    etm_routing_summary summary; /* the authors' routing metrics (routing_metrics.h) */
} etm_inspect_layer;

typedef struct {
    int E, V;
    int n_layers;            /* MoE layers of the model */
    etm_inspect_layer *layers; /* (n_layers) in layer order */
    int64_t n_tokens;        /* tokens routed (per layer) */
    int64_t *token_count;    /* (V) occurrences of each input token */
    double loss_sum;         /* sum of per-token losses over valid targets */
    int64_t n_valid;         /* valid targets */
} etm_inspect;

/* Empty statistics for m's MoE layers (n_layers is 0 for a dense model). */
etm_inspect *etm_inspect_create(const etm_model *m);
void etm_inspect_free(etm_inspect *s);

/* Forward of B sequences (host (B, T) inputs; targets may be NULL) in ETM_MOE_EVAL mode, adding
 * every MoE layer's routing mask to the statistics. Returns 0 or -1 with a message. */
int etm_inspect_add_batch(etm_inspect *s, etm_model *m, const int32_t *inputs,
                          const int32_t *targets, int B, etm_error *err);

/* The k tokens sent to expert e of MoE layer index li (0-based among MoE layers) most often,
 * by count descending then token id ascending; returns how many were found (<= k). */
int etm_inspect_top_tokens(etm_inspect *s, int li, int e, int k, int32_t *tokens, int64_t *counts);

#endif
