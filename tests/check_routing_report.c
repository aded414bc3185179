/* check_routing_report.c: tests of the routing report (src/diagnostics/routing_report.h): token kinds, every
 * count against a slow per-token reference on random masks, EC cut-offs against their defining
 * property, the written tables read back, the passage layout, and the errors. */
#include "backend.h"
#include "checkpoint.h"
#include "common.h"
#include "hparams.h"
#include "loader.h"
#include "model.h"
#include "rng.h"
#include "shard.h"
#include "routing_report.h"
#include "testutil.h"
#include "tokenizer.h"

#include <math.h>
#include <stdarg.h>
#include <sys/wait.h>

static etm_tokenizer *austen_tokenizer(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/austen.bpe", test_data_dir());
    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_load(path, &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    return tok;
}

/* The id of a text that the tokenizer encodes as exactly one token. */
static int32_t single_token(const etm_tokenizer *tok, const char *text) {
    size_t n = 0;
    int32_t *ids = etm_tokenizer_encode(tok, text, strlen(text), &n);
    ck_assert_msg(n == 1, "'%s' is %zu tokens", text, n);
    int32_t id = ids[0];
    free(ids);
    return id;
}

START_TEST(token_kinds) {
    static const struct {
        const char *s;
        etm_token_kind k;
    } cases[] = {
        {"the", ETM_TOKEN_WORD},       {" Elizabeth", ETM_TOKEN_WORD}, {"don't", ETM_TOKEN_WORD},
        {"ing", ETM_TOKEN_WORD},       {" well-bred", ETM_TOKEN_WORD}, {"'s", ETM_TOKEN_OTHER},
        {"-", ETM_TOKEN_PUNCT},        {".", ETM_TOKEN_PUNCT},         {" \"", ETM_TOKEN_PUNCT},
        {"--", ETM_TOKEN_PUNCT},       {".\"", ETM_TOKEN_PUNCT},       {"1811", ETM_TOKEN_NUMBER},
        {" 3", ETM_TOKEN_NUMBER},      {"1,000", ETM_TOKEN_NUMBER},    {"1.", ETM_TOKEN_OTHER},
        {"\n", ETM_TOKEN_SPACE},       {"\n\n", ETM_TOKEN_SPACE},      {"  ", ETM_TOKEN_SPACE},
        {"  the", ETM_TOKEN_OTHER},    {"\nthe", ETM_TOKEN_OTHER},     {"a1", ETM_TOKEN_OTHER},
        {"\xC3\xA9", ETM_TOKEN_OTHER}, {"", ETM_TOKEN_OTHER},          {"the,", ETM_TOKEN_OTHER},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++)
        ck_assert_msg(etm_token_kind_of(cases[i].s, strlen(cases[i].s)) == cases[i].k, "'%s': got %s, want %s",
                      cases[i].s, etm_token_kind_name(etm_token_kind_of(cases[i].s, strlen(cases[i].s))),
                      etm_token_kind_name(cases[i].k));
    ck_assert_str_eq(etm_token_kind_name(ETM_TOKEN_PUNCT), "punctuation");
}
END_TEST

START_TEST(token_text_is_tsv_safe) {
    etm_tokenizer *tok = austen_tokenizer();
    etm_routing_report_config cfg = {1, 4, 8, etm_tokenizer_vocab_size(tok), 1, 0};
    etm_error err = {{0}};
    etm_routing_report *r = etm_routing_report_create(&cfg, tok, &err);
    ck_assert_msg(r != NULL, "%s", err.msg);
    ck_assert_str_eq(r->text[single_token(tok, "\"")], "\xE2\x80\x9D");
    ck_assert_str_eq(r->text[single_token(tok, "\t")], "\\t");
    ck_assert_str_eq(r->text[single_token(tok, "\\")], "\\\\");
    ck_assert_str_eq(r->text[single_token(tok, "\n")], "\\n");
    ck_assert_str_eq(r->text[single_token(tok, "\xFF")], "\\xFF");
    ck_assert_str_eq(r->text[single_token(tok, " the")], " the");
    ck_assert_str_eq(r->text[etm_tokenizer_eot(tok)], "<|endoftext|>");
    ck_assert_int_eq(r->kind[etm_tokenizer_eot(tok)], ETM_TOKEN_OTHER);
    ck_assert_int_eq(r->kind[single_token(tok, " the")], ETM_TOKEN_WORD);
    etm_routing_report_free(r);
    etm_tokenizer_free(tok);
}
END_TEST

/* Random batches: per layer a mask where each (token, expert) is on with probability p (some
 * tokens get none, some several), logits N(0,1) with deliberate ties. */
typedef struct {
    int L, E, B, T, N;
    int32_t *tokens;
    uint8_t **masks;
    float **logits;
    float **thresholds;
} fake_batch;

static fake_batch fake_make(etm_rng *rng, int L, int E, int B, int T, int V) {
    fake_batch f = {L, E, B, T, B * T, NULL, NULL, NULL, NULL};
    f.tokens = etm_malloc((size_t)f.N * sizeof(int32_t));
    for (int n = 0; n < f.N; n++) f.tokens[n] = (int32_t)etm_rng_below(rng, (uint64_t)V);
    f.masks = etm_malloc((size_t)L * sizeof *f.masks);
    f.logits = etm_malloc((size_t)L * sizeof *f.logits);
    f.thresholds = etm_malloc((size_t)L * sizeof *f.thresholds);
    for (int l = 0; l < L; l++) {
        f.masks[l] = etm_malloc((size_t)f.N * E);
        f.logits[l] = etm_malloc((size_t)f.N * E * sizeof(float));
        f.thresholds[l] = etm_malloc((size_t)E * sizeof(float));
        for (int i = 0; i < f.N * E; i++) {
            f.masks[l][i] = etm_rng_uniform(rng) < 0.2f;
            /* quantised so that equal values (ties) occur */
            f.logits[l][i] = roundf(etm_rng_normal(rng) * 4) / 4;
        }
        for (int e = 0; e < E; e++) f.thresholds[l][e] = 0.1f * (float)(l + e);
    }
    return f;
}

static void fake_free(fake_batch *f) {
    for (int l = 0; l < f->L; l++) {
        free(f->masks[l]);
        free(f->logits[l]);
        free(f->thresholds[l]);
    }
    free(f->masks);
    free(f->logits);
    free(f->thresholds);
    free(f->tokens);
}

/* A view of f with cut-offs over pools of pool tokens at top_k = 1 (k_target = pool / E). */
static etm_routing_batch fake_view(const fake_batch *f, int pool) {
    int P = pool > 0 ? pool : f->N;
    etm_routing_batch b = {f->tokens, f->B, f->T, (const uint8_t *const *)f->masks,
                           (const float *const *)f->logits, (const float *const *)f->thresholds, pool,
                           ETM_MAX(1, P / f->E)};
    return b;
}

START_TEST(counts_match_a_per_token_reference) {
    etm_tokenizer *tok = austen_tokenizer();
    const int L = 3, E = 5, T = 16, V = etm_tokenizer_vocab_size(tok), NB = 3, B = 4;
    etm_routing_report_config cfg = {L, E, T, V, 1, 40};
    etm_error err = {{0}};
    etm_routing_report *r = etm_routing_report_create(&cfg, tok, &err);
    ck_assert_msg(r != NULL, "%s", err.msg);
    etm_rng rng;
    etm_rng_seed(&rng, 42);
    int64_t pos_tok[16] = {0}, pos_pairs[16] = {0}, pos_zero[16] = {0}, load[3][5] = {{0}},
            hist[3][6] = {{0}}, kind_tok[ETM_TOKEN_N_KINDS] = {0}, kind_pairs[ETM_TOKEN_N_KINDS] = {0};
    int64_t *vt = etm_calloc((size_t)V, sizeof(int64_t)), *vp = etm_calloc((size_t)V, sizeof(int64_t));
    int first_ids[40], first_pairs[40], kept = 0;
    double gate_sum[3] = {0};
    int64_t gate_pairs[3] = {0};
    for (int bi = 0; bi < NB; bi++) {
        fake_batch f = fake_make(&rng, L, E, B, T, V);
        etm_routing_batch b = fake_view(&f, 2 * T);
        ck_assert_msg(etm_routing_report_add(r, &b, &err) == 0, "%s", err.msg);
        for (int n = 0; n < f.N; n++) {
            int pairs = 0;
            for (int l = 0; l < L; l++) {
                int c = 0;
                for (int e = 0; e < E; e++) {
                    c += f.masks[l][n * E + e];
                    load[l][e] += f.masks[l][n * E + e];
                    if (f.masks[l][n * E + e]) {
                        gate_sum[l] += 1.0 / (1.0 + exp(-(double)f.logits[l][n * E + e]));
                        gate_pairs[l]++;
                    }
                }
                hist[l][c]++;
                pairs += c;
                pos_zero[n % T] += c == 0;
            }
            pos_tok[n % T]++;
            pos_pairs[n % T] += pairs;
            size_t len = 0;
            const char *bytes = etm_tokenizer_token_bytes(tok, f.tokens[n], &len);
            etm_token_kind k = f.tokens[n] == etm_tokenizer_eot(tok) ? ETM_TOKEN_OTHER : etm_token_kind_of(bytes, len);
            kind_tok[k]++;
            kind_pairs[k] += pairs;
            vt[f.tokens[n]]++;
            vp[f.tokens[n]] += pairs;
            if (kept < 40) first_ids[kept] = f.tokens[n], first_pairs[kept++] = pairs;
        }
        /* batch rows of this batch: load, and the cut-off's defining property per pool */
        for (int l = 0; l < L; l++)
            for (int e = 0; e < E; e++) {
                const etm_routing_batch_row *row = &r->batch_rows[(size_t)bi * L * E + (size_t)l * E + e];
                ck_assert_int_eq(row->batch, bi);
                ck_assert_int_eq(row->layer, l);
                ck_assert_int_eq(row->expert, e);
                ck_assert_int_eq(row->pool_tokens, 2 * T);
                ck_assert_int_eq(row->batch_tokens, f.N);
                int64_t ld = 0;
                for (int n = 0; n < f.N; n++) ld += f.masks[l][n * E + e];
                ck_assert_int_eq(row->load, ld);
                ck_assert_float_eq(row->threshold, f.thresholds[l][e]);
                double sum = 0;
                int kt = 2 * T * 1 / E;
                for (int p0 = 0; p0 < f.N; p0 += 2 * T) {
                    /* c is the kt-th largest: >= c at least kt values, > c fewer than kt; among
                     * the pool's values the unique such c */
                    float c = NAN;
                    for (int i = 0; i < 2 * T; i++) {
                        float x = f.logits[l][(p0 + i) * E + e];
                        int ge = 0, gt = 0;
                        for (int j = 0; j < 2 * T; j++) {
                            float y = f.logits[l][(p0 + j) * E + e];
                            ge += y >= x;
                            gt += y > x;
                        }
                        if (ge >= kt && gt < kt) c = x;
                    }
                    ck_assert(!isnan(c));
                    sum += c;
                }
                ck_assert_double_eq_tol(row->cutoff, sum / (f.N / (2 * T)), 1e-12);
            }
        fake_free(&f);
    }
    ck_assert_int_eq(r->tokens, (int64_t)NB * B * T);
    ck_assert_int_eq(r->n_batches, NB);
    ck_assert_uint_eq(r->n_batch_rows, (size_t)NB * L * E);
    int64_t all_pairs = 0, all_zero = 0;
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(r->pos_tokens[t], pos_tok[t]);
        ck_assert_int_eq(r->pos_pairs[t], pos_pairs[t]);
        ck_assert_int_eq(r->pos_zero[t], pos_zero[t]);
        all_pairs += pos_pairs[t];
        all_zero += pos_zero[t];
    }
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++) ck_assert_int_eq(r->layer_load[l * E + e], load[l][e]);
        for (int c = 0; c <= E; c++) ck_assert_int_eq(r->layer_hist[l * (E + 1) + c], hist[l][c]);
        ck_assert_int_eq(r->layer_gate_pairs[l], gate_pairs[l]);
        ck_assert_double_eq_tol(r->layer_gate_sum[l], gate_sum[l], 1e-9);
    }
    for (int k = 0; k < ETM_TOKEN_N_KINDS; k++) {
        ck_assert_int_eq(r->kind_tokens[k], kind_tok[k]);
        ck_assert_int_eq(r->kind_pairs[k], kind_pairs[k]);
    }
    for (int v = 0; v < V; v++) {
        ck_assert_int_eq(r->vocab_tokens[v], vt[v]);
        ck_assert_int_eq(r->vocab_pairs[v], vp[v]);
    }
    ck_assert_int_eq(r->n_passage, 40);
    for (int i = 0; i < 40; i++) {
        ck_assert_int_eq(r->passage_ids[i], first_ids[i]);
        ck_assert_int_eq(r->passage_pairs[i], first_pairs[i]);
    }
    ck_assert_double_eq_tol(etm_routing_report_mean_experts(r), (double)all_pairs / (NB * B * T * L), 1e-12);
    ck_assert_double_eq_tol(etm_routing_report_zero_fraction(r), (double)all_zero / (NB * B * T * L), 1e-12);
    free(vt);
    free(vp);
    etm_routing_report_free(r);
    etm_tokenizer_free(tok);
}
END_TEST

/* Reads a TSV written by the report: data lines (not '#') as an array of lines. */
static char **read_lines(const char *dir, const char *name, int *n_out) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    etm_error err = {{0}};
    size_t len = 0;
    char *text = etm_read_file(path, &len, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    ck_assert_msg(text[0] == '#', "%s has no header line", name);
    char **lines = etm_malloc((len + 1) * sizeof *lines);
    int n = 0;
    for (char *s = strtok(text, "\n"); s; s = strtok(NULL, "\n"))
        if (s[0] != '#') lines[n++] = etm_strdup(s);
    free(text);
    *n_out = n;
    return lines;
}

/* The text after the fifth tab of a passage line (sscanf would skip its leading spaces). */
static const char *passage_text(const char *line) {
    for (int tabs = 0; tabs < 5; tabs++) {
        line = strchr(line, '\t');
        ck_assert_ptr_nonnull(line);
        line++;
    }
    return line;
}

static void free_lines(char **lines, int n) {
    for (int i = 0; i < n; i++) free(lines[i]);
    free(lines);
}

START_TEST(tables_read_back) {
    etm_tokenizer *tok = austen_tokenizer();
    const int L = 2, E = 4, T = 8, V = etm_tokenizer_vocab_size(tok);
    etm_routing_report_config cfg = {L, E, T, V, 1, 8};
    etm_error err = {{0}};
    etm_routing_report *r = etm_routing_report_create(&cfg, tok, &err);
    ck_assert_msg(r != NULL, "%s", err.msg);
    /* one batch of 2 sequences: token n goes to (n % 3) experts in layer 0 and to 1 in layer 1 */
    int32_t tokens[16];
    uint8_t m0[16 * 4] = {0}, m1[16 * 4] = {0};
    for (int n = 0; n < 16; n++) {
        tokens[n] = single_token(tok, n % 2 ? "." : " the");
        for (int e = 0; e < n % 3; e++) m0[n * E + e] = 1;
        m1[n * E + (n % E)] = 1;
    }
    const uint8_t *masks[2] = {m0, m1};
    etm_routing_batch b = {tokens, 2, T, masks, NULL, NULL, 0, 0};
    ck_assert_msg(etm_routing_report_add(r, &b, &err) == 0, "%s", err.msg);
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    ck_assert_msg(etm_routing_report_write(r, dir, 1, 20, &err) == 0, "%s", err.msg);

    int n;
    char **lines = read_lines(dir, "position.tsv", &n);
    ck_assert_int_eq(n, T);
    for (int t = 0; t < T; t++) {
        int pos;
        long long cnt;
        double mean, zero;
        ck_assert_int_eq(sscanf(lines[t], "%d\t%lld\t%lf\t%lf", &pos, &cnt, &mean, &zero), 4);
        /* positions t and t+8: experts (t%3 + 1) and ((t+8)%3 + 1) over two layers */
        double want = ((t % 3 + 1) + ((t + 8) % 3 + 1)) / 4.0;
        double want_zero = ((t % 3 == 0) + ((t + 8) % 3 == 0)) / 4.0;
        ck_assert_int_eq(pos, t);
        ck_assert_int_eq(cnt, 2);
        ck_assert_double_eq_tol(mean, want, 1e-6);
        ck_assert_double_eq_tol(zero, want_zero, 1e-6);
    }
    free_lines(lines, n);

    lines = read_lines(dir, "kind.tsv", &n);
    ck_assert_int_eq(n, ETM_TOKEN_N_KINDS);
    ck_assert(strncmp(lines[0], "word\t8\t0.5\t", 11) == 0);
    ck_assert(strncmp(lines[2], "punctuation\t8\t0.5\t", 18) == 0);
    free_lines(lines, n);

    lines = read_lines(dir, "layers.tsv", &n);
    ck_assert_int_eq(n, L);
    /* layer 1: every expert has 4 tokens: max/mean = min/mean = 1; nobody at zero */
    ck_assert_str_eq(lines[1], "1\t16\t1\t0\t1\t0\t0\t1\t1\tNaN\t4\t4\t4\t4"); /* no logits: no gate */
    free_lines(lines, n);

    lines = read_lines(dir, "batches.tsv", &n);
    ck_assert_int_eq(n, L * E);
    ck_assert_str_eq(lines[L * E - 1], "0\t1\t3\t16\t4\t0.25\tNaN\tNaN");
    free_lines(lines, n);

    lines = read_lines(dir, "tokens.tsv", &n);
    ck_assert_int_eq(n, 2);
    free_lines(lines, n);

    /* passage: " the." repeated; width 20 columns: " the" (4) + "." (1) = 5 per pair, so four
     * pairs per line, and no line runs past 20 */
    lines = read_lines(dir, "passage.tsv", &n);
    ck_assert_int_eq(n, 8);
    for (int i = 0; i < n; i++) {
        int idx, line, col, width;
        double experts;
        ck_assert_int_eq(sscanf(lines[i], "%d\t%d\t%d\t%d\t%lf", &idx, &line, &col, &width, &experts), 5);
        ck_assert_str_eq(passage_text(lines[i]), i % 2 ? "." : " the");
        ck_assert_int_eq(idx, i);
        ck_assert_int_eq(line, 0);
        ck_assert_int_le(col + width, 20);
        ck_assert_double_eq_tol(experts, ((i % 3) + 1) / 2.0, 1e-6);
    }
    free_lines(lines, n);
    etm_routing_report_free(r);
    etm_tokenizer_free(tok);
}
END_TEST

/* Lays out text as a one-sequence passage with the given width and rebuilds its lines from
 * passage.tsv (checking each piece starts where the line so far ends); returns the line count. */
static int passage_lines(const char *text, int width, char rebuilt[8][128]) {
    etm_tokenizer *tok = austen_tokenizer();
    size_t N = 0;
    int32_t *ids = etm_tokenizer_encode(tok, text, strlen(text), &N);
    const int T = (int)N;
    etm_routing_report_config cfg = {1, 2, T, etm_tokenizer_vocab_size(tok), 1, T};
    etm_error err = {{0}};
    etm_routing_report *r = etm_routing_report_create(&cfg, tok, &err);
    uint8_t *mask = etm_calloc((size_t)T * 2, 1);
    const uint8_t *masks[1] = {mask};
    etm_routing_batch b = {ids, 1, T, masks, NULL, NULL, 0, 0};
    ck_assert_msg(etm_routing_report_add(r, &b, &err) == 0, "%s", err.msg);
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    ck_assert_msg(etm_routing_report_write(r, dir, 1, width, &err) == 0, "%s", err.msg);
    int n, n_lines = 0;
    char **lines = read_lines(dir, "passage.tsv", &n);
    memset(rebuilt, 0, 8 * 128);
    for (int i = 0; i < n; i++) {
        int idx, line, col, w;
        double experts;
        ck_assert_int_eq(sscanf(lines[i], "%d\t%d\t%d\t%d\t%lf", &idx, &line, &col, &w, &experts), 5);
        const char *piece = passage_text(lines[i]);
        ck_assert_int_lt(line, 8);
        /* columns count characters: the return sign is 3 bytes, 1 column, and only ends lines */
        ck_assert_int_eq((int)strlen(rebuilt[line]), col);
        ck_assert_int_eq(w, (int)strlen(piece) - (strstr(piece, "\xE2\x86\xB5") ? 2 : 0));
        strcat(rebuilt[line], piece);
        n_lines = ETM_MAX(n_lines, line + 1);
    }
    free_lines(lines, n);
    free(mask);
    free(ids);
    etm_routing_report_free(r);
    etm_tokenizer_free(tok);
    return n_lines;
}

START_TEST(passage_breaks_lines) {
    char rebuilt[8][128];
    const char *text = "Emma Woodhouse, handsome, clever, and rich,\n\nwith a comfortable home";
    ck_assert_int_eq(passage_lines(text, 30, rebuilt), 4);
    ck_assert_str_eq(rebuilt[0], "Emma Woodhouse, handsome,");
    ck_assert_str_eq(rebuilt[1], " clever, and rich,\xE2\x86\xB5");
    ck_assert_str_eq(rebuilt[2], "\xE2\x86\xB5");
    ck_assert_str_eq(rebuilt[3], "with a comfortable home");
    /* a line that fills the width exactly keeps its return sign */
    ck_assert_int_eq(passage_lines("Emma Woodhouse, handsome,\nclever", 25, rebuilt), 2);
    ck_assert_str_eq(rebuilt[0], "Emma Woodhouse, handsome,\xE2\x86\xB5");
    ck_assert_str_eq(rebuilt[1], "clever");
}
END_TEST

START_TEST(bad_batches_are_refused) {
    etm_tokenizer *tok = austen_tokenizer();
    const int E = 4, T = 8, V = etm_tokenizer_vocab_size(tok);
    etm_routing_report_config cfg = {1, E, T, V, 1, 0};
    etm_error err = {{0}};
    etm_routing_report *r = etm_routing_report_create(&cfg, tok, &err);
    int32_t tokens[16] = {0};
    uint8_t m[16 * 4] = {0};
    const uint8_t *masks[1] = {m};
    etm_routing_batch b = {tokens, 2, T, masks, NULL, NULL, 0, 0};
    b.pool_tokens = 5;
    ck_assert_int_eq(etm_routing_report_add(r, &b, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "does not divide"));
    b.pool_tokens = 0;
    tokens[3] = V;
    ck_assert_int_eq(etm_routing_report_add(r, &b, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "token 3"));
    tokens[3] = 0;
    m[9] = 2;
    ck_assert_int_eq(etm_routing_report_add(r, &b, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "token 2, expert 1"));
    m[9] = 0;
    b.T = 4;
    ck_assert_int_eq(etm_routing_report_add(r, &b, &err), -1);
    ck_assert_int_eq(r->tokens, 0); /* nothing was counted by the refused calls */
    etm_routing_report_free(r);
    cfg.top_k = 5;
    ck_assert_ptr_null(etm_routing_report_create(&cfg, tok, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "top_k 5"));
    cfg.top_k = 1;
    cfg.vocab_size = V + 1;
    ck_assert_ptr_null(etm_routing_report_create(&cfg, tok, &err));
    etm_tokenizer_free(tok);
}
END_TEST


/* ---- the verb: etmoe routing-profile ------------------------------------------------------ */

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

/* summary.tsv's value of key, as a number. */
static double summary_value(const char *dir, const char *key) {
    int n;
    char **lines = read_lines(dir, "summary.tsv", &n);
    double v = NAN;
    size_t k = strlen(key);
    for (int i = 0; i < n; i++)
        if (!strncmp(lines[i], key, k) && lines[i][k] == '\t') v = strtod(lines[i] + k + 1, NULL);
    free_lines(lines, n);
    ck_assert_msg(!isnan(v), "summary.tsv has no %s", key);
    return v;
}

/* A tiny ET model (untrained, thresholds set by hand so that tokens get 0 to 4 experts), saved as
 * a checkpoint, and a validation shard of Austen text; the verb's tables must agree with routing
 * the same batches here. */
START_TEST(verb_matches_the_model) {
    char dir[256], path[512], ckpt[512], out[512];
    test_tmpdir(dir, sizeof dir);
    etm_error err = {{0}};
    etm_hparams hp = test_tiny_hparams(ETM_ROUTER_ET);
    hp.vocab_size = 4096; /* the austen tokenizer's */
    hp.seq_len = 16;
    hp.d_model = 32;
    hp.ffn_hidden = 128;
    hp.expert_hidden = 64;
    hp.batch_size = 4;
    snprintf(hp.tokenizer, sizeof hp.tokenizer, "%s/tokenizers/austen.bpe", test_data_dir());
    snprintf(hp.val_data, sizeof hp.val_data, "%s/val_*.bin", dir);
    ck_assert_msg(etm_hparams_validate(&hp, &err) == 0, "%s", err.msg);

    /* validation text: the start of Persuasion, 3 batches' worth and a bit */
    snprintf(path, sizeof path, "%s/austen/persuasion.txt", test_data_dir());
    size_t len = 0, n_ids = 0;
    char *text = etm_read_file(path, &len, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    etm_tokenizer *tok = austen_tokenizer();
    int32_t *ids = etm_tokenizer_encode(tok, text, 4000, &n_ids);
    ck_assert_uint_gt(n_ids, 3 * 4 * 16 + 1);
    snprintf(path, sizeof path, "%s/val_000000.bin", dir);
    ck_assert_msg(etm_shard_write(path, ids, 3 * 4 * 16 + 1, &err) == 0, "%s", err.msg);

    etm_backend *be = etm_backend_create("cpu", &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    etm_model *m = etm_model_create(be, &hp, hp.batch_size, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    float thr[4] = {-0.5f, 0.0f, 0.3f, 1.0f}, zeros[4] = {0};
    int64_t counters[2] = {5, 5}; /* past warm-up: thresholds route */
    for (int l = 0; l < hp.n_layer; l++)
        if (m->moe[l]) etm_moe_set_state(m->moe[l], thr, thr, zeros, counters);
    snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", dir);
    ck_assert_msg(etm_checkpoint_save(ckpt, m, NULL, NULL, &err) == 0, "%s", err.msg);

    /* the reference: the same three batches routed here */
    etm_loader *ld = etm_loader_open(hp.val_data, 4, 16, hp.seed, 0, hp.vocab_size, &err);
    ck_assert_msg(ld != NULL, "%s", err.msg);
    int32_t in[64], tg[64];
    int64_t pairs = 0, zero = 0, pos_pairs[16] = {0};
    double loss_sum = 0, gsum[3] = {0};
    int64_t gpairs[3] = {0};
    uint8_t mask[64 * 4];
    float logit[64 * 4];
    for (int b = 0; b < 3; b++) {
        double loss;
        ck_assert_msg(etm_loader_next(ld, in, tg, &err) == 0, "%s", err.msg);
        ck_assert_msg(etm_model_forward(m, in, tg, 4, 16, ETM_MOE_EVAL, &loss, &err) == 0, "%s", err.msg);
        for (int n = 0; n < 64; n++) loss_sum += m->host_losses[n];
        for (int l = 0; l < hp.n_layer; l++) {
            if (!m->moe[l]) continue;
            be->download(be, mask, etm_moe_mask(m->moe[l]), sizeof mask);
            be->download(be, logit, etm_moe_logits(m->moe[l]), sizeof logit);
            for (int n = 0; n < 64; n++) {
                int c = 0;
                for (int e = 0; e < 4; e++) {
                    c += mask[n * 4 + e];
                    if (mask[n * 4 + e]) {
                        gsum[l] += 1.0 / (1.0 + exp(-(double)logit[n * 4 + e]));
                        gpairs[l]++;
                    }
                }
                pairs += c;
                zero += c == 0;
                pos_pairs[n % 16] += c;
            }
        }
    }
    ck_assert_int_gt(zero, 0); /* the thresholds leave some tokens without an expert */

    snprintf(out, sizeof out, "%s/threshold", dir);
    ck_assert_int_eq(run("%s routing-profile %s --out %s --batches 99 --passage 30 --min-count 1 > /dev/null", etmoe_bin(),
                         ckpt, out),
                     0);
    ck_assert_double_eq(summary_value(out, "tokens"), 192);   /* 3 batches: the data holds no more */
    ck_assert_double_eq(summary_value(out, "batches"), 3);
    ck_assert_double_eq(summary_value(out, "moe_layers"), 2);
    ck_assert_double_eq_tol(summary_value(out, "mean_experts"), (double)pairs / (192 * 2), 1e-5);
    ck_assert_double_eq_tol(summary_value(out, "frac_zero"), (double)zero / (192 * 2), 1e-5);
    ck_assert_double_eq_tol(summary_value(out, "loss"), loss_sum / 192, 1e-5);
    ck_assert_double_eq_tol(summary_value(out, "mean_gate"), (gsum[1] + gsum[2]) / (double)(gpairs[1] + gpairs[2]), 1e-5);
    int n;
    char **lines = read_lines(out, "position.tsv", &n);
    ck_assert_int_eq(n, 16);
    for (int t = 0; t < 16; t++) {
        int pos;
        long long cnt;
        double mean;
        ck_assert_int_eq(sscanf(lines[t], "%d\t%lld\t%lf", &pos, &cnt, &mean), 3);
        ck_assert_int_eq(cnt, 12);
        ck_assert_double_eq_tol(mean, pos_pairs[t] / 24.0, 1e-5);
    }
    free_lines(lines, n);
    lines = read_lines(out, "batches.tsv", &n);
    ck_assert_int_eq(n, 3 * 2 * 4);
    for (int i = 0; i < n; i++) {
        double thr_read = strtod(strrchr(lines[i], '\t') + 1, NULL);
        ck_assert_double_eq_tol(thr_read, thr[i % 4], 1e-7);
    }
    free_lines(lines, n);

    /* batch mode: expert choice over each batch gives every expert exactly k_target = 64 / 4
     * tokens, so one expert per token on average; the checkpoint is left as it was */
    snprintf(out, sizeof out, "%s/batch", dir);
    ck_assert_int_eq(run("%s routing-profile %s --out %s --mode batch > /dev/null", etmoe_bin(), ckpt, out), 0);
    ck_assert_double_eq_tol(summary_value(out, "mean_experts"), 1.0, 1e-9);
    ck_assert_double_eq_tol(summary_value(out, "max_over_mean_load"), 1.0, 1e-9);
    lines = read_lines(out, "batches.tsv", &n);
    for (int i = 0; i < n; i++) {
        int batch, layer, expert, pool;
        long long load;
        ck_assert_int_eq(sscanf(lines[i], "%d\t%d\t%d\t%d\t%lld", &batch, &layer, &expert, &pool, &load), 5);
        ck_assert_int_eq(pool, 64);
        ck_assert_int_eq(load, 16);
    }
    free_lines(lines, n);

    /* usage errors and a dense model */
    ck_assert_int_eq(run("%s routing-profile %s 2> /dev/null", etmoe_bin(), ckpt), 2);
    ck_assert_int_eq(run("%s routing-profile %s --out %s --mode sideways 2> /dev/null", etmoe_bin(), ckpt, out), 2);
    ck_assert_int_eq(run("%s routing-profile %s/none --out %s 2> /dev/null", etmoe_bin(), dir, out), 2);
    etm_model_free(m);
    hp.router = ETM_ROUTER_DENSE;
    m = etm_model_create(be, &hp, hp.batch_size, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_msg(etm_checkpoint_save(ckpt, m, NULL, NULL, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(run("%s routing-profile %s --out %s 2> /dev/null", etmoe_bin(), ckpt, out), 1);

    etm_model_free(m);
    etm_loader_free(ld);
    etm_backend_free(be);
    etm_tokenizer_free(tok);
    free(ids);
    free(text);
}
END_TEST

int main(void) {
    Suite *s = suite_create("routing_report");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, token_kinds);
    tcase_add_test(tc, token_text_is_tsv_safe);
    tcase_add_test(tc, counts_match_a_per_token_reference);
    tcase_add_test(tc, tables_read_back);
    tcase_add_test(tc, passage_breaks_lines);
    tcase_add_test(tc, bad_batches_are_refused);
    tcase_add_test(tc, verb_matches_the_model);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
