/* check_safetensors.c: tests of the safetensors writer and reader: round trips of every dtype
 * etmoe writes, byte-identical output whatever the order tensors are added in, the exact bytes of a
 * tiny file checked by hand against the format's specification, readability by Python (the
 * safetensors package when installed, else an independent reader using only Python's standard
 * library), and rejection of every kind of corrupt file with a message naming file and tensor. */
#include "common.h"
#include "safetensors.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>

#define ASSERT_MSG_HAS(err, s) \
    ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' lacks '%s'", (err).msg, (s))

static char *tmp_path(char *buf, size_t len, const char *file) {
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    snprintf(buf, len, "%s/%s", dir, file);
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* A raw file: the given header length (or strlen(header) when hlen < 0), header, then data_len
 * bytes 0, 1, 2, ... */
static void write_raw(const char *path, long long hlen, const char *header, size_t data_len) {
    size_t n = strlen(header);
    uint64_t len = hlen < 0 ? (uint64_t)n : (uint64_t)hlen;
    unsigned char *buf = malloc(8 + n + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(len >> (8 * i));
    memcpy(buf + 8, header, n);
    for (size_t i = 0; i < data_len; i++) buf[8 + n + i] = (unsigned char)i;
    write_bytes(path, buf, 8 + n + data_len);
    free(buf);
}

/* The tensors of the round-trip tests, in one struct. */
typedef struct {
    float f[12];
    int64_t i64[3];
    int32_t i32[8];
    uint8_t u8[5];
    float scalar;
} sample;

static void fill_sample(sample *s) {
    for (int i = 0; i < 12; i++) s->f[i] = (float)i * 0.37f - 2.0f;
    s->f[5] = -0.0f;
    s->f[6] = 1e-45f;
    s->f[7] = INFINITY;
    s->i64[0] = INT64_MIN;
    s->i64[1] = 42;
    s->i64[2] = INT64_MAX;
    for (int i = 0; i < 8; i++) s->i32[i] = (i - 4) * 1000003;
    for (int i = 0; i < 5; i++) s->u8[i] = (uint8_t)(250 + i);
    s->scalar = 3.25f;
}

/* Adds the sample's tensors (and metadata) to w in one of two orders. */
static void add_sample(etm_st_writer *w, const sample *s, int reversed) {
    etm_error err = {{0}};
    const int64_t sf[2] = {3, 4}, si64[1] = {3}, si32[3] = {2, 2, 2}, su8[1] = {5}, sempty[2] = {0, 7};
    for (int k = 0; k < 6; k++) {
        int which = reversed ? 5 - k : k;
        int rc = 0;
        switch (which) {
        case 0: rc = etm_st_add(w, "layers.0.attn.qkv", ETM_ST_F32, 2, sf, s->f, &err); break;
        case 1: rc = etm_st_add(w, "loader.pos", ETM_ST_I64, 1, si64, s->i64, &err); break;
        case 2: rc = etm_st_add_copy(w, "counts", ETM_ST_I32, 3, si32, s->i32, &err); break;
        case 3: rc = etm_st_add(w, "mask", ETM_ST_U8, 1, su8, s->u8, &err); break;
        case 4: rc = etm_st_add(w, "lr", ETM_ST_F32, 0, NULL, &s->scalar, &err); break;
        case 5: rc = etm_st_add(w, "empty", ETM_ST_F32, 2, sempty, NULL, &err); break;
        }
        ck_assert_msg(rc == 0, "%s", err.msg);
    }
    const char *meta[][2] = {{"config", "d_model = 192\nrouter = et\n"},
                             {"format", "etmoe-checkpoint-1"},
                             {"note", "quotes \" and \\ and unicode: \xc2\xa3 \xe2\x82\xac"}};
    for (int k = 0; k < 3; k++) {
        int which = reversed ? 2 - k : k;
        ck_assert_int_eq(etm_st_set_metadata(w, meta[which][0], meta[which][1], &err), 0);
    }
}

START_TEST(round_trip_every_dtype) {
    sample s;
    fill_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "a.safetensors");
    etm_error err = {{0}};
    etm_st_writer *w = etm_st_writer_create();
    add_sample(w, &s, 0);
    ck_assert_msg(etm_st_write(w, path, &err) == 0, "%s", err.msg);
    etm_st_writer_free(w);

    etm_st_file *f = etm_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_st_count(f), 6);
    const char *sorted[] = {"counts", "empty", "layers.0.attn.qkv", "loader.pos", "lr", "mask"};
    for (int i = 0; i < 6; i++) ck_assert_str_eq(etm_st_tensor_at(f, i)->name, sorted[i]);
    ck_assert_ptr_null(etm_st_tensor_at(f, 6));
    ck_assert_str_eq(etm_st_metadata(f, "format"), "etmoe-checkpoint-1");
    ck_assert_str_eq(etm_st_metadata(f, "config"), "d_model = 192\nrouter = et\n");
    ck_assert_str_eq(etm_st_metadata(f, "note"), "quotes \" and \\ and unicode: \xc2\xa3 \xe2\x82\xac");
    ck_assert_ptr_null(etm_st_metadata(f, "missing"));
    const etm_st_tensor *t = etm_st_find(f, "layers.0.attn.qkv");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, ETM_ST_F32);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 3);
    ck_assert_int_eq(t->shape[1], 4);
    ck_assert_uint_eq(t->end - t->begin, 48);

    sample r;
    memset(&r, 0x5a, sizeof r);
    const int64_t sf[2] = {3, 4}, si64[1] = {3}, si32[3] = {2, 2, 2}, su8[1] = {5}, sempty[2] = {0, 7};
    ck_assert_msg(etm_st_read(f, "layers.0.attn.qkv", ETM_ST_F32, 2, sf, r.f, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_st_read(f, "loader.pos", ETM_ST_I64, 1, si64, r.i64, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_st_read(f, "counts", ETM_ST_I32, 3, si32, r.i32, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_st_read(f, "mask", ETM_ST_U8, 1, su8, r.u8, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_st_read(f, "lr", ETM_ST_F32, 0, NULL, &r.scalar, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_st_read(f, "empty", ETM_ST_F32, 2, sempty, NULL, &err) == 0, "%s", err.msg);
    ck_assert(memcmp(r.f, s.f, sizeof s.f) == 0); /* bit-exact, -0 and denormals included */
    ck_assert(memcmp(r.i64, s.i64, sizeof s.i64) == 0);
    ck_assert(memcmp(r.i32, s.i32, sizeof s.i32) == 0);
    ck_assert(memcmp(r.u8, s.u8, sizeof s.u8) == 0);
    ck_assert(r.scalar == s.scalar);
    etm_st_close(f);
}
END_TEST

START_TEST(output_is_byte_identical_whatever_the_order) {
    sample s;
    fill_sample(&s);
    char a[512], b[512];
    tmp_path(a, sizeof a, "a.safetensors");
    tmp_path(b, sizeof b, "b.safetensors");
    etm_error err = {{0}};
    for (int rev = 0; rev < 2; rev++) {
        etm_st_writer *w = etm_st_writer_create();
        add_sample(w, &s, rev);
        ck_assert_msg(etm_st_write(w, rev ? b : a, &err) == 0, "%s", err.msg);
        etm_st_writer_free(w);
    }
    size_t la, lb;
    char *x = etm_read_file(a, &la, &err), *y = etm_read_file(b, &lb, &err);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    ck_assert_uint_eq(la, lb);
    ck_assert(memcmp(x, y, la) == 0);
    /* The header is padded to 8 bytes so the data section starts aligned. */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | (unsigned char)x[i];
    ck_assert_uint_eq(hlen % 8, 0);
    /* Writing again over the same path replaces the file with the same bytes. */
    etm_st_writer *w = etm_st_writer_create();
    add_sample(w, &s, 1);
    ck_assert_int_eq(etm_st_write(w, a, &err), 0);
    etm_st_writer_free(w);
    char *z = etm_read_file(a, &la, &err);
    ck_assert_uint_eq(la, lb);
    ck_assert(memcmp(z, y, la) == 0);
    free(x);
    free(y);
    free(z);
}
END_TEST

/* A tiny file's bytes, worked out by hand from the specification
 * (https://github.com/huggingface/safetensors#format): u64 little-endian header size, the JSON
 * header (here padded with spaces to a multiple of 8), then the raw little-endian data. */
START_TEST(tiny_file_has_the_specified_bytes) {
    const float a[2] = {1.0f, -2.0f};
    const uint8_t b[3] = {1, 2, 3};
    const int64_t sa[1] = {2}, sb[1] = {3};
    char path[512];
    tmp_path(path, sizeof path, "tiny.safetensors");
    etm_error err = {{0}};
    etm_st_writer *w = etm_st_writer_create();
    ck_assert_int_eq(etm_st_add(w, "b", ETM_ST_U8, 1, sb, b, &err), 0);
    ck_assert_int_eq(etm_st_add(w, "a", ETM_ST_F32, 1, sa, a, &err), 0);
    ck_assert_int_eq(etm_st_set_metadata(w, "k", "v", &err), 0);
    ck_assert_msg(etm_st_write(w, path, &err) == 0, "%s", err.msg);
    etm_st_writer_free(w);

    const char *json = "{\"__metadata__\":{\"k\":\"v\"},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}";
    size_t n = strlen(json); /* 132 characters: padded with 4 spaces to 136 */
    ck_assert_uint_eq(n, 132);
    unsigned char expect[8 + 136 + 11];
    const unsigned char len_le[8] = {136, 0, 0, 0, 0, 0, 0, 0};
    memcpy(expect, len_le, 8);
    memcpy(expect + 8, json, n);
    memset(expect + 8 + n, ' ', 136 - n);
    /* 1.0f = 0x3f800000, -2.0f = 0xc0000000, little-endian */
    const unsigned char data[11] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 1, 2, 3};
    memcpy(expect + 8 + 136, data, 11);

    size_t len;
    char *got = etm_read_file(path, &len, &err);
    ck_assert_ptr_nonnull(got);
    ck_assert_uint_eq(len, sizeof expect);
    for (size_t i = 0; i < len; i++)
        ck_assert_msg((unsigned char)got[i] == expect[i], "byte %zu is 0x%02x, expected 0x%02x", i,
                      (unsigned char)got[i], expect[i]);
    free(got);
}
END_TEST

/* Python reads our file: with the safetensors package when it is installed, and always (when
 * python3 exists) with an independent reader built on Python's json and struct modules. */
START_TEST(python_reads_the_file) {
    if (system("python3 -c 'import json, struct' >/dev/null 2>&1") != 0) {
        printf("check_safetensors: no python3; skipping the Python reader check\n");
        return;
    }
    sample s;
    fill_sample(&s);
    s.f[7] = 7.5f; /* keep the comparison free of inf */
    char path[512], script[600];
    tmp_path(path, sizeof path, "py.safetensors");
    snprintf(script, sizeof script, "%s.py", path);
    etm_error err = {{0}};
    etm_st_writer *w = etm_st_writer_create();
    add_sample(w, &s, 0);
    ck_assert_int_eq(etm_st_write(w, path, &err), 0);
    etm_st_writer_free(w);

    FILE *py = fopen(script, "w");
    ck_assert_ptr_nonnull(py);
    fprintf(py, "import json, struct, sys\n"
                "path = sys.argv[1]\n"
                "raw = open(path, 'rb').read()\n"
                "(n,) = struct.unpack('<Q', raw[:8])\n"
                "header = json.loads(raw[8:8 + n].decode('utf-8'))\n"
                "data = raw[8 + n:]\n"
                "meta = header.pop('__metadata__')\n"
                "assert meta['format'] == 'etmoe-checkpoint-1', meta\n"
                "fmt = {'F32': 'f', 'I64': 'q', 'I32': 'i', 'U8': 'B'}\n"
                "size = {'F32': 4, 'I64': 8, 'I32': 4, 'U8': 1}\n"
                "got = {}\n"
                "end = 0\n"
                "for name in sorted(header, key=lambda k: header[k]['data_offsets']):\n"
                "    e = header[name]\n"
                "    b, t = e['data_offsets']\n"
                "    assert b == end, (name, b, end)\n"
                "    end = t\n"
                "    count = 1\n"
                "    for d in e['shape']: count *= d\n"
                "    assert t - b == count * size[e['dtype']], name\n"
                "    got[name] = list(struct.unpack('<%%d%%s' %% (count, fmt[e['dtype']]), data[b:t]))\n"
                "assert end == len(data)\n"
                "expect_f = [%.9g", (double)s.f[0]);
    for (int i = 1; i < 12; i++) fprintf(py, ", %.9g", (double)s.f[i]);
    fprintf(py, "]\n"
                "assert all(abs(x - y) <= 1e-6 * max(1, abs(y)) for x, y in zip(got['layers.0.attn.qkv'], expect_f)), got\n"
                "assert got['loader.pos'] == [%lld, %lld, %lld], got['loader.pos']\n"
                "assert got['counts'] == [%d, %d, %d, %d, %d, %d, %d, %d]\n"
                "assert got['mask'] == [250, 251, 252, 253, 254]\n"
                "assert got['lr'] == [3.25] and got['empty'] == []\n"
                "try:\n"
                "    from safetensors.numpy import load_file\n"
                "except ImportError:\n"
                "    print('safetensors package not installed: checked with the json/struct reader only')\n"
                "    sys.exit(0)\n"
                "t = load_file(path)\n"
                "assert t['layers.0.attn.qkv'].shape == (3, 4) and t['counts'].shape == (2, 2, 2)\n"
                "assert t['lr'].shape == () and t['empty'].shape == (0, 7)\n"
                "assert list(t['loader.pos']) == got['loader.pos'] and list(t['mask']) == got['mask']\n"
                "assert [float(x) for x in t['layers.0.attn.qkv'].ravel()] == got['layers.0.attn.qkv']\n"
                "print('read by the safetensors package too')\n",
            (long long)s.i64[0], (long long)s.i64[1], (long long)s.i64[2], s.i32[0], s.i32[1], s.i32[2],
            s.i32[3], s.i32[4], s.i32[5], s.i32[6], s.i32[7]);
    fclose(py);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s'", script, path);
    ck_assert_msg(system(cmd) == 0, "the Python reader rejected %s (script %s)", path, script);
}
END_TEST

/* Every proper prefix of a valid file is rejected. */
START_TEST(truncated_files_are_rejected) {
    sample s;
    fill_sample(&s);
    char path[512], cut[600];
    tmp_path(path, sizeof path, "full.safetensors");
    snprintf(cut, sizeof cut, "%s.cut", path);
    etm_error err = {{0}};
    etm_st_writer *w = etm_st_writer_create();
    add_sample(w, &s, 0);
    ck_assert_int_eq(etm_st_write(w, path, &err), 0);
    etm_st_writer_free(w);
    size_t len;
    char *full = etm_read_file(path, &len, &err);
    for (size_t n = 0; n < len; n++) {
        write_bytes(cut, full, n);
        etm_st_file *f = etm_st_open(cut, &err);
        ck_assert_msg(f == NULL, "a %zu-byte prefix of a %zu-byte file was accepted", n, len);
        ASSERT_MSG_HAS(err, cut);
    }
    write_bytes(cut, full, 3);
    ck_assert_ptr_null(etm_st_open(cut, &err));
    ASSERT_MSG_HAS(err, "3 bytes, too short");
    size_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | (unsigned char)full[i];
    write_bytes(cut, full, 8 + hlen / 2);
    ck_assert_ptr_null(etm_st_open(cut, &err));
    ASSERT_MSG_HAS(err, "runs past the end of the file");
    write_bytes(cut, full, len - 1);
    ck_assert_ptr_null(etm_st_open(cut, &err));
    ASSERT_MSG_HAS(err, "run past the end of the data");
    free(full);
    ck_assert_ptr_null(etm_st_open("/nonexistent/x.safetensors", &err));
    ASSERT_MSG_HAS(err, "/nonexistent/x.safetensors: no such file");
}
END_TEST

/* Corrupt headers: each is rejected with a message naming the file and what is wrong. */
START_TEST(corrupt_headers_are_rejected) {
    struct {
        long long hlen; /* -1: the header's own length */
        const char *header;
        size_t data;
        const char *expect;
    } cases[] = {
        {1LL << 60, "{}", 0, "the header length 1152921504606846976 runs past the end of the file"},
        {0, "", 0, "does not start with '{'"},
        {-1, "[1, 2]", 0, "does not start with '{'"},
        {-1, "{\"a\": ", 0, "the header is not valid JSON"},
        {-1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "not valid JSON"},
        {-1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "duplicate"},
        {-1, "{\"w\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'w': unknown dtype 'F17'"},
        {-1, "{\"w\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w': no dtype string"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "tensor 'w': shape (3) of F32 needs 12 bytes but data_offsets [0, 8] hold 8"},
        {-1, "{\"w\":{\"dtype\":\"I64\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
         "tensor 'w': shape (2, 2) of I64 needs 32 bytes"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'w': shape[0] is not an integer >= 0"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
         "tensor 'w': shape[0] is not an integer >= 0"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
         "tensor 'w': shape (4294967296, 4294967296) overflows"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
         "tensor 'w': data_offsets [4, 0] end before they begin"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
         "tensor 'w': data_offsets is not a pair"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
         "tensor 'w': data_offsets [0, 8] run past the end of the data (4 bytes)"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4,
         "tensor 'w': unexpected field 'extra'"},
        {-1, "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w': no dtype string"},
        {-1, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'w': no shape array"},
        {-1, "{\"w\":[1]}", 0, "tensor 'w': the entry is not an object"},
        {-1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
         "tensors 'a' [0, 8) and 'b' [4, 12) overlap"},
        {-1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "tensors 'a' [0, 8) and 'b' [0, 8) overlap"},
        {-1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
         "bytes [4, 8) of the data belong to no tensor (before 'b')"},
        {-1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 10,
         "the last 6 bytes of the data belong to no tensor"},
        {-1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         "bytes [0, 4) of the data belong to no tensor (before 'a')"},
        {-1, "{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ 'k' is not a string"},
        {-1, "{\"__metadata__\":[\"k\"]}", 0, "__metadata__ is not an object"},
    };
    char path[512];
    tmp_path(path, sizeof path, "bad.safetensors");
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++) {
        etm_error err = {{0}};
        write_raw(path, cases[i].hlen, cases[i].header, cases[i].data);
        etm_st_file *f = etm_st_open(path, &err);
        ck_assert_msg(f == NULL, "case %zu (%s) accepted", i, cases[i].header);
        ASSERT_MSG_HAS(err, path);
        ASSERT_MSG_HAS(err, cases[i].expect);
    }
    /* The same shapes written correctly are accepted: the checks are not too eager. A header with
     * trailing spaces, zero-size tensors anywhere, and an empty file of tensors are all valid. */
    const char *good[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}   ",
        "{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
        "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[4,12]},"
        "\"y\":{\"dtype\":\"U8\",\"shape\":[3,0],\"data_offsets\":[0,0]}}",
        "{}",
    };
    const size_t good_data[] = {8, 12, 0};
    for (size_t i = 0; i < ETM_ARRAY_LEN(good); i++) {
        etm_error err = {{0}};
        write_raw(path, -1, good[i], good_data[i]);
        etm_st_file *f = etm_st_open(path, &err);
        ck_assert_msg(f != NULL, "valid case %zu rejected: %s", i, err.msg);
        etm_st_close(f);
    }
}
END_TEST

START_TEST(lookup_checks_name_dtype_and_shape) {
    sample s;
    fill_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "l.safetensors");
    etm_error err = {{0}};
    etm_st_writer *w = etm_st_writer_create();
    add_sample(w, &s, 0);
    ck_assert_int_eq(etm_st_write(w, path, &err), 0);
    etm_st_writer_free(w);
    etm_st_file *f = etm_st_open(path, &err);
    ck_assert_ptr_nonnull(f);
    float buf[64];
    const int64_t right[2] = {3, 4}, wrong[2] = {4, 3}, flat[1] = {12};
    ck_assert_int_ne(etm_st_read(f, "layers.9.attn.qkv", ETM_ST_F32, 2, right, buf, &err), 0);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "no tensor 'layers.9.attn.qkv'");
    ck_assert_ptr_null(etm_st_find(f, "layers.9.attn.qkv"));
    ck_assert_int_ne(etm_st_read(f, "layers.0.attn.qkv", ETM_ST_F32, 2, wrong, buf, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'layers.0.attn.qkv' has shape (3, 4), expected (4, 3)");
    ck_assert_int_ne(etm_st_read(f, "layers.0.attn.qkv", ETM_ST_F32, 1, flat, buf, &err), 0);
    ASSERT_MSG_HAS(err, "has shape (3, 4), expected (12)");
    ck_assert_int_ne(etm_st_read(f, "layers.0.attn.qkv", ETM_ST_I32, 2, right, buf, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'layers.0.attn.qkv' is F32, expected I32");
    ck_assert_int_ne(etm_st_read(f, "lr", ETM_ST_F32, 1, flat, buf, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'lr' has shape (), expected (12)");
    etm_st_close(f);
}
END_TEST

START_TEST(writer_rejects_bad_tensors) {
    etm_error err = {{0}};
    float x[4] = {0};
    const int64_t shape[1] = {4}, neg[2] = {2, -2};
    const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    etm_st_writer *w = etm_st_writer_create();
    ck_assert_int_eq(etm_st_add(w, "x", ETM_ST_F32, 1, shape, x, &err), 0);
    ck_assert_int_ne(etm_st_add(w, "x", ETM_ST_F32, 1, shape, x, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'x' added twice");
    ck_assert_int_ne(etm_st_add_copy(w, "x", ETM_ST_F32, 1, shape, x, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'x' added twice");
    ck_assert_int_ne(etm_st_add(w, "", ETM_ST_F32, 1, shape, x, &err), 0);
    ASSERT_MSG_HAS(err, "needs a name");
    ck_assert_int_ne(etm_st_add(w, "__metadata__", ETM_ST_F32, 1, shape, x, &err), 0);
    ASSERT_MSG_HAS(err, "reserved");
    ck_assert_int_ne(etm_st_add(w, "n", ETM_ST_F32, 2, neg, x, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'n': dimension 1 is -2");
    ck_assert_int_ne(etm_st_add(w, "nine", ETM_ST_F32, 9, nine, x, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'nine': 9 dimensions");
    ck_assert_int_ne(etm_st_add(w, "nodata", ETM_ST_F32, 1, shape, NULL, &err), 0);
    ASSERT_MSG_HAS(err, "tensor 'nodata': no data");
    ck_assert_int_ne(etm_st_add_owned(w, "bad\xff", ETM_ST_F32, 1, shape, NULL, &err), 0);
    /* A name that is not UTF-8 fails at write time, and the target is not created. */
    ck_assert_int_eq(etm_st_add(w, "bad\xff", ETM_ST_F32, 1, shape, x, &err), 0);
    char path[512];
    tmp_path(path, sizeof path, "w.safetensors");
    ck_assert_int_ne(etm_st_write(w, path, &err), 0);
    ASSERT_MSG_HAS(err, "not valid UTF-8");
    ck_assert_int_ne(access(path, F_OK), 0);
    etm_st_writer_free(w);
    /* A directory that does not exist: the error names the path. */
    w = etm_st_writer_create();
    ck_assert_int_eq(etm_st_add(w, "x", ETM_ST_F32, 1, shape, x, &err), 0);
    ck_assert_int_ne(etm_st_write(w, "/nonexistent-dir/x.safetensors", &err), 0);
    ASSERT_MSG_HAS(err, "/nonexistent-dir/x.safetensors");
    etm_st_writer_free(w);
}
END_TEST

START_TEST(dtype_table) {
    ck_assert_str_eq(etm_st_dtype_name(ETM_ST_F32), "F32");
    ck_assert_str_eq(etm_st_dtype_name(ETM_ST_I64), "I64");
    ck_assert_str_eq(etm_st_dtype_name(ETM_ST_I32), "I32");
    ck_assert_str_eq(etm_st_dtype_name(ETM_ST_U8), "U8");
    ck_assert_str_eq(etm_st_dtype_name(ETM_ST_BF16), "BF16");
    ck_assert_uint_eq(etm_st_dtype_size(ETM_ST_F32), 4);
    ck_assert_uint_eq(etm_st_dtype_size(ETM_ST_I64), 8);
    ck_assert_uint_eq(etm_st_dtype_size(ETM_ST_U8), 1);
    ck_assert_uint_eq(etm_st_dtype_size(ETM_ST_F16), 2);
    ck_assert_uint_eq(etm_st_dtype_size(ETM_ST_N_DTYPES), 0);
    char buf[64];
    const int64_t sh[3] = {2, 0, 5};
    ck_assert_str_eq(etm_st_shape_string(3, sh, buf, sizeof buf), "(2, 0, 5)");
    ck_assert_str_eq(etm_st_shape_string(0, sh, buf, sizeof buf), "()");
}
END_TEST

static Suite *safetensors_suite(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, round_trip_every_dtype);
    tcase_add_test(tc, output_is_byte_identical_whatever_the_order);
    tcase_add_test(tc, tiny_file_has_the_specified_bytes);
    tcase_add_test(tc, python_reads_the_file);
    tcase_add_test(tc, truncated_files_are_rejected);
    tcase_add_test(tc, corrupt_headers_are_rejected);
    tcase_add_test(tc, lookup_checks_name_dtype_and_shape);
    tcase_add_test(tc, writer_rejects_bad_tensors);
    tcase_add_test(tc, dtype_table);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(safetensors_suite()); }
