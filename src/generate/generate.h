/* generate.h: text generation from a model with a KV cache, and the pieces of `etmoe generate`
 * that make ET's dynamic computation visible:
 *
 *   - sampling the next token from logits: greedy (temperature 0) or softmax(logits / T) over
 *     the top_k largest logits, one draw from a seeded RNG per token (deterministic);
 *   - the generation loop: prompt and sampled tokens fed one at a time through
 *     etm_model_decode (MoE layers route each token alone with frozen state, ETM_MOE_EVAL),
 *     reporting for every token the routed experts it used in each MoE layer;
 *   - a trace of those counts, and three ways to show it: ANSI background colours, a plain
 *     annotated form ("token[3]") and a self-contained HTML page.
 *
 * A token's "experts" is the number of routed experts it used summed over the MoE layers (shared
 * experts not counted). Its colour compares that sum with the budget top_k * (MoE layers), what
 * token choice spends on every token and what ET and EC spend on average. */
#ifndef ETM_GENERATE_H
#define ETM_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"
#include "model.h"
#include "rng.h"
#include "tokenizer.h"

/* ---- sampling ------------------------------------------------------------------------------ */

typedef struct {
    float temperature; /* 0: greedy argmax; > 0: softmax(logits / temperature) */
    int top_k;         /* sample among the top_k largest logits; 0 (or >= n): all of them */
} etm_sampling;

/* Checks temperature (finite, >= 0) and top_k (>= 0); 0, or -1 with a message. */
int etm_sampling_check(const etm_sampling *s, etm_error *err);

/* The next token, an index in [0, n), n >= 1. Greedy: the largest logit, ties to the lower index.
 * Otherwise the top_k largest logits (ties at the boundary to the lower indices) are weighted by
 * exp((l - max) / temperature) in double precision and one uniform 53-bit draw from rng picks
 * among them in index order. The greedy path draws nothing from rng. NaN logits rank below every
 * number and are never drawn; if every logit is NaN or -inf the result is index 0. */
int32_t etm_sample(const float *logits, int n, const etm_sampling *s, etm_rng *rng);

/* ---- generation ---------------------------------------------------------------------------- */

/* One token fed to the model. */
typedef struct {
    int pos;            /* its position in the sequence */
    int32_t token;      /* the token */
    int generated;      /* 1 if it was sampled, 0 if it is part of the prompt */
    const int *experts; /* (n_moe) routed experts it used in each MoE layer, in layer order */
    int n_moe;          /* MoE layers */
    const float *logits;/* (V) the soft-capped logits of the token after it */
} etm_gen_event;

/* Called after every token is fed; a non-zero return ends generation early (not an error). */
typedef int (*etm_gen_callback)(void *ctx, const etm_gen_event *ev);

typedef struct {
    const int32_t *prompt; /* (n_prompt) tokens fed before sampling; n_prompt >= 1 */
    int n_prompt;
    int max_new;           /* tokens to sample at most (>= 0) */
    int n_vocab;           /* sample among ids [0, n_vocab) (a tokenizer may know fewer ids than
                              the model's padded vocabulary); 0: all of the model's */
    int32_t stop_token;    /* sampling it ends generation; it is neither fed nor counted; -1: none */
    etm_sampling sampling;
    uint64_t seed;         /* seeds the sampling RNG */
    etm_gen_callback on_token; /* may be NULL */
    void *ctx;
} etm_gen_options;

/* Why generation ended. */
typedef enum {
    ETM_GEN_LENGTH = 0, /* max_new tokens sampled */
    ETM_GEN_CONTEXT,    /* the model's context (seq_len tokens, prompt included) is full */
    ETM_GEN_STOP_TOKEN, /* stop_token was sampled */
    ETM_GEN_CALLBACK    /* the callback asked to stop */
} etm_gen_end;

typedef struct {
    int n_generated; /* tokens sampled and fed */
    etm_gen_end end;
} etm_gen_result;

/* The model's MoE layer indices in order, written to layers (room for L ints); returns how many. */
int etm_gen_moe_layers(const etm_model *m, int *layers);

/* Feeds the prompt through a fresh KV cache, then repeatedly samples a token from the last
 * logits and feeds it (every sampled token is fed, so its routing is known), calling on_token
 * after each token fed. The prompt must fit the context (n_prompt <= seq_len). Returns 0 and
 * fills res, or -1 with a message (bad options, token out of range, decode failure). */
int etm_generate(etm_model *m, const etm_gen_options *o, etm_gen_result *res, etm_error *err);

/* ---- expert-count trace -------------------------------------------------------------------- */

typedef struct {
    int n_moe;          /* MoE layers per token */
    int *layers;        /* (n_moe) their model layer indices */
    int n_routed;       /* E, experts one layer can route a token to */
    int top_k;          /* k: routed experts per token and layer by design (on average for ET/EC) */
    size_t n;           /* tokens recorded */
    size_t cap;         /* capacity of the arrays below */
    int32_t *ids;       /* (n) */
    uint8_t *generated; /* (n) 1 sampled, 0 prompt */
    int *experts;       /* (n, n_moe) routed experts per token and MoE layer */
} etm_expert_trace;

etm_expert_trace *etm_trace_create(int n_moe, const int *layers, int n_routed, int top_k);
void etm_trace_free(etm_expert_trace *t);
void etm_trace_add(etm_expert_trace *t, int32_t id, int generated, const int *experts);
/* Token i's routed experts summed over the MoE layers. */
int etm_trace_total(const etm_expert_trace *t, size_t i);
/* What token choice spends on every token: top_k * n_moe. */
static inline int etm_trace_budget(const etm_expert_trace *t) { return t->top_k * t->n_moe; }

/* ---- colours ------------------------------------------------------------------------------- */

#define ETM_EXPERT_BUCKETS 7

/* The colour bucket of a token that used `total` routed experts against a budget (> 0):
 *   0 none, 1 under half the budget, 2 half to 7/8, 3 within 1/8 of it, 4 up to 1.5x, 5 up to 2x,
 *   6 more than twice the budget. */
int etm_expert_bucket(int total, int budget);
/* The bucket's one-line meaning, e.g. "within 1/8 of the budget". */
const char *etm_expert_bucket_meaning(int bucket);
/* ANSI SGR parameters of the bucket's background and a readable foreground ("48;5;27;38;5;231"). */
const char *etm_expert_bucket_ansi(int bucket);
/* The bucket's background colour for HTML ("#3d7fe0") and its text colour. */
const char *etm_expert_bucket_html(int bucket);
const char *etm_expert_bucket_html_text(int bucket);

/* ---- terminal output ----------------------------------------------------------------------- */

typedef enum {
    ETM_SHOW_PLAIN = 0, /* the text only */
    ETM_SHOW_ANSI,      /* each token on its bucket's background colour */
    ETM_SHOW_ANNOTATED  /* each token followed by [its routed experts] */
} etm_show_mode;

/* Writes tokens to a stream one at a time. A token that ends inside a UTF-8 character keeps
 * those bytes back until the character completes, so colour codes never split a character (the
 * character is shown in the colour of the token that completes it). ANSI resets the colour
 * around each newline (a terminal would otherwise paint the rest of the line). ANNOTATED writes
 * a token's newlines as the two characters \n, then [n], then the line breaks, so that every
 * annotation follows its token's visible text. */
typedef struct {
    FILE *f;             /* not owned */
    etm_show_mode mode;
    unsigned char held[4]; /* bytes of an unfinished UTF-8 character */
    int n_held;
} etm_token_writer;

void etm_token_writer_init(etm_token_writer *w, FILE *f, etm_show_mode mode);
/* Writes one token's bytes; total and budget choose its colour or annotation (ignored in PLAIN). */
void etm_token_writer_put(etm_token_writer *w, const char *bytes, size_t len, int total, int budget);
/* Writes any held bytes as they are. */
void etm_token_writer_finish(etm_token_writer *w);

/* The legend of the ANSI or annotated form for this trace's layout: what the number or colour
 * means, and each bucket's range of counts. Nothing for PLAIN. */
void etm_print_legend(FILE *f, etm_show_mode mode, const etm_expert_trace *t);

/* ---- HTML ---------------------------------------------------------------------------------- */

/* A self-contained HTML page (inline CSS, no scripts or external resources) showing the trace's
 * tokens as spans coloured by bucket, each with class "t", data-id, data-experts (the sum) and
 * data-layers (the per-layer counts, comma-separated) attributes and a tooltip (title) listing
 * the per-layer counts; prompt tokens carry class "p", sampled ones "g", tokens that are only
 * whitespace with a line break also "nl" (marked with a U+21B5 arrow); then a legend and the
 * mean routed experts per layer for the prompt and the sampled tokens. heading (may be NULL) is
 * shown as the page's description line. Returns the malloc'd page and its length in *len; the
 * page is valid UTF-8 (bytes that are not are shown as U+FFFD). */
char *etm_trace_html(const etm_expert_trace *t, const etm_tokenizer *tok, const char *title,
                     const char *heading, size_t *len);

#endif
