/* tokenizer_split.c: GPT-2's pre-tokenizer: <|endoftext|> literals, GPT-2's regex through PCRE2,
 * and invalid UTF-8 handled as U+FFFD for the regex while the pieces keep the original bytes. */
#include <config.h>

#include "tokenizer_split.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's pattern is
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Its \s is spelled out here as the Unicode White_Space property, the set that GPT-2's own
 * encoder (Python's regex module) and OpenAI's tiktoken (Rust regex) use. PCRE2's \s would add
 * U+180E; JavaScript's \s (js-tiktoken) lacks U+0085 and adds U+FEFF (see doc/tokenizer.md).
 * The pattern is anchored: every position in valid UTF-8 starts a match, so a failed anchored
 * match can only mean a bug, which the caller survives by emitting one character. */
#define WS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

struct etm_presplit {
    pcre2_code *re; /* the compiled pattern (JIT-compiled when the platform supports it) */
};

etm_presplit *etm_presplit_create(etm_error *err) {
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)gpt2_pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &code, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        etm_fail(err, "GPT-2 pre-split regex: PCRE2 compile error at offset %zu: %s", (size_t)at, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter gives the same matches */
    etm_presplit *ps = etm_malloc(sizeof *ps);
    ps->re = re;
    return ps;
}

void etm_presplit_free(etm_presplit *ps) {
    if (!ps) return;
    pcre2_code_free(ps->re);
    free(ps);
}

int etm_utf8_next(const unsigned char *s, size_t len) {
    unsigned b = s[0];
    if (b < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0) lo = 0xA0; /* overlong */
        if (b == 0xED) hi = 0x9F; /* surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0) lo = 0x90; /* overlong */
        if (b == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else
        return -1; /* a continuation byte, C0, C1 or F5-FF cannot start a character */
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= len || s[k] < lo || s[k] > hi) return -k;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

/* One replaced subpart: the U+FFFD ending at lossy_end stands for raw bytes ending at raw_end. */
typedef struct {
    size_t lossy_end, raw_end;
} repl;

typedef struct {
    char *text;  /* (len + 1) the text with U+FFFD for each invalid subpart */
    size_t len;
    repl *subs;  /* (n_subs) in order */
    size_t n_subs;
} lossy_text;

/* Builds the replaced text and the offset map; returns 0 if text is valid UTF-8 (nothing built). */
static int make_lossy(const char *text, size_t len, lossy_text *out) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int n = etm_utf8_next(s + i, len - i);
        if (n < 0) break;
        i += (size_t)n;
    }
    if (i == len) return 0;
    size_t cap = len + len / 2 + 16, n_cap = 16;
    out->text = etm_malloc(cap);
    out->subs = etm_malloc(n_cap * sizeof *out->subs);
    out->n_subs = 0;
    memcpy(out->text, text, i);
    size_t o = i;
    while (i < len) {
        int n = s[i] < 0x80 ? 1 : etm_utf8_next(s + i, len - i);
        if (o + 4 > cap) out->text = etm_realloc(out->text, cap *= 2);
        if (n > 0) {
            memcpy(out->text + o, s + i, (size_t)n);
            o += (size_t)n;
            i += (size_t)n;
            continue;
        }
        memcpy(out->text + o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += (size_t)-n;
        if (out->n_subs == n_cap) out->subs = etm_realloc(out->subs, (n_cap *= 2) * sizeof *out->subs);
        out->subs[out->n_subs].lossy_end = o;
        out->subs[out->n_subs].raw_end = i;
        out->n_subs++;
    }
    out->text[o] = '\0';
    out->len = o;
    return 1;
}

char *etm_utf8_replace_invalid(const char *text, size_t len, size_t *out_len) {
    lossy_text lt;
    if (!make_lossy(text, len, &lt)) {
        char *copy = etm_malloc(len + 1);
        memcpy(copy, text, len);
        copy[len] = '\0';
        if (out_len) *out_len = len;
        return copy;
    }
    free(lt.subs);
    if (out_len) *out_len = lt.len;
    return lt.text;
}

/* Maps boundaries in the lossy text back to the raw text; queries must not decrease. */
typedef struct {
    const repl *subs;
    size_t n, k; /* k: subparts ending at or before the last query */
} offset_map;

static size_t map_offset(offset_map *m, size_t p) {
    while (m->k < m->n && m->subs[m->k].lossy_end <= p) m->k++;
    if (m->k == 0) return p;
    const repl *r = &m->subs[m->k - 1];
    return p - r->lossy_end + r->raw_end;
}

/* Splits one segment without <|endoftext|>: subj is valid UTF-8; raw/map give the original. */
static int split_segment(const pcre2_code *re, pcre2_match_data *md, const char *subj, size_t n,
                         const char *raw, offset_map *map, etm_piece_fn fn, void *ctx) {
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t off = 0, raw_start = 0;
    while (off < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)subj, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        size_t end;
        if (rc >= 0 && ov[0] == off && ov[1] > off) end = ov[1];
        else { /* unreachable for this pattern; never lose bytes if it happens */
            int c = etm_utf8_next((const unsigned char *)subj + off, n - off);
            end = off + (size_t)(c > 0 ? c : -c);
        }
        size_t raw_end = map ? map_offset(map, end) : end;
        int stop = fn(ctx, raw + raw_start, raw_end - raw_start, 0);
        if (stop) return stop;
        off = end;
        raw_start = raw_end;
    }
    return 0;
}

static const char *find_eot(const char *s, size_t len) {
    const size_t m = sizeof ETM_EOT_TEXT - 1;
    const char *p = s, *end = s + len;
    while ((size_t)(end - p) >= m) {
        const char *lt = memchr(p, '<', (size_t)(end - p) - m + 1);
        if (!lt) return NULL;
        if (!memcmp(lt, ETM_EOT_TEXT, m)) return lt;
        p = lt + 1;
    }
    return NULL;
}

int etm_presplit_run(const etm_presplit *ps, const char *text, size_t len, etm_piece_fn fn, void *ctx) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(ps->re, NULL);
    if (!md) {
        fprintf(stderr, "etmoe: out of memory creating PCRE2 match data\n");
        abort();
    }
    const size_t m = sizeof ETM_EOT_TEXT - 1;
    size_t pos = 0;
    int stop = 0;
    while (!stop && pos < len) {
        const char *eot = find_eot(text + pos, len - pos);
        size_t seg_len = eot ? (size_t)(eot - (text + pos)) : len - pos;
        lossy_text lt;
        if (seg_len > 0) {
            if (make_lossy(text + pos, seg_len, &lt)) {
                offset_map map = {lt.subs, lt.n_subs, 0};
                stop = split_segment(ps->re, md, lt.text, lt.len, text + pos, &map, fn, ctx);
                free(lt.text);
                free(lt.subs);
            } else
                stop = split_segment(ps->re, md, text + pos, seg_len, text + pos, NULL, fn, ctx);
        }
        if (stop || !eot) break;
        stop = fn(ctx, eot, m, 1);
        pos += seg_len + m;
    }
    pcre2_match_data_free(md);
    return stop;
}
