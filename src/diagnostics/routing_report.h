/* routing_report.h: statistics of where a trained MoE model sends its tokens, gathered over
 * validation batches and written as tab-separated tables for the experiment's figures
 * (experiments/, doc/results.md): routed experts per token by position in the sequence, by token
 * kind (word, number, punctuation, whitespace, other) and by token id; each layer's expert loads
 * and how many tokens get no routed expert; per batch, each expert's load next to its EC cut-off
 * (the k_target-th largest logit in the pool) and its threshold; and a passage of text with the
 * experts each token used.
 *
 * "Experts per token" is the number of routed experts a token uses in one MoE layer, averaged
 * over the MoE layers (so the target is top_k). Shared experts are not counted.
 *
 * The report only counts: the caller runs the model and hands over, per batch, the tokens and
 * each MoE layer's 0/1 routing mask (and optionally its router logits and thresholds), all in
 * host memory. cli_routing.c (`etmoe routing-profile`) is that caller. */
#ifndef ETM_ROUTING_REPORT_H
#define ETM_ROUTING_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "tokenizer.h"

typedef enum {
    ETM_TOKEN_WORD = 0,    /* letters (and ' or - between them), after at most one leading space */
    ETM_TOKEN_NUMBER,      /* digits (and , or . between them), after at most one leading space */
    ETM_TOKEN_PUNCT,       /* ASCII punctuation only, after at most one leading space */
    ETM_TOKEN_SPACE,       /* only spaces, tabs and newlines */
    ETM_TOKEN_OTHER,       /* anything else: mixed classes, non-ASCII bytes, <|endoftext|> */
    ETM_TOKEN_N_KINDS
} etm_token_kind;

/* The kind of a token from its bytes (see the enum). */
etm_token_kind etm_token_kind_of(const char *bytes, size_t len);
/* "word", "number", "punctuation", "whitespace", "other". */
const char *etm_token_kind_name(etm_token_kind kind);

typedef struct {
    int n_layers;       /* Lm, MoE layers reported */
    int n_experts;      /* E, routed experts per layer */
    int seq_len;        /* T */
    int vocab_size;     /* V */
    int top_k;          /* k, the routed experts per token the model aims at */
    int passage_tokens; /* tokens of the first sequences kept, in order, for the passage */
} etm_routing_report_config;

/* One batch's routing, all host memory, N = B * T tokens. */
typedef struct {
    const int32_t *tokens;          /* (N) */
    int B, T;                       /* sequences, tokens each (T == seq_len) */
    const uint8_t *const *masks;    /* (Lm) pointers to (N, E): 1 = token n used expert e */
    const float *const *logits;     /* (Lm) pointers to (N, E) router logits, or NULL: no cut-offs */
    const float *const *thresholds; /* (Lm) pointers to (E) thresholds, or NULL: none recorded */
    int pool_tokens;                /* EC pool for the cut-offs (a divisor of N; 0 = N) */
    int k_target;                   /* the cut-off is the k_target-th largest logit in a pool
                                       (etm_router_sizes); used with logits only */
} etm_routing_batch;

/* One expert in one layer in one batch. */
typedef struct {
    int batch, layer, expert; /* which */
    int batch_tokens;         /* N, tokens in the batch */
    int pool_tokens;          /* P, the EC pool the cut-off was taken over */
    int64_t load;             /* tokens routed to the expert in the batch */
    double cutoff;            /* mean over the batch's pools of the k_target-th largest logit
                                 (NAN without logits) */
    float threshold;          /* the expert's threshold (NAN when none was given) */
} etm_routing_batch_row;

typedef struct {
    etm_routing_report_config cfg;
    uint8_t *kind;          /* (V) etm_token_kind of every token id */
    char **text;            /* (V) printable text of every token id (TSV-safe escapes) */
    int64_t tokens;         /* tokens counted */
    int64_t *layer_load;    /* (Lm, E) tokens per expert */
    int64_t *layer_hist;    /* (Lm, E+1) tokens by routed experts in that layer */
    double *layer_gate_sum; /* (Lm) sigmoid(logit) summed over routed pairs (batches with logits) */
    int64_t *layer_gate_pairs; /* (Lm) routed pairs those sums cover */
    int64_t *pos_tokens;    /* (T) tokens at each position */
    int64_t *pos_pairs;     /* (T) routed pairs there, summed over layers */
    int64_t *pos_zero;      /* (T) (token, layer) pairs with no routed expert there */
    int64_t kind_tokens[ETM_TOKEN_N_KINDS];
    int64_t kind_pairs[ETM_TOKEN_N_KINDS];
    int64_t kind_zero[ETM_TOKEN_N_KINDS];
    int64_t *vocab_tokens;  /* (V) occurrences of each id */
    int64_t *vocab_pairs;   /* (V) routed pairs of those occurrences, summed over layers */
    int n_batches;          /* batches added */
    size_t n_batch_rows, cap_batch_rows;
    etm_routing_batch_row *batch_rows; /* (n_batch_rows) */
    int n_passage;          /* tokens kept so far, up to cfg.passage_tokens */
    int32_t *passage_ids;   /* (passage_tokens) */
    int *passage_pairs;     /* (passage_tokens) routed pairs summed over layers */
} etm_routing_report;

/* A report for a model with cfg's sizes; tok gives every id's bytes (its vocabulary must be at
 * least cfg->vocab_size; ids it lacks are "other"). NULL with a message on bad sizes. */
etm_routing_report *etm_routing_report_create(const etm_routing_report_config *cfg,
                                              const etm_tokenizer *tok, etm_error *err);
void etm_routing_report_free(etm_routing_report *r);

/* Counts one batch. Returns 0, or -1 with a message (shape mismatch, token out of range, a pool
 * that does not divide the batch, a mask value other than 0 or 1). */
int etm_routing_report_add(etm_routing_report *r, const etm_routing_batch *b, etm_error *err);

/* Mean routed experts per token (averaged over layers) and the share of (token, layer) pairs with
 * no routed expert, over everything added. */
double etm_routing_report_mean_experts(const etm_routing_report *r);
double etm_routing_report_zero_fraction(const etm_routing_report *r);

/* Writes into dir (which must exist), each file atomically, a '#' header line naming the columns:
 *   layers.tsv    layer (index among the MoE layers), tokens, mean_experts, frac_zero, frac_one,
 *                 frac_two, frac_three_plus, max_load/mean_load, min_load/mean_load, mean_gate
 *                 (mean sigmoid(logit) of the routed pairs: the weight their experts' outputs get
 *                 with sigmoid gates; NaN without logits), then the E loads
 *   position.tsv  position, tokens, mean_experts, frac_zero
 *   kind.tsv      kind, tokens, share, mean_experts, frac_zero
 *   tokens.tsv    id, kind, count, mean_experts, text; ids seen at least min_count times, most
 *                 experts first (ties: more frequent, then lower id); text with \\, \t, \n,
 *                 \r and other control or non-UTF-8 bytes escaped C-style (\xHH), and " as
 *                 U+201D
 *   batches.tsv   batch, layer, expert, pool_tokens, load, usage (load / batch tokens),
 *                 cutoff (NaN without logits), threshold (NaN without thresholds)
 *   passage.tsv   index, line, column, width, experts, text: the kept tokens laid out as text,
 *                 one row per piece of a token: each line break inside a token ends its piece
 *                 with a return sign (U+21B5) and starts a new line; a piece that would run past
 *                 width_limit columns starts a new line (a lone return sign never does). Text
 *                 is escaped as in tokens.tsv (" shown as U+201D, which gnuplot reads as text)
 * Returns 0, or -1 with a message naming the file. */
int etm_routing_report_write(const etm_routing_report *r, const char *dir, int min_count,
                             int width_limit, etm_error *err);

#endif
