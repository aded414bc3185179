/* check_ops_registry.c: tests of the backend registry (names, creation, errors that name the
 * problem) and of the `etmoe backends` verb run as a program. */
#include "ops_testutil.h"

#include <sys/wait.h>

START_TEST(registry_lists_and_creates_cpu) {
    const char *const *names = etm_backend_names();
    int n = 0, has_cpu = 0;
    for (; names[n]; n++) has_cpu |= !strcmp(names[n], "cpu");
    ck_assert(has_cpu);
    ck_assert_int_ge(n, 1);
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    ck_assert_ptr_nonnull(be);
    ck_assert_str_eq(be->name, "cpu");
    /* every operation of backend.h's list is filled in, and the list knows its names */
    for (int i = 0; i < ETM_BACKEND_N_OPS; i++) {
        ck_assert_msg(etm_backend_op(be, i) != NULL, "operation %s is NULL", etm_backend_op_name(i));
        ck_assert_int_eq(etm_backend_op_index(etm_backend_op_name(i)), i);
    }
    ck_assert(etm_backend_op(be, ETM_OPI_gemm) == (void (*)(void))be->gemm);
    ck_assert_int_eq(etm_backend_op_index("no_such_op"), -1);
    ck_assert_ptr_null(etm_backend_op_name(ETM_BACKEND_N_OPS));
    float *x = be->alloc(be, 1000 * sizeof(float));
    for (int i = 0; i < 1000; i++) ck_assert_float_eq(x[i], 0.0f); /* zero-filled */
    ck_assert_uint_eq((uintptr_t)x % 64, 0);
    be->free(be, x);
    etm_backend_free(be);
    etm_backend_free(NULL);
}
END_TEST

START_TEST(registry_rejects_unknown_names) {
    etm_error err = {{0}};
    ck_assert_ptr_null(etm_backend_create("tpu", &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "tpu"));
    ck_assert_ptr_nonnull(strstr(err.msg, "cpu")); /* says what is available */
    err.msg[0] = 0;
    ck_assert_ptr_null(etm_backend_create("", &err));
    ck_assert_int_gt((int)strlen(err.msg), 0);
    int has_cuda = 0;
    for (const char *const *n = etm_backend_names(); *n; n++) has_cuda |= !strcmp(*n, "cuda");
    if (!has_cuda) {
        err.msg[0] = 0;
        ck_assert_ptr_null(etm_backend_create("cuda", &err));
        ck_assert_ptr_nonnull(strstr(err.msg, "cuda"));
    }
}
END_TEST

/* Runs the built program (tests run in the build directory) and returns its exit status. */
static int run_etmoe(const char *args, char *out, size_t cap) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "./etmoe %s 2>&1", args);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(backends_verb_lists_cpu) {
    if (access("./etmoe", X_OK) != 0) {
        fprintf(stderr, "backends_verb_lists_cpu: ./etmoe not built here, skipped\n");
        return;
    }
    char out[4096];
    ck_assert_int_eq(run_etmoe("backends", out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "cpu"));
    ck_assert_ptr_nonnull(strstr(out, "available"));
    ck_assert_int_eq(run_etmoe("backends --no-such-option", out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "--no-such-option"));
}
END_TEST

static Suite *registry_suite(void) {
    Suite *s = suite_create("ops_registry");
    TCase *tc = tcase_create("registry");
    tcase_set_timeout(tc, 300); /* busy machines; serial-tests ignores CK_DEFAULT_TIMEOUT */
    tcase_add_test(tc, registry_lists_and_creates_cpu);
    tcase_add_test(tc, registry_rejects_unknown_names);
    tcase_add_test(tc, backends_verb_lists_cpu);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(registry_suite()); }
