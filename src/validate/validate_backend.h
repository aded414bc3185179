/* validate_backend.h: whole-model validation of a backend against a reference (normally "cpu"), the
 * work behind `etmoe check-backend` (doc/cuda.md, "Validating a backend"):
 *
 *   (1) every operation on its own: etm_check_backend_ops (src/compare_ops.h);
 *   (2) one training step of a model, from the same state and on the same batch on both backends:
 *       logits, loss, every parameter gradient and each MoE layer's router logits and gates are
 *       compared tensor by tensor with dump.h's comparison (the step is written as two dump files);
 *       the routing masks are compared exactly, and each disagreement is acceptable only when the
 *       entry lies within route_eps (in logit units) of the decision boundary of its rule on both
 *       backends: the threshold c_i (ET), the midpoint of the k-th and (k+1)-th largest score of
 *       its row (TC top-k) or of its column in its pool (EC, capacity clamps). After the step's
 *       optimizer update and etm_moe_step_end, the parameters, optimizer state and router state
 *       (ET thresholds, EMAs, loss-free biases, counters) are compared the same way;
 *   (3) steps training steps of fresh models on both backends with the same data: the losses of
 *       every step must agree within a relative tolerance.
 *
 * Data are random tokens from a seeded Markov chain (each token has four possible successors),
 * so nothing is read from disk and the loss has something to learn.
 *
 * The state of step (2) is not the initial one: at initialisation the output projections (wo, the
 * MLPs' down projections) are zero, which makes every gradient upstream of them exactly zero.
 * So the reference first trains prime_steps steps on its own, and its complete state (parameters,
 * optimizer state, router state) is copied into the tested model. The warm-up counter of ET
 * routers is then set past et_warmup_steps on both, so the compared step routes by thresholds. */
#ifndef ETM_VALIDATE_BACKEND_H
#define ETM_VALIDATE_BACKEND_H

#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "common.h"
#include "hparams.h"

typedef struct {
    uint64_t seed;       /* the random tokens and the op check's inputs (the model's initial
                            weights come from hp->seed) */
    int steps;           /* training steps of part (3) */
    int prime_steps;     /* reference-only steps before the compared step of part (2) */
    double rtol, atol;   /* part (2), per element: |a - b| <= atol + rtol max(|a|, |b|) */
    double norm_tol;     /* part (2), per tensor: ||a - b|| / max(||a||, ||b||) <= norm_tol (it
                            catches errors in tensors whose elements all lie below atol) */
    double route_eps;    /* part (2): largest distance (logit units) from its decision boundary
                            at which a routing disagreement is acceptable */
    double loss_rtol;    /* part (3): |loss_a - loss_b| <= loss_rtol max(1, |loss_a|) per step */
    int max_listed;      /* routing disagreements listed per layer */
    const char *dump_dir;/* where part (2)'s four files are written and kept; NULL: a temporary
                            directory, removed afterwards */
} etm_cbk_options;

void etm_cbk_options_default(etm_cbk_options *o);

/* The tiny built-in model (3 layers, d_model 32, 8 routed experts + 1 shared, top_k 2, pools of
 * 2 sequences of 16 tokens, batches of 4, vocabulary 128), router as given (et or tc). */
void etm_cbk_tiny_hparams(etm_hparams *hp, etm_router_kind router);

/* ---- part (2) ------------------------------------------------------------------------------ */
typedef struct {
    int tensors;          /* tensors compared (the step's dump and the state after it) */
    int tensors_failed;   /* beyond rtol/atol or norm_tol, NaN on one side, missing, mismatched */
    long decisions;       /* routing decisions compared: N * E per MoE layer */
    long flips;           /* routing disagreements */
    long flips_bad;       /* of those, farther than route_eps from their boundary on either side */
    double worst_margin;  /* largest boundary distance over the disagreements (0 when none) */
    double loss_ref, loss_test; /* the compared step's loss on both */
    int passed;           /* 1: everything within tolerance */
} etm_cbk_step_result;

/* Part (2) for the configuration hp (its router must be tc, ec or et) with ref and test. Writes
 * the comparison tables to report (NULL: silent). Returns 0 with *r filled (r->passed says the
 * verdict), or -1 with a message when the check itself cannot run (bad settings, a file that
 * cannot be written, a backend whose loss is not finite on the reference state: named in err). */
int etm_cbk_compare_step(etm_backend *ref, etm_backend *test, const etm_hparams *hp,
                         const etm_cbk_options *o, FILE *report, etm_cbk_step_result *r,
                         etm_error *err);

/* ---- part (3) ------------------------------------------------------------------------------ */
typedef struct {
    int steps;            /* steps run (fewer than asked when the test backend's step failed) */
    double *loss_ref;     /* (steps) training loss of each step on ref */
    double *loss_test;    /* (steps) on test */
    double max_diff;      /* largest |loss_ref - loss_test| */
    int first_bad;        /* first step (0-based) beyond loss_rtol, -1 when none */
    int passed;           /* all steps ran and agree */
} etm_cbk_curve;

/* Part (3): o->steps steps of fresh models built from hp on both backends; prints both curves to
 * report. Returns 0 with *c filled, or -1 with a message when the reference itself fails (or the
 * models cannot be built). Either way *c holds allocations: free them with etm_cbk_curve_free. */
int etm_cbk_compare_curves(etm_backend *ref, etm_backend *test, const etm_hparams *hp,
                           const etm_cbk_options *o, FILE *report, etm_cbk_curve *c,
                           etm_error *err);
void etm_cbk_curve_free(etm_cbk_curve *c);

/* ---- all three parts ----------------------------------------------------------------------- */
/* Runs (1), then (2) and (3) for base with router = et and with router = tc, and prints a summary.
 * Returns 1 when everything agrees, 0 when something does not, -1 with a message when a part
 * could not run. */
int etm_cbk_run(etm_backend *ref, etm_backend *test, const etm_hparams *base,
                const etm_cbk_options *o, FILE *report, etm_error *err);

#endif
