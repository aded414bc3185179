/* routing_report.c: counting routed experts per token by position, token kind and id, expert
 * loads and EC cut-offs per batch, and writing them as TSV tables (see routing_report.h). */
#include "routing_report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- token kinds ------------------------------------------------------------------------- */

static int is_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_punct(unsigned char c) { return c > ' ' && c < 127 && !is_alpha(c) && !is_digit(c); }

/* s[0..n) is made of `core` characters, with `inner` characters allowed only between two core
 * characters. */
static int only_class(const unsigned char *s, size_t n, int (*core)(unsigned char), const char *inner) {
    if (n == 0 || !core(s[0]) || !core(s[n - 1])) return 0;
    for (size_t i = 1; i + 1 < n; i++)
        if (!core(s[i]) && !(inner && strchr(inner, s[i]) && core(s[i - 1]))) return 0;
    return 1;
}

etm_token_kind etm_token_kind_of(const char *bytes, size_t len) {
    const unsigned char *s = (const unsigned char *)bytes;
    if (len == 0) return ETM_TOKEN_OTHER;
    size_t i = 0;
    while (i < len && is_space(s[i])) i++;
    if (i == len) return ETM_TOKEN_SPACE;
    /* GPT-2's pre-split glues at most one space to the front of a word */
    if (i > 1 || (i == 1 && s[0] != ' ')) return ETM_TOKEN_OTHER;
    const unsigned char *b = s + i;
    size_t n = len - i;
    if (only_class(b, n, is_alpha, "'-")) return ETM_TOKEN_WORD;
    if (only_class(b, n, is_digit, ",.")) return ETM_TOKEN_NUMBER;
    for (size_t j = 0; j < n; j++)
        if (!is_punct(b[j])) return ETM_TOKEN_OTHER;
    return ETM_TOKEN_PUNCT;
}

const char *etm_token_kind_name(etm_token_kind kind) {
    static const char *const names[ETM_TOKEN_N_KINDS] = {"word", "number", "punctuation",
                                                          "whitespace", "other"};
    return (int)kind >= 0 && kind < ETM_TOKEN_N_KINDS ? names[kind] : "?";
}

/* ---- printable token text ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence starting at s (at most n bytes), 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    size_t k;
    if (s[0] < 0x80) return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) k = 2;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF) k = 3;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4) k = 4;
    else return 0;
    if (k > n) return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return k;
}

/* TSV-safe text: backslash, tab, CR, LF and other control bytes escaped C-style (\\, \t, \r, \n,
 * \xHH), bytes that are not valid UTF-8 as \xHH, and the double quote as U+201D so that gnuplot,
 * which treats a field starting with " as a quoted string, reads every field. */
static char *printable(const char *bytes, size_t len) {
    const unsigned char *s = (const unsigned char *)bytes;
    char *out = etm_malloc(4 * len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t k = utf8_len(s + i, len - i);
        if (c == '\\') o += (size_t)sprintf(out + o, "\\\\");
        else if (c == '\t') o += (size_t)sprintf(out + o, "\\t");
        else if (c == '\n') o += (size_t)sprintf(out + o, "\\n");
        else if (c == '\r') o += (size_t)sprintf(out + o, "\\r");
        else if (c == '"') o += (size_t)sprintf(out + o, "\xE2\x80\x9D");
        else if (c < 0x20 || c == 0x7F || k == 0) o += (size_t)sprintf(out + o, "\\x%02X", c);
        else {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
            continue;
        }
        i++;
    }
    out[o] = '\0';
    return out;
}

/* ---- lifetime ---------------------------------------------------------------------------- */

etm_routing_report *etm_routing_report_create(const etm_routing_report_config *cfg,
                                              const etm_tokenizer *tok, etm_error *err) {
    if (cfg->n_layers < 1 || cfg->n_experts < 1 || cfg->seq_len < 1 || cfg->vocab_size < 1 ||
        cfg->top_k < 1 || cfg->top_k > cfg->n_experts || cfg->passage_tokens < 0) {
        etm_fail(err, "routing report: bad sizes (layers %d, experts %d, seq_len %d, vocab %d, top_k %d, "
                 "passage %d)", cfg->n_layers, cfg->n_experts, cfg->seq_len, cfg->vocab_size,
                 cfg->top_k, cfg->passage_tokens);
        return NULL;
    }
    if (etm_tokenizer_vocab_size(tok) < cfg->vocab_size) {
        etm_fail(err, "routing report: the tokenizer has %d ids, the model %d", etm_tokenizer_vocab_size(tok),
                 cfg->vocab_size);
        return NULL;
    }
    etm_routing_report *r = etm_calloc(1, sizeof *r);
    r->cfg = *cfg;
    int L = cfg->n_layers, E = cfg->n_experts, T = cfg->seq_len, V = cfg->vocab_size;
    r->kind = etm_malloc((size_t)V);
    r->text = etm_calloc((size_t)V, sizeof *r->text);
    for (int v = 0; v < V; v++) {
        size_t n = 0;
        const char *b = etm_tokenizer_token_bytes(tok, v, &n);
        if (v == etm_tokenizer_eot(tok) || !b) {
            r->kind[v] = ETM_TOKEN_OTHER;
            r->text[v] = etm_strdup(b ? "<|endoftext|>" : "<invalid>");
        } else {
            r->kind[v] = (uint8_t)etm_token_kind_of(b, n);
            r->text[v] = printable(b, n);
        }
    }
    r->layer_load = etm_calloc((size_t)L * E, sizeof(int64_t));
    r->layer_hist = etm_calloc((size_t)L * (E + 1), sizeof(int64_t));
    r->layer_gate_sum = etm_calloc((size_t)L, sizeof(double));
    r->layer_gate_pairs = etm_calloc((size_t)L, sizeof(int64_t));
    r->pos_tokens = etm_calloc((size_t)T, sizeof(int64_t));
    r->pos_pairs = etm_calloc((size_t)T, sizeof(int64_t));
    r->pos_zero = etm_calloc((size_t)T, sizeof(int64_t));
    r->vocab_tokens = etm_calloc((size_t)V, sizeof(int64_t));
    r->vocab_pairs = etm_calloc((size_t)V, sizeof(int64_t));
    r->passage_ids = etm_calloc((size_t)cfg->passage_tokens + 1, sizeof(int32_t));
    r->passage_pairs = etm_calloc((size_t)cfg->passage_tokens + 1, sizeof(int));
    return r;
}

void etm_routing_report_free(etm_routing_report *r) {
    if (!r) return;
    if (r->text)
        for (int v = 0; v < r->cfg.vocab_size; v++) free(r->text[v]);
    free(r->text);
    free(r->kind);
    free(r->layer_load);
    free(r->layer_hist);
    free(r->layer_gate_sum);
    free(r->layer_gate_pairs);
    free(r->pos_tokens);
    free(r->pos_pairs);
    free(r->pos_zero);
    free(r->vocab_tokens);
    free(r->vocab_pairs);
    free(r->batch_rows);
    free(r->passage_ids);
    free(r->passage_pairs);
    free(r);
}

/* ---- counting ---------------------------------------------------------------------------- */

static int cmp_float_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y ? 1 : 0;
}

/* Mean over the pools of column e's kt-th largest value (logits (N, E), pools of P rows). */
static double mean_cutoff(const float *logits, int N, int E, int e, int P, int kt, float *scratch) {
    double sum = 0;
    for (int p0 = 0; p0 < N; p0 += P) {
        for (int i = 0; i < P; i++) scratch[i] = logits[(size_t)(p0 + i) * E + e];
        qsort(scratch, (size_t)P, sizeof *scratch, cmp_float_desc);
        sum += scratch[kt - 1];
    }
    return sum / (N / P);
}

int etm_routing_report_add(etm_routing_report *r, const etm_routing_batch *b, etm_error *err) {
    const etm_routing_report_config *c = &r->cfg;
    int L = c->n_layers, E = c->n_experts, T = c->seq_len;
    if (b->B < 1 || b->T != T)
        return etm_fail(err, "routing report: batch of %d x %d tokens, the model's sequences are %d", b->B,
                        b->T, T);
    int N = b->B * T;
    int P = b->pool_tokens > 0 ? b->pool_tokens : N;
    if (P > N || N % P != 0)
        return etm_fail(err, "routing report: a pool of %d tokens does not divide the batch of %d", P, N);
    if (b->logits && (b->k_target < 1 || b->k_target > P))
        return etm_fail(err, "routing report: k_target %d outside 1..%d (the pool)", b->k_target, P);
    for (int n = 0; n < N; n++)
        if (b->tokens[n] < 0 || b->tokens[n] >= c->vocab_size)
            return etm_fail(err, "routing report: token %d of the batch is %d, outside the vocabulary of %d",
                            n, (int)b->tokens[n], c->vocab_size);
    for (int l = 0; l < L; l++)
        for (size_t i = 0; i < (size_t)N * E; i++)
            if (b->masks[l][i] > 1)
                return etm_fail(err, "routing report: layer %d's mask holds %d at token %zu, expert %zu", l,
                                b->masks[l][i], i / (size_t)E, i % (size_t)E);

    for (int n = 0; n < N; n++) {
        int t = n % T, v = b->tokens[n], pairs = 0, zero = 0;
        for (int l = 0; l < L; l++) {
            const uint8_t *row = b->masks[l] + (size_t)n * E;
            int cnt = 0;
            for (int e = 0; e < E; e++) {
                cnt += row[e];
                r->layer_load[(size_t)l * E + e] += row[e];
            }
            r->layer_hist[(size_t)l * (E + 1) + cnt]++;
            pairs += cnt;
            zero += cnt == 0;
        }
        r->pos_tokens[t]++;
        r->pos_pairs[t] += pairs;
        r->pos_zero[t] += zero;
        r->kind_tokens[r->kind[v]]++;
        r->kind_pairs[r->kind[v]] += pairs;
        r->kind_zero[r->kind[v]] += zero;
        r->vocab_tokens[v]++;
        r->vocab_pairs[v] += pairs;
        if (r->n_passage < c->passage_tokens) {
            r->passage_ids[r->n_passage] = v;
            r->passage_pairs[r->n_passage] = pairs;
            r->n_passage++;
        }
    }
    r->tokens += N;
    if (b->logits)
        for (int l = 0; l < L; l++)
            for (size_t i = 0; i < (size_t)N * E; i++)
                if (b->masks[l][i]) {
                    r->layer_gate_sum[l] += 1.0 / (1.0 + exp(-(double)b->logits[l][i]));
                    r->layer_gate_pairs[l]++;
                }

    int kt = b->k_target;
    float *scratch = b->logits ? etm_malloc((size_t)P * sizeof(float)) : NULL;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            if (r->n_batch_rows == r->cap_batch_rows) {
                r->cap_batch_rows = r->cap_batch_rows ? 2 * r->cap_batch_rows : 256;
                r->batch_rows = etm_realloc(r->batch_rows, r->cap_batch_rows * sizeof *r->batch_rows);
            }
            etm_routing_batch_row *row = &r->batch_rows[r->n_batch_rows++];
            row->batch = r->n_batches;
            row->layer = l;
            row->expert = e;
            row->batch_tokens = N;
            row->pool_tokens = P;
            row->load = 0;
            for (int n = 0; n < N; n++) row->load += b->masks[l][(size_t)n * E + e];
            row->cutoff = b->logits ? mean_cutoff(b->logits[l], N, E, e, P, kt, scratch) : NAN;
            row->threshold = b->thresholds ? b->thresholds[l][e] : NAN;
        }
    free(scratch);
    r->n_batches++;
    return 0;
}

double etm_routing_report_mean_experts(const etm_routing_report *r) {
    if (r->tokens == 0) return NAN;
    int64_t pairs = 0;
    for (int t = 0; t < r->cfg.seq_len; t++) pairs += r->pos_pairs[t];
    return (double)pairs / ((double)r->tokens * r->cfg.n_layers);
}

double etm_routing_report_zero_fraction(const etm_routing_report *r) {
    if (r->tokens == 0) return NAN;
    int64_t zero = 0;
    for (int t = 0; t < r->cfg.seq_len; t++) zero += r->pos_zero[t];
    return (double)zero / ((double)r->tokens * r->cfg.n_layers);
}

/* ---- writing ----------------------------------------------------------------------------- */

static double ratio(int64_t a, int64_t b) { return b > 0 ? (double)a / (double)b : NAN; }

typedef struct {
    FILE *f;
    char tmp[4200];
    char path[4200];
} out_file;

static int out_open(out_file *o, const char *dir, const char *name, etm_error *err) {
    snprintf(o->path, sizeof o->path, "%s/%s", dir, name);
    o->f = etm_open_atomic(o->path, o->tmp, sizeof o->tmp, err);
    return o->f ? 0 : -1;
}

static int out_close(out_file *o, etm_error *err) { return etm_commit_atomic(o->f, o->tmp, o->path, err); }

static void print_float(FILE *f, double x) {
    if (isnan(x)) fprintf(f, "NaN");
    else fprintf(f, "%.7g", x);
}

static int write_layers(const etm_routing_report *r, const char *dir, etm_error *err) {
    int L = r->cfg.n_layers, E = r->cfg.n_experts;
    out_file o;
    if (out_open(&o, dir, "layers.tsv", err)) return -1;
    fprintf(o.f, "# layer\ttokens\tmean_experts\tfrac_zero\tfrac_one\tfrac_two\tfrac_three_plus\t"
                 "max_over_mean_load\tmin_over_mean_load\tmean_gate");
    for (int e = 0; e < E; e++) fprintf(o.f, "\tload_%d", e);
    fprintf(o.f, "\n");
    for (int l = 0; l < L; l++) {
        const int64_t *h = r->layer_hist + (size_t)l * (E + 1), *load = r->layer_load + (size_t)l * E;
        int64_t pairs = 0, mx = 0, mn = INT64_MAX, three = 0;
        for (int e = 0; e < E; e++) {
            pairs += load[e];
            mx = ETM_MAX(mx, load[e]);
            mn = ETM_MIN(mn, load[e]);
        }
        for (int k = 3; k <= E; k++) three += h[k];
        double mean_load = (double)pairs / E;
        fprintf(o.f, "%d\t%lld\t%.6g\t%.6g\t%.6g\t%.6g\t%.6g\t", l, (long long)r->tokens,
                ratio(pairs, r->tokens), ratio(h[0], r->tokens), ratio(h[1], r->tokens),
                E >= 2 ? ratio(h[2], r->tokens) : 0.0, ratio(three, r->tokens));
        print_float(o.f, mean_load > 0 ? mx / mean_load : NAN);
        fputc('\t', o.f);
        print_float(o.f, mean_load > 0 ? mn / mean_load : NAN);
        fputc('\t', o.f);
        print_float(o.f, r->layer_gate_pairs[l] ? r->layer_gate_sum[l] / (double)r->layer_gate_pairs[l] : NAN);
        for (int e = 0; e < E; e++) fprintf(o.f, "\t%lld", (long long)load[e]);
        fprintf(o.f, "\n");
    }
    return out_close(&o, err);
}

static int write_position(const etm_routing_report *r, const char *dir, etm_error *err) {
    out_file o;
    if (out_open(&o, dir, "position.tsv", err)) return -1;
    fprintf(o.f, "# position\ttokens\tmean_experts\tfrac_zero\n");
    double L = r->cfg.n_layers;
    for (int t = 0; t < r->cfg.seq_len; t++)
        fprintf(o.f, "%d\t%lld\t%.6g\t%.6g\n", t, (long long)r->pos_tokens[t],
                ratio(r->pos_pairs[t], r->pos_tokens[t]) / L, ratio(r->pos_zero[t], r->pos_tokens[t]) / L);
    return out_close(&o, err);
}

static int write_kind(const etm_routing_report *r, const char *dir, etm_error *err) {
    out_file o;
    if (out_open(&o, dir, "kind.tsv", err)) return -1;
    fprintf(o.f, "# kind\ttokens\tshare\tmean_experts\tfrac_zero\n");
    double L = r->cfg.n_layers;
    for (int k = 0; k < ETM_TOKEN_N_KINDS; k++)
        fprintf(o.f, "%s\t%lld\t%.6g\t%.6g\t%.6g\n", etm_token_kind_name((etm_token_kind)k),
                (long long)r->kind_tokens[k], ratio(r->kind_tokens[k], r->tokens),
                ratio(r->kind_pairs[k], r->kind_tokens[k]) / L, ratio(r->kind_zero[k], r->kind_tokens[k]) / L);
    return out_close(&o, err);
}

/* Order of tokens.tsv: more experts per occurrence first (compared exactly as fractions), then
 * more occurrences, then the lower id. */
typedef struct {
    int id;
    int64_t count, pairs;
} token_row;

static int cmp_token_rows(const void *pa, const void *pb) {
    const token_row *a = pa, *b = pb;
    /* pairs_a / count_a vs pairs_b / count_b without rounding: counts and pairs fit well below
     * 2^31 each in any report this tool makes, so the products fit in int64 */
    int64_t x = a->pairs * b->count, y = b->pairs * a->count;
    if (x != y) return x > y ? -1 : 1;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int write_tokens(const etm_routing_report *r, const char *dir, int min_count, etm_error *err) {
    int V = r->cfg.vocab_size;
    token_row *rows = etm_malloc((size_t)V * sizeof *rows);
    int n = 0;
    for (int v = 0; v < V; v++)
        if (r->vocab_tokens[v] > 0 && r->vocab_tokens[v] >= min_count)
            rows[n++] = (token_row){v, r->vocab_tokens[v], r->vocab_pairs[v]};
    qsort(rows, (size_t)n, sizeof *rows, cmp_token_rows);
    out_file o;
    if (out_open(&o, dir, "tokens.tsv", err)) {
        free(rows);
        return -1;
    }
    fprintf(o.f, "# id\tkind\tcount\tmean_experts\ttext\n");
    for (int i = 0; i < n; i++)
        fprintf(o.f, "%d\t%s\t%lld\t%.6g\t%s\n", rows[i].id,
                etm_token_kind_name((etm_token_kind)r->kind[rows[i].id]), (long long)rows[i].count,
                (double)rows[i].pairs / ((double)rows[i].count * r->cfg.n_layers), r->text[rows[i].id]);
    free(rows);
    return out_close(&o, err);
}

static int write_batches(const etm_routing_report *r, const char *dir, etm_error *err) {
    out_file o;
    if (out_open(&o, dir, "batches.tsv", err)) return -1;
    fprintf(o.f, "# batch\tlayer\texpert\tpool_tokens\tload\tusage\tcutoff\tthreshold\n");
    for (size_t i = 0; i < r->n_batch_rows; i++) {
        const etm_routing_batch_row *b = &r->batch_rows[i];
        fprintf(o.f, "%d\t%d\t%d\t%d\t%lld\t", b->batch, b->layer, b->expert, b->pool_tokens,
                (long long)b->load);
        print_float(o.f, (double)b->load / b->batch_tokens);
        fputc('\t', o.f);
        print_float(o.f, b->cutoff);
        fputc('\t', o.f);
        print_float(o.f, b->threshold);
        fputc('\n', o.f);
    }
    return out_close(&o, err);
}

/* Characters (UTF-8 code points) in s. */
static int text_width(const char *s) {
    int w = 0;
    for (; *s; s++) w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

/* The passage laid out as lines of text: one row per visible piece of a token. Line breaks inside
 * a token end the line after showing a return sign, so whitespace tokens stay visible. */
static int write_passage(const etm_routing_report *r, const char *dir, int width_limit, etm_error *err) {
    out_file o;
    if (out_open(&o, dir, "passage.tsv", err)) return -1;
    fprintf(o.f, "# index\tline\tcolumn\twidth\texperts\ttext\n");
    int line = 0, col = 0;
    for (int i = 0; i < r->n_passage; i++) {
        const char *t = r->text[r->passage_ids[i]];
        double experts = (double)r->passage_pairs[i] / r->cfg.n_layers;
        /* split the escaped text at its "\n" escapes */
        char piece[4096];
        size_t p = 0;
        for (const char *s = t;; s++) {
            int newline = s[0] == '\\' && s[1] == 'n';
            if (*s == '\0' || newline) {
                if (newline && p + 3 < sizeof piece) {
                    memcpy(piece + p, "\xE2\x86\xB5", 3); /* U+21B5, the return sign */
                    p += 3;
                }
                piece[p] = '\0';
                if (p > 0) {
                    int w = text_width(piece);
                    /* a lone return sign may run one column past the limit: it ends the line */
                    int lone_return = newline && p == 3;
                    if (col > 0 && col + w > width_limit && !lone_return) {
                        line++;
                        col = 0;
                    }
                    fprintf(o.f, "%d\t%d\t%d\t%d\t%.6g\t%s\n", i, line, col, w, experts, piece);
                    col += w;
                }
                p = 0;
                if (newline) {
                    line++;
                    col = 0;
                    s++;
                    continue;
                }
                break;
            }
            if (s[0] == '\\' && s[1] == '\\') { /* an escaped backslash stays two characters */
                if (p + 2 < sizeof piece) piece[p++] = *s, piece[p++] = *s;
                s++;
                continue;
            }
            if (p + 1 < sizeof piece) piece[p++] = *s;
        }
    }
    return out_close(&o, err);
}

int etm_routing_report_write(const etm_routing_report *r, const char *dir, int min_count,
                             int width_limit, etm_error *err) {
    if (width_limit < 8) return etm_fail(err, "routing report: line width %d is too narrow", width_limit);
    if (write_layers(r, dir, err) || write_position(r, dir, err) || write_kind(r, dir, err) ||
        write_tokens(r, dir, min_count, err) || write_batches(r, dir, err) ||
        write_passage(r, dir, width_limit, err))
        return -1;
    return 0;
}
