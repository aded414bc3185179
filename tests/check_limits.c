/* check_limits.c: the guards against hostile sizes and files (issue 12): the memory estimate
 * against what a model really allocates, refusals instead of aborts for impossible sizes, checked
 * size arithmetic, regular-file checks that cannot block on a FIFO, size caps on text inputs, NUL
 * bytes in configs, and the clean-up of stale temporary files. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hparams.h"
#include "model.h"
#include "optim.h"
#include "testutil.h"

/* ---- a backend that counts its live bytes ---------------------------------------------------- */

/* The counting wrapper's state: a test may use one at a time. */
enum { MAX_LIVE = 4096 };
static struct {
    void *(*alloc)(etm_backend *, size_t);
    void (*free)(etm_backend *, void *);
    void *ptr[MAX_LIVE];  /* live allocations */
    size_t size[MAX_LIVE]; /* their sizes */
    double live, peak;    /* bytes */
} counter;

static void *counting_alloc(etm_backend *be, size_t bytes) {
    void *p = counter.alloc(be, bytes);
    for (int i = 0; i < MAX_LIVE; i++)
        if (!counter.ptr[i]) {
            counter.ptr[i] = p;
            counter.size[i] = bytes;
            counter.live += (double)bytes;
            if (counter.live > counter.peak) counter.peak = counter.live;
            return p;
        }
    ck_abort_msg("more than %d live allocations", MAX_LIVE);
    return p;
}

static void counting_free(etm_backend *be, void *p) {
    for (int i = 0; i < MAX_LIVE; i++)
        if (counter.ptr[i] == p) {
            counter.live -= (double)counter.size[i];
            counter.ptr[i] = NULL;
            break;
        }
    counter.free(be, p);
}

static etm_backend *counting_backend(void) {
    etm_backend *be = test_backend_named("cpu");
    memset(&counter, 0, sizeof counter);
    counter.alloc = be->alloc;
    counter.free = be->free;
    be->alloc = counting_alloc;
    be->free = counting_free;
    return be;
}

/* A small model with every kind of buffer: a dense layer, MoE layers with a shared expert. */
static etm_hparams small_hp(etm_router_kind router) {
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.vocab_size = 97;
    hp.seq_len = 16;
    hp.n_layer = 3;
    hp.d_model = 32;
    hp.n_head = 4;
    hp.n_kv_head = 2;
    hp.ffn_hidden = 64;
    hp.router = router;
    hp.dense_layers = 1;
    hp.n_routed = 4;
    hp.n_shared = 1;
    hp.expert_hidden = 16;
    hp.top_k = 1;
    hp.et_warmup_steps = 0;
    hp.batch_size = 4;
    hp.pool_seqs = 0;
    return hp;
}

/* The estimate covers what one training step allocates (the backend's peak of live bytes), and is
 * not wildly above it: within 1.5x plus 1 MiB of alignment and small buffers. */
START_TEST(test_estimate_covers_allocations) {
    static const etm_router_kind routers[] = {ETM_ROUTER_DENSE, ETM_ROUTER_TC, ETM_ROUTER_EC, ETM_ROUTER_ET};
    test_one_thread();
    etm_hparams hp = small_hp(routers[_i]);
    etm_backend *be = counting_backend();
    etm_error err = {{0}};
    etm_model *m = etm_model_create(be, &hp, hp.batch_size, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    etm_optim *opt = etm_optim_create(be, &hp, m->table, m->n_tensors, &err);
    ck_assert_msg(opt != NULL, "%s", err.msg);
    int N = hp.batch_size * hp.seq_len;
    int32_t *tok = malloc((size_t)N * sizeof *tok), *tgt = malloc((size_t)N * sizeof *tgt);
    for (int i = 0; i < N; i++) {
        tok[i] = (i * 7 + 3) % hp.vocab_size;
        tgt[i] = (i * 5 + 1) % hp.vocab_size;
    }
    for (int step = 0; step < 2; step++) {
        double loss;
        etm_model_zero_grad(m);
        ck_assert_msg(etm_model_forward(m, tok, tgt, hp.batch_size, hp.seq_len, ETM_MOE_TRAIN, &loss, &err) == 0,
                      "%s", err.msg);
        ck_assert_msg(etm_model_backward(m, 1.0f, &err) == 0, "%s", err.msg);
        ck_assert_msg(etm_optim_step(opt, step, NULL, &err) == 0, "%s", err.msg);
        etm_model_step_end(m);
    }
    etm_memory_estimate est;
    etm_model_memory_estimate(&hp, hp.batch_size, 1, &est);
    ck_assert_msg(est.n_params == (double)m->n_params, "estimated %.0f parameters, the model has %zu",
                  est.n_params, m->n_params);
    ck_assert_msg(est.total >= counter.peak, "router %d: estimate %.0f bytes below the %.0f allocated", (int)routers[_i],
                  est.total, counter.peak);
    ck_assert_msg(est.total <= 1.5 * counter.peak + (1 << 20), "router %d: estimate %.0f bytes, far above the %.0f allocated",
                  (int)routers[_i], est.total, counter.peak);
    free(tok);
    free(tgt);
    etm_optim_free(opt);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

/* Sizes no machine holds are refused with the estimate, before anything is allocated. */
START_TEST(test_impossible_sizes_refused) {
    etm_backend *be = counting_backend();
    struct {
        const char *key, *value;
    } cases[] = {{"vocab_size", "2000000000"}, {"d_model", "1048576"},   {"ffn_hidden", "2000000000"},
                 {"expert_hidden", "2000000000"}, {"n_shared", "1000000"}, {"n_layer", "900000"}};
    for (size_t c = 0; c < ETM_ARRAY_LEN(cases); c++) {
        etm_hparams hp = small_hp(ETM_ROUTER_ET);
        hp.n_head = 1;
        hp.n_kv_head = 1;
        etm_error err = {{0}};
        ck_assert_msg(etm_hparams_set(&hp, cases[c].key, cases[c].value, &err) == 0, "%s", err.msg);
        ck_assert_ptr_null(etm_model_create(be, &hp, hp.batch_size, &err));
        ck_assert_msg(strstr(err.msg, "needs") && strstr(err.msg, "GiB"), "%s=%s: %s", cases[c].key, cases[c].value,
                      err.msg);
        ck_assert_msg(counter.peak == 0, "%s=%s: %.0f bytes allocated before refusing", cases[c].key, cases[c].value,
                      counter.peak);
    }
    etm_backend_free(be);
}
END_TEST

START_TEST(test_size_arithmetic) {
    size_t r = 0;
    ck_assert_int_eq(etm_size_mul(SIZE_MAX / 2, 2, &r), 0);
    ck_assert_int_eq(etm_size_mul(SIZE_MAX / 2 + 1, 2, &r), -1);
    ck_assert_int_eq(etm_size_mul(0, SIZE_MAX, &r), 0);
    ck_assert_uint_eq(r, 0);
    ck_assert_int_eq(etm_size_add(SIZE_MAX - 1, 1, &r), 0);
    ck_assert_int_eq(etm_size_add(SIZE_MAX, 1, &r), -1);
    /* the estimate itself never overflows: every setting at INT_MAX */
    etm_hparams hp = small_hp(ETM_ROUTER_ET);
    hp.vocab_size = hp.d_model = hp.ffn_hidden = hp.expert_hidden = hp.n_routed = hp.n_shared = 2147483647;
    etm_memory_estimate est;
    etm_model_memory_estimate(&hp, 2147483647, 1, &est);
    ck_assert(est.total > 1e30);
    etm_error err = {{0}};
    ck_assert_int_eq(etm_memory_check(&est, &err), -1);
}
END_TEST

/* ---- files ----------------------------------------------------------------------------------- */

/* A FIFO with no writer: opening it for reading would block forever. In a child, so that a
 * regression fails by the alarm instead of hanging the suite. */
START_TEST(test_fifo_refused_without_blocking) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/fifo", dir);
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        alarm(20);
        etm_error err = {{0}};
        size_t len;
        int ok = etm_open_regular(path, "checkpoint", NULL, &err) < 0 && strstr(err.msg, "not a regular file") &&
                 etm_read_file(path, &len, &err) == NULL && strstr(err.msg, "so not a text file");
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child blocked or failed (status %d)", status);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(test_file_kinds_and_caps) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    etm_error err = {{0}};
    size_t len = 0;
    ck_assert_ptr_null(etm_read_file(dir, &len, &err));
    ck_assert_msg(strstr(err.msg, "is a directory, not a text file"), "%s", err.msg);
    ck_assert_ptr_null(etm_read_file("/dev/zero", &len, &err));
    ck_assert_msg(strstr(err.msg, "/dev/zero: not a regular file"), "%s", err.msg);
    snprintf(path, sizeof path, "%s/big", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, 4097), 0); /* sparse: no disk used */
    close(fd);
    ck_assert_ptr_null(etm_read_file_max(path, "merges", 4096, &len, &err));
    ck_assert_msg(strstr(err.msg, "4097 bytes, over the limit of 4096 bytes for a merges file"), "%s", err.msg);
    char *text = etm_read_file_max(path, "merges", 4097, &len, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    ck_assert_uint_eq(len, 4097);
    free(text);
    unlink(path);
    rmdir(dir);
}
END_TEST

/* A NUL byte in a config is an error naming the line, not the silent end of the file. */
START_TEST(test_config_nul_byte) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/nul.conf", dir);
    static const char text[] = "[model]\nd_model = 64\n\0n_layer = 1000\n";
    etm_error err = {{0}};
    ck_assert_int_eq(etm_write_file_atomic(path, text, sizeof text - 1, &err), 0);
    etm_hparams hp;
    ck_assert_int_ne(etm_hparams_configure(&hp, path, 0, NULL, &err), 0);
    ck_assert_msg(strstr(err.msg, "nul.conf:3: a NUL byte"), "%s", err.msg);
    unlink(path);
    rmdir(dir);
}
END_TEST

/* Saving removes PATH.tmp.PID files of processes that are gone, and keeps a live one's. */
START_TEST(test_stale_tmp_cleaned) {
    char dir[256], path[512], stale[600], live[600];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/latest.safetensors", dir);
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) _exit(0);
    ck_assert_int_eq(waitpid(child, NULL, 0), child);
    snprintf(stale, sizeof stale, "%s.tmp.%ld", path, (long)child);
    snprintf(live, sizeof live, "%s.tmp.%ld", path, (long)getppid());
    etm_error err = {{0}};
    ck_assert_int_eq(etm_write_file_atomic(stale, "x", 1, &err), 0);
    ck_assert_int_eq(etm_write_file_atomic(live, "x", 1, &err), 0);
    ck_assert_int_eq(etm_write_file_atomic(path, "new", 3, &err), 0);
    ck_assert_int_ne(access(stale, F_OK), 0);
    ck_assert_int_eq(access(live, F_OK), 0);
    unlink(live);
    unlink(path);
    rmdir(dir);
}
END_TEST

static Suite *limits_suite(void) {
    Suite *s = suite_create("limits");
    TCase *tc = tcase_create("memory");
    tcase_add_loop_test(tc, test_estimate_covers_allocations, 0, 4);
    tcase_add_test(tc, test_impossible_sizes_refused);
    tcase_add_test(tc, test_size_arithmetic);
    suite_add_tcase(s, tc);
    tc = tcase_create("files");
    tcase_add_test(tc, test_fifo_refused_without_blocking);
    tcase_add_test(tc, test_file_kinds_and_caps);
    tcase_add_test(tc, test_config_nul_byte);
    tcase_add_test(tc, test_stale_tmp_cleaned);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(limits_suite()); }
