/* tokenizer_merges.c: GPT-2's byte alphabet and the merges-file reader and writer. */
#include <config.h>

#include "tokenizer_merges.h"
#include "tokenizer_split.h"

#include <stdlib.h>
#include <string.h>

static int printable(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

void etm_byte_alphabet_init(etm_byte_alphabet *a) {
    int id = 0, shifted = 0;
    for (int b = 0; b < 256; b++)
        if (printable(b)) {
            a->byte_to_cp[b] = (uint32_t)b;
            a->byte_to_id[b] = id;
            a->id_to_byte[id++] = (uint8_t)b;
        }
    for (int b = 0; b < 256; b++)
        if (!printable(b)) {
            a->byte_to_cp[b] = (uint32_t)(256 + shifted++);
            a->byte_to_id[b] = id;
            a->id_to_byte[id++] = (uint8_t)b;
        }
}

#define CP_LIMIT (256 + 68) /* code points of the alphabet are all below this */

/* Decodes one token written in the byte alphabet into raw bytes appended at *out. */
static int decode_token(const char *s, size_t len, const int16_t *cp_to_byte, char *out, size_t *out_len,
                        const char *origin, size_t line, etm_error *err) {
    size_t i = 0, o = 0;
    while (i < len) {
        const unsigned char *u = (const unsigned char *)s + i;
        int n = etm_utf8_next(u, len - i);
        if (n < 0) return etm_fail(err, "%s:%zu: invalid UTF-8 (byte 0x%02X)", origin, line, u[0]);
        uint32_t cp = n == 1 ? u[0] : n == 2 ? ((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu) : 0xFFFFFFFFu;
        if (cp >= CP_LIMIT || cp_to_byte[cp] < 0) {
            if (n > 2) cp = n == 3 ? ((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu)
                                   : ((u[0] & 0x07u) << 18) | ((u[1] & 0x3Fu) << 12) | ((u[2] & 0x3Fu) << 6) | (u[3] & 0x3Fu);
            return etm_fail(err, "%s:%zu: character U+%04X is not in GPT-2's byte alphabet (corrupt merges file?)",
                            origin, line, (unsigned)cp);
        }
        out[o++] = (char)cp_to_byte[cp];
        i += (size_t)n;
    }
    *out_len = o;
    return 0;
}

int etm_merges_parse(const char *text, size_t len, const char *origin, etm_merges *out, etm_error *err) {
    etm_byte_alphabet a;
    etm_byte_alphabet_init(&a);
    int16_t cp_to_byte[CP_LIMIT];
    for (int i = 0; i < CP_LIMIT; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) cp_to_byte[a.byte_to_cp[b]] = (int16_t)b;

    memset(out, 0, sizeof *out);
    const size_t hlen = strlen("#version");
    if (len < hlen || memcmp(text, "#version", hlen) != 0)
        return etm_fail(err, "%s:1: not a merges file (the first line should be '%s')", origin, ETM_MERGES_HEADER);
    size_t cap = 1024;
    out->bytes = etm_malloc(len); /* decoded tokens are never longer than their text */
    out->off = etm_malloc((2 * cap + 1) * sizeof *out->off);
    out->off[0] = 0;
    const char *p = memchr(text, '\n', len), *end = text + len;
    size_t line = 1, used = 0;
    const char *blank_at = NULL;
    size_t blank_line = 0;
    while (p && p < end) {
        const char *s = p + 1;
        const char *e = memchr(s, '\n', (size_t)(end - s));
        if (!e) e = end;
        line++;
        p = e;
        if (e == s) {
            if (!blank_at) blank_at = s, blank_line = line;
            if (e == end) break;
            continue;
        }
        if (blank_at) {
            etm_merges_free(out);
            return etm_fail(err, "%s:%zu: empty line inside the merges", origin, blank_line);
        }
        const char *sp = memchr(s, ' ', (size_t)(e - s));
        if (!sp || sp == s || sp + 1 == e || memchr(sp + 1, ' ', (size_t)(e - sp - 1))) {
            etm_merges_free(out);
            return etm_fail(err, "%s:%zu: expected two tokens separated by one space", origin, line);
        }
        if (out->n == cap) out->off = etm_realloc(out->off, (2 * (cap *= 2) + 1) * sizeof *out->off);
        size_t l1, l2;
        if (decode_token(s, (size_t)(sp - s), cp_to_byte, out->bytes + used, &l1, origin, line, err) ||
            decode_token(sp + 1, (size_t)(e - sp - 1), cp_to_byte, out->bytes + used + l1, &l2, origin, line, err)) {
            etm_merges_free(out);
            return -1;
        }
        out->off[2 * out->n + 1] = used + l1;
        out->off[2 * out->n + 2] = used + l1 + l2;
        used += l1 + l2;
        out->n++;
    }
    return 0;
}

char *etm_merges_format(const etm_merges *m, size_t *len) {
    etm_byte_alphabet a;
    etm_byte_alphabet_init(&a);
    size_t total = m->n ? m->off[2 * m->n] : 0;
    size_t cap = sizeof ETM_MERGES_HEADER + 2 * total + 2 * m->n + 2, o = 0;
    char *buf = etm_malloc(cap);
    memcpy(buf, ETM_MERGES_HEADER "\n", sizeof ETM_MERGES_HEADER);
    o = sizeof ETM_MERGES_HEADER;
    for (size_t i = 0; i < m->n; i++) {
        for (int side = 0; side < 2; side++) {
            for (size_t k = m->off[2 * i + side]; k < m->off[2 * i + side + 1]; k++) {
                uint32_t cp = a.byte_to_cp[(unsigned char)m->bytes[k]];
                if (cp < 0x80) buf[o++] = (char)cp;
                else {
                    buf[o++] = (char)(0xC0 | (cp >> 6));
                    buf[o++] = (char)(0x80 | (cp & 0x3F));
                }
            }
            buf[o++] = side == 0 ? ' ' : '\n';
        }
    }
    buf[o] = '\0';
    if (len) *len = o;
    return buf;
}

void etm_merges_free(etm_merges *m) {
    if (!m) return;
    free(m->bytes);
    free(m->off);
    memset(m, 0, sizeof *m);
}
