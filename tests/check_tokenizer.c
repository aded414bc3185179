/* check_tokenizer.c: tests of the BPE tokenizer, its pre-split, its trainer and its verbs:
 * GPT-2 ids equal to js-tiktoken's on every fixture, exact round trips (invalid UTF-8 included),
 * BPE merging equal to a slow reference loop, the trainer equal to a slow reference trainer and
 * deterministic, the error paths of load and decode, and the exit codes of the verbs. */
#include "bpe_train.h"
#include "testutil.h"
#include "tokenizer.h"
#include "tokenizer_merges.h"
#include "tokenizer_split.h"

#include <stdarg.h>
#include <stdint.h>
#include <sys/wait.h>

static const char *const fixtures[] = {"prose_english", "contractions", "numbers", "whitespace", "scripts",
                                       "emoji",         "code",         "austen_slice", "special", "random_mix",
                                       "invalid_utf8"};

/* The fixtures: $ETM_TEST_DIR, else the source tree this test was built from (the serial test
 * harness does not pass AM_TESTS_ENVIRONMENT, and under distcheck the build is elsewhere). */
static const char *fixture_dir(char *buf, size_t len) {
    const char *d = getenv("ETM_TEST_DIR");
    snprintf(buf, len, "%s/fixtures/tokenizer", d && *d ? d : ETM_TEST_SRCDIR);
    return buf;
}

/* GPT-2's merges file, found the way the library finds it. */
static const char *gpt2_path(char *buf, size_t len) {
    char dir[1024];
    snprintf(buf, len, "%s/gpt2/vocab.bpe", etm_data_dir(dir, sizeof dir));
    return buf;
}

static char *read_fixture(const char *name, const char *ext, size_t *len) {
    char path[2048], dir[1024];
    snprintf(path, sizeof path, "%s/%s.%s", fixture_dir(dir, sizeof dir), name, ext);
    etm_error err = {{0}};
    char *s = etm_read_file(path, len, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    return s;
}

static int32_t *read_ids(const char *name, size_t *n) {
    size_t len, cap = 1024;
    char *s = read_fixture(name, "ids", &len), *p = s, *end;
    int32_t *ids = malloc(cap * sizeof *ids);
    *n = 0;
    for (long v; (v = strtol(p, &end, 10)), end != p; p = end) {
        if (*n == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
        ids[(*n)++] = (int32_t)v;
    }
    free(s);
    return ids;
}

static etm_tokenizer *load(const char *name) {
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_load(name, &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    return tok;
}

static void assert_round_trip(const etm_tokenizer *tok, const char *text, size_t len) {
    size_t n, back_len;
    int32_t *ids = etm_tokenizer_encode(tok, text, len, &n);
    etm_error err = {{0}};
    char *back = etm_tokenizer_decode(tok, ids, n, &back_len, &err);
    ck_assert_msg(back != NULL, "%s", err.msg);
    ck_assert_uint_eq(back_len, len);
    ck_assert(memcmp(back, text, len) == 0);
    ck_assert_int_eq(back[len], '\0');
    free(back);
    free(ids);
}

/* ---- GPT-2 against js-tiktoken ---------------------------------------------------------------- */

START_TEST(gpt2_matches_js_tiktoken_on_every_fixture) {
    etm_tokenizer *tok = load("gpt2");
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 50257);
    ck_assert_int_eq(etm_tokenizer_eot(tok), 50256);
    for (size_t f = 0; f < ETM_ARRAY_LEN(fixtures); f++) {
        size_t len, n_ref, n;
        char *raw = read_fixture(fixtures[f], "txt", &len);
        /* js-tiktoken saw the text as node decoded it: invalid subparts replaced by U+FFFD. */
        size_t text_len;
        char *text = etm_utf8_replace_invalid(raw, len, &text_len);
        int32_t *ref = read_ids(fixtures[f], &n_ref);
        int32_t *ids = etm_tokenizer_encode(tok, text, text_len, &n);
        ck_assert_msg(n_ref > 0, "%s: empty reference", fixtures[f]);
        size_t i = 0;
        while (i < n && i < n_ref && ids[i] == ref[i]) i++;
        ck_assert_msg(i == n && n == n_ref, "%s: id %zu differs: ours %d, js-tiktoken %d (%zu vs %zu ids)",
                      fixtures[f], i, i < n ? ids[i] : -1, i < n_ref ? ref[i] : -1, n, n_ref);
        assert_round_trip(tok, raw, len);
        assert_round_trip(tok, text, text_len);
        free(ids);
        free(ref);
        free(text);
        free(raw);
    }
    etm_tokenizer_free(tok);
}
END_TEST

START_TEST(gpt2_known_ids) {
    etm_tokenizer *tok = load("gpt2");
    static const char text[] = "Hello world<|endoftext|> it's";
    static const int32_t want[] = {15496, 995, 50256, 340, 338};
    size_t n;
    int32_t *ids = etm_tokenizer_encode(tok, text, strlen(text), &n);
    ck_assert_uint_eq(n, ETM_ARRAY_LEN(want));
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(ids[i], want[i]);
    free(ids);
    size_t len;
    const char *b = etm_tokenizer_token_bytes(tok, 995, &len);
    ck_assert_uint_eq(len, 6);
    ck_assert(memcmp(b, " world", 6) == 0);
    b = etm_tokenizer_token_bytes(tok, 50256, &len);
    ck_assert_uint_eq(len, 13);
    ck_assert(memcmp(b, "<|endoftext|>", 13) == 0);
    b = etm_tokenizer_token_bytes(tok, 188, &len); /* byte 0 is the first non-printable byte */
    ck_assert_uint_eq(len, 1);
    ck_assert_int_eq(b[0], 0);
    ck_assert_ptr_null(etm_tokenizer_token_bytes(tok, 50257, &len));
    ck_assert_ptr_null(etm_tokenizer_token_bytes(tok, -1, &len));
    ids = etm_tokenizer_encode(tok, "", 0, &n);
    ck_assert_uint_eq(n, 0);
    free(ids);
    etm_tokenizer_free(tok);
}
END_TEST

/* ---- the pre-split ---------------------------------------------------------------------------- */

/* The pieces of a split, as pointers into the text; EOT pieces have eot set. */
typedef struct {
    const char **p;
    size_t *len;
    int *eot;
    size_t n, cap;
} piece_list;

static int collect(void *ctx, const char *p, size_t len, int is_eot) {
    piece_list *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->p = realloc(l->p, l->cap * sizeof *l->p);
        l->len = realloc(l->len, l->cap * sizeof *l->len);
        l->eot = realloc(l->eot, l->cap * sizeof *l->eot);
    }
    l->p[l->n] = p;
    l->len[l->n] = len;
    l->eot[l->n++] = is_eot;
    return 0;
}

static piece_list split_list(const etm_presplit *ps, const char *text, size_t len) {
    piece_list l = {NULL, NULL, NULL, 0, 0};
    etm_presplit_run(ps, text, len, collect, &l);
    return l;
}

static void free_list(piece_list *l) {
    free(l->p);
    free(l->len);
    free(l->eot);
}

/* The pieces joined by '|', '#' standing for <|endoftext|>. */
static char *split(const etm_presplit *ps, const char *text) {
    piece_list l = split_list(ps, text, strlen(text));
    size_t total = 1;
    for (size_t i = 0; i < l.n; i++) total += l.len[i] + 1;
    char *out = malloc(total), *o = out;
    for (size_t i = 0; i < l.n; i++) {
        if (i) *o++ = '|';
        if (l.eot[i]) *o++ = '#';
        else {
            memcpy(o, l.p[i], l.len[i]);
            o += l.len[i];
        }
    }
    *o = '\0';
    free_list(&l);
    return out;
}

START_TEST(presplit_follows_gpt2_regex) {
    etm_error err = {{0}};
    etm_presplit *ps = etm_presplit_create(&err);
    ck_assert_msg(ps != NULL, "%s", err.msg);
    static const char *const cases[][2] = {
        {"Hello world", "Hello| world"},
        {"it's they'll we'RE", "it|'s| they|'ll| we|'|RE"},
        {"a  b", "a| | b"},              /* \s+(?!\S) leaves the last space to the word */
        {"a   \n\nb", "a|   \n|\n|b"},    /* ... and the last newline too */
        {"x \n", "x| \n"},
        {"end   ", "end|   "},
        {"12345 abc", "12345| abc"},
        {"3.14", "3|.|14"},
        {"hi!!! ok", "hi|!!!| ok"},
        {"a<|endoftext|>b", "a|#|b"},
        {" <|endoftext|> ", " |#| "},
        {"\xC2\x85x", "\xC2\x85|x"},         /* U+0085 is White_Space (GPT-2, tiktoken) */
        {"a \xC2\x85" "b", "a| |\xC2\x85|b"}, /* js-tiktoken would give "a| \xC2\x85|b" */
        {"\xEF\xBB\xBFword", "\xEF\xBB\xBF|word"},
        {"a \xEF\xBB\xBFz", "a| \xEF\xBB\xBF|z"}, /* U+FEFF is a symbol here; JavaScript calls it space */
        {"a \xFF\xFE" "b", "a| \xFF\xFE|b"}, /* invalid bytes act like U+FFFD, a symbol */
        {"x  \x80", "x| | \x80"},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++) {
        char *got = split(ps, cases[i][0]);
        ck_assert_msg(!strcmp(got, cases[i][1]), "case %zu: got '%s' want '%s'", i, got, cases[i][1]);
        free(got);
    }
    etm_presplit_free(ps);
}
END_TEST

START_TEST(utf8_maximal_subparts) {
    static const struct {
        const char *s;
        int want;
    } cases[] = {
        {"a", 1},           {"\xC3\xA9", 2},      {"\xE2\x82\xAC", 3}, {"\xF0\x9F\x98\x80", 4},
        {"\x80", -1},       {"\xC0\xAF", -1},     {"\xC1", -1},        {"\xE0\x80", -1}, /* overlong */
        {"\xE0\xA0", -2},   {"\xED\xA0\x80", -1}, /* surrogate */      {"\xED\x9F\xBF", 3},
        {"\xF4\x90", -1},   {"\xF5", -1},         {"\xFF", -1},        {"\xE2\x82x", -2},
        {"\xF0\x9F\x98", -3}, {"\xF0\x9F\x98 ", -3},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++)
        ck_assert_msg(etm_utf8_next((const unsigned char *)cases[i].s, strlen(cases[i].s)) == cases[i].want,
                      "case %zu", i);
    size_t len;
    char *r = etm_utf8_replace_invalid("a\xE0\x80z\xF0\x9F\x98", 7, &len);
    ck_assert_str_eq(r, "a\xEF\xBF\xBD\xEF\xBF\xBDz\xEF\xBF\xBD");
    ck_assert_uint_eq(len, strlen(r));
    free(r);
}
END_TEST

/* Raw invalid bytes: the pieces are those of the replaced text, with the original bytes. */
START_TEST(invalid_utf8_pieces_align_with_replaced_text) {
    etm_error err = {{0}};
    etm_presplit *ps = etm_presplit_create(&err);
    size_t len, rlen;
    char *raw = read_fixture("invalid_utf8", "txt", &len);
    char *rep = etm_utf8_replace_invalid(raw, len, &rlen);
    ck_assert_uint_ne(rlen, len); /* the fixture does contain invalid bytes */
    piece_list a = split_list(ps, raw, len), b = split_list(ps, rep, rlen);
    ck_assert_uint_eq(a.n, b.n);
    size_t covered = 0;
    for (size_t i = 0; i < a.n; i++) {
        ck_assert(a.p[i] == raw + covered); /* in order, nothing skipped */
        covered += a.len[i];
        size_t l;
        char *r = etm_utf8_replace_invalid(a.p[i], a.len[i], &l);
        ck_assert_msg(l == b.len[i] && !memcmp(r, b.p[i], l), "piece %zu differs", i);
        free(r);
    }
    ck_assert_uint_eq(covered, len);
    free_list(&a);
    free_list(&b);
    free(rep);
    free(raw);
    etm_presplit_free(ps);
}
END_TEST

START_TEST(random_bytes_round_trip) {
    etm_tokenizer *tok = load("gpt2");
    uint64_t x = 0x2545F4914F6CDD1DULL;
    char buf[3000];
    for (int t = 0; t < 200; t++) {
        size_t len = (size_t)(t * 15 % 3000);
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* half the tests: any byte; the others: bytes likely to form UTF-8, spaces, ASCII */
            buf[i] = (char)(t % 2 ? (char)(x >> 24) : "ab \n\t'9\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80<|>."[(x >> 24) % 20]);
        }
        assert_round_trip(tok, buf, len);
    }
    etm_tokenizer_free(tok);
}
END_TEST

/* ---- BPE merging against a slow reference ------------------------------------------------------ */

/* GPT-2's own algorithm, literally: find the lowest-ranked pair, merge all its occurrences left
 * to right, repeat. Ranks are looked up by scanning a sorted list of (left, right) byte keys. */
typedef struct {
    char *key; /* left length (2 bytes), left bytes, right bytes */
    size_t len;
    int32_t rank;
} ref_merge;

static int cmp_key(const void *a, const void *b) {
    const ref_merge *x = a, *y = b;
    int c = memcmp(x->key, y->key, ETM_MIN(x->len, y->len));
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int32_t ref_rank(const ref_merge *m, size_t n, const char *l, size_t ll, const char *r, size_t rl) {
    char key[600];
    ref_merge probe = {key, 2 + ll + rl, 0};
    if (probe.len > sizeof key) return -1;
    key[0] = (char)(ll >> 8);
    key[1] = (char)ll;
    memcpy(key + 2, l, ll);
    memcpy(key + 2 + ll, r, rl);
    const ref_merge *hit = bsearch(&probe, m, n, sizeof *m, cmp_key);
    return hit ? hit->rank : -1;
}

static size_t ref_bpe(const ref_merge *m, size_t nm, const etm_byte_alphabet *a, const char *s, size_t len,
                      int32_t *out) {
    size_t n = len;
    size_t *off = malloc((len + 1) * sizeof *off); /* symbol i is s[off[i], off[i+1]) */
    int32_t *id = malloc(len * sizeof *id);
    for (size_t i = 0; i <= len; i++) off[i] = i;
    for (size_t i = 0; i < len; i++) id[i] = a->byte_to_id[(unsigned char)s[i]];
    for (;;) {
        int32_t best = -1;
        for (size_t i = 0; i + 1 < n; i++) {
            int32_t r = ref_rank(m, nm, s + off[i], off[i + 1] - off[i], s + off[i + 1], off[i + 2] - off[i + 1]);
            if (r >= 0 && (best < 0 || r < best)) best = r;
        }
        if (best < 0) break;
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            off[o] = off[i];
            id[o] = id[i];
            if (i + 1 < n &&
                ref_rank(m, nm, s + off[i], off[i + 1] - off[i], s + off[i + 1], off[i + 2] - off[i + 1]) == best) {
                id[o] = 256 + best;
                i++;
            }
            o++;
        }
        off[o] = len;
        n = o;
    }
    memcpy(out, id, n * sizeof *id);
    free(off);
    free(id);
    return n;
}

START_TEST(bpe_matches_reference_loop) {
    char path[1024];
    gpt2_path(path, sizeof path);
    etm_error err = {{0}};
    size_t flen;
    char *file = etm_read_file(path, &flen, &err);
    ck_assert_msg(file != NULL, "%s", err.msg);
    etm_merges mg;
    ck_assert_int_eq(etm_merges_parse(file, flen, path, &mg, &err), 0);
    ck_assert_uint_eq(mg.n, 50000);
    ref_merge *m = malloc(mg.n * sizeof *m);
    for (size_t r = 0; r < mg.n; r++) {
        size_t ll = mg.off[2 * r + 1] - mg.off[2 * r], rl = mg.off[2 * r + 2] - mg.off[2 * r + 1];
        m[r].len = 2 + ll + rl;
        m[r].key = malloc(m[r].len);
        m[r].key[0] = (char)(ll >> 8);
        m[r].key[1] = (char)ll;
        memcpy(m[r].key + 2, mg.bytes + mg.off[2 * r], ll + rl);
        m[r].rank = (int32_t)r;
    }
    qsort(m, mg.n, sizeof *m, cmp_key);
    etm_byte_alphabet a;
    etm_byte_alphabet_init(&a);
    etm_tokenizer *tok = load("gpt2");

    /* Each text is one pre-split piece (letters with a leading space, or symbols and invalid
     * bytes), long ones included, so encode's result is exactly the BPE of the whole text. */
    static const char letters[] = "etaoinshrdlucmfwyp", symbols[] = "!?.-=*#/\\()[]{}<>\x80\xFF\xFE\xC0";
    uint64_t x = 88172645463325252ULL;
    char buf[400];
    int32_t want[400];
    for (int t = 0; t < 300; t++) {
        size_t len = 1 + (size_t)(t * 37 % 399);
        int sym = t % 3 == 2;
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = sym ? symbols[(x >> 20) % (sizeof symbols - 1)] : letters[(x >> 20) % (sizeof letters - 1)];
        }
        if (!sym) buf[0] = ' ';
        size_t n_want = ref_bpe(m, mg.n, &a, buf, len, want), n;
        int32_t *ids = etm_tokenizer_encode(tok, buf, len, &n);
        ck_assert_msg(n == n_want, "text %d (%zu bytes): %zu ids, reference %zu", t, len, n, n_want);
        for (size_t i = 0; i < n; i++) ck_assert_msg(ids[i] == want[i], "text %d id %zu", t, i);
        free(ids);
    }
    etm_tokenizer_free(tok);
    for (size_t r = 0; r < mg.n; r++) free(m[r].key);
    free(m);
    etm_merges_free(&mg);
    free(file);
}
END_TEST

/* ---- load and decode errors -------------------------------------------------------------------- */

static void assert_load_fails(const char *text, const char *needle) {
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_from_merges(text, strlen(text), "bad.bpe", &err);
    ck_assert_msg(tok == NULL, "loaded: %s", text);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "message '%s' lacks '%s'", err.msg, needle);
}

START_TEST(load_rejects_missing_and_corrupt_files) {
    etm_error err = {{0}};
    ck_assert_ptr_null(etm_tokenizer_load("/nonexistent/dir/merges.bpe", &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/dir/merges.bpe"));
    ck_assert_ptr_null(etm_tokenizer_load("no_such_tokenizer", &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "no shipped tokenizer"));
    ck_assert_ptr_null(etm_tokenizer_load("", &err));

    assert_load_fails("", "bad.bpe:1: not a merges file");
    assert_load_fails("h e\n", "bad.bpe:1: not a merges file");
    assert_load_fails("#version: 0.2\nh e\nhe\n", "bad.bpe:3: expected two tokens");
    assert_load_fails("#version: 0.2\nh e\nh e l\n", "bad.bpe:3: expected two tokens");
    assert_load_fails("#version: 0.2\nh  e\n", "bad.bpe:2: expected two tokens");
    assert_load_fails("#version: 0.2\nh e\n\nt h\n", "bad.bpe:3: empty line");
    assert_load_fails("#version: 0.2\n\xE2\x82\xAC e\n", "bad.bpe:2: character U+20AC is not in GPT-2's byte alphabet");
    assert_load_fails("#version: 0.2\nh e\r\n", "U+000D");
    assert_load_fails("#version: 0.2\nh \xFF\n", "bad.bpe:2: invalid UTF-8");
    assert_load_fails("#version: 0.2\nh e\nth e\n", "bad.bpe:3: merge uses the token 'th'");
    assert_load_fails("#version: 0.2\nh e\nh e\n", "bad.bpe:3: merge makes a token that id 256 already is");

    /* A truncated copy of GPT-2's file is corrupt where it is cut. */
    char path[1024];
    gpt2_path(path, sizeof path);
    size_t len;
    char *file = etm_read_file(path, &len, &err);
    ck_assert_ptr_nonnull(file);
    char *cut = strchr(file + 300000, '\n') + 4;
    *cut = '\0';
    etm_tokenizer *tok = etm_tokenizer_from_merges(file, strlen(file), "cut.bpe", &err);
    ck_assert_ptr_null(tok); /* the last line is half a merge: usually a missing token or space */
    ck_assert_ptr_nonnull(strstr(err.msg, "cut.bpe:"));
    free(file);

    /* Valid small files: the header alone, and trailing blank lines. */
    tok = etm_tokenizer_from_merges("#version: 0.2\n", 14, "ok", &err);
    ck_assert_ptr_nonnull(tok);
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 257);
    assert_round_trip(tok, "bytes only \xFF", 12);
    etm_tokenizer_free(tok);
    tok = etm_tokenizer_from_merges("#version: 0.2\nh e\n\n\n", 20, "ok", &err);
    ck_assert_ptr_nonnull(tok);
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 258);
    etm_tokenizer_free(tok);
}
END_TEST

START_TEST(decode_rejects_ids_outside_vocabulary) {
    etm_tokenizer *tok = load("gpt2");
    etm_error err = {{0}};
    size_t len = 99;
    int32_t bad_hi[] = {15496, 50257}, bad_lo[] = {-1};
    ck_assert_ptr_null(etm_tokenizer_decode(tok, bad_hi, 2, &len, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "50257 at position 1"));
    ck_assert_ptr_null(etm_tokenizer_decode(tok, bad_lo, 1, &len, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "-1 at position 0"));
    char *s = etm_tokenizer_decode(tok, bad_hi, 0, &len, &err);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(s, "");
    free(s);
    etm_tokenizer_free(tok);
}
END_TEST

/* ---- the trainer ------------------------------------------------------------------------------ */

static etm_merges train(const char *const *texts, const size_t *lens, size_t n, int vocab, etm_bpe_stats *st) {
    etm_error err = {{0}};
    etm_bpe_trainer *tr = etm_bpe_trainer_create(&err);
    ck_assert_msg(tr != NULL, "%s", err.msg);
    for (size_t i = 0; i < n; i++) etm_bpe_trainer_add(tr, texts[i], lens[i]);
    etm_merges m;
    ck_assert_msg(etm_bpe_trainer_train(tr, vocab, &m, st, &err) == 0, "%s", err.msg);
    etm_bpe_trainer_free(tr);
    return m;
}

static char *format_merges(const etm_merges *m) {
    size_t len;
    return etm_merges_format(m, &len);
}

START_TEST(trainer_first_merges_by_hand) {
    /* Pieces "abab", " abab", " ab". Counts: (a,b) 5, then (ab,ab) 2 and (" ",ab) 2: the tie goes
     * to the lower left token, " " (0x20) before "ab"; then (" ab",ab) 1 and (ab,ab) 1 tie, and
     * " ab" sorts first. Then nothing is left to merge. */
    const char *text = "abab abab ab";
    size_t len = strlen(text);
    etm_bpe_stats st;
    etm_merges m = train(&text, &len, 1, 300, &st);
    char *f = format_merges(&m);
    ck_assert_str_eq(f, "#version: 0.2\na b\n\xC4\xA0 ab\n\xC4\xA0" "ab ab\nab ab\n");
    ck_assert_uint_eq(st.merges, 4);
    ck_assert_uint_eq(st.pieces, 3);
    ck_assert_uint_eq(st.unique_pieces, 3);
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_from_merges(f, strlen(f), "trained", &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 261);
    size_t n;
    int32_t *ids = etm_tokenizer_encode(tok, text, len, &n);
    ck_assert_uint_eq(n, 3); /* each piece became one token: "abab" 259, " abab" 258, " ab" 257 */
    ck_assert_int_eq(ids[0], 259);
    ck_assert_int_eq(ids[1], 258);
    ck_assert_int_eq(ids[2], 257);
    free(ids);
    etm_tokenizer_free(tok);
    free(f);
    etm_merges_free(&m);

    /* Too small a vocabulary is an error; 257 is no merges at all. */
    etm_bpe_trainer *tr = etm_bpe_trainer_create(&err);
    etm_bpe_trainer_add(tr, text, len);
    ck_assert_int_ne(etm_bpe_trainer_train(tr, 256, &m, NULL, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "at least 257"));
    ck_assert_int_eq(etm_bpe_trainer_train(tr, 257, &m, NULL, &err), 0);
    ck_assert_uint_eq(m.n, 0);
    etm_merges_free(&m);
    etm_bpe_trainer_free(tr);
}
END_TEST

/* A slow trainer that recounts every adjacent pair of every piece occurrence at every step. */
static etm_merges ref_train(const char *text, size_t len, int vocab) {
    etm_error err = {{0}};
    etm_presplit *ps = etm_presplit_create(&err);
    piece_list c = split_list(ps, text, len);
    etm_presplit_free(ps);
    /* words: every piece occurrence (no dedup: slow on purpose), as lists of token byte strings */
    typedef struct {
        char **sym;
        size_t *slen;
        size_t n;
    } word;
    word *w = calloc(c.n, sizeof *w);
    size_t nw = 0;
    for (size_t i = 0; i < c.n; i++) {
        if (c.eot[i] || c.len[i] < 2) continue;
        size_t l = c.len[i];
        w[nw].n = l;
        w[nw].sym = malloc(l * sizeof(char *));
        w[nw].slen = malloc(l * sizeof(size_t));
        for (size_t k = 0; k < l; k++) {
            w[nw].sym[k] = malloc(1);
            w[nw].sym[k][0] = c.p[i][k];
            w[nw].slen[k] = 1;
        }
        nw++;
    }
    free_list(&c);
    /* known tokens, to skip merges whose bytes already exist */
    size_t ntok = 0, tcap = 256 + (size_t)vocab;
    char **tb = malloc(tcap * sizeof *tb);
    size_t *tl = malloc(tcap * sizeof *tl);
    for (int b = 0; b < 256; b++) {
        tb[ntok] = malloc(1);
        tb[ntok][0] = (char)b;
        tl[ntok++] = 1;
    }
    etm_merges out = {0, malloc(1 << 20), malloc((2 * (size_t)vocab + 1) * sizeof(size_t))};
    out.off[0] = 0;
    size_t used = 0;
    while ((int)out.n < vocab - 257) {
        /* collect distinct pairs with counts (quadratic, fine for a small text) */
        size_t np = 0, pcap = 1024;
        struct pr {
            const char *l, *r;
            size_t ll, rl;
            long count;
        } *pr = malloc(pcap * sizeof *pr);
        for (size_t i = 0; i < nw; i++) {
            for (size_t k = 0; k + 1 < w[i].n; k++) {
                const char *l = w[i].sym[k], *r = w[i].sym[k + 1];
                size_t ll = w[i].slen[k], rl = w[i].slen[k + 1], j;
                for (j = 0; j < np; j++)
                    if (pr[j].ll == ll && pr[j].rl == rl && !memcmp(pr[j].l, l, ll) && !memcmp(pr[j].r, r, rl)) break;
                if (j == np) {
                    if (np == pcap) pr = realloc(pr, (pcap *= 2) * sizeof *pr);
                    pr[np++] = (struct pr){l, r, ll, rl, 0};
                }
                pr[j].count++;
            }
        }
        long best = -1;
        size_t bj = 0;
        for (size_t j = 0; j < np; j++) {
            /* a pair whose bytes already are a token is never merged */
            int exists = 0;
            for (size_t t = 256; t < ntok && !exists; t++)
                exists = tl[t] == pr[j].ll + pr[j].rl && !memcmp(tb[t], pr[j].l, pr[j].ll) &&
                         !memcmp(tb[t] + pr[j].ll, pr[j].r, pr[j].rl);
            if (exists) continue;
            int better = pr[j].count > best;
            if (pr[j].count == best) {
                int c1 = memcmp(pr[j].l, pr[bj].l, ETM_MIN(pr[j].ll, pr[bj].ll));
                if (!c1) c1 = (pr[j].ll > pr[bj].ll) - (pr[j].ll < pr[bj].ll);
                int c2 = memcmp(pr[j].r, pr[bj].r, ETM_MIN(pr[j].rl, pr[bj].rl));
                if (!c2) c2 = (pr[j].rl > pr[bj].rl) - (pr[j].rl < pr[bj].rl);
                better = c1 < 0 || (c1 == 0 && c2 < 0);
            }
            if (better) {
                best = pr[j].count;
                bj = j;
            }
        }
        if (best <= 0) {
            free(pr);
            break;
        }
        size_t ll = pr[bj].ll, rl = pr[bj].rl;
        char *merged = malloc(ll + rl);
        memcpy(merged, pr[bj].l, ll);
        memcpy(merged + ll, pr[bj].r, rl);
        char *left = malloc(ll), *right = malloc(rl);
        memcpy(left, pr[bj].l, ll);
        memcpy(right, pr[bj].r, rl);
        free(pr);
        memcpy(out.bytes + used, merged, ll + rl);
        out.off[2 * out.n + 1] = used + ll;
        out.off[2 * out.n + 2] = used + ll + rl;
        used += ll + rl;
        out.n++;
        tb[ntok] = merged;
        tl[ntok++] = ll + rl;
        for (size_t i = 0; i < nw; i++) {
            size_t o = 0;
            for (size_t k = 0; k < w[i].n; k++) {
                if (k + 1 < w[i].n && w[i].slen[k] == ll && w[i].slen[k + 1] == rl && !memcmp(w[i].sym[k], left, ll) &&
                    !memcmp(w[i].sym[k + 1], right, rl)) {
                    char *s = malloc(ll + rl);
                    memcpy(s, merged, ll + rl);
                    free(w[i].sym[k]);
                    free(w[i].sym[k + 1]);
                    w[i].sym[o] = s;
                    w[i].slen[o++] = ll + rl;
                    k++;
                } else {
                    w[i].sym[o] = w[i].sym[k];
                    w[i].slen[o++] = w[i].slen[k];
                }
            }
            w[i].n = o;
        }
        free(left);
        free(right);
    }
    for (size_t i = 0; i < nw; i++) {
        for (size_t k = 0; k < w[i].n; k++) free(w[i].sym[k]);
        free(w[i].sym);
        free(w[i].slen);
    }
    free(w);
    for (size_t t = 0; t < ntok; t++) free(tb[t]);
    free(tb);
    free(tl);
    return out;
}

START_TEST(trainer_matches_slow_reference) {
    size_t len;
    char *text = read_fixture("prose_english", "txt", &len);
    etm_merges m = train((const char *const *)&text, &len, 1, 500, NULL);
    etm_merges r = ref_train(text, len, 500);
    char *a = format_merges(&m), *b = format_merges(&r);
    ck_assert_uint_gt(m.n, 100);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
    etm_merges_free(&m);
    etm_merges_free(&r);
    free(text);
}
END_TEST

START_TEST(trainer_is_deterministic_and_round_trips) {
    size_t len;
    char *text = read_fixture("austen_slice", "txt", &len);
    size_t half = len / 2;
    while (half < len && text[half] != ' ') half++;
    const char *parts[2] = {text, text + half}, *swapped[2] = {text + half, text};
    size_t lens[2] = {half, len - half}, swapped_lens[2] = {len - half, half};
    etm_bpe_stats st;
    etm_merges m1 = train((const char *const *)&text, &len, 1, 1000, &st);
    etm_merges m2 = train((const char *const *)&text, &len, 1, 1000, NULL);
    etm_merges m3 = train(swapped, swapped_lens, 2, 1000, NULL);
    etm_merges m4 = train(parts, lens, 2, 1000, NULL);
    char *f1 = format_merges(&m1), *f2 = format_merges(&m2), *f3 = format_merges(&m3), *f4 = format_merges(&m4);
    ck_assert_uint_eq(m1.n, 1000 - 257);
    ck_assert_str_eq(f1, f2);
    ck_assert_str_eq(f3, f4); /* the order of texts does not matter (cutting them at a space might) */
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_from_merges(f1, strlen(f1), "trained", &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 1000);
    size_t n;
    int32_t *ids = etm_tokenizer_encode(tok, text, len, &n);
    ck_assert_uint_lt(n, len / 3); /* it did learn: well under one token per byte */
    free(ids);
    for (size_t f = 0; f < ETM_ARRAY_LEN(fixtures); f++) {
        size_t flen;
        char *ft = read_fixture(fixtures[f], "txt", &flen);
        assert_round_trip(tok, ft, flen);
        free(ft);
    }
    etm_tokenizer_free(tok);
    /* Written and read back through a file. */
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/t.bpe", dir);
    ck_assert_int_eq(etm_write_file_atomic(path, f1, strlen(f1), &err), 0);
    tok = load(path);
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 1000);
    etm_tokenizer_free(tok);
    remove(path);
    rmdir(dir);
    free(f1);
    free(f2);
    free(f3);
    free(f4);
    etm_merges_free(&m1);
    etm_merges_free(&m2);
    etm_merges_free(&m3);
    etm_merges_free(&m4);
    free(text);
}
END_TEST

START_TEST(shipped_austen_tokenizer_loads) {
    etm_tokenizer *tok = load("austen");
    ck_assert_int_eq(etm_tokenizer_vocab_size(tok), 4096);
    ck_assert_int_eq(etm_tokenizer_eot(tok), 4095);
    size_t len, n;
    char *text = read_fixture("austen_slice", "txt", &len);
    assert_round_trip(tok, text, len);
    int32_t *ids = etm_tokenizer_encode(tok, text, len, &n);
    ck_assert_uint_lt(n, len / 3);
    free(ids);
    free(text);
    etm_tokenizer_free(tok);
}
END_TEST

/* ---- the verbs -------------------------------------------------------------------------------- */

static const char *etmoe_bin(void) {
    const char *b = getenv("ETMOE");
    return b && *b ? b : ETM_TEST_BIN;
}

static int run(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    ck_assert_msg(st != -1 && WIFEXITED(st), "could not run: %s", cmd);
    return WEXITSTATUS(st);
}

START_TEST(verbs_encode_decode_and_exit_codes) {
    const char *bin = etmoe_bin();
    char dir[256], fx[1024], out[512];
    test_tmpdir(dir, sizeof dir);
    fixture_dir(fx, sizeof fx);
    etm_error err = {{0}};
    size_t len, ref_len, got_len;

    /* ids out are the reference file byte for byte; decoding them gives the text back */
    ck_assert_int_eq(run("%s tokenize --tokenizer gpt2 < %s/special.txt > %s/ids", bin, fx, dir), 0);
    snprintf(out, sizeof out, "%s/ids", dir);
    char *got = etm_read_file(out, &got_len, &err), *ref = read_fixture("special", "ids", &ref_len);
    ck_assert_ptr_nonnull(got);
    ck_assert_str_eq(got, ref);
    free(got);
    free(ref);
    ck_assert_int_eq(run("%s tokenize -t gpt2 --decode < %s/ids > %s/back", bin, dir, dir), 0);
    snprintf(out, sizeof out, "%s/back", dir);
    got = etm_read_file(out, &got_len, &err);
    ref = read_fixture("special", "txt", &ref_len);
    ck_assert_uint_eq(got_len, ref_len);
    ck_assert(memcmp(got, ref, ref_len) == 0);
    free(got);
    free(ref);
    ck_assert_int_eq(run("%s tokenize --bench -t gpt2 %s/code.txt %s/emoji.txt > %s/bench", bin, fx, fx, dir), 0);
    snprintf(out, sizeof out, "%s/bench", dir);
    got = etm_read_file(out, &len, &err);
    ck_assert_ptr_nonnull(strstr(got, "MB/s"));
    ck_assert_ptr_nonnull(strstr(got, "tokens/s"));
    ck_assert_ptr_null(strstr(got, "FAILED"));
    free(got);

    /* train, then use the result */
    ck_assert_int_eq(run("%s tokenizer train --vocab-size 400 --out %s/t.bpe %s/prose_english.txt %s/code.txt 2>/dev/null",
                         bin, dir, fx, fx), 0);
    ck_assert_int_eq(run("echo 'The keeper' | %s tokenize -t %s/t.bpe > %s/ids", bin, dir, dir), 0);

    /* usage errors: exit 2; failures while running: exit 1; --help: 0 */
    ck_assert_int_eq(run("%s tokenize --help > /dev/null", bin), 0);
    ck_assert_int_eq(run("%s tokenizer --help > /dev/null", bin), 0);
    ck_assert_int_eq(run("%s tokenizer train --help > /dev/null", bin), 0);
    ck_assert_int_eq(run("%s tokenize --no-such-option 2>/dev/null", bin), 2);
    ck_assert_int_eq(run("%s tokenize --tokenizer 2>/dev/null", bin), 2);
    ck_assert_int_eq(run("%s tokenize -t no_such_tokenizer < /dev/null 2>/dev/null", bin), 2);
    ck_assert_int_eq(run("%s tokenize -t %s/missing.bpe < /dev/null 2>/dev/null", bin, dir), 2);
    ck_assert_int_eq(run("%s tokenize --bench %s/missing.txt 2>/dev/null", bin, dir), 2);
    ck_assert_int_eq(run("%s tokenize stray < /dev/null 2>/dev/null", bin), 2);
    ck_assert_int_eq(run("%s tokenizer 2>/dev/null", bin), 2);
    ck_assert_int_eq(run("%s tokenizer untrain 2>/dev/null", bin), 2);
    ck_assert_int_eq(run("%s tokenizer train --out %s/x.bpe %s/missing.txt 2>/dev/null", bin, dir, dir), 2);
    ck_assert_int_eq(run("%s tokenizer train %s/code.txt 2>/dev/null", bin, fx), 2);
    ck_assert_int_eq(run("%s tokenizer train --vocab-size 12 --out %s/x.bpe %s/code.txt 2>/dev/null", bin, dir, fx), 2);
    ck_assert_int_eq(run("echo '1 2 50257' | %s tokenize --decode 2>/dev/null", bin), 1);
    ck_assert_int_eq(run("echo '1 two' | %s tokenize --decode 2>/dev/null", bin), 1);
    ck_assert_int_eq(run("printf 'h e\\n' > %s/bad.bpe && echo x | %s tokenize -t %s/bad.bpe 2>/dev/null", dir, bin, dir), 1);
    ck_assert_int_eq(run("rm -rf %s", dir), 0);
}
END_TEST

static Suite *tokenizer_suite(void) {
    Suite *s = suite_create("tokenizer");
    TCase *t = tcase_create("gpt2");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, gpt2_matches_js_tiktoken_on_every_fixture);
    tcase_add_test(t, gpt2_known_ids);
    tcase_add_test(t, presplit_follows_gpt2_regex);
    tcase_add_test(t, utf8_maximal_subparts);
    tcase_add_test(t, invalid_utf8_pieces_align_with_replaced_text);
    tcase_add_test(t, random_bytes_round_trip);
    tcase_add_test(t, bpe_matches_reference_loop);
    tcase_add_test(t, load_rejects_missing_and_corrupt_files);
    tcase_add_test(t, decode_rejects_ids_outside_vocabulary);
    suite_add_tcase(s, t);
    TCase *tr = tcase_create("train");
    tcase_set_timeout(tr, 120);
    tcase_add_test(tr, trainer_first_merges_by_hand);
    tcase_add_test(tr, trainer_matches_slow_reference);
    tcase_add_test(tr, trainer_is_deterministic_and_round_trips);
    tcase_add_test(tr, shipped_austen_tokenizer_loads);
    suite_add_tcase(s, tr);
    TCase *v = tcase_create("verbs");
    tcase_set_timeout(v, 120);
    tcase_add_test(v, verbs_encode_decode_and_exit_codes);
    suite_add_tcase(s, v);
    return s;
}

int main(void) { return test_run_suite(tokenizer_suite()); }
