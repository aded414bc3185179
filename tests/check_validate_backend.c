/* check_validate_backend.c: tests of the whole-model backend validation (src/validate/validate_backend.c) and
 * of `etmoe check-backend`, runnable without a GPU: the cpu backend against itself must agree
 * exactly in every part; a copy of it whose gemm is off by 1e-3 relative must fail the compared
 * step and be named in the report; routing disagreements planted at a known distance from their
 * decision boundary (an ET threshold, a TC top-k cut) must be judged by exactly that distance;
 * and the verb must keep its exit statuses (0 agree, 1 disagree or no device, 2 usage). */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"
#include "validate_backend.h"
#include "testutil.h"

/* A copy of the cpu backend's table with one op replaced. The cpu backend's tensors are host
 * memory, so the replacements work on the pointers directly. */
typedef struct {
    etm_backend be;    /* first member: an etm_backend * to it is a perturbed * */
    etm_backend *cpu;
    int flips;         /* routing decisions changed so far */
    double distance;   /* the planted flip's distance from its decision boundary */
} perturbed;

static perturbed make_perturbed(etm_backend *cpu, const char *name) {
    perturbed p;
    memset(&p, 0, sizeof p);
    p.be = *cpu;
    p.be.name = name;
    p.cpu = cpu;
    return p;
}

static void gemm_scaled(etm_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    etm_backend *cpu = ((perturbed *)be)->cpu;
    cpu->gemm(cpu, ta, tb, M, N, K, alpha * (1.0f + 1e-3f), A, lda, B, ldb, beta, C, ldc);
}

/* The threshold rule (a threshold, the whole batch, lo 0): drops expert 0's routed token whose
 * score lies nearest above the threshold, once. */
static void select_drops_nearest(etm_backend *be, uint8_t *z, const float *score, const uint8_t *eligible,
                                 const float *threshold, int N, int E, int pool_rows, int lo, int hi) {
    perturbed *p = (perturbed *)be;
    p->cpu->select_columns(p->cpu, z, score, eligible, threshold, N, E, pool_rows, lo, hi);
    if (!threshold || p->flips) return;
    int best = -1;
    for (int n = 0; n < N; n++)
        if (z[(size_t)n * E] && (best < 0 || score[(size_t)n * E] < score[(size_t)best * E])) best = n;
    if (best < 0) return;
    z[(size_t)best * E] = 0;
    p->distance = (double)score[(size_t)best * E] - (double)threshold[0];
    p->flips++;
}

/* Top-k that takes the (k+1)-th largest of row 0 instead of the k-th, once. */
static void topk_swaps_row0(etm_backend *be, uint8_t *z, const float *score, int N, int E, int k) {
    perturbed *p = (perturbed *)be;
    p->cpu->topk_rows(p->cpu, z, score, N, E, k);
    if (p->flips || N < 1 || k >= E) return;
    int kth = -1, next = -1;
    for (int e = 0; e < E; e++) {
        if (z[e] && (kth < 0 || score[e] < score[kth])) kth = e;
        if (!z[e] && (next < 0 || score[e] > score[next])) next = e;
    }
    z[kth] = 0;
    z[next] = 1;
    p->distance = 0.5 * ((double)score[kth] - (double)score[next]);
    p->flips++;
}

static etm_backend *cpu, *cpu2;

static void setup(void) {
    etm_error err = {{0}};
    cpu = etm_backend_create("cpu", &err);
    ck_assert_msg(cpu != NULL, "%s", err.msg);
    cpu2 = etm_backend_create("cpu", &err);
    ck_assert_msg(cpu2 != NULL, "%s", err.msg);
}
static void teardown(void) {
    etm_backend_free(cpu);
    etm_backend_free(cpu2);
}

/* Tolerances of zero: cpu against cpu must be bit for bit identical. */
static etm_cbk_options exact_options(void) {
    etm_cbk_options o;
    etm_cbk_options_default(&o);
    o.rtol = o.atol = o.norm_tol = o.route_eps = o.loss_rtol = 0.0;
    o.steps = 6;
    return o;
}

static int file_contains(FILE *f, const char *needle) {
    fflush(f);
    long len = ftell(f);
    char *text = calloc((size_t)len + 1, 1);
    rewind(f);
    size_t got = fread(text, 1, (size_t)len, f);
    text[got] = '\0';
    int found = strstr(text, needle) != NULL;
    free(text);
    fseek(f, 0, SEEK_END);
    return found;
}

START_TEST(test_step_cpu_identical) {
    static const etm_router_kind kinds[] = {ETM_ROUTER_ET, ETM_ROUTER_TC, ETM_ROUTER_EC};
    etm_cbk_options o = exact_options();
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        etm_hparams hp;
        etm_cbk_tiny_hparams(&hp, kinds[k]);
        etm_cbk_step_result r;
        etm_error err = {{0}};
        ck_assert_msg(etm_cbk_compare_step(cpu, cpu2, &hp, &o, NULL, &r, &err) == 0, "%s", err.msg);
        ck_assert_msg(r.passed, "router %d: %d tensors differ, %ld flips", (int)kinds[k], r.tensors_failed, r.flips);
        ck_assert_int_eq(r.tensors_failed, 0);
        ck_assert_int_eq(r.flips, 0);
        /* dump (41 tensors for two MoE layers) and state after the step (64) */
        ck_assert_int_ge(r.tensors, 100);
        ck_assert_int_eq(r.decisions, 2 * 64 * 8);
        ck_assert(r.loss_ref == r.loss_test);
        ck_assert(isfinite(r.loss_ref) && r.loss_ref > 0);
    }
}
END_TEST

START_TEST(test_curves_cpu_identical_and_learning) {
    etm_cbk_options o = exact_options();
    etm_hparams hp;
    etm_cbk_tiny_hparams(&hp, ETM_ROUTER_ET);
    etm_cbk_curve c;
    etm_error err = {{0}};
    ck_assert_msg(etm_cbk_compare_curves(cpu, cpu2, &hp, &o, NULL, &c, &err) == 0, "%s", err.msg);
    ck_assert(c.passed);
    ck_assert_int_eq(c.steps, o.steps);
    ck_assert_int_eq(c.first_bad, -1);
    for (int s = 0; s < c.steps; s++) ck_assert(memcmp(&c.loss_ref[s], &c.loss_test[s], sizeof(double)) == 0);
    /* the Markov-chain tokens are learnable: the loss starts near ln V and falls */
    ck_assert(fabs(c.loss_ref[0] - log(128.0)) < 0.2);
    ck_assert(c.loss_ref[c.steps - 1] < c.loss_ref[0] - 0.1);
    etm_cbk_curve_free(&c);
}
END_TEST

START_TEST(test_run_cpu_passes) {
    etm_cbk_options o;
    etm_cbk_options_default(&o);
    o.steps = 3;
    etm_hparams hp;
    etm_cbk_tiny_hparams(&hp, ETM_ROUTER_ET);
    FILE *report = tmpfile();
    etm_error err = {{0}};
    ck_assert_int_eq(etm_cbk_run(cpu, cpu2, &hp, &o, report, &err), 1);
    ck_assert(file_contains(report, "(2) one step, et: pass"));
    ck_assert(file_contains(report, "(2) one step, tc: pass"));
    ck_assert(file_contains(report, "(3) 3 steps, tc: pass"));
    ck_assert(file_contains(report, "\nPASS\n"));
    fclose(report);
}
END_TEST

START_TEST(test_perturbed_gemm_fails_step) {
    perturbed p = make_perturbed(cpu, "cpu-gemm-plus-1e-3");
    p.be.gemm = gemm_scaled;
    etm_cbk_options o;
    etm_cbk_options_default(&o);
    etm_hparams hp;
    etm_cbk_tiny_hparams(&hp, ETM_ROUTER_ET);
    FILE *report = tmpfile();
    etm_cbk_step_result r;
    etm_error err = {{0}};
    ck_assert_msg(etm_cbk_compare_step(cpu, &p.be, &hp, &o, report, &r, &err) == 0, "%s", err.msg);
    ck_assert(!r.passed);
    ck_assert_int_gt(r.tensors_failed, 0);
    ck_assert(r.loss_ref != r.loss_test);
    ck_assert(file_contains(report, "routing (cpu / cpu-gemm-plus-1e-3)"));
    ck_assert(file_contains(report, "logits                               DIFFERS"));
    fclose(report);

    /* the whole run fails and names the backend */
    report = tmpfile();
    o.steps = 2;
    ck_assert_int_eq(etm_cbk_run(cpu, &p.be, &hp, &o, report, &err), 0);
    ck_assert(file_contains(report, "== summary: cpu-gemm-plus-1e-3 against cpu =="));
    ck_assert(file_contains(report, "(2) one step, et: FAIL"));
    ck_assert(file_contains(report, "\nFAIL\n"));
    fclose(report);
}
END_TEST

/* One MoE layer, so that the planted flip is the only routing difference in the forward. */
static void one_moe_layer(etm_hparams *hp, etm_router_kind kind) {
    etm_cbk_tiny_hparams(hp, kind);
    hp->n_layer = 2;
    hp->capacity_factor = 0.0f;
}

/* Runs the compared step against p with route_eps just above and just below the planted flip's
 * distance: `flips` disagreements (a swap in a top-k is two), acceptable in the first case only. */
static void check_planted_flip(perturbed *p, const etm_hparams *hp, long flips) {
    etm_cbk_options o;
    etm_cbk_options_default(&o);
    etm_cbk_step_result r;
    etm_error err = {{0}};
    o.route_eps = 1e30;
    ck_assert_msg(etm_cbk_compare_step(cpu, &p->be, hp, &o, NULL, &r, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(p->flips, 1);
    ck_assert_int_eq(r.flips, flips);
    double d = p->distance;
    ck_assert(d > 0 && d < 1);
    ck_assert_msg(fabs(r.worst_margin - d) <= 1e-6 * d, "measured %.9g, planted %.9g", r.worst_margin, d);

    for (int below = 0; below < 2; below++) {
        p->flips = 0;
        o.route_eps = below ? 0.99 * d : 1.01 * d;
        ck_assert_msg(etm_cbk_compare_step(cpu, &p->be, hp, &o, NULL, &r, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(r.flips, flips);
        ck_assert_int_eq(r.flips_bad, below ? flips : 0);
        ck_assert(!r.passed); /* the expert lost a token: its gradients differ either way */
    }
}

START_TEST(test_flip_near_threshold) {
    perturbed p = make_perturbed(cpu, "cpu-drops-one");
    p.be.select_columns = select_drops_nearest;
    etm_hparams hp;
    one_moe_layer(&hp, ETM_ROUTER_ET);
    check_planted_flip(&p, &hp, 1);
}
END_TEST

START_TEST(test_flip_near_topk_cut) {
    perturbed p = make_perturbed(cpu, "cpu-swaps-one");
    p.be.topk_rows = topk_swaps_row0;
    etm_hparams hp;
    one_moe_layer(&hp, ETM_ROUTER_TC);
    check_planted_flip(&p, &hp, 2);
}
END_TEST

START_TEST(test_step_needs_moe) {
    etm_cbk_options o;
    etm_cbk_options_default(&o);
    etm_hparams hp;
    etm_cbk_tiny_hparams(&hp, ETM_ROUTER_DENSE);
    etm_cbk_step_result r;
    etm_error err = {{0}};
    ck_assert_int_eq(etm_cbk_compare_step(cpu, cpu2, &hp, &o, NULL, &r, &err), -1);
    ck_assert(strstr(err.msg, "MoE") != NULL);
}
END_TEST

/* ---- the verb ------------------------------------------------------------------------------ */
/* Runs ./etmoe (make check runs tests in the build directory) with args; returns its exit status
 * and, when out is non-NULL, keeps its stdout there. */
static int etmoe(const char *args, char *out, size_t len) {
    char cmd[512], tmp[256];
    snprintf(tmp, sizeof tmp, "%s/etmoe-cbk-out-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    snprintf(cmd, sizeof cmd, "./etmoe check-backend %s >%s 2>&1", args, tmp);
    int status = system(cmd);
    ck_assert(status != -1 && WIFEXITED(status));
    if (out) {
        FILE *f = fopen(tmp, "r");
        ck_assert(f != NULL);
        size_t got = fread(out, 1, len - 1, f);
        out[got] = '\0';
        fclose(f);
    }
    unlink(tmp);
    return WEXITSTATUS(status);
}

START_TEST(test_verb_exit_status) {
    ck_assert_msg(access("./etmoe", X_OK) == 0, "./etmoe not found: run this test through make check");
    static char out[1 << 16];
    ck_assert_int_eq(etmoe("--help", out, sizeof out), 0);
    ck_assert(strstr(out, "usage: etmoe check-backend NAME") != NULL);
    ck_assert_int_eq(etmoe("", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu --bogus", NULL, 0), 2);
    ck_assert_int_eq(etmoe("nosuch", out, sizeof out), 2);
    ck_assert(strstr(out, "unknown backend 'nosuch'") != NULL);
    ck_assert_int_eq(etmoe("cpu --steps 0", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu --steps", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu --rtol x", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu router=tc", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu no_such_key=1", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu /no/such/config.conf", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu --dumps /no/such/dir", NULL, 0), 2);
    ck_assert_int_eq(etmoe("cpu --steps 1 d_model=48 n_head=3 n_kv_head=1", out, sizeof out), 0);
    ck_assert(strstr(out, "\nPASS\n") != NULL);

    /* without a device (or without the backend built in) cuda is refused with exit status 1 */
    etm_error err = {{0}};
    etm_backend *cuda = etm_backend_create("cuda", &err);
    if (!cuda) {
        ck_assert_int_eq(etmoe("cuda", out, sizeof out), 1);
        ck_assert(strstr(out, "cannot validate 'cuda' on this machine") != NULL);
    } else {
        etm_backend_free(cuda);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("validate_backend");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_step_cpu_identical);
    tcase_add_test(tc, test_curves_cpu_identical_and_learning);
    tcase_add_test(tc, test_run_cpu_passes);
    tcase_add_test(tc, test_perturbed_gemm_fails_step);
    tcase_add_test(tc, test_flip_near_threshold);
    tcase_add_test(tc, test_flip_near_topk_cut);
    tcase_add_test(tc, test_step_needs_moe);
    tcase_add_test(tc, test_verb_exit_status);
    suite_add_tcase(s, tc);
    return s;
}

/* One OpenMP thread in this process: the models here are so small that the cost of a run is the
 * synchronisation of threads around each op, which on a loaded machine (threads spinning at
 * every barrier) made this suite ten times slower. Nothing here depends on the thread count:
 * both sides of every comparison run with the same threads, and thread-count independence is
 * tested by check_ops_determinism, check_model and check_trainer. The verb runs below (separate
 * processes) keep the caller's OMP_NUM_THREADS. */
int main(void) {
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    return test_run_suite(suite());
}
