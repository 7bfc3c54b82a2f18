/*
 * A peer of gemma-oracle's stdio protocol (docs/stdio-protocol.md) in plain C99, no dependencies: the shape of
 * what an engine in C, C++, Rust or C# writes to be put through the oracle with
 *
 *     gemma-oracle ... --engine process:cmd="./peer"
 *
 * The engine is a toy. Each sequence keeps a 64-bit hash of its token history; the logits of a row are a fixed
 * function of that hash and the token id, computed row by row, so a row cannot depend on what else is in the batch:
 * batch-invariant by construction, and the oracle's exact comparison passes.
 *
 * --broken makes each batched row mix in the longest row's position (as a kernel that sizes its work by the
 * longest sequence and lets that leak into every row would), so a row decoded beside a longer one differs from the
 * same row decoded alone: the oracle fails it, which is what a batch-variance bug looks like.
 *
 * Build: cc -std=c99 -O2 -o peer peer.c
 *
 * The model path of hello is accepted and not read (the toy has no weights). Requests are parsed by a small JSON
 * reader that knows the protocol's value types (strings, integers, arrays of integers, objects it skips); answers
 * are written with printf and the logits as little-endian float32 whatever the host's byte order.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROTOCOL_VERSION 1
#define VOCAB 256

static int broken = 0;

/* ------------------------------------------------------------------------------------------- the toy engine */

typedef struct {
    int live;
    uint64_t hash; /* of the token history */
    long pos;      /* tokens fed so far */
} Seq;

static Seq *seqs = NULL;
static long n_seqs = 0, cap_seqs = 0;
static long last_rows = -1; /* rows of the last decode, for last_batch */

static uint64_t mix(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void feed(Seq *s, long token) {
    s->hash = mix(s->hash ^ (uint64_t)(token + 1) * 0x9e3779b97f4a7c15ULL);
    s->pos += 1;
}

/* The logits of one row: a function of this row's own history only (plus, when broken, of the batch). */
static void row_logits(const Seq *s, long longest_pos, float *out) {
    for (long j = 0; j < VOCAB; j++) {
        uint64_t x = mix(s->hash ^ ((uint64_t)j * 0xd6e8feb86659fd93ULL));
        out[j] = (float)((double)(x >> 40) / (double)(1 << 24) * 16.0 - 8.0);
        if (broken)
            out[j] += 0.001f * (float)(longest_pos - s->pos);
    }
}

/* --------------------------------------------------------------------------------------- a tiny JSON reader */

typedef struct {
    char op[32];
    int has_id; long long id;
    long long seq; int has_seq;
    long long protocol;
    long long *seqs; long n_seqs_in; int has_seqs;
    long long *tokens; long n_tokens; int has_tokens;
    const char *error;
} Request;

static const char *ws(const char *p) { while (*p && isspace((unsigned char)*p)) p++; return p; }

/* A JSON string at p (after the opening quote is at *p); copies up to cap-1 bytes into out (escapes kept as the
 * escaped character, \uXXXX as '?': the protocol's keys and ops are ASCII). Returns the position after it. */
static const char *read_string(const char *p, char *out, size_t cap) {
    size_t n = 0;
    if (*p != '"') return NULL;
    p++;
    while (*p && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            if (!*p) return NULL;
            c = *p++;
            if (c == 'u') { for (int k = 0; k < 4; k++) if (!*p++) return NULL; c = '?'; }
        }
        if (out && n + 1 < cap) out[n++] = c;
    }
    if (*p != '"') return NULL;
    if (out && cap) out[n] = 0;
    return p + 1;
}

static const char *read_int(const char *p, long long *v) {
    char *end;
    if (!(*p == '-' || isdigit((unsigned char)*p))) return NULL;
    *v = strtoll(p, &end, 10);
    if (*end == '.' || *end == 'e' || *end == 'E') return NULL; /* integers only */
    return end;
}

static const char *skip_value(const char *p);

static const char *skip_container(const char *p, char close) {
    p = ws(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
        if (close == '}') {
            p = read_string(p, NULL, 0);
            if (!p) return NULL;
            p = ws(p);
            if (*p != ':') return NULL;
            p = ws(p + 1);
        }
        p = skip_value(p);
        if (!p) return NULL;
        p = ws(p);
        if (*p == ',') { p = ws(p + 1); continue; }
        if (*p == close) return p + 1;
        return NULL;
    }
}

static const char *skip_value(const char *p) {
    if (*p == '"') return read_string(p, NULL, 0);
    if (*p == '{') return skip_container(p, '}');
    if (*p == '[') return skip_container(p, ']');
    if (!strncmp(p, "true", 4)) return p + 4;
    if (!strncmp(p, "false", 5)) return p + 5;
    if (!strncmp(p, "null", 4)) return p + 4;
    if (*p == '-' || isdigit((unsigned char)*p)) { char *end; strtod(p, &end); return end; }
    return NULL;
}

/* An array of integers at p into a fresh malloc'd buffer. */
static const char *read_int_array(const char *p, long long **out, long *n) {
    long cap = 16;
    *n = 0;
    *out = malloc(sizeof(long long) * cap);
    if (*p != '[' || !*out) return NULL;
    p = ws(p + 1);
    if (*p == ']') return p + 1;
    for (;;) {
        long long v;
        p = read_int(p, &v);
        if (!p) return NULL;
        if (*n == cap) {
            long long *grown = realloc(*out, sizeof(long long) * (cap *= 2));
            if (!grown) return NULL;
            *out = grown;
        }
        (*out)[(*n)++] = v;
        p = ws(p);
        if (*p == ',') { p = ws(p + 1); continue; }
        if (*p == ']') return p + 1;
        return NULL;
    }
}

/* The members this peer reads; every other member is skipped (unknown fields are ignored, for forward compat). */
static void parse_request(const char *line, Request *r) {
    const char *p = ws(line);
    memset(r, 0, sizeof *r);
    if (*p != '{') { r->error = "request is not a JSON object"; return; }
    p = ws(p + 1);
    if (*p == '}') return;
    for (;;) {
        char key[32];
        p = read_string(p, key, sizeof key);
        if (!p) { r->error = "bad member name"; return; }
        p = ws(p);
        if (*p != ':') { r->error = "expected ':'"; return; }
        p = ws(p + 1);
        if (!strcmp(key, "op")) {
            p = read_string(p, r->op, sizeof r->op);
            for (char *c = r->op; *c; c++) /* echoed back unquoted: keep it to an identifier */
                if (!(islower((unsigned char)*c) || *c == '_')) *c = '?';
        }
        else if (!strcmp(key, "id") && *p != 'n') { p = read_int(p, &r->id); r->has_id = 1; }
        else if (!strcmp(key, "seq")) { p = read_int(p, &r->seq); r->has_seq = 1; }
        else if (!strcmp(key, "protocol")) p = read_int(p, &r->protocol);
        else if (!strcmp(key, "seqs")) { p = read_int_array(p, &r->seqs, &r->n_seqs_in); r->has_seqs = 1; }
        else if (!strcmp(key, "tokens")) { p = read_int_array(p, &r->tokens, &r->n_tokens); r->has_tokens = 1; }
        else p = skip_value(p);
        if (!p) { r->error = "malformed value"; return; }
        p = ws(p);
        if (*p == ',') { p = ws(p + 1); continue; }
        if (*p == '}') return;
        r->error = "expected ',' or '}'";
        return;
    }
}

/* ---------------------------------------------------------------------------------------------- answers */

static void begin(const Request *r, int ok) {
    if (r->has_id) printf("{\"id\":%lld", r->id);
    else printf("{\"id\":null");
    if (r->op[0]) printf(",\"op\":\"%s\"", r->op);
    else printf(",\"op\":null");
    printf(",\"ok\":%s", ok ? "true" : "false");
}

static void answer_error(const Request *r, const char *type, const char *message) {
    begin(r, 0);
    printf(",\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}\n", type, message); /* messages hold no quotes */
    fflush(stdout);
    fprintf(stderr, "peer: %s: %s: %s\n", r->op, type, message);
}

static void answer_ok(const Request *r, const char *fields) {
    begin(r, 1);
    printf("%s}\n", fields);
    fflush(stdout);
}

static void put_f32_le(float v) {
    uint32_t u;
    unsigned char b[4];
    memcpy(&u, &v, 4);
    b[0] = (unsigned char)u; b[1] = (unsigned char)(u >> 8); b[2] = (unsigned char)(u >> 16); b[3] = (unsigned char)(u >> 24);
    fwrite(b, 1, 4, stdout);
}

/* rows x VOCAB float32 logits: header naming the array and its byte count, then the bytes */
static void answer_logits(const Request *r, const float *logits, long rows, int flat) {
    begin(r, 1);
    if (flat) printf(",\"arrays\":[{\"name\":\"logits\",\"dtype\":\"float32\",\"shape\":[%d]}]", VOCAB);
    else printf(",\"arrays\":[{\"name\":\"logits\",\"dtype\":\"float32\",\"shape\":[%ld,%d]}]", rows, VOCAB);
    printf(",\"nbytes\":%ld}\n", rows * VOCAB * 4L);
    for (long i = 0; i < rows * VOCAB; i++) put_f32_le(logits[i]);
    fflush(stdout);
}

static Seq *find_seq(long long id) {
    if (id < 0 || id >= n_seqs || !seqs[id].live) return NULL;
    return &seqs[id];
}

static int valid_tokens(const Request *r) {
    for (long i = 0; i < r->n_tokens; i++)
        if (r->tokens[i] < 0 || r->tokens[i] >= VOCAB) return 0;
    return 1;
}

/* ------------------------------------------------------------------------------------------------- main */

static char *read_line(FILE *in) { /* a whole line of any length, without the newline; NULL at end of input */
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    int c;
    if (!buf) return NULL;
    while ((c = fgetc(in)) != EOF && c != '\n') {
        if (n + 1 == cap) {
            char *grown = realloc(buf, cap *= 2);
            if (!grown) { free(buf); return NULL; }
            buf = grown;
        }
        buf[n++] = (char)c;
    }
    if (c == EOF && n == 0) { free(buf); return NULL; }
    buf[n] = 0;
    return buf;
}

int main(int argc, char **argv) {
    int said_hello = 0;
    char *line;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--broken")) broken = 1;
        else { fprintf(stderr, "usage: %s [--broken]\n", argv[0]); return 2; }
    }
    fprintf(stderr, "peer: toy engine, vocab %d%s\n", VOCAB, broken ? ", BROKEN (batched rows see the longest row)" : "");

    while ((line = read_line(stdin)) != NULL) {
        Request r;
        parse_request(line, &r);
        if (r.error) answer_error(&r, "bad_request", r.error);
        else if (!strcmp(r.op, "hello")) {
            if (r.protocol != PROTOCOL_VERSION) answer_error(&r, "unsupported", "this peer speaks protocol version 1");
            else {
                char fields[256];
                snprintf(fields, sizeof fields,
                         ",\"protocol\":%d,\"name\":\"%s\",\"vocab_size\":%d,\"capabilities\":{\"describe\":true,"
                         "\"last_batch\":true,\"prefill_batch\":false,\"topk\":0,\"logprobs\":false}",
                         PROTOCOL_VERSION, broken ? "toy-c-broken" : "toy-c", VOCAB);
                said_hello = 1;
                answer_ok(&r, fields);
            }
        } else if (!strcmp(r.op, "shutdown")) {
            answer_ok(&r, "");
            free(line);
            break;
        } else if (!said_hello) answer_error(&r, "bad_request", "hello first");
        else if (!strcmp(r.op, "describe")) {
            char fields[256];
            long live = 0;
            for (long i = 0; i < n_seqs; i++) live += seqs[i].live;
            snprintf(fields, sizeof fields, ",\"describe\":{\"engine\":\"toy C peer\",\"broken\":%s,\"vocab\":%d,"
                     "\"live_sequences\":%ld}", broken ? "true" : "false", VOCAB, live);
            answer_ok(&r, fields);
        } else if (!strcmp(r.op, "new_sequence")) {
            char fields[64];
            if (n_seqs == cap_seqs) {
                Seq *grown = realloc(seqs, sizeof(Seq) * (size_t)(cap_seqs = cap_seqs ? 2 * cap_seqs : 16));
                if (!grown) { fprintf(stderr, "peer: out of memory\n"); return 1; }
                seqs = grown;
            }
            seqs[n_seqs].live = 1; seqs[n_seqs].hash = 0; seqs[n_seqs].pos = 0;
            snprintf(fields, sizeof fields, ",\"seq\":%ld", n_seqs);
            n_seqs++;
            answer_ok(&r, fields);
        } else if (!strcmp(r.op, "free")) {
            for (long i = 0; i < r.n_seqs_in; i++) {
                Seq *s = find_seq(r.seqs[i]);
                if (s) s->live = 0;
            }
            answer_ok(&r, "");
        } else if (!strcmp(r.op, "prefill")) {
            Seq *s = r.has_seq ? find_seq(r.seq) : NULL;
            if (!s) answer_error(&r, "unknown_sequence", "no live sequence with that id");
            else if (!r.has_tokens || r.n_tokens == 0) answer_error(&r, "bad_request", "prefill needs tokens");
            else if (!valid_tokens(&r)) answer_error(&r, "bad_request", "token id outside the vocabulary");
            else {
                float logits[VOCAB];
                for (long i = 0; i < r.n_tokens; i++) feed(s, (long)r.tokens[i]);
                row_logits(s, s->pos, logits); /* one row: it is its own longest */
                answer_logits(&r, logits, 1, 1);
            }
        } else if (!strcmp(r.op, "decode")) {
            long n = r.n_seqs_in, longest = 0, ok = 1;
            if (!r.has_seqs || !r.has_tokens || r.n_tokens != n || n == 0) {
                answer_error(&r, "bad_request", "decode needs seqs and tokens of one length");
            } else if (!valid_tokens(&r)) {
                answer_error(&r, "bad_request", "token id outside the vocabulary");
            } else {
                for (long i = 0; i < n; i++) {
                    if (!find_seq(r.seqs[i])) ok = 0;
                    for (long k = 0; k < i; k++) if (r.seqs[k] == r.seqs[i]) ok = 0;
                }
                if (!ok) answer_error(&r, "unknown_sequence", "no live sequence with that id, or one twice");
                else {
                    float *logits = malloc(sizeof(float) * VOCAB * (size_t)n);
                    if (!logits) { fprintf(stderr, "peer: out of memory\n"); return 1; }
                    for (long i = 0; i < n; i++) {
                        Seq *s = find_seq(r.seqs[i]);
                        feed(s, (long)r.tokens[i]);
                        if (s->pos > longest) longest = s->pos;
                    }
                    for (long i = 0; i < n; i++) row_logits(find_seq(r.seqs[i]), longest, logits + i * VOCAB);
                    last_rows = n;
                    answer_logits(&r, logits, n, 0);
                    free(logits);
                }
            }
        } else if (!strcmp(r.op, "last_batch")) {
            char fields[160];
            if (last_rows < 0) snprintf(fields, sizeof fields, ",\"record\":null");
            else snprintf(fields, sizeof fields, ",\"record\":{\"rows\":%ld,\"forward_calls\":1,\"min_forward_calls\":1,"
                          "\"attempts\":1,\"detail\":\"one pass over the rows\"}", last_rows);
            answer_ok(&r, fields);
        } else answer_error(&r, "unknown_op", "this peer does not know that op");
        free(r.seqs);
        free(r.tokens);
        free(line);
    }
    return 0;
}
