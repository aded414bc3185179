/* check_data.c: tests of the data pipeline: token shards (round trips in both versions, byte
 * layout, every kind of corrupt file), the batch loader (windows, shuffling, determinism,
 * multi-shard globs, exact resume, validation order, vocabulary checks). */
#include "common.h"
#include "loader.h"
#include "prepare.h"
#include "shard.h"
#include "tokenizer.h"
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* ---- helpers -------------------------------------------------------------------------------- */

static void path_in(char *buf, size_t len, const char *dir, const char *name) {
    snprintf(buf, len, "%s/%s", dir, name);
}

static void write_raw(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    if (len) ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static void le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* A shard built byte by byte as llm.c's numpy code lays it out (independent of shard.c):
 * header int32[256] = {magic, version, count, 0...}, then count tokens of 2 or 4 bytes. */
static unsigned char *llmc_bytes(int32_t magic, int32_t version, int32_t count, const uint32_t *tok,
                                 size_t n, int width, size_t *len) {
    *len = 1024 + n * (size_t)width;
    unsigned char *b = calloc(1, *len);
    le32(b, (uint32_t)magic);
    le32(b + 4, (uint32_t)version);
    le32(b + 8, (uint32_t)count);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < width; k++) b[1024 + i * width + k] = (unsigned char)(tok[i] >> (8 * k));
    return b;
}

/* Removes a test's temp directory and everything in it. */
static void rm_tmpdir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        path_in(path, sizeof path, dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) rm_tmpdir(path);
        else remove(path);
    }
    closedir(d);
    rmdir(dir);
}

static off_t file_size(const char *path) {
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return st.st_size;
}

/* ---- shards --------------------------------------------------------------------------------- */

static void check_round_trip(const int32_t *tok, size_t n, int want_version) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    path_in(path, sizeof path, dir, "s.bin");
    etm_error err = {{0}};
    ck_assert_msg(etm_shard_write(path, tok, n, &err) == 0, "%s", err.msg);
    int width = want_version == 1 ? 2 : 4;
    ck_assert_int_eq(file_size(path), 1024 + (off_t)n * width);

    /* Byte for byte what llm.c writes. */
    uint32_t *u = malloc(n * sizeof *u + 1);
    for (size_t i = 0; i < n; i++) u[i] = (uint32_t)tok[i];
    size_t want_len = 0;
    unsigned char *want = llmc_bytes(20240520, want_version, (int32_t)n, u, n, width, &want_len);
    size_t got_len = 0;
    char *got = etm_read_file(path, &got_len, &err);
    ck_assert_ptr_nonnull(got);
    ck_assert_uint_eq(got_len, want_len);
    ck_assert_int_eq(memcmp(got, want, want_len), 0);
    free(got);
    free(want);
    free(u);

    for (int how = 0; how < 2; how++) {
        etm_shard *s = etm_shard_open(path, how ? ETM_SHARD_LOAD_READ : ETM_SHARD_LOAD_AUTO, &err);
        ck_assert_msg(s != NULL, "%s", err.msg);
        if (how) ck_assert_int_eq(etm_shard_is_mapped(s), 0);
        ck_assert_int_eq(etm_shard_version(s), want_version);
        ck_assert_uint_eq(etm_shard_n_tokens(s), n);
        ck_assert_str_eq(etm_shard_path(s), path);
        int32_t *back = malloc(n * sizeof *back + 1);
        ck_assert_msg(etm_shard_read(s, 0, n, 0, back, &err) == 0, "%s", err.msg);
        for (size_t i = 0; i < n; i++) {
            ck_assert_int_eq(back[i], tok[i]);
            ck_assert_uint_eq(etm_shard_token(s, i), (uint32_t)tok[i]);
        }
        /* A range in the middle, and one past the end. */
        if (n > 3) {
            ck_assert_int_eq(etm_shard_read(s, 2, n - 3, 0, back, &err), 0);
            ck_assert_int_eq(back[0], tok[2]);
            ck_assert_int_eq(back[n - 4], tok[n - 2]);
        }
        ck_assert_int_ne(etm_shard_read(s, 1, n, 0, back, &err), 0);
        ck_assert_ptr_nonnull(strstr(err.msg, path));
        free(back);
        etm_shard_free(s);
    }
    rm_tmpdir(dir);
}

START_TEST(shard_v1_round_trip) {
    int32_t tok[1000];
    for (int i = 0; i < 1000; i++) tok[i] = (int32_t)((i * 7919u) % 65536u);
    tok[0] = 0;
    tok[1] = 65535; /* the largest id that still fits version 1 */
    tok[2] = 50256;
    check_round_trip(tok, 1000, 1);
}
END_TEST

START_TEST(shard_v2_round_trip) {
    int32_t tok[777];
    for (int i = 0; i < 777; i++) tok[i] = (int32_t)((i * 104729u) % 128256u);
    tok[5] = 65536; /* one id over uint16 makes the whole shard version 2 */
    tok[6] = INT32_MAX;
    tok[7] = 0;
    check_round_trip(tok, 777, 2);
}
END_TEST

START_TEST(shard_empty_round_trip) {
    int32_t none[1] = {0};
    check_round_trip(none, 0, 1);
}
END_TEST

START_TEST(shard_reads_llmc_file) {
    /* A version-2 file as llm.c writes for LLaMA 3 tokens, made without shard.c. */
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    path_in(path, sizeof path, dir, "fineweb_val_000000.bin");
    uint32_t tok[5] = {128000, 791, 4062, 14198, 128001};
    size_t len = 0;
    unsigned char *b = llmc_bytes(20240520, 2, 5, tok, 5, 4, &len);
    write_raw(path, b, len);
    free(b);
    etm_error err = {{0}};
    etm_shard *s = etm_shard_open(path, ETM_SHARD_LOAD_AUTO, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_shard_version(s), 2);
    for (int i = 0; i < 5; i++) ck_assert_uint_eq(etm_shard_token(s, i), tok[i]);
    int32_t out[5];
    ck_assert_int_eq(etm_shard_read(s, 0, 5, 128256, out, &err), 0);
    /* The same shard checked against GPT-2's vocabulary: the first token is out of range. */
    ck_assert_int_ne(etm_shard_read(s, 0, 5, 50257, out, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_nonnull(strstr(err.msg, "offset 0"));
    ck_assert_ptr_nonnull(strstr(err.msg, "128000"));
    etm_shard_free(s);
    rm_tmpdir(dir);
}
END_TEST

START_TEST(shard_write_refuses_negative_ids) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    path_in(path, sizeof path, dir, "s.bin");
    int32_t good[3] = {1, 2, 3}, bad[3] = {1, -5, 3};
    etm_error err = {{0}};
    ck_assert_int_eq(etm_shard_write(path, good, 3, &err), 0);
    ck_assert_int_ne(etm_shard_write(path, bad, 3, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_nonnull(strstr(err.msg, "-5"));
    /* The good file is still there, unchanged. */
    etm_shard *s = etm_shard_open(path, ETM_SHARD_LOAD_AUTO, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    ck_assert_uint_eq(etm_shard_n_tokens(s), 3);
    ck_assert_uint_eq(etm_shard_token(s, 1), 2);
    etm_shard_free(s);
    rm_tmpdir(dir);
}
END_TEST

/* Each corrupt file: its bytes, and the phrases the error must contain besides the path. */
typedef struct {
    const char *name;
    const char *what[3];
} corrupt_case;

static void expect_open_error(const char *path, const char *const *phrases) {
    for (int how = 0; how < 2; how++) {
        etm_error err = {{0}};
        etm_shard *s = etm_shard_open(path, how ? ETM_SHARD_LOAD_READ : ETM_SHARD_LOAD_AUTO, &err);
        ck_assert_msg(s == NULL, "%s opened but is corrupt", path);
        ck_assert_msg(strstr(err.msg, path) != NULL, "error does not name the file: %s", err.msg);
        for (int i = 0; i < 3 && phrases[i]; i++)
            ck_assert_msg(strstr(err.msg, phrases[i]) != NULL, "'%s' missing from: %s", phrases[i], err.msg);
    }
}

START_TEST(shard_corruptions_are_named) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    uint32_t tok[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    size_t len = 0;
    unsigned char *good = llmc_bytes(20240520, 1, 10, tok, 10, 2, &len); /* 1044 bytes */
    unsigned char *big = calloc(1, len + 64);
    memcpy(big, good, len);

    /* empty file */
    path_in(path, sizeof path, dir, "empty.bin");
    write_raw(path, good, 0);
    expect_open_error(path, (const char *[]){"empty", "0 bytes", NULL});

    /* truncated header */
    path_in(path, sizeof path, dir, "short_header.bin");
    write_raw(path, good, 500);
    expect_open_error(path, (const char *[]){"500 bytes", "shorter than the 1024-byte", NULL});

    /* truncated body: the header promises 10 tokens, 7 are there */
    path_in(path, sizeof path, dir, "short_body.bin");
    write_raw(path, good, len - 6);
    expect_open_error(path, (const char *[]){"expected 1044 bytes", "found 1038 bytes", "truncated"});

    /* extra bytes after the tokens */
    path_in(path, sizeof path, dir, "extra.bin");
    write_raw(path, big, len + 3);
    expect_open_error(path, (const char *[]){"expected 1044 bytes", "found 1047 bytes", "extra bytes"});

    /* header count does not match the body (12 tokens written, 10 claimed) */
    uint32_t tok12[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    size_t len12 = 0;
    unsigned char *b = llmc_bytes(20240520, 1, 10, tok12, 12, 2, &len12);
    path_in(path, sizeof path, dir, "count.bin");
    write_raw(path, b, len12);
    expect_open_error(path, (const char *[]){"10 tokens of 2 bytes", "found 1048 bytes", NULL});
    free(b);

    /* a version-2 body under a version-1 header */
    b = llmc_bytes(20240520, 1, 10, tok, 10, 4, &len12);
    path_in(path, sizeof path, dir, "width.bin");
    write_raw(path, b, len12);
    expect_open_error(path, (const char *[]){"expected 1044 bytes", "found 1064 bytes", NULL});
    free(b);

    /* wrong magic (llm.c's older model-file magic) */
    b = llmc_bytes(20240326, 1, 10, tok, 10, 2, &len12);
    path_in(path, sizeof path, dir, "magic.bin");
    write_raw(path, b, len12);
    expect_open_error(path, (const char *[]){"magic", "20240326", "expected 20240520"});
    free(b);

    /* unknown versions */
    b = llmc_bytes(20240520, 3, 10, tok, 10, 2, &len12);
    path_in(path, sizeof path, dir, "version3.bin");
    write_raw(path, b, len12);
    expect_open_error(path, (const char *[]){"version 3", "expected 1", NULL});
    free(b);
    b = llmc_bytes(20240520, 0, 10, tok, 10, 2, &len12);
    path_in(path, sizeof path, dir, "version0.bin");
    write_raw(path, b, len12);
    expect_open_error(path, (const char *[]){"version 0", NULL});
    free(b);

    /* negative count */
    b = llmc_bytes(20240520, 1, -10, tok, 10, 2, &len12);
    path_in(path, sizeof path, dir, "negative.bin");
    write_raw(path, b, len12);
    expect_open_error(path, (const char *[]){"negative token count -10", NULL});
    free(b);

    /* missing file, and a directory */
    path_in(path, sizeof path, dir, "missing.bin");
    expect_open_error(path, (const char *[]){"no such file", NULL});
    expect_open_error(dir, (const char *[]){"is a directory, not a token shard file", NULL});

    /* the good bytes still open (the cases above fail for their own reasons) */
    path_in(path, sizeof path, dir, "good.bin");
    write_raw(path, good, len);
    etm_error err = {{0}};
    etm_shard *s = etm_shard_open(path, ETM_SHARD_LOAD_AUTO, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    etm_shard_free(s);
    free(good);
    free(big);
    rm_tmpdir(dir);
}
END_TEST

/* ---- loader --------------------------------------------------------------------------------- */

/* Test data: shard i holds tokens i*100000 + j for j < len[i], so every token names its own shard
 * and offset. Shard 0 fits uint16 (version 1); the others are version 2. */
#define TAG 100000

static void write_tagged(const char *dir, const char *name, int shard, int n) {
    char path[512];
    path_in(path, sizeof path, dir, name);
    int32_t *t = malloc(((size_t)n + 1) * sizeof *t);
    for (int j = 0; j < n; j++) t[j] = shard * TAG + j;
    etm_error err = {{0}};
    ck_assert_msg(etm_shard_write(path, t, (size_t)n, &err) == 0, "%s", err.msg);
    free(t);
}

/* Three training shards (one too short for any window at T = 8) and a val shard beside them, written
 * out of order to show the glob is sorted. */
static const int SHARD_LEN[4] = {1001, 5, 700, 333};
static const char *SHARD_NAME[4] = {"train_000000.bin", "train_000001.bin", "train_000002.bin", "train_000003.bin"};

static void make_dataset(char *dir, size_t len, char *pattern, size_t plen) {
    test_tmpdir(dir, len);
    for (int i = 3; i >= 0; i--) write_tagged(dir, SHARD_NAME[i], i, SHARD_LEN[i]);
    write_tagged(dir, "val_000000.bin", 9, 400);
    snprintf(pattern, plen, "%s/train_*.bin", dir);
}

static uint64_t expected_windows(int T) {
    uint64_t w = 0;
    for (int i = 0; i < 4; i++) w += (uint64_t)(SHARD_LEN[i] - 1) / (uint64_t)T;
    return w;
}

/* Checks one batch's rows are windows of the tagged data (T+1 consecutive tokens starting at a
 * multiple of T, inside one shard, targets the inputs shifted by one) and returns their global
 * window numbers in ids[B]. */
static void check_batch(const int32_t *in, const int32_t *tg, int B, int T, uint64_t *ids) {
    for (int b = 0; b < B; b++) {
        const int32_t *x = in + (size_t)b * T, *y = tg + (size_t)b * T;
        int shard = x[0] / TAG, off = x[0] % TAG;
        ck_assert_int_ge(shard, 0);
        ck_assert_int_lt(shard, 4);
        ck_assert_int_eq(off % T, 0);
        ck_assert_int_le(off + T + 1, SHARD_LEN[shard]);
        for (int t = 0; t < T; t++) {
            ck_assert_int_eq(x[t], x[0] + t);
            ck_assert_int_eq(y[t], x[0] + t + 1);
        }
        uint64_t id = 0;
        for (int i = 0; i < shard; i++) id += (uint64_t)(SHARD_LEN[i] - 1) / (uint64_t)T;
        ids[b] = id + (uint64_t)(off / T);
    }
}

START_TEST(loader_counts_and_order_of_shards) {
    char dir[256], pattern[512];
    make_dataset(dir, sizeof dir, pattern, sizeof pattern);
    etm_error err = {{0}};
    etm_loader *ld = etm_loader_open(pattern, 4, 8, 1, 1, 0, &err);
    ck_assert_msg(ld != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_loader_n_shards(ld), 4);
    for (int i = 0; i < 4; i++) {
        char want[512];
        path_in(want, sizeof want, dir, SHARD_NAME[i]);
        ck_assert_str_eq(etm_loader_shard_path(ld, i), want);
    }
    ck_assert_uint_eq(etm_loader_n_tokens(ld), 1001 + 5 + 700 + 333);
    ck_assert_uint_eq(etm_loader_n_windows(ld), expected_windows(8));
    ck_assert_uint_eq(etm_loader_n_windows(ld), 125 + 0 + 87 + 41);
    etm_loader_free(ld);
    rm_tmpdir(dir);
}
END_TEST

/* Draws enough batches for `epochs` epochs and checks every window appears exactly once in each
 * epoch's span of the window stream; returns the stream (caller frees). */
static uint64_t *draw_stream(etm_loader *ld, int B, int T, int epochs, uint64_t *n_out) {
    uint64_t W = etm_loader_n_windows(ld);
    uint64_t n_batches = (W * (uint64_t)epochs + (uint64_t)B - 1) / (uint64_t)B;
    uint64_t *stream = malloc(n_batches * (uint64_t)B * sizeof *stream);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    etm_error err = {{0}};
    for (uint64_t k = 0; k < n_batches; k++) {
        ck_assert_msg(etm_loader_next(ld, in, tg, &err) == 0, "%s", err.msg);
        check_batch(in, tg, B, T, stream + k * B);
    }
    free(in);
    free(tg);
    *n_out = n_batches * (uint64_t)B;
    return stream;
}

START_TEST(loader_visits_every_window_once_per_epoch) {
    char dir[256], pattern[512];
    make_dataset(dir, sizeof dir, pattern, sizeof pattern);
    const int B = 7, T = 8; /* 253 windows: batches straddle epoch boundaries */
    etm_error err = {{0}};
    etm_loader *ld = etm_loader_open(pattern, B, T, 42, 1, 0, &err);
    ck_assert_msg(ld != NULL, "%s", err.msg);
    uint64_t W = etm_loader_n_windows(ld), n = 0;
    ck_assert_uint_ne(W % B, 0);
    uint64_t *s = draw_stream(ld, B, T, 3, &n);
    int *seen = calloc(W, sizeof *seen);
    for (int e = 0; e < 3; e++) {
        memset(seen, 0, W * sizeof *seen);
        uint64_t in_place = 0;
        for (uint64_t i = 0; i < W; i++) {
            uint64_t w = s[e * W + i];
            ck_assert_uint_lt(w, W);
            seen[w]++;
            in_place += w == i;
        }
        for (uint64_t w = 0; w < W; w++) ck_assert_int_eq(seen[w], 1);
        ck_assert_uint_lt(in_place, W / 10); /* shuffled, not sequential */
    }
    /* Each epoch has its own order. */
    ck_assert_int_ne(memcmp(s, s + W, W * sizeof *s), 0);
    ck_assert_int_ne(memcmp(s + W, s + 2 * W, W * sizeof *s), 0);
    etm_loader_pos pos;
    etm_loader_get_pos(ld, &pos);
    ck_assert_uint_eq(pos.epoch * W + pos.index, n);
    free(seen);
    free(s);
    etm_loader_free(ld);
    rm_tmpdir(dir);
}
END_TEST

START_TEST(loader_is_deterministic_in_the_seed) {
    char dir[256], pattern[512];
    make_dataset(dir, sizeof dir, pattern, sizeof pattern);
    etm_error err = {{0}};
    uint64_t n1, n2, n3;
    etm_loader *a = etm_loader_open(pattern, 5, 8, 1234, 1, 0, &err);
    etm_loader *b = etm_loader_open(pattern, 5, 8, 1234, 1, 0, &err);
    etm_loader *c = etm_loader_open(pattern, 5, 8, 1235, 1, 0, &err);
    ck_assert_msg(a && b && c, "%s", err.msg);
    uint64_t *sa = draw_stream(a, 5, 8, 2, &n1), *sb = draw_stream(b, 5, 8, 2, &n2),
             *sc = draw_stream(c, 5, 8, 2, &n3);
    ck_assert_uint_eq(n1, n2);
    ck_assert_int_eq(memcmp(sa, sb, n1 * sizeof *sa), 0);
    uint64_t same = 0;
    for (uint64_t i = 0; i < n1; i++) same += sa[i] == sc[i];
    ck_assert_uint_lt(same, n1 / 10);
    free(sa);
    free(sb);
    free(sc);
    etm_loader_free(a);
    etm_loader_free(b);
    etm_loader_free(c);
    rm_tmpdir(dir);
}
END_TEST

/* Saves the position after k batches, restores it in a fresh loader opened with another seed, and
 * compares the next m batches token for token. */
static void check_resume(const char *pattern, int B, int T, int shuffle, int k, int m) {
    etm_error err = {{0}};
    etm_loader *a = etm_loader_open(pattern, B, T, 777, shuffle, 0, &err);
    ck_assert_msg(a != NULL, "%s", err.msg);
    size_t n = (size_t)B * T;
    int32_t *ia = malloc(n * sizeof *ia), *ta = malloc(n * sizeof *ta);
    int32_t *ib = malloc(n * sizeof *ib), *tb = malloc(n * sizeof *tb);
    for (int i = 0; i < k; i++) ck_assert_int_eq(etm_loader_next(a, ia, ta, &err), 0);
    etm_loader_pos pos, back;
    etm_loader_get_pos(a, &pos);
    int64_t packed[ETM_LOADER_POS_LEN];
    etm_loader_pos_pack(&pos, packed);
    etm_loader_pos_unpack(packed, &back);
    etm_loader *b = etm_loader_open(pattern, B, T, 1, shuffle, 0, &err);
    ck_assert_msg(b != NULL, "%s", err.msg);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(etm_loader_next(b, ib, tb, &err), 0); /* move it off */
    ck_assert_msg(etm_loader_set_pos(b, &back, &err) == 0, "%s", err.msg);
    for (int i = 0; i < m; i++) {
        ck_assert_int_eq(etm_loader_next(a, ia, ta, &err), 0);
        ck_assert_int_eq(etm_loader_next(b, ib, tb, &err), 0);
        ck_assert_int_eq(memcmp(ia, ib, n * sizeof *ia), 0);
        ck_assert_int_eq(memcmp(ta, tb, n * sizeof *ta), 0);
    }
    etm_loader_get_pos(a, &pos);
    etm_loader_get_pos(b, &back);
    ck_assert_int_eq(memcmp(&pos, &back, sizeof pos), 0);
    free(ia);
    free(ta);
    free(ib);
    free(tb);
    etm_loader_free(a);
    etm_loader_free(b);
}

START_TEST(loader_resumes_exactly) {
    char dir[256], pattern[512];
    make_dataset(dir, sizeof dir, pattern, sizeof pattern);
    /* 253 windows at T = 8 and B = 7: 36 batches fill 252 windows, batch 37 straddles epochs. */
    check_resume(pattern, 7, 8, 1, 5, 80);  /* mid-epoch, then across two boundaries */
    check_resume(pattern, 7, 8, 1, 36, 10); /* saved just before the straddling batch */
    check_resume(pattern, 7, 8, 1, 37, 10); /* saved just after it, in epoch 1 */
    check_resume(pattern, 11, 23, 1, 0, 30); /* from the very start */
    check_resume(pattern, 7, 8, 0, 20, 60); /* validation mode */
    rm_tmpdir(dir);
}
END_TEST

START_TEST(loader_pos_packs_into_int64s) {
    etm_loader_pos p = {3, 17, UINT64_MAX - 5, 253}, q;
    int64_t v[ETM_LOADER_POS_LEN];
    etm_loader_pos_pack(&p, v);
    ck_assert_int_eq(v[0], 3);
    ck_assert_int_eq(v[1], 17);
    ck_assert_int_eq(v[3], 253);
    etm_loader_pos_unpack(v, &q);
    ck_assert_uint_eq(q.seed, UINT64_MAX - 5);
    ck_assert_int_eq(memcmp(&p, &q, sizeof p), 0);
}
END_TEST

START_TEST(loader_set_pos_rejects_other_data) {
    char dir[256], pattern[512];
    make_dataset(dir, sizeof dir, pattern, sizeof pattern);
    etm_error err = {{0}};
    etm_loader *a = etm_loader_open(pattern, 4, 8, 5, 1, 0, &err);
    etm_loader *b = etm_loader_open(pattern, 4, 16, 5, 1, 0, &err);
    ck_assert_msg(a && b, "%s", err.msg);
    etm_loader_pos pos, before, after;
    etm_loader_get_pos(a, &pos);
    etm_loader_get_pos(b, &before);
    ck_assert_int_ne(etm_loader_set_pos(b, &pos, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "253 windows"));
    ck_assert_ptr_nonnull(strstr(err.msg, dir));
    etm_loader_get_pos(b, &after);
    ck_assert_int_eq(memcmp(&before, &after, sizeof before), 0);
    pos.index = pos.n_windows;
    ck_assert_int_ne(etm_loader_set_pos(a, &pos, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    etm_loader_free(a);
    etm_loader_free(b);
    rm_tmpdir(dir);
}
END_TEST

START_TEST(loader_validation_order_and_reset) {
    char dir[256], pattern[512];
    make_dataset(dir, sizeof dir, pattern, sizeof pattern);
    const int B = 6, T = 8;
    etm_error err = {{0}};
    etm_loader *ld = etm_loader_open(pattern, B, T, 99, 0, 0, &err);
    ck_assert_msg(ld != NULL, "%s", err.msg);
    uint64_t W = etm_loader_n_windows(ld), n = 0;
    uint64_t *s = draw_stream(ld, B, T, 2, &n);
    for (uint64_t i = 0; i < n; i++) ck_assert_uint_eq(s[i], i % W); /* in order, wrapping */
    /* The first windows cross from shard 0 to shard 2 (shard 1 has none). */
    ck_assert_uint_eq(s[124], 124);
    etm_loader_reset(ld);
    int32_t in[6 * 8], tg[6 * 8];
    uint64_t ids[6];
    ck_assert_int_eq(etm_loader_next(ld, in, tg, &err), 0);
    check_batch(in, tg, B, T, ids);
    for (int b = 0; b < B; b++) ck_assert_uint_eq(ids[b], (uint64_t)b);
    ck_assert_int_eq(in[0], 0);
    ck_assert_int_eq(tg[T - 1], T);
    etm_loader_pos pos;
    etm_loader_get_pos(ld, &pos);
    ck_assert_uint_eq(pos.epoch, 0);
    ck_assert_uint_eq(pos.index, (uint64_t)B);
    free(s);
    etm_loader_free(ld);
    rm_tmpdir(dir);
}
END_TEST

START_TEST(loader_rejects_tokens_outside_vocab) {
    char dir[256], path[512], pattern[512];
    test_tmpdir(dir, sizeof dir);
    path_in(path, sizeof path, dir, "train_000000.bin");
    int32_t tok[200];
    for (int i = 0; i < 200; i++) tok[i] = i % 100;
    tok[133] = 500;
    etm_error err = {{0}};
    ck_assert_int_eq(etm_shard_write(path, tok, 200, &err), 0);
    snprintf(pattern, sizeof pattern, "%s/train_*.bin", dir);
    int32_t in[2 * 10], tg[2 * 10];

    etm_loader *ok = etm_loader_open(pattern, 2, 10, 0, 0, 501, &err);
    ck_assert_msg(ok != NULL, "%s", err.msg);
    for (int i = 0; i < 20; i++) ck_assert_int_eq(etm_loader_next(ok, in, tg, &err), 0);
    etm_loader_free(ok);

    etm_loader *ld = etm_loader_open(pattern, 2, 10, 0, 0, 500, &err);
    ck_assert_msg(ld != NULL, "%s", err.msg);
    /* windows start at 0, 10, ..., so the bad token is in window 13 only, the second row of batch 6:
     * the first row is read before the error, yet the position must not move */
    for (int i = 0; i < 6; i++) ck_assert_int_eq(etm_loader_next(ld, in, tg, &err), 0);
    etm_loader_pos before, after;
    etm_loader_get_pos(ld, &before);
    ck_assert_int_ne(etm_loader_next(ld, in, tg, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_nonnull(strstr(err.msg, "offset 133"));
    ck_assert_ptr_nonnull(strstr(err.msg, "500"));
    etm_loader_get_pos(ld, &after);
    ck_assert_int_eq(memcmp(&before, &after, sizeof before), 0);
    etm_loader_free(ld);
    rm_tmpdir(dir);
}
END_TEST

START_TEST(loader_open_errors) {
    char dir[256], pattern[512], path[512];
    test_tmpdir(dir, sizeof dir);
    etm_error err = {{0}};
    snprintf(pattern, sizeof pattern, "%s/nothing_*.bin", dir);
    ck_assert_ptr_null(etm_loader_open(pattern, 2, 4, 0, 1, 0, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, pattern));
    ck_assert_ptr_nonnull(strstr(err.msg, "no token shard matches"));
    path_in(path, sizeof path, dir, "absent.bin");
    ck_assert_ptr_null(etm_loader_open(path, 2, 4, 0, 1, 0, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, path));

    /* Too few tokens for one window of T+1. */
    write_tagged(dir, "tiny_0.bin", 0, 4);
    write_tagged(dir, "tiny_1.bin", 0, 4);
    snprintf(pattern, sizeof pattern, "%s/tiny_*.bin", dir);
    ck_assert_ptr_null(etm_loader_open(pattern, 2, 4, 0, 1, 0, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "8 tokens"));
    etm_loader *ld = etm_loader_open(pattern, 2, 3, 0, 1, 0, &err); /* T = 3: one window each */
    ck_assert_msg(ld != NULL, "%s", err.msg);
    ck_assert_uint_eq(etm_loader_n_windows(ld), 2);
    etm_loader_free(ld);

    /* A corrupt shard among good ones is named. */
    write_tagged(dir, "mix_0.bin", 0, 100);
    path_in(path, sizeof path, dir, "mix_1.bin");
    write_raw(path, "not a shard", 11);
    snprintf(pattern, sizeof pattern, "%s/mix_*.bin", dir);
    ck_assert_ptr_null(etm_loader_open(pattern, 2, 4, 0, 1, 0, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_null(etm_loader_open(pattern, 0, 4, 0, 1, 0, &err));
    rm_tmpdir(dir);
}
END_TEST

/* ---- prepare -------------------------------------------------------------------------------- */

/* A small tokenizer built in memory: bytes, three merges, EOT = 259. */
static etm_tokenizer *small_tokenizer(void) {
    static const char merges[] = "#version: 0.2\nt h\nth e\n\xc4\xa0 the\n";
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_from_merges(merges, sizeof merges - 1, "small merges", &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 260);
    return tok;
}

/* All tokens of DIR/SPLIT_*.bin in order; checks every shard but the last is full. */
static int32_t *read_split(const char *dir, const char *split, uint64_t shard_tokens, int n_shards, size_t *n) {
    int32_t *all = NULL;
    *n = 0;
    for (int i = 0; i < n_shards; i++) {
        char path[1024];
        etm_prepare_shard_path(path, sizeof path, dir, split, i);
        etm_error err = {{0}};
        etm_shard *s = etm_shard_open(path, ETM_SHARD_LOAD_AUTO, &err);
        ck_assert_msg(s != NULL, "%s", err.msg);
        size_t m = etm_shard_n_tokens(s);
        if (i + 1 < n_shards) ck_assert_uint_eq(m, shard_tokens);
        ck_assert_uint_le(m, shard_tokens);
        all = realloc(all, (*n + m + 1) * sizeof *all);
        ck_assert_int_eq(etm_shard_read(s, 0, m, 0, all + *n, &err), 0);
        *n += m;
        etm_shard_free(s);
    }
    char extra[1024];
    etm_prepare_shard_path(extra, sizeof extra, dir, split, n_shards);
    ck_assert_int_ne(access(extra, F_OK), 0); /* no shard past the count */
    return all;
}

/* Splits a stream at its EOTs: starts[d] and lens[d] of document d's tokens after its EOT. */
static int split_docs(const int32_t *t, size_t n, int32_t eot, size_t *starts, size_t *lens, int max) {
    int d = -1;
    for (size_t i = 0; i < n; i++) {
        if (t[i] == eot) {
            ck_assert_int_lt(d + 1, max);
            starts[++d] = i + 1;
            lens[d] = 0;
        } else {
            ck_assert_int_ge(d, 0); /* the stream starts with an EOT */
            lens[d]++;
        }
    }
    return d + 1;
}

static char *decode(const etm_tokenizer *tok, const int32_t *ids, size_t n, size_t *len) {
    etm_error err = {{0}};
    char *s = etm_tokenizer_decode(tok, ids, n, len, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    return s;
}

static void write_text(const char *path, const char *text) { write_raw(path, text, strlen(text)); }

typedef struct {
    int calls;
    uint64_t train, val;
} file_log;

static void log_file(void *ctx, const char *path, uint64_t train, uint64_t val) {
    file_log *l = ctx;
    (void)path;
    l->calls++;
    l->train += train;
    l->val += val;
}

START_TEST(prepare_splits_each_document) {
    char dir[256], out[512], a[512], b[512];
    test_tmpdir(dir, sizeof dir);
    path_in(a, sizeof a, dir, "a.txt");
    path_in(b, sizeof b, dir, "b.txt");
    path_in(out, sizeof out, dir, "out");
    /* Two documents of different lengths and content. */
    size_t cap = 1 << 14;
    char *ta = calloc(1, cap), *tb = calloc(1, cap);
    for (int i = 0; i < 60; i++) {
        size_t k = strlen(ta);
        snprintf(ta + k, cap - k, "Line %d: the theory of the thing, then the other.\n", i);
    }
    for (int i = 0; i < 25; i++) {
        size_t k = strlen(tb);
        snprintf(tb + k, cap - k, "%d bottles... \xc2\xa3%d, thither!\n", 99 - i, i * 7);
    }
    write_text(a, ta);
    write_text(b, tb);
    etm_tokenizer *tok = small_tokenizer();
    int32_t eot = etm_tokenizer_eot(tok);
    size_t na = 0, nb = 0;
    int32_t *ea = etm_tokenizer_encode(tok, ta, strlen(ta), &na), *eb = etm_tokenizer_encode(tok, tb, strlen(tb), &nb);

    etm_prepare_opts opts;
    etm_prepare_defaults(&opts);
    opts.val_fraction = 0.25;
    opts.shard_tokens = 300;
    file_log log = {0, 0, 0};
    opts.on_file = log_file;
    opts.ctx = &log;
    etm_prepare_stats st;
    etm_error err = {{0}};
    const char *files[2] = {a, b};
    ck_assert_msg(etm_prepare(tok, files, 2, out, &opts, &st, &err) == 0, "%s", err.msg);

    size_t va = (size_t)floor(0.25 * (double)na + 0.5), vb = (size_t)floor(0.25 * (double)nb + 0.5);
    ck_assert_int_eq(st.n_files, 2);
    ck_assert_uint_eq(st.train_tokens, 2 + (na - va) + (nb - vb));
    ck_assert_uint_eq(st.val_tokens, 2 + va + vb);
    ck_assert_int_eq(st.n_train_shards, (int)((st.train_tokens + 299) / 300));
    ck_assert_int_gt(st.n_train_shards, 2);
    ck_assert_int_eq(log.calls, 2);
    ck_assert_uint_eq(log.train, st.train_tokens);
    ck_assert_uint_eq(log.val, st.val_tokens);

    size_t n_train = 0, n_val = 0;
    int32_t *tr = read_split(out, "train", 300, st.n_train_shards, &n_train);
    int32_t *vl = read_split(out, "val", 300, st.n_val_shards, &n_val);
    ck_assert_uint_eq(n_train, st.train_tokens);
    ck_assert_uint_eq(n_val, st.val_tokens);
    size_t ts[3], tl[3], vs[3], vlen[3];
    ck_assert_int_eq(split_docs(tr, n_train, eot, ts, tl, 3), 2);
    ck_assert_int_eq(split_docs(vl, n_val, eot, vs, vlen, 3), 2);
    /* Train holds each document's head, val its tail: together exactly the document's tokens. */
    ck_assert_uint_eq(tl[0], na - va);
    ck_assert_uint_eq(vlen[0], va);
    ck_assert_uint_eq(tl[1], nb - vb);
    ck_assert_uint_eq(vlen[1], vb);
    ck_assert_int_eq(memcmp(tr + ts[0], ea, tl[0] * sizeof *ea), 0);
    ck_assert_int_eq(memcmp(vl + vs[0], ea + tl[0], va * sizeof *ea), 0);
    ck_assert_int_eq(memcmp(tr + ts[1], eb, tl[1] * sizeof *eb), 0);
    ck_assert_int_eq(memcmp(vl + vs[1], eb + tl[1], vb * sizeof *eb), 0);
    /* And decoding head + tail gives back the text. */
    size_t l1, l2;
    char *h = decode(tok, tr + ts[1], tl[1], &l1), *t = decode(tok, vl + vs[1], vlen[1], &l2);
    ck_assert_uint_eq(l1 + l2, strlen(tb));
    ck_assert_int_eq(memcmp(h, tb, l1), 0);
    ck_assert_int_eq(memcmp(t, tb + l1, l2), 0);
    free(h);
    free(t);

    /* The loader reads what prepare wrote, within the vocabulary. */
    char pattern[600];
    snprintf(pattern, sizeof pattern, "%s/train_*.bin", out);
    etm_loader *ld = etm_loader_open(pattern, 4, 16, 3, 1, etm_tokenizer_vocab_size(tok), &err);
    ck_assert_msg(ld != NULL, "%s", err.msg);
    ck_assert_uint_eq(etm_loader_n_tokens(ld), n_train);
    int32_t in[4 * 16], tg[4 * 16];
    for (int i = 0; i < 20; i++) ck_assert_msg(etm_loader_next(ld, in, tg, &err) == 0, "%s", err.msg);
    etm_loader_free(ld);

    /* A second run into the same directory is refused, then allowed with force; fewer, larger
     * shards replace the old ones and the stale higher-numbered ones are gone. */
    opts.on_file = NULL;
    ck_assert_int_ne(etm_prepare(tok, files, 2, out, &opts, &st, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, out));
    ck_assert_ptr_nonnull(strstr(err.msg, "--force"));
    opts.force = 1;
    opts.shard_tokens = 100000;
    opts.val_fraction = 0.0;
    ck_assert_msg(etm_prepare(tok, files, 2, out, &opts, &st, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(st.n_train_shards, 1);
    ck_assert_int_eq(st.n_val_shards, 0);
    ck_assert_uint_eq(st.train_tokens, 2 + na + nb);
    ck_assert_uint_eq(st.val_tokens, 0);
    free(read_split(out, "train", 100000, 1, &n_train));
    free(read_split(out, "val", 100000, 0, &n_val));

    /* Bad inputs. */
    const char *missing[2] = {a, "no/such/file.txt"};
    ck_assert_int_ne(etm_prepare(tok, missing, 2, out, &opts, &st, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "no/such/file.txt"));
    opts.val_fraction = 1.0;
    ck_assert_int_ne(etm_prepare(tok, files, 2, out, &opts, &st, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "fraction"));

    free(tr);
    free(vl);
    free(ea);
    free(eb);
    free(ta);
    free(tb);
    etm_tokenizer_free(tok);
    rm_tmpdir(dir);
}
END_TEST

START_TEST(prepare_austen_corpus) {
    /* The bundled novels with the shipped austen tokenizer: every novel in both sets, the loader
     * reads the result within the vocabulary. */
    static const char *novels[6] = {"emma", "mansfield_park", "northanger_abbey", "persuasion",
                                    "pride_and_prejudice", "sense_and_sensibility"};
    char paths[6][1024], data[1024];
    const char *files[6];
    etm_data_dir(data, sizeof data); /* as etmoe finds it: $ETM_DATA_DIR, else the source tree's */
    for (int i = 0; i < 6; i++) {
        int n = snprintf(paths[i], sizeof paths[i], "%s/austen/%s.txt", data, novels[i]);
        ck_assert(n > 0 && (size_t)n < sizeof paths[i]);
        files[i] = paths[i];
    }
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_load("austen", &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    uint64_t want_train = 0, want_val = 0;
    for (int i = 0; i < 6; i++) {
        size_t len = 0, n = 0;
        char *text = etm_read_file(files[i], &len, &err);
        ck_assert_msg(text != NULL, "%s", err.msg);
        ck_assert_uint_gt(len, 400000);
        free(etm_tokenizer_encode(tok, text, len, &n));
        free(text);
        size_t v = (size_t)floor(0.1 * (double)n + 0.5);
        want_train += 1 + n - v;
        want_val += 1 + v;
    }
    char dir[256], out[512], pattern[600];
    test_tmpdir(dir, sizeof dir);
    path_in(out, sizeof out, dir, "austen");
    etm_prepare_opts opts;
    etm_prepare_defaults(&opts);
    etm_prepare_stats st;
    ck_assert_msg(etm_prepare(tok, files, 6, out, &opts, &st, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(st.n_files, 6);
    ck_assert_uint_eq(st.train_tokens, want_train);
    ck_assert_uint_eq(st.val_tokens, want_val);
    ck_assert_int_eq(st.n_train_shards, 1);
    ck_assert_int_eq(st.n_val_shards, 1);
    int32_t eot = etm_tokenizer_eot(tok);
    for (int split = 0; split < 2; split++) {
        size_t n = 0;
        int32_t *t = read_split(out, split ? "val" : "train", opts.shard_tokens, 1, &n);
        size_t starts[7], lens[7];
        ck_assert_int_eq(split_docs(t, n, eot, starts, lens, 7), 6);
        for (int d = 0; d < 6; d++) ck_assert_uint_gt(lens[d], 10000);
        free(t);
    }
    snprintf(pattern, sizeof pattern, "%s/val_*.bin", out);
    etm_loader *ld = etm_loader_open(pattern, 8, 256, 0, 0, etm_tokenizer_vocab_size(tok), &err);
    ck_assert_msg(ld != NULL, "%s", err.msg);
    ck_assert_uint_eq(etm_loader_n_windows(ld), (want_val - 1) / 256);
    int32_t in[8 * 256], tg[8 * 256];
    uint64_t batches = etm_loader_n_windows(ld) / 8;
    for (uint64_t i = 0; i < batches; i++) ck_assert_msg(etm_loader_next(ld, in, tg, &err) == 0, "%s", err.msg);
    etm_loader_free(ld);
    etm_tokenizer_free(tok);
    rm_tmpdir(dir);
}
END_TEST

/* Runs a shell command with output to files in dir; returns its exit status. */
static int run_cmd(const char *dir, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "./etmoe prepare %s >%s/stdout 2>%s/stderr", args, dir, dir);
    int rc = system(cmd);
    ck_assert_msg(rc != -1 && WIFEXITED(rc), "could not run: %s", cmd);
    return WEXITSTATUS(rc);
}

static int output_has(const char *dir, const char *stream, const char *needle) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, stream);
    etm_error err = {{0}};
    char *text = etm_read_file(path, NULL, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    int found = strstr(text, needle) != NULL;
    if (!found) fprintf(stderr, "'%s' not in %s:\n%s\n", needle, stream, text);
    free(text);
    return found;
}

START_TEST(prepare_command_line) {
    ck_assert_msg(access("./etmoe", X_OK) == 0, "./etmoe not built (tests run in the build directory)");
    char dir[256], text[512], args[2048];
    test_tmpdir(dir, sizeof dir);
    path_in(text, sizeof text, dir, "doc.txt");
    write_text(text, "It is a truth universally acknowledged, that a single man in possession\n"
                     "of a good fortune, must be in want of a wife.\n");

    ck_assert_int_eq(run_cmd(dir, "--help"), 0);
    ck_assert(output_has(dir, "stdout", "--val-fraction"));
    ck_assert_int_eq(run_cmd(dir, "--bogus"), 2);
    ck_assert(output_has(dir, "stderr", "unknown option '--bogus'"));
    snprintf(args, sizeof args, "--tokenizer austen --out %s/o", dir);
    ck_assert_int_eq(run_cmd(dir, args), 2);
    ck_assert(output_has(dir, "stderr", "no input files"));
    snprintf(args, sizeof args, "--tokenizer austen %s", text);
    ck_assert_int_eq(run_cmd(dir, args), 2);
    ck_assert(output_has(dir, "stderr", "--out"));
    snprintf(args, sizeof args, "--tokenizer austen --out %s/o %s %s/missing.txt", dir, text, dir);
    ck_assert_int_eq(run_cmd(dir, args), 2);
    ck_assert(output_has(dir, "stderr", "missing.txt"));
    snprintf(args, sizeof args, "--tokenizer austen --out %s/o --val-fraction 1.5 %s", dir, text);
    ck_assert_int_eq(run_cmd(dir, args), 2);
    ck_assert(output_has(dir, "stderr", "--val-fraction '1.5'"));
    snprintf(args, sizeof args, "--tokenizer austen --out %s/o --shard-tokens 0 %s", dir, text);
    ck_assert_int_eq(run_cmd(dir, args), 2);
    snprintf(args, sizeof args, "--tokenizer no_such_tokenizer --out %s/o %s", dir, text);
    ck_assert_int_eq(run_cmd(dir, args), 2);
    ck_assert(output_has(dir, "stderr", "no_such_tokenizer"));
    snprintf(args, sizeof args, "--tokenizer austen --out=%s/o --val-fraction=0.5 %s", dir, text);
    ck_assert_int_eq(run_cmd(dir, args), 0);
    ck_assert(output_has(dir, "stdout", "train_000000.bin"));
    ck_assert(output_has(dir, "stdout", "val_000000.bin"));
    /* Again without --force: refused as a failure (1), the shards untouched. */
    ck_assert_int_eq(run_cmd(dir, args), 1);
    ck_assert(output_has(dir, "stderr", "--force"));
    char shard[1024];
    snprintf(shard, sizeof shard, "%s/o/val_000000.bin", dir);
    etm_error err = {{0}};
    etm_shard *s = etm_shard_open(shard, ETM_SHARD_LOAD_AUTO, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    ck_assert_uint_gt(etm_shard_n_tokens(s), 5);
    etm_shard_free(s);
    rm_tmpdir(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("data");
    TCase *sh = tcase_create("shard");
    tcase_add_test(sh, shard_v1_round_trip);
    tcase_add_test(sh, shard_v2_round_trip);
    tcase_add_test(sh, shard_empty_round_trip);
    tcase_add_test(sh, shard_reads_llmc_file);
    tcase_add_test(sh, shard_write_refuses_negative_ids);
    tcase_add_test(sh, shard_corruptions_are_named);
    suite_add_tcase(s, sh);
    TCase *lo = tcase_create("loader");
    tcase_add_test(lo, loader_counts_and_order_of_shards);
    tcase_add_test(lo, loader_visits_every_window_once_per_epoch);
    tcase_add_test(lo, loader_is_deterministic_in_the_seed);
    tcase_add_test(lo, loader_resumes_exactly);
    tcase_add_test(lo, loader_pos_packs_into_int64s);
    tcase_add_test(lo, loader_set_pos_rejects_other_data);
    tcase_add_test(lo, loader_validation_order_and_reset);
    tcase_add_test(lo, loader_rejects_tokens_outside_vocab);
    tcase_add_test(lo, loader_open_errors);
    suite_add_tcase(s, lo);
    TCase *pr = tcase_create("prepare");
    tcase_add_test(pr, prepare_splits_each_document);
    tcase_add_test(pr, prepare_austen_corpus);
    tcase_add_test(pr, prepare_command_line);
    suite_add_tcase(s, pr);
    return test_run_suite(s);
}
