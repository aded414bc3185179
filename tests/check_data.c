/* check_data.c: tests of the data pipeline: token shards (round trips in both versions, byte
 * layout, every kind of corrupt file), the batch loader (windows, shuffling, determinism,
 * multi-shard globs, exact resume, validation order, vocabulary checks). */
#include "common.h"
#include "loader.h"
#include "shard.h"
#include "testutil.h"

#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>

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

/* Removes a test's temp directory and the files in it (tests make no subdirectories). */
static void rm_tmpdir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        path_in(path, sizeof path, dir, e->d_name);
        remove(path);
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
    expect_open_error(path, (const char *[]){"cannot open", NULL});
    expect_open_error(dir, (const char *[]){"not a regular file", NULL});

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
    return test_run_suite(s);
}
