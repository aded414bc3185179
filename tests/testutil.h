/* testutil.h: helpers shared by the Check suites: where fixtures and data live, temp files, and
 * a main() that runs one suite and reports in Check's usual form. */
#ifndef ETM_TESTUTIL_H
#define ETM_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Runs the suite and returns the process exit code. CK_FORK is left to the environment. */
static inline int test_run_suite(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
