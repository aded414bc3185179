/* compare_ops.c: op-by-op comparison of two backends (compare_ops.h): the list of cases run. The
 * cases are in compare_ops_math.c, compare_ops_layers.c and compare_ops_routing.c, running and
 * judging one in compare_ops_case.c (compare_ops_case.h says how they work).
 * tests/check_compare_ops.c fails when an operation of backends/backend.h is never called here. */
#include <config.h>

#include "compare_ops.h"
#include "compare_ops_case.h"

double etm_check_nmse(const float *ref, const float *test, size_t n) {
    return etm_cmp_nmse(ref, test, n);
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
    etm_cmp_report_header(&c);
    etm_cmp_memory(&c);
    etm_cmp_gemm(&c);
    etm_cmp_gemm_grouped(&c);
    etm_cmp_syrk_batched(&c);
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
