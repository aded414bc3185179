/* validate_backend.c: whole-model validation of one backend against another (validate_backend.h):
 * its options and tiny models, and the whole run with its report: the op check (compare_ops.c),
 * one compared training step (validate_step.c) and training curves (validate_curves.c). */
#include <config.h>

#include "validate_backend.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compare_ops.h"
#include "dump.h"
#include "model.h"
#include "optim.h"
#include "rng.h"
#include "router.h"
#include "safetensors.h"

void etm_cbk_options_default(etm_cbk_options *o) {
    memset(o, 0, sizeof *o);
    o->seed = 1;
    o->steps = 20;
    o->prime_steps = 2;
    o->rtol = 1e-4;
    o->atol = 1e-6;
    o->norm_tol = 1e-4;
    o->route_eps = 1e-4;
    o->loss_rtol = 1e-3;
    o->max_listed = 10;
    o->dump_dir = NULL;
}

void etm_cbk_tiny_hparams(etm_hparams *hp, etm_router_kind router) {
    etm_hparams_defaults(hp);
    hp->vocab_size = 128;
    hp->seq_len = 16;
    hp->n_layer = 3;
    hp->d_model = 32;
    hp->n_head = 4;
    hp->n_kv_head = 2;
    hp->ffn_hidden = 64;
    hp->router = router;
    hp->dense_layers = 1;
    hp->n_routed = 8;
    hp->n_shared = 1;
    hp->expert_hidden = 32;
    hp->top_k = 2;
    hp->tc_balance = ETM_BALANCE_AUX;
    hp->z_loss = 1e-3f;
    hp->capacity_factor = 1.5f;
    hp->pool_seqs = 2;
    hp->et_beta = 0.9f;
    hp->et_warmup_steps = 3;
    hp->batch_size = 4;
    hp->grad_accum = 2;
    hp->max_steps = 20;
    hp->warmup_steps = 2;
    hp->lr_embed = 0.1f;
}

/* ---- all of it ------------------------------------------------------------------------------- */
int etm_cbk_run(etm_backend *ref, etm_backend *test, const etm_hparams *base, const etm_cbk_options *o,
                FILE *report, etm_error *err) {
    static const etm_router_kind kinds[] = {ETM_ROUTER_ET, ETM_ROUTER_TC};
    enum { NK = sizeof kinds / sizeof kinds[0] };
    etm_hparams hp[NK];
    for (int k = 0; k < NK; k++) {
        hp[k] = *base;
        hp[k].router = kinds[k];
        /* the schedule must not run past its end within the steps run here */
        hp[k].max_steps = ETM_MAX(hp[k].max_steps, ETM_MAX(o->steps, o->prime_steps + 1));
        etm_error e2 = {{0}};
        if (etm_hparams_validate(&hp[k], &e2) != 0)
            return etm_fail(err, "check-backend: the %s model: %s", etm_router_kind_name(kinds[k]), e2.msg);
    }
    FILE *out = report;
    if (out) fprintf(out, "== etmoe check-backend: %s against %s (the reference) ==\n\n", test->name, ref->name);

    if (out) fprintf(out, "== (1) every operation (seed %llu) ==\n", (unsigned long long)o->seed);
    int ops_failed = etm_check_backend_ops(ref, test, o->seed, out);

    etm_cbk_step_result step[NK];
    etm_cbk_curve curve[NK];
    memset(curve, 0, sizeof curve);
    int rc = 0;
    for (int k = 0; rc == 0 && k < NK; k++) {
        if (out)
            fprintf(out, "\n== (2) one training step, %s model (seed %llu) ==\n", etm_router_kind_name(kinds[k]),
                    (unsigned long long)o->seed);
        rc = etm_cbk_compare_step(ref, test, &hp[k], o, out, &step[k], err);
    }
    for (int k = 0; rc == 0 && k < NK; k++) {
        if (out) fprintf(out, "\n== (3) %d training steps, %s model ==\n", o->steps, etm_router_kind_name(kinds[k]));
        rc = etm_cbk_compare_curves(ref, test, &hp[k], o, out, &curve[k], err);
    }
    int passed = rc == 0 && ops_failed == 0;
    if (rc == 0) {
        for (int k = 0; k < NK; k++) passed = passed && step[k].passed && curve[k].passed;
        if (out) {
            fprintf(out, "\n== summary: %s against %s ==\n", test->name, ref->name);
            fprintf(out, "(1) operations: %s (%d comparison%s failed)\n", ops_failed ? "FAIL" : "pass",
                    ops_failed, ops_failed == 1 ? "" : "s");
            for (int k = 0; k < NK; k++) {
                const etm_cbk_step_result *s = &step[k];
                fprintf(out, "(2) one step, %s: %s (%d of %d tensors beyond tolerance; %ld routing "
                        "disagreement%s in %ld decisions, %ld beyond %g of the boundary; loss %.9g / %.9g)\n",
                        etm_router_kind_name(kinds[k]), s->passed ? "pass" : "FAIL", s->tensors_failed, s->tensors,
                        s->flips, s->flips == 1 ? "" : "s", s->decisions, s->flips_bad, o->route_eps,
                        s->loss_ref, s->loss_test);
            }
            for (int k = 0; k < NK; k++) {
                const etm_cbk_curve *c = &curve[k];
                fprintf(out, "(3) %d steps, %s: %s (%d steps run, largest loss difference %.3g, tolerance "
                        "%g relative)\n", o->steps, etm_router_kind_name(kinds[k]), c->passed ? "pass" : "FAIL",
                        c->steps, c->max_diff, o->loss_rtol);
            }
            fprintf(out, "%s\n", passed ? "PASS" : "FAIL");
        }
    }
    for (int k = 0; k < NK; k++) etm_cbk_curve_free(&curve[k]);
    if (rc != 0) return -1;
    return passed ? 1 : 0;
}
