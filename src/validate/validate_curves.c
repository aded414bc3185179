/* validate_curves.c: part (3) of the whole-model validation (validate_backend.h): the loss curves
 * of the same training on both backends, step by step against a tolerance. */
#include <config.h>

#include "validate_backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "validate_side.h"

/* ---- part (3) -------------------------------------------------------------------------------- */
void etm_cbk_curve_free(etm_cbk_curve *c) {
    if (!c) return;
    free(c->loss_ref);
    free(c->loss_test);
    c->loss_ref = c->loss_test = NULL;
}

int etm_cbk_compare_curves(etm_backend *ref_be, etm_backend *test_be, const etm_hparams *hp,
                           const etm_cbk_options *o, FILE *report, etm_cbk_curve *c, etm_error *err) {
    memset(c, 0, sizeof *c);
    c->first_bad = -1;
    int steps = o->steps > 0 ? o->steps : 0;
    c->loss_ref = etm_calloc((size_t)steps + 1, sizeof(double));
    c->loss_test = etm_calloc((size_t)steps + 1, sizeof(double));
    side ref, test;
    if (etm_cbk_side_create(&ref, ref_be, hp, err) != 0) return -1;
    if (etm_cbk_side_create(&test, test_be, hp, err) != 0) {
        etm_cbk_side_free(&ref);
        return -1;
    }
    int B = hp->batch_size, T = hp->seq_len, A = hp->grad_accum;
    size_t n = (size_t)B * T * A;
    int32_t *inputs = etm_malloc(n * sizeof(int32_t)), *targets = etm_malloc(n * sizeof(int32_t));
    token_source src;
    etm_cbk_source_init(&src, o->seed + 1, hp->vocab_size);
    if (report)
        fprintf(report, "%5s %14s %14s %11s\n", "step", ref_be->name, test_be->name, "difference");
    int rc = 0, test_ok = 1;
    for (int s = 0; s < steps; s++) {
        etm_cbk_source_batch(&src, B * A, T, inputs, targets);
        if (etm_cbk_train_step(&ref, s, inputs, targets, &c->loss_ref[s], err) != 0) {
            rc = -1;
            break;
        }
        etm_error e2 = {{0}};
        if (etm_cbk_train_step(&test, s, inputs, targets, &c->loss_test[s], &e2) != 0) {
            if (report) fprintf(report, "%5d %14.8f   failed: %s\n", s + 1, c->loss_ref[s], e2.msg);
            test_ok = 0;
            break;
        }
        double d = fabs(c->loss_ref[s] - c->loss_test[s]);
        int bad = !(d <= o->loss_rtol * fmax(1.0, fabs(c->loss_ref[s])));
        if (bad && c->first_bad < 0) c->first_bad = s;
        c->max_diff = fmax(c->max_diff, d);
        c->steps = s + 1;
        if (report)
            fprintf(report, "%5d %14.8f %14.8f %11.3g%s\n", s + 1, c->loss_ref[s], c->loss_test[s], d,
                    bad ? "  BEYOND TOLERANCE" : "");
    }
    c->passed = rc == 0 && test_ok && c->steps == steps && c->first_bad < 0;
    etm_cbk_source_free(&src);
    free(inputs);
    free(targets);
    etm_cbk_side_free(&ref);
    etm_cbk_side_free(&test);
    return rc;
}
