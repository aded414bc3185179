/* compare_ops_case.c: running one case of the op-by-op comparison on both backends and judging
 * each of its outputs against its tolerance (compare_ops_case.h). */
#include <config.h>

#include "compare_ops_case.h"

double etm_cmp_nmse(const float *ref, const float *test, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(ref[i]) || !isfinite(test[i])) return INFINITY;
        double d = (double)test[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (num == 0.0) return 0.0;
    return num / (den > 1e-30 ? den : 1e-30);
}

void etm_cmp_report_header(chk *c) {
    if (c->report)
        fprintf(c->report, "%-46s %-12s %8s %12s %12s %9s %-7s %s\n", "op", "output", "n",
                "max_abs_err", "nmse", "tol", "repeat", "result");
}

static void judge(chk *c, const char *op, const part *p, const float *r, const float *t1,
                  const float *t2) {
    double max_abs = 0.0, nmse = etm_cmp_nmse(r, t1, p->n);
    int exact = memcmp(r, t1, p->n * sizeof(float)) == 0;
    int repeat = memcmp(t1, t2, p->n * sizeof(float)) == 0;
    int finite = 1;
    for (size_t i = 0; i < p->n; i++) {
        if (!isfinite(t1[i]) || !isfinite(r[i])) finite = 0;
        double d = fabs((double)t1[i] - (double)r[i]);
        if (d > max_abs || d != d) max_abs = d;
    }
    int ok = finite && repeat && (p->tol == EXACT ? exact : nmse <= p->tol);
    if (!ok) c->failures++;
    if (c->report) {
        char tol[16];
        if (p->tol == EXACT) snprintf(tol, sizeof tol, "exact");
        else snprintf(tol, sizeof tol, "%.0e", p->tol);
        fprintf(c->report, "%-46s %-12s %8zu %12.3e %12.3e %9s %-7s %s\n", op, p->name, p->n,
                max_abs, nmse, tol, repeat ? "same" : "DIFFERS",
                ok ? "ok" : (!finite ? "FAIL (NaN/inf)" : "FAIL"));
    }
}

/* Runs fn on ref once and on test twice, then judges each part of the output. */
void etm_cmp_case(chk *c, const char *op, run_fn fn, const void *args, int n_parts,
                  const part *parts) {
    size_t total = 0;
    for (int i = 0; i < n_parts; i++) total += parts[i].n;
    float *r = etm_calloc(total ? total : 1, sizeof(float));
    float *t1 = etm_calloc(total ? total : 1, sizeof(float));
    float *t2 = etm_calloc(total ? total : 1, sizeof(float));
    fn(c->ref, args, r);
    fn(c->test, args, t1);
    fn(c->test, args, t2);
    size_t off = 0;
    for (int i = 0; i < n_parts; i++) {
        judge(c, op, &parts[i], r + off, t1 + off, t2 + off);
        off += parts[i].n;
    }
    free(r);
    free(t1);
    free(t2);
}
