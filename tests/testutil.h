/* testutil.h: helpers shared by the Check suites: where fixtures and data live, temp files, the
 * backend a test runs on, and a main() that runs one suite and reports in Check's usual form. */
#ifndef ETM_TESTUTIL_H
#define ETM_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"
#include "hparams.h"

/* Directory of tests/ in the source tree (fixtures live under tests/fixtures). */
static inline const char *test_dir(void) {
    const char *d = getenv("ETM_TEST_DIR");
    return d && *d ? d : "tests";
}

/* Directory of data/ in the source tree. */
static inline const char *test_data_dir(void) {
    const char *d = getenv("ETM_DATA_DIR");
    return d && *d ? d : "data";
}

/* A fresh private temp directory for one test; path written to buf. */
static inline const char *test_tmpdir(char *buf, size_t len) {
    snprintf(buf, len, "%s/etmoe-test-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_msg(mkdtemp(buf) != NULL, "mkdtemp failed");
    return buf;
}

/* The named backend, failing the test with the reason when it cannot be created. */
static inline etm_backend *test_backend_named(const char *name) {
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create(name, &err);
    ck_assert_msg(be != NULL, "%s backend: %s", name, err.msg);
    return be;
}

/* The backend of the suites that run on any backend: $ETM_TEST_BACKEND, or cpu. */
static inline etm_backend *test_backend(void) {
    const char *name = getenv("ETM_TEST_BACKEND");
    return test_backend_named(name && *name ? name : "cpu");
}

/* Tiny models are all synchronisation and no work: on a loaded 2-core machine every OpenMP
 * barrier can cost a scheduler slice, so their tests run on one thread. Thread-count
 * independence has its own tests, which set the count they need. */
static inline void test_one_thread(void) {
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
}

/* The tiny model the suites share: vocabulary 64, sequences of 8, 3 layers (layer 0 dense) of
 * width 16 with 2 heads over 1 KV head and an MLP of 32, 4 routed experts + 1 shared of width 16,
 * k = 1, batches of 2; every other key at its default (etm_hparams_defaults). A suite sets what its
 * tests need differently right after the call, so each difference from this preset is written
 * where it matters. Not validated: the caller may still change it. */
static inline etm_hparams test_tiny_hparams(etm_router_kind router) {
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.vocab_size = 64;
    hp.seq_len = 8;
    hp.n_layer = 3;
    hp.d_model = 16;
    hp.n_head = 2;
    hp.n_kv_head = 1;
    hp.ffn_hidden = 32;
    hp.router = router;
    hp.dense_layers = 1;
    hp.n_routed = 4;
    hp.n_shared = 1;
    hp.expert_hidden = 16;
    hp.top_k = 1;
    hp.batch_size = 2;
    return hp;
}

/* Runs the suite and returns the process exit code. CK_FORK is left to the environment. */
static inline int test_run_suite(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
