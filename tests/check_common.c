/* check_common.c: tests of the shared helpers: the RNG's reproducibility and distribution, and
 * atomic file writes that never leave a partial file. */
#include "common.h"
#include "rng.h"
#include "testutil.h"

#include <math.h>
#include <sys/stat.h>

START_TEST(rng_is_reproducible_and_seed_dependent) {
    etm_rng a, b, c;
    etm_rng_seed(&a, 1234);
    etm_rng_seed(&b, 1234);
    etm_rng_seed(&c, 1235);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = etm_rng_next(&a), y = etm_rng_next(&b), z = etm_rng_next(&c);
        ck_assert_uint_eq(x, y);
        same_c += x == z;
    }
    ck_assert_int_lt(same_c, 2);
}
END_TEST

START_TEST(rng_normal_has_unit_moments) {
    etm_rng r;
    etm_rng_seed(&r, 7);
    double s = 0, s2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = etm_rng_normal(&r);
        s += x;
        s2 += x * x;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    ck_assert_double_lt(fabs(mean), 0.01);
    ck_assert_double_lt(fabs(var - 1.0), 0.02);
}
END_TEST

START_TEST(rng_below_and_shuffle_are_permutations) {
    etm_rng r;
    etm_rng_seed(&r, 99);
    uint32_t idx[257];
    int seen[257] = {0};
    for (uint32_t i = 0; i < 257; i++) idx[i] = i;
    etm_rng_shuffle_u32(&r, idx, 257);
    int moved = 0;
    for (uint32_t i = 0; i < 257; i++) {
        seen[idx[i]]++;
        moved += idx[i] != i;
    }
    for (int i = 0; i < 257; i++) ck_assert_int_eq(seen[i], 1);
    ck_assert_int_gt(moved, 200);
    for (int i = 0; i < 1000; i++) ck_assert_uint_lt(etm_rng_below(&r, 3), 3);
}
END_TEST

START_TEST(atomic_write_replaces_whole_file) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/f.bin", dir);
    etm_error err = {{0}};
    ck_assert_int_eq(etm_write_file_atomic(path, "first", 5, &err), 0);
    ck_assert_int_eq(etm_write_file_atomic(path, "second!", 7, &err), 0);
    size_t len = 0;
    char *got = etm_read_file(path, &len, &err);
    ck_assert_ptr_nonnull(got);
    ck_assert_uint_eq(len, 7);
    ck_assert_str_eq(got, "second!");
    free(got);
    /* A write into a directory that does not exist fails cleanly and names the path. */
    snprintf(path, sizeof path, "%s/missing/f.bin", dir);
    ck_assert_int_ne(etm_write_file_atomic(path, "x", 1, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "missing"));
    ck_assert_ptr_null(etm_read_file(path, &len, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "no such file"));
}
END_TEST

int main(void) {
    Suite *s = suite_create("common");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, rng_is_reproducible_and_seed_dependent);
    tcase_add_test(tc, rng_normal_has_unit_moments);
    tcase_add_test(tc, rng_below_and_shuffle_are_permutations);
    tcase_add_test(tc, atomic_write_replaces_whole_file);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
