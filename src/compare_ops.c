/* compare_ops.c: op-by-op comparison of two backends (compare_ops.h): judging each output against
 * its tolerance, and the list of cases run. The cases themselves are in compare_ops_math.c,
 * compare_ops_layers.c and compare_ops_routing.c (compare_ops_internal.h says how they work).
 * tests/check_compare_ops.c fails when an operation of backends/backend.h is never called here. */
#include <config.h>

#include "compare_ops_internal.h"

double etm_check_nmse(const float *ref, const float *test, size_t n) {
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

static void report_header(chk *c) {
    if (c->report)
        fprintf(c->report, "%-46s %-12s %8s %12s %12s %9s %-7s %s\n", "op", "output", "n",
                "max_abs_err", "nmse", "tol", "repeat", "result");
}

static void judge(chk *c, const char *op, const part *p, const float *r, const float *t1,
                  const float *t2) {
    double max_abs = 0.0, nmse = etm_check_nmse(r, t1, p->n);
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

int etm_check_backend_ops(etm_backend *ref, etm_backend *test, uint64_t seed, FILE *report) {
    chk c;
    c.ref = ref;
    c.test = test;
    c.report = report;
    c.failures = 0;
    etm_rng_seed(&c.rng, seed);
    if (report)
        fprintf(report, "comparing backend %s against %s, seed %llu\n", test->name, ref->name,
                (unsigned long long)seed);
    report_header(&c);
    etm_cmp_memory(&c);
    etm_cmp_gemm(&c);
    etm_cmp_gemm_grouped(&c);
    etm_cmp_vec(&c);
    etm_cmp_sum_squares(&c);
    etm_cmp_embedding(&c);
    etm_cmp_rmsnorm(&c);
    etm_cmp_rope(&c);
    etm_cmp_attention(&c);
    etm_cmp_act(&c);
    etm_cmp_xent(&c);
    etm_cmp_routing(&c, 4 * 53, 7, 53, 9, "");
    etm_cmp_routing(&c, 2 * 1300, 5, 1300, 260, " pool=1300"); /* longer than one block */
    etm_cmp_dispatch(&c, 61, 7, 13, "");
    etm_cmp_dispatch(&c, 2500, 5, 3, " N=2500"); /* longer than one scan block */
    etm_cmp_adamw(&c);
    if (report) fprintf(report, "%d failed comparison%s\n", c.failures, c.failures == 1 ? "" : "s");
    return c.failures;
}
