/* generate_show.c: the per-token expert trace of a generation and its renderings: the colour
 * buckets, terminal output (UTF-8-safe colouring, the legend) and the HTML page (see generate.h). */
#include <config.h>

#include "generate.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- expert-count trace -------------------------------------------------------------------- */

etm_expert_trace *etm_trace_create(int n_moe, const int *layers, int n_routed, int top_k) {
    etm_expert_trace *t = etm_calloc(1, sizeof *t);
    t->n_moe = n_moe;
    t->layers = etm_malloc((size_t)(n_moe > 0 ? n_moe : 1) * sizeof(int));
    if (n_moe > 0) memcpy(t->layers, layers, (size_t)n_moe * sizeof(int));
    t->n_routed = n_routed;
    t->top_k = top_k;
    return t;
}

void etm_trace_free(etm_expert_trace *t) {
    if (!t) return;
    free(t->layers);
    free(t->ids);
    free(t->generated);
    free(t->experts);
    free(t);
}

void etm_trace_add(etm_expert_trace *t, int32_t id, int generated, const int *experts) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->ids = etm_realloc(t->ids, t->cap * sizeof(int32_t));
        t->generated = etm_realloc(t->generated, t->cap);
        t->experts = etm_realloc(t->experts, t->cap * (size_t)(t->n_moe > 0 ? t->n_moe : 1) * sizeof(int));
    }
    t->ids[t->n] = id;
    t->generated[t->n] = generated != 0;
    if (t->n_moe > 0) memcpy(t->experts + t->n * (size_t)t->n_moe, experts, (size_t)t->n_moe * sizeof(int));
    t->n++;
}

int etm_trace_total(const etm_expert_trace *t, size_t i) {
    int s = 0;
    for (int j = 0; j < t->n_moe; j++) s += t->experts[i * (size_t)t->n_moe + j];
    return s;
}

/* ---- colours ------------------------------------------------------------------------------- */

/* A diverging scale: blues for tokens that spent less than token choice would, grey at the
 * budget, warm colours above it. */
static const struct {
    const char *meaning, *ansi, *html, *html_text;
} bucket_style[ETM_EXPERT_BUCKETS] = {
    {"no routed expert", "48;5;240;38;5;231", "#585858", "#ffffff"},
    {"under half the budget", "48;5;25;38;5;231", "#005faf", "#ffffff"},
    {"half to 7/8 of the budget", "48;5;74;38;5;16", "#5fafd7", "#000000"},
    {"about the budget (within 1/8)", "48;5;254;38;5;16", "#e4e4e4", "#000000"},
    {"up to 1.5x the budget", "48;5;222;38;5;16", "#ffd787", "#000000"},
    {"up to 2x the budget", "48;5;208;38;5;16", "#ff8700", "#000000"},
    {"over 2x the budget", "48;5;160;38;5;231", "#d70000", "#ffffff"},
};

int etm_expert_bucket(int total, int budget) {
    long c = total, b = budget > 0 ? budget : 1;
    if (c <= 0) return 0;
    if (2 * c < b) return 1;
    if (8 * c < 7 * b) return 2;
    if (8 * c <= 9 * b) return 3;
    if (2 * c <= 3 * b) return 4;
    if (c <= 2 * b) return 5;
    return 6;
}

static int valid_bucket(int b) { return b >= 0 && b < ETM_EXPERT_BUCKETS ? b : 0; }
const char *etm_expert_bucket_meaning(int b) { return bucket_style[valid_bucket(b)].meaning; }
const char *etm_expert_bucket_ansi(int b) { return bucket_style[valid_bucket(b)].ansi; }
const char *etm_expert_bucket_html(int b) { return bucket_style[valid_bucket(b)].html; }
const char *etm_expert_bucket_html_text(int b) { return bucket_style[valid_bucket(b)].html_text; }

/* The smallest and largest totals in [0, max_total] that fall in bucket b; 0 if none do. */
static int bucket_range(int b, int budget, int max_total, int *lo, int *hi) {
    int found = 0;
    for (int c = 0; c <= max_total; c++)
        if (etm_expert_bucket(c, budget) == b) {
            if (!found) *lo = c;
            *hi = c;
            found = 1;
        }
    return found;
}

/* ---- UTF-8 --------------------------------------------------------------------------------- */

/* Length of the sequence a lead byte starts (1 for ASCII and for bytes that start nothing). */
static int utf8_seq_len(unsigned char c) {
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 1;
}

/* The length of b's longest prefix that does not end inside a character still being written:
 * a trailing lead byte followed by fewer continuation bytes than it needs is held back. */
static size_t utf8_complete_prefix(const unsigned char *b, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = b[n - back];
        if ((c & 0xc0) == 0x80) continue; /* continuation: look further back */
        return utf8_seq_len(c) > (int)back ? n - back : n;
    }
    return n;
}

/* Length of a valid UTF-8 sequence at b (n bytes available), or 0 if the bytes there are not one
 * (overlong forms, surrogates and code points past U+10FFFF are not). */
static int utf8_valid_at(const unsigned char *b, size_t n) {
    unsigned char c = b[0];
    if (c < 0x80) return 1;
    int len = utf8_seq_len(c);
    if (len == 1 || (size_t)len > n) return 0;
    for (int i = 1; i < len; i++)
        if ((b[i] & 0xc0) != 0x80) return 0;
    if (c == 0xe0 && b[1] < 0xa0) return 0; /* overlong */
    if (c == 0xed && b[1] >= 0xa0) return 0; /* surrogate */
    if (c == 0xf0 && b[1] < 0x90) return 0; /* overlong */
    if (c == 0xf4 && b[1] >= 0x90) return 0; /* past U+10FFFF */
    return len;
}

/* ---- terminal output ----------------------------------------------------------------------- */

void etm_token_writer_init(etm_token_writer *w, FILE *f, etm_show_mode mode) {
    memset(w, 0, sizeof *w);
    w->f = f;
    w->mode = mode;
}

/* Text on a coloured background, the colour reset around each newline so that a terminal does
 * not paint the rest of the line. */
static void put_coloured(FILE *f, const unsigned char *b, size_t n, const char *sgr) {
    size_t i = 0;
    while (i < n) {
        if (b[i] == '\n') {
            fputc('\n', f);
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && b[j] != '\n') j++;
        fprintf(f, "\x1b[%sm", sgr);
        fwrite(b + i, 1, j - i, f);
        fputs("\x1b[0m", f);
        i = j;
    }
}

void etm_token_writer_put(etm_token_writer *w, const char *bytes, size_t len, int total, int budget) {
    if (w->mode == ETM_SHOW_PLAIN) {
        fwrite(bytes, 1, len, w->f); /* the exact bytes: nothing to colour, nothing to hold */
        return;
    }
    unsigned char *buf = etm_malloc(len + (size_t)w->n_held + 1);
    memcpy(buf, w->held, (size_t)w->n_held);
    memcpy(buf + w->n_held, bytes, len);
    size_t n = len + (size_t)w->n_held;
    size_t keep = utf8_complete_prefix(buf, n);
    if (w->mode == ETM_SHOW_ANSI)
        put_coloured(w->f, buf, keep, etm_expert_bucket_ansi(etm_expert_bucket(total, budget)));
    else { /* newlines as \n before the annotation, the line breaks after it */
        int breaks = 0;
        for (size_t i = 0; i < keep; i++) {
            if (buf[i] == '\n') {
                fputs("\\n", w->f);
                breaks++;
            } else
                fputc(buf[i], w->f);
        }
        fprintf(w->f, "[%d]", total);
        while (breaks-- > 0) fputc('\n', w->f);
    }
    w->n_held = (int)(n - keep);
    memcpy(w->held, buf + keep, n - keep);
    free(buf);
}

void etm_token_writer_finish(etm_token_writer *w) {
    if (w->n_held) fwrite(w->held, 1, (size_t)w->n_held, w->f);
    w->n_held = 0;
}

static void legend_header(FILE *f, const etm_expert_trace *t) {
    fprintf(f, "routed experts per token, summed over %d MoE layer%s (shared experts not counted); budget = "
               "top_k %d x %d layer%s = %d, at most %d\n",
            t->n_moe, t->n_moe == 1 ? "" : "s", t->top_k, t->n_moe, t->n_moe == 1 ? "" : "s",
            etm_trace_budget(t), t->n_routed * t->n_moe);
}

void etm_print_legend(FILE *f, etm_show_mode mode, const etm_expert_trace *t) {
    if (mode == ETM_SHOW_PLAIN) return;
    int budget = etm_trace_budget(t), max_total = t->n_routed * t->n_moe;
    if (mode == ETM_SHOW_ANNOTATED) {
        fprintf(f, "[n] after each token: ");
        legend_header(f, t);
        return;
    }
    fprintf(f, "colours: ");
    legend_header(f, t);
    for (int b = 0; b < ETM_EXPERT_BUCKETS; b++) {
        int lo = 0, hi = 0;
        if (!bucket_range(b, budget, max_total, &lo, &hi)) continue;
        char range[32];
        if (lo == hi) snprintf(range, sizeof range, " %d ", lo);
        else snprintf(range, sizeof range, " %d-%d ", lo, hi);
        fputs("  ", f);
        put_coloured(f, (const unsigned char *)range, strlen(range), etm_expert_bucket_ansi(b));
        fprintf(f, " %s\n", etm_expert_bucket_meaning(b));
    }
}

/* ---- HTML ---------------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *s, const char *b, size_t n) {
    if (s->n + n + 1 > s->cap) {
        while (s->n + n + 1 > s->cap) s->cap = s->cap ? 2 * s->cap : 4096;
        s->p = etm_realloc(s->p, s->cap);
    }
    memcpy(s->p + s->n, b, n);
    s->n += n;
    s->p[s->n] = '\0';
}

static void sb_str(sbuf *s, const char *str) { sb_put(s, str, strlen(str)); }

static void sb_printf(sbuf *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void sb_printf(sbuf *s, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < sizeof tmp) {
        sb_put(s, tmp, (size_t)k);
        return;
    }
    char *big = etm_malloc((size_t)k + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    sb_put(s, big, (size_t)k);
    free(big);
}

/* Bytes as HTML text: markup characters escaped, control characters other than newline and tab
 * shown as \xNN, anything that is not valid UTF-8 as U+FFFD. */
static void sb_html_text(sbuf *s, const unsigned char *b, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = b[i];
        int len = utf8_valid_at(b + i, n - i);
        if (len == 0) {
            sb_str(s, "\xef\xbf\xbd");
            i++;
            continue;
        }
        if (len > 1) sb_put(s, (const char *)b + i, (size_t)len);
        else if (c == '&') sb_str(s, "&amp;");
        else if (c == '<') sb_str(s, "&lt;");
        else if (c == '>') sb_str(s, "&gt;");
        else if (c == '"') sb_str(s, "&quot;");
        else if (c == '\'') sb_str(s, "&#39;");
        else if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) sb_printf(s, "\\x%02x", c);
        else sb_put(s, (const char *)b + i, 1);
        i += (size_t)len;
    }
}

static const char html_style[] =
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}\n"
    "h1{font-size:1.3em}\n"
    ".text{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;border:1px solid #ccc;"
    "padding:1em;border-radius:4px;word-wrap:break-word}\n"
    ".t{border-radius:2px;padding:1px 0}\n"
    ".t:empty{padding-left:.3em}\n"
    ".g{box-shadow:inset 0 -2px 0 #000}\n"
    ".nl::before{content:\"\\21b5\";opacity:.6}\n"
    ".legend span.t{display:inline-block;min-width:4em;text-align:center;font-family:ui-monospace,monospace}\n"
    "table{border-collapse:collapse;margin-top:.5em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\n"
    ".note{color:#555;font-size:.9em}\n";

/* Whitespace with a line break in it: such a token has no visible text, so the page marks it. */
static int line_break_only(const char *b, size_t n) {
    int nl = 0;
    for (size_t i = 0; i < n; i++) {
        if (b[i] == '\n') nl = 1;
        else if (b[i] != ' ' && b[i] != '\t' && b[i] != '\r') return 0;
    }
    return nl;
}

char *etm_trace_html(const etm_expert_trace *t, const etm_tokenizer *tok, const char *title,
                     const char *heading, size_t *len) {
    sbuf s = {NULL, 0, 0};
    int budget = etm_trace_budget(t), max_total = t->n_routed * t->n_moe;
    const char *ttl = title ? title : "etmoe generate";
    sb_str(&s, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>");
    sb_html_text(&s, (const unsigned char *)ttl, strlen(ttl));
    sb_str(&s, "</title>\n<style>\n");
    sb_str(&s, html_style);
    for (int b = 0; b < ETM_EXPERT_BUCKETS; b++)
        sb_printf(&s, ".b%d{background:%s;color:%s}\n", b, etm_expert_bucket_html(b), etm_expert_bucket_html_text(b));
    sb_str(&s, "</style>\n</head>\n<body>\n<h1>");
    sb_html_text(&s, (const unsigned char *)ttl, strlen(ttl));
    sb_str(&s, "</h1>\n");
    if (heading) {
        sb_str(&s, "<p>");
        sb_html_text(&s, (const unsigned char *)heading, strlen(heading));
        sb_str(&s, "</p>\n");
    }
    sb_printf(&s,
              "<p class=\"note\">Each token is coloured by the routed experts it used, summed over the %d MoE "
              "layer%s (shared experts not counted), against the budget top_k &times; layers = %d &times; %d = %d "
              "that token choice spends on every token. Hover over a token for its count in each layer. "
              "Sampled tokens are underlined; the rest is the prompt.</p>\n",
              t->n_moe, t->n_moe == 1 ? "" : "s", t->top_k, t->n_moe, budget);

    /* the tokens; a character split across tokens is shown with the token that completes it */
    sb_str(&s, "<div class=\"text\">");
    unsigned char held[4];
    size_t n_held = 0;
    for (size_t i = 0; i < t->n; i++) {
        int total = etm_trace_total(t, i);
        const int *ex = t->experts + i * (size_t)t->n_moe;
        size_t blen = 0;
        const char *bytes = tok ? etm_tokenizer_token_bytes(tok, t->ids[i], &blen) : NULL;
        char idtext[24];
        if (!bytes) { /* an id the tokenizer does not know: show it */
            snprintf(idtext, sizeof idtext, "#%d", (int)t->ids[i]);
            bytes = idtext;
            blen = strlen(idtext);
        }
        sb_printf(&s, "<span class=\"t b%d %s%s\" data-id=\"%d\" data-experts=\"%d\" data-layers=\"",
                  etm_expert_bucket(total, budget), t->generated[i] ? "g" : "p",
                  line_break_only(bytes, blen) ? " nl" : "", (int)t->ids[i], total);
        for (int j = 0; j < t->n_moe; j++) sb_printf(&s, "%s%d", j ? "," : "", ex[j]);
        sb_printf(&s, "\" title=\"token %d (%s): %d routed expert%s", (int)t->ids[i],
                  t->generated[i] ? "sampled" : "prompt", total, total == 1 ? "" : "s");
        for (int j = 0; j < t->n_moe; j++) sb_printf(&s, "&#10;layer %d: %d", t->layers[j], ex[j]);
        sb_str(&s, "\">");
        unsigned char *buf = etm_malloc(blen + n_held + 1);
        memcpy(buf, held, n_held);
        memcpy(buf + n_held, bytes, blen);
        size_t n = blen + n_held, keep = utf8_complete_prefix(buf, n);
        sb_html_text(&s, buf, keep);
        n_held = n - keep;
        memcpy(held, buf + keep, n_held);
        free(buf);
        sb_str(&s, "</span>");
    }
    if (n_held) sb_html_text(&s, held, n_held); /* an unfinished character: U+FFFD */
    sb_str(&s, "</div>\n");

    /* legend */
    sb_str(&s, "<h2>Legend</h2>\n<p class=\"legend\">\n");
    for (int b = 0; b < ETM_EXPERT_BUCKETS; b++) {
        int lo = 0, hi = 0;
        if (!bucket_range(b, budget, max_total, &lo, &hi)) continue;
        if (lo == hi) sb_printf(&s, "<span class=\"t b%d\">%d</span> %s<br>\n", b, lo, etm_expert_bucket_meaning(b));
        else sb_printf(&s, "<span class=\"t b%d\">%d&ndash;%d</span> %s<br>\n", b, lo, hi, etm_expert_bucket_meaning(b));
    }
    sb_str(&s, "</p>\n");

    /* mean routed experts per token in each layer, prompt and sampled tokens apart */
    size_t n_gen = 0;
    for (size_t i = 0; i < t->n; i++) n_gen += t->generated[i];
    size_t n_prompt = t->n - n_gen;
    sb_str(&s, "<h2>Routed experts per token</h2>\n<table>\n<tr><th>layer</th><th>prompt</th><th>sampled</th>"
               "<th>all</th></tr>\n");
    for (int j = 0; j <= t->n_moe; j++) {
        double sp = 0, sg = 0;
        for (size_t i = 0; i < t->n; i++) {
            double v = j < t->n_moe ? t->experts[i * (size_t)t->n_moe + j] : etm_trace_total(t, i);
            if (t->generated[i]) sg += v;
            else sp += v;
        }
        if (j < t->n_moe) sb_printf(&s, "<tr><td>%d</td>", t->layers[j]);
        else sb_str(&s, "<tr><th>sum</th>");
        if (n_prompt) sb_printf(&s, "<td>%.3f</td>", sp / (double)n_prompt);
        else sb_str(&s, "<td>&ndash;</td>");
        if (n_gen) sb_printf(&s, "<td>%.3f</td>", sg / (double)n_gen);
        else sb_str(&s, "<td>&ndash;</td>");
        if (t->n) sb_printf(&s, "<td>%.3f</td></tr>\n", (sp + sg) / (double)t->n);
        else sb_str(&s, "<td>&ndash;</td></tr>\n");
    }
    sb_printf(&s, "</table>\n<p class=\"note\">%zu prompt token%s, %zu sampled; top_k %d of %d routed experts "
                  "per layer.</p>\n</body>\n</html>\n",
              n_prompt, n_prompt == 1 ? "" : "s", n_gen, t->top_k, t->n_routed);
    *len = s.n;
    return s.p;
}
