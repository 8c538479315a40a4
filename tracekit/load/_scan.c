/* JSON text of a trace's events array -> columns, in one pass, with no object per event.

The typed decoder (tracekit/load/events.py) builds one Python object per event and the
extractor (extract.py) then reads each field off it; this scanner reads the same fields
straight from the text into growing C arrays, and makes a Python object only for each
distinct string (names, categories) of the call, shared through the loader's string table.

It handles the common shape of every field exactly and gives up on anything else: a value of
another type than the field's usual one, a key written with an escape, a repeated key, text
that is not strict JSON. Giving up returns a short reason (a str) instead of the columns, and
the caller decodes that slice with the typed decoder, so the frames never depend on which
path read a slice. tracekit/load/native.py passes the specification (which categories, which
fields, of which kind) and turns the result into the extractor's columns.

Built against the limited API (abi3) of Python 3.11.
*/
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum kind {
    K_STR,      /* a string, or null / absent -> the field's `missing` object */
    K_NAME,     /* a string, required */
    K_F64_REQ,  /* a number, required */
    K_F64_DUR,  /* a number, absent -> 0.0 */
    K_F64,      /* a number, null / absent -> NaN */
    K_I64,      /* an integer, null / absent -> -1 */
    K_ID,       /* an integer, required */
    K_I64_OPT,  /* an integer, null / absent -> flagged absent */
    K_TRIPLE,   /* [int, int, int], null / absent -> -1, -1, -1 */
    K_RAW,      /* the value's JSON text, absent -> empty */
    N_KINDS
};

#define N_TOP 9
static const char *const TOP_KEYS[N_TOP] = {
    "ph", "cat", "name", "pid", "tid", "ts", "dur", "id", "args"};
enum { T_CAT = 1, T_ARGS = 8 };
#define MAX_ARGS 64
#define MAX_DEPTH 256

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

typedef struct {
    int kind;
    int top;         /* index in TOP_KEYS, or -1 for a key of args */
    char *key;       /* args key (owned copy) */
    Py_ssize_t keylen;
    PyObject *missing;
    Buf values, flags;
    PyObject *list;  /* K_STR, K_NAME */
    size_t mark_values, mark_flags; /* sizes before the current feed (to roll back) */
    Py_ssize_t mark_list;
} Field;

typedef struct {
    Field *fields;
    int nfields;
    int nargs;       /* how many fields are args keys */
    int has_raw;
    PyObject *keys;  /* the K_RAW texts of each row joined by NUL bytes */
    Py_ssize_t rows, mark_rows, mark_keys;
    const char *argkeys[MAX_ARGS]; /* the args keys, in field order */
    Py_ssize_t arglens[MAX_ARGS];
} Spec;

typedef struct {
    const char *s, *e;  /* value text [s, e); s == NULL: absent */
} Span;

typedef struct {
    uint64_t hash;
    const char *s;
    Py_ssize_t n;
    PyObject *obj;
} Entry;

typedef struct CatRec {
    PyObject *cat;   /* borrowed from the string cache, or Py_None */
    Py_ssize_t count, mark_count;
    int spec;        /* index in specs; -1 not read; -2 give up */
} Cat;

/* What is known of the event being scanned: its category once its "cat" key is read, and
   its args' wanted values when they came after it (read in the same pass). */
typedef struct Event {
    struct CatRec *rec;
    int args_done;
    Span args[MAX_ARGS];
} Event;

typedef struct {
    const char *bail;    /* why the scan gave up (static text), NULL while fine */
    PyObject *shared;    /* the loader's table of shared strings */
    PyObject *cats;      /* category -> spec index */
    Entry *table;
    size_t table_cap, table_len;
    Cat *catv;
    int ncat, catcap, mark_ncat;
    Spec *specs;
    int nspecs;
    char *scratch;
    size_t scratch_cap;
} Scan;

/* ---- small buffers ------------------------------------------------------------------ */

static int buf_grow(Buf *b, size_t n) {
    size_t cap = b->cap ? b->cap * 2 : 1024;
    while (cap < b->len + n)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap && buf_grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static inline int put_f64(Buf *b, double v) { return buf_put(b, &v, sizeof v); }

static inline int put_i64(Buf *b, int64_t v) { return buf_put(b, &v, sizeof v); }

/* ---- lexing ------------------------------------------------------------------------- */

static unsigned char SPECIAL[256]; /* '"', '\\', control characters, non-ASCII */

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int is_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hex_value(unsigned char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), 0 if invalid. */
static int utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    if (c >= 0xC2 && c <= 0xDF)
        return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80
            || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

#define HAS_ESCAPE 1

/* p: just after an opening quote. The closing quote, or NULL if the string is not valid
   JSON (a control character, a bad escape, invalid UTF-8, no end). */
static const char *scan_string(const char *p, const char *end, int *flags) {
    const unsigned char *q = (const unsigned char *)p, *e = (const unsigned char *)end;
    for (;;) {
#ifdef __SSE2__
        /* 16 bytes at a time up to the first quote, backslash, control or non-ASCII byte
           (as signed bytes the last two are both below 0x20). */
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'),
                      space = _mm_set1_epi8(0x20);
        while (e - q >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)q);
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                    _mm_cmpeq_epi8(v, backslash)),
                                       _mm_cmplt_epi8(v, space));
            int mask = _mm_movemask_epi8(hit);
            if (mask) {
                q += __builtin_ctz((unsigned)mask);
                break;
            }
            q += 16;
        }
#endif
        while (q < e && !SPECIAL[*q])
            q++;
        if (q >= e)
            return NULL;
        unsigned c = *q;
        if (c == '"')
            return (const char *)q;
        if (c == '\\') {
            *flags |= HAS_ESCAPE;
            if (e - q < 2)
                return NULL;
            unsigned d = q[1];
            if (d == 'u') {
                if (e - q < 6 || !is_hex(q[2]) || !is_hex(q[3]) || !is_hex(q[4])
                    || !is_hex(q[5]))
                    return NULL;
                q += 6;
            } else if (d == '"' || d == '\\' || d == '/' || d == 'b' || d == 'f' || d == 'n'
                       || d == 'r' || d == 't') {
                q += 2;
            } else {
                return NULL;
            }
            continue;
        }
        if (c < 0x20)
            return NULL;
        int n = utf8_seq(q, e);
        if (n == 0)
            return NULL;
        q += n;
    }
}

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The end of the JSON number at p, or NULL if there is none. *is_int: no fraction, no
   exponent. */
static const char *scan_number(const char *p, const char *end, int *is_int) {
    *is_int = 1;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return NULL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && is_digit(*p))
            p++;
    } else {
        return NULL;
    }
    if (p < end && *p == '.') {
        *is_int = 0;
        p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    return p;
}

/* The end of the JSON value at p, or NULL (sc->bail set) if it is not valid JSON. */
static const char *skip_value(Scan *sc, const char *p, const char *end, int depth) {
    if (p >= end) {
        sc->bail = "truncated value";
        return NULL;
    }
    char c = *p;
    if (c == '"') {
        int flags = 0;
        const char *q = scan_string(p + 1, end, &flags);
        if (q == NULL) {
            sc->bail = "invalid string";
            return NULL;
        }
        return q + 1;
    }
    if (c == '{' || c == '[') {
        if (depth >= MAX_DEPTH) {
            sc->bail = "nesting too deep";
            return NULL;
        }
        char close = c == '{' ? '}' : ']';
        p = skip_ws(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (c == '{') {
                int flags = 0;
                if (p >= end || *p != '"' || (p = scan_string(p + 1, end, &flags)) == NULL) {
                    sc->bail = "invalid object key";
                    return NULL;
                }
                p = skip_ws(p + 1, end);
                if (p >= end || *p != ':') {
                    sc->bail = "no colon after a key";
                    return NULL;
                }
                p = skip_ws(p + 1, end);
            }
            p = skip_value(sc, p, end, depth + 1);
            if (p == NULL)
                return NULL;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == close)
                return p + 1;
            sc->bail = "invalid container";
            return NULL;
        }
    }
    if (c == '-' || is_digit(c)) {
        int is_int;
        const char *q = scan_number(p, end, &is_int);
        if (q == NULL)
            sc->bail = "invalid number";
        return q;
    }
    if (end - p >= 4 && memcmp(p, "true", 4) == 0)
        return p + 4;
    if (end - p >= 5 && memcmp(p, "false", 5) == 0)
        return p + 5;
    if (end - p >= 4 && memcmp(p, "null", 4) == 0)
        return p + 4;
    sc->bail = "invalid value";
    return NULL;
}

/* ---- values ------------------------------------------------------------------------- */

static const double POW10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline int is_null(Span v) {
    return v.e - v.s == 4 && memcmp(v.s, "null", 4) == 0;
}

static inline int is_number_start(char c) { return c == '-' || is_digit(c); }

/* An integer literal of at most 18 digits as int64 (what Python's int holds exactly and
   numpy takes as int64); 0 if the value is anything else. */
static int span_int(Span v, int64_t *out) {
    const char *p = v.s;
    int neg = 0;
    if (p < v.e && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= v.e || v.e - p > 18)
        return 0;
    int64_t m = 0;
    for (; p < v.e; p++) {
        if (!is_digit(*p))
            return 0;
        m = m * 10 + (*p - '0');
    }
    *out = neg ? -m : m;
    return 1;
}

/* A number as the double Python would hold: a float literal parsed with correct rounding
   (as msgspec does), an integer literal converted as int -> float does (exact below 2^53,
   correctly rounded above). 0 if it is not a number, or too big to convert exactly here. */
static int span_double(Scan *sc, Span v, double *out) {
    const char *p = v.s, *e = v.e;
    if (p >= e || !is_number_start(*p))
        return 0;
    int is_int;
    if (scan_number(p, e, &is_int) != e)
        return 0;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    uint64_t m = 0;
    int digits = 0, exp10 = 0, exact = 1, int_digits = 0;
    for (; p < e && is_digit(*p); p++) {
        int_digits++;
        if (m == 0 && *p == '0')
            continue;
        if (digits < 19) {
            m = m * 10 + (uint64_t)(*p - '0');
            digits++;
        } else {
            exact = 0;
        }
    }
    if (is_int) {
        if (int_digits > 18)
            return 0;
        *out = (double)(int64_t)m;  /* below 2^60: -0 becomes +0, as int -> float does */
        if (m > (1ULL << 53)) {
            exact = 0;  /* correctly rounded below */
        } else {
            if (neg && m)
                *out = -*out;
            return 1;
        }
    } else {
        if (p < e && *p == '.') {
            for (p++; p < e && is_digit(*p); p++) {
                if (m == 0 && *p == '0') {
                    exp10--;
                    continue;
                }
                if (digits < 19) {
                    m = m * 10 + (uint64_t)(*p - '0');
                    digits++;
                    exp10--;
                } else {
                    exact = 0;
                }
            }
        }
        if (p < e && (*p == 'e' || *p == 'E')) {
            p++;
            int eneg = 0, ev = 0;
            if (*p == '+' || *p == '-')
                eneg = *p++ == '-';
            for (; p < e && is_digit(*p); p++)
                if (ev < 100000)
                    ev = ev * 10 + (*p - '0');
            exp10 += eneg ? -ev : ev;
        }
        if (exact && m <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
            double d = (double)m;
            d = exp10 < 0 ? d / POW10[-exp10] : d * POW10[exp10];
            *out = neg ? -d : d;
            return 1;
        }
    }
    /* Slow path: CPython's correctly rounded conversion of the literal. */
    size_t n = (size_t)(v.e - v.s);
    if (n + 1 > sc->scratch_cap) {
        char *s = realloc(sc->scratch, n + 1);
        if (s == NULL)
            return 0;
        sc->scratch = s;
        sc->scratch_cap = n + 1;
    }
    memcpy(sc->scratch, v.s, n);
    sc->scratch[n] = 0;
    char *stop = NULL;
    double d = PyOS_string_to_double(sc->scratch, &stop, NULL);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (stop != sc->scratch + n || d == HUGE_VAL || d == -HUGE_VAL)
        return 0;
    *out = d;
    return 1;
}

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 29;
    return h;
}

static void put_utf8(char **o, uint32_t cp) {
    char *w = *o;
    if (cp < 0x80) {
        *w++ = (char)cp;
    } else if (cp < 0x800) {
        *w++ = (char)(0xC0 | (cp >> 6));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *w++ = (char)(0xE0 | (cp >> 12));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (char)(0xF0 | (cp >> 18));
        *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    }
    *o = w;
}

static uint32_t hex4(const char *p) {
    return (uint32_t)(hex_value(p[0]) << 12 | hex_value(p[1]) << 8 | hex_value(p[2]) << 4
                      | hex_value(p[3]));
}

/* The str of a string's text [s, e) (escapes resolved; validated by scan_string), new
   reference; NULL with sc->bail set for a lone surrogate escape, or with an error set. */
static PyObject *decode_string(Scan *sc, const char *s, const char *e) {
    if (memchr(s, '\\', (size_t)(e - s)) == NULL)
        return PyUnicode_DecodeUTF8(s, e - s, "strict");
    char *out = malloc((size_t)(e - s) + 1);
    if (out == NULL)
        return PyErr_NoMemory();
    char *w = out;
    const char *p = s;
    while (p < e) {
        if (*p != '\\') {
            *w++ = *p++;
            continue;
        }
        char d = p[1];
        p += 2;
        switch (d) {
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            uint32_t cp = hex4(p);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (e - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                    uint32_t lo = hex4(p + 2);
                    if (lo >= 0xDC00 && lo <= 0xDFFF) {
                        p += 6;
                        put_utf8(&w, 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00));
                        break;
                    }
                }
                free(out);
                sc->bail = "lone surrogate escape";
                return NULL;
            }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(out);
                sc->bail = "lone surrogate escape";
                return NULL;
            }
            put_utf8(&w, cp);
            break;
        }
        default: *w++ = d; break; /* " \ / */
        }
    }
    PyObject *str = PyUnicode_DecodeUTF8(out, w - out, "strict");
    free(out);
    return str;
}

static int table_grow(Scan *sc) {
    size_t cap = sc->table_cap ? sc->table_cap * 2 : 1024;
    Entry *t = calloc(cap, sizeof(Entry));
    if (t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < sc->table_cap; i++) {
        Entry *old = &sc->table[i];
        if (old->obj == NULL)
            continue;
        size_t j = old->hash & (cap - 1);
        while (t[j].obj != NULL)
            j = (j + 1) & (cap - 1);
        t[j] = *old;
    }
    free(sc->table);
    sc->table = t;
    sc->table_cap = cap;
    return 0;
}

/* The shared str of the string value v (quotes included in v), borrowed (the cache holds
   it). NULL: sc->bail or an error is set. */
static PyObject *string_of(Scan *sc, Span v) {
    const char *s = v.s + 1, *e = v.e - 1;
    size_t n = (size_t)(e - s);
    uint64_t h = hash_bytes(s, n);
    if (sc->table_len * 2 >= sc->table_cap && table_grow(sc) < 0)
        return NULL;
    size_t j = h & (sc->table_cap - 1);
    while (sc->table[j].obj != NULL) {
        Entry *t = &sc->table[j];
        if (t->hash == h && (size_t)t->n == n && memcmp(t->s, s, n) == 0)
            return t->obj;
        j = (j + 1) & (sc->table_cap - 1);
    }
    PyObject *str = decode_string(sc, s, e);
    if (str == NULL) {
        if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            sc->bail = "undecodable string";
        }
        return NULL;
    }
    PyObject *canonical = PyDict_GetItemWithError(sc->shared, str);
    if (canonical == NULL) {
        if (PyErr_Occurred() || PyDict_SetItem(sc->shared, str, str) < 0) {
            Py_DECREF(str);
            return NULL;
        }
        canonical = str;
    } else {
        Py_INCREF(canonical);
        Py_DECREF(str);
    }
    char *own = malloc(n ? n : 1); /* the key outlives this text (a Scanner's next feed) */
    if (own == NULL) {
        Py_DECREF(canonical);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(own, s, n);
    Entry *t = &sc->table[j];
    t->hash = h;
    t->s = own;
    t->n = (Py_ssize_t)n;
    t->obj = canonical; /* owns one reference */
    sc->table_len++;
    return canonical;
}

static inline int is_string(Span v) { return v.s != NULL && *v.s == '"'; }

/* Append value v of field f to its column; 0 and sc->bail set when v is not of the
   field's kind, -1 on error. */
static int put_value(Scan *sc, Field *f, Span v) {
    int absent = v.s == NULL, null = !absent && is_null(v);
    switch (f->kind) {
    case K_STR:
    case K_NAME: {
        PyObject *obj;
        if (is_string(v)) {
            obj = string_of(sc, v);
            if (obj == NULL)
                return sc->bail ? 0 : -1;
        } else if (f->kind == K_STR && (absent || null)) {
            obj = f->missing;
        } else {
            sc->bail = f->kind == K_NAME ? "an event without a string name" : "not a string";
            return 0;
        }
        return PyList_Append(f->list, obj) < 0 ? -1 : 1;
    }
    case K_F64_REQ:
    case K_F64_DUR:
    case K_F64: {
        double d;
        if (absent && f->kind != K_F64_REQ) {
            d = f->kind == K_F64_DUR ? 0.0 : NAN;
        } else if (null && f->kind == K_F64) {
            d = NAN;
        } else if (absent || !span_double(sc, v, &d)) {
            sc->bail = "not a number";
            return 0;
        }
        return put_f64(&f->values, d) < 0 ? -1 : 1;
    }
    case K_I64:
    case K_ID:
    case K_I64_OPT: {
        int64_t i = -1;
        char present = 1;
        if ((absent || null) && f->kind != K_ID) {
            present = 0;
        } else if (absent || !span_int(v, &i)) {
            sc->bail = "not an integer";
            return 0;
        }
        if (put_i64(&f->values, present ? i : -1) < 0)
            return -1;
        if (f->kind == K_I64_OPT && buf_put(&f->flags, &present, 1) < 0)
            return -1;
        return 1;
    }
    case K_TRIPLE: {
        int64_t xyz[3] = {-1, -1, -1};
        if (!(absent || null)) {
            const char *p = v.s, *e = v.e;
            if (*p != '[') {
                sc->bail = "not a triple";
                return 0;
            }
            p = skip_ws(p + 1, e);
            for (int k = 0; k < 3; k++) {
                int is_int;
                const char *q = scan_number(p, e, &is_int);
                Span part = {p, q};
                if (q == NULL || !is_int || !span_int(part, &xyz[k])) {
                    sc->bail = "not a triple";
                    return 0;
                }
                p = skip_ws(q, e);
                if (p < e && *p == (k < 2 ? ',' : ']')) {
                    p = skip_ws(p + 1, e);
                } else {
                    sc->bail = "not a triple";
                    return 0;
                }
            }
            if (p != e) {
                sc->bail = "not a triple";
                return 0;
            }
        }
        return buf_put(&f->values, xyz, sizeof xyz) < 0 ? -1 : 1;
    }
    default:
        return 1; /* K_RAW: joined per row by the caller */
    }
}

/* Key text [s, e) (no quotes) against name. */
static inline int key_is(const char *s, const char *e, const char *name, Py_ssize_t n) {
    return e - s == n && memcmp(s, name, (size_t)n) == 0;
}

/* Scan one object at p ({ expected); record the values of the wanted keys in `out`. keys /
   lens: nkeys names. Returns the end of the object, or NULL (sc->bail set). A key with an
   escape, or a wanted key met twice, gives up. */
static Cat *category_of(Scan *sc, Span c);

static const char *scan_object(Scan *sc, const char *p, const char *end, int nkeys,
                               const char *const *keys, const Py_ssize_t *lens, Span *out,
                               int strict_keys, Event *ev) {
    if (p >= end || *p != '{') {
        sc->bail = "not an object";
        return NULL;
    }
    for (int k = 0; k < nkeys; k++)
        out[k].s = out[k].e = NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        int flags = 0;
        if (p >= end || *p != '"') {
            sc->bail = "invalid object key";
            return NULL;
        }
        const char *ks = p + 1, *ke = scan_string(ks, end, &flags);
        if (ke == NULL) {
            sc->bail = "invalid object key";
            return NULL;
        }
        if ((flags & HAS_ESCAPE) && strict_keys) {
            sc->bail = "a key written with an escape";
            return NULL;
        }
        p = skip_ws(ke + 1, end);
        if (p >= end || *p != ':') {
            sc->bail = "no colon after a key";
            return NULL;
        }
        p = skip_ws(p + 1, end);
        int which = -1;
        for (int k = 0; k < nkeys; k++) {
            if (lens[k] == ke - ks && keys[k][0] == *ks && key_is(ks, ke, keys[k], lens[k])) {
                which = k;
                break;
            }
        }
        const char *ve;
        Spec *spec = ev != NULL && which == T_ARGS && ev->rec != NULL && ev->rec->spec >= 0
            ? &sc->specs[ev->rec->spec] : NULL;
        if (spec != NULL && spec->nargs > 0 && *p == '{' && out[which].s == NULL) {
            /* the category came first (as profilers write it): read args now */
            ve = scan_object(sc, p, end, spec->nargs, spec->argkeys, spec->arglens, ev->args,
                             1, NULL);
            ev->args_done = 1;
        } else {
            ve = skip_value(sc, p, end, 1);
        }
        if (ve == NULL)
            return NULL;
        if (which >= 0) {
            if (out[which].s != NULL) {
                sc->bail = "a repeated key";
                return NULL;
            }
            out[which].s = p;
            out[which].e = ve;
            if (ev != NULL && which == T_CAT && (ev->rec = category_of(sc, out[which])) == NULL)
                return NULL;
        }
        p = skip_ws(ve, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}')
            return p + 1;
        sc->bail = "invalid object";
        return NULL;
    }
}

static Py_ssize_t TOP_LENS[N_TOP];

/* The category record of cat (a shared str or Py_None); NULL on error. */
static Cat *category(Scan *sc, PyObject *cat) {
    for (int i = 0; i < sc->ncat; i++)
        if (sc->catv[i].cat == cat)
            return &sc->catv[i];
    if (sc->ncat == sc->catcap) {
        int cap = sc->catcap ? sc->catcap * 2 : 16;
        Cat *c = realloc(sc->catv, (size_t)cap * sizeof(Cat));
        if (c == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        sc->catv = c;
        sc->catcap = cap;
    }
    int spec = -1;
    if (cat != Py_None) {
        PyObject *index = PyDict_GetItemWithError(sc->cats, cat);
        if (index == NULL && PyErr_Occurred())
            return NULL;
        if (index != NULL) {
            long i = PyLong_AsLong(index);
            if (i == -1 && PyErr_Occurred())
                return NULL;
            spec = (int)i;
        }
    }
    Cat *c = &sc->catv[sc->ncat++];
    c->cat = cat;
    c->count = 0;
    c->spec = spec;
    return c;
}

/* The category record of an event's "cat" value; NULL with sc->bail or an error set. */
static Cat *category_of(Scan *sc, Span c) {
    PyObject *cat;
    if (c.s == NULL || is_null(c)) {
        cat = Py_None;
    } else if (is_string(c)) {
        cat = string_of(sc, c);
        if (cat == NULL)
            return NULL;
    } else {
        sc->bail = "a category that is not a string";
        return NULL;
    }
    Cat *rec = category(sc, cat);
    if (rec != NULL && rec->spec == -2) {
        sc->bail = "a category this scanner leaves to the decoder";
        return NULL;
    }
    return rec;
}

/* One event of a read category: every field of its spec. 1 fine, 0 gave up, -1 error. */
static int read_event(Scan *sc, Spec *spec, const Span *top, Event *ev) {
    Span *args = ev->args;
    if (spec->nargs > 0 && !ev->args_done) {
        Span a = top[T_ARGS];
        for (int k = 0; k < spec->nargs; k++)
            args[k].s = args[k].e = NULL;
        if (a.s != NULL && !is_null(a)) {
            if (*a.s != '{') {
                sc->bail = "args that are not an object";
                return 0;
            }
            if (scan_object(sc, a.s, a.e, spec->nargs, spec->argkeys, spec->arglens, args, 1,
                            NULL) == NULL)
                return 0;
        }
    }
    int k = 0;
    Buf raw = {0};
    int nraw = 0;
    for (int i = 0; i < spec->nfields; i++) {
        Field *f = &spec->fields[i];
        Span v = f->top >= 0 ? top[f->top] : args[k++];
        int r = put_value(sc, f, v);
        if (r <= 0) {
            free(raw.data);
            return r;
        }
        if (f->kind == K_RAW) {
            if ((nraw++ && buf_put(&raw, "", 1) < 0)
                || (v.s != NULL && buf_put(&raw, v.s, (size_t)(v.e - v.s)) < 0)) {
                free(raw.data);
                return -1;
            }
        }
    }
    if (spec->has_raw) {
        PyObject *key = PyBytes_FromStringAndSize(raw.data ? raw.data : "", (Py_ssize_t)raw.len);
        free(raw.data);
        if (key == NULL || PyList_Append(spec->keys, key) < 0) {
            Py_XDECREF(key);
            return -1;
        }
        Py_DECREF(key);
    }
    spec->rows++;
    return 1;
}

/* The events array text: every event object counted by category and, for the categories
   in specs, its fields appended to their columns. 1 fine, 0 gave up, -1 error. */
static int scan_array(Scan *sc, const char *p, const char *end, Py_ssize_t *entries,
                      int bare) {
    p = skip_ws(p, end);
    if (!bare) {
        if (p >= end || *p != '[') {
            sc->bail = "not an array";
            return 0;
        }
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']')
            goto done;
    }
    Span top[N_TOP];
    Event ev;
    for (;;) {
        ev.rec = NULL;
        ev.args_done = 0;
        p = scan_object(sc, p, end, N_TOP, TOP_KEYS, TOP_LENS, top, 1, &ev);
        if (p == NULL)
            return PyErr_Occurred() ? -1 : 0;
        ++*entries;
        Cat *rec = ev.rec != NULL ? ev.rec : category_of(sc, top[T_CAT]);
        if (rec == NULL)
            return PyErr_Occurred() ? -1 : 0;
        rec->count++;
        if (rec->spec >= 0) {
            int r = read_event(sc, &sc->specs[rec->spec], top, &ev);
            if (r <= 0)
                return r;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (bare && p == end)
            return 1;
        if (!bare && p < end && *p == ']')
            break;
        sc->bail = "invalid array";
        return 0;
    }
done:
    p = skip_ws(p + 1, end);
    if (p != end) {
        sc->bail = "text after the array";
        return 0;
    }
    return 1;
}

/* ---- the module --------------------------------------------------------------------- */

static void free_scan(Scan *sc) {
    for (size_t i = 0; i < sc->table_cap; i++) {
        if (sc->table[i].obj != NULL)
            free((char *)sc->table[i].s);
        Py_XDECREF(sc->table[i].obj);
    }
    free(sc->table);
    free(sc->catv);
    free(sc->scratch);
    for (int s = 0; s < sc->nspecs; s++) {
        Spec *spec = &sc->specs[s];
        for (int i = 0; i < spec->nfields; i++) {
            Field *f = &spec->fields[i];
            free(f->values.data);
            free(f->flags.data);
            free(f->key);
            Py_XDECREF(f->list);
        }
        free(spec->fields);
        Py_XDECREF(spec->keys);
    }
    free(sc->specs);
}

/* specs: a sequence, per read category, of its fields: (key, kind, missing, is_args). */
static int read_specs(Scan *sc, PyObject *specs) {
    Py_ssize_t n = PySequence_Size(specs);
    if (n < 0)
        return -1;
    sc->specs = calloc((size_t)(n ? n : 1), sizeof(Spec));
    if (sc->specs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    sc->nspecs = (int)n;
    for (Py_ssize_t s = 0; s < n; s++) {
        Spec *spec = &sc->specs[s];
        PyObject *fields = PySequence_GetItem(specs, s);
        if (fields == NULL)
            return -1;
        Py_ssize_t nf = PySequence_Size(fields);
        if (nf < 0 || nf > MAX_ARGS) {
            Py_DECREF(fields);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "too many fields");
            return -1;
        }
        spec->fields = calloc((size_t)(nf ? nf : 1), sizeof(Field));
        spec->nfields = (int)nf;
        if (spec->fields == NULL) {
            Py_DECREF(fields);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < nf; i++) {
            Field *f = &spec->fields[i];
            PyObject *item = PySequence_GetItem(fields, i);
            const char *key;
            Py_ssize_t keylen;
            int is_args;
            if (item == NULL || !PyArg_ParseTuple(item, "s#iOp", &key, &keylen, &f->kind,
                                                  &f->missing, &is_args)) {
                Py_XDECREF(item);
                Py_DECREF(fields);
                return -1;
            }
            Py_DECREF(item); /* missing: kept alive by the caller's spec */
            if (f->kind < 0 || f->kind >= N_KINDS) {
                Py_DECREF(fields);
                PyErr_SetString(PyExc_ValueError, "unknown field kind");
                return -1;
            }
            f->top = -1;
            if (is_args) {
                f->key = malloc((size_t)keylen + 1);
                if (f->key == NULL) {
                    Py_DECREF(fields);
                    PyErr_NoMemory();
                    return -1;
                }
                memcpy(f->key, key, (size_t)keylen + 1);
                f->keylen = keylen;
                spec->nargs++;
            } else {
                for (int t = 0; t < N_TOP; t++)
                    if (key_is(key, key + keylen, TOP_KEYS[t], TOP_LENS[t]))
                        f->top = t;
                if (f->top < 0 || f->top == T_ARGS) {
                    Py_DECREF(fields);
                    PyErr_SetString(PyExc_ValueError, "unknown event key");
                    return -1;
                }
            }
            if (f->kind == K_STR || f->kind == K_NAME) {
                f->list = PyList_New(0);
                if (f->list == NULL) {
                    Py_DECREF(fields);
                    return -1;
                }
            }
            if (f->kind == K_RAW)
                spec->has_raw = 1;
        }
        Py_DECREF(fields);
        for (int i = 0, k = 0; i < spec->nfields; i++) {
            if (spec->fields[i].top < 0) {
                spec->argkeys[k] = spec->fields[i].key;
                spec->arglens[k++] = spec->fields[i].keylen;
            }
        }
        if (spec->has_raw && (spec->keys = PyList_New(0)) == NULL)
            return -1;
    }
    return 0;
}

static PyObject *bytes_of(Buf *b) {
    return PyByteArray_FromStringAndSize(b->data ? b->data : "", (Py_ssize_t)b->len);
}

/* Per spec: None when no event was read, else (rows, [column per field], raw keys or None);
   a column is a list (strings), a bytearray (numbers), a (values, flags) pair (K_I64_OPT),
   or None (K_RAW: in the raw keys). */
static PyObject *spec_result(Spec *spec) {
    if (spec->rows == 0)
        Py_RETURN_NONE;
    PyObject *cols = PyList_New(spec->nfields);
    if (cols == NULL)
        return NULL;
    for (int i = 0; i < spec->nfields; i++) {
        Field *f = &spec->fields[i];
        PyObject *col;
        if (f->list != NULL) {
            col = f->list;
            Py_INCREF(col);
        } else if (f->kind == K_RAW) {
            col = Py_None;
            Py_INCREF(col);
        } else if (f->kind == K_I64_OPT) {
            PyObject *v = bytes_of(&f->values), *fl = bytes_of(&f->flags);
            col = (v && fl) ? PyTuple_Pack(2, v, fl) : NULL;
            Py_XDECREF(v);
            Py_XDECREF(fl);
        } else {
            col = bytes_of(&f->values);
        }
        if (col == NULL || PyList_SetItem(cols, i, col) < 0) {
            Py_DECREF(cols);
            return NULL;
        }
    }
    PyObject *keys = spec->keys ? spec->keys : Py_None;
    PyObject *out = Py_BuildValue("(nNO)", spec->rows, cols, keys);
    return out;
}

/* (census, entries, per spec) of what was read (see spec_result). */
static PyObject *scan_result(Scan *sc, Py_ssize_t entries) {
    PyObject *census = PyList_New(sc->ncat);
    PyObject *per_spec = census ? PyList_New(sc->nspecs) : NULL;
    if (per_spec == NULL) {
        Py_XDECREF(census);
        return NULL;
    }
    for (int i = 0; i < sc->ncat; i++) {
        PyObject *pair = Py_BuildValue("(On)", sc->catv[i].cat, sc->catv[i].count);
        if (pair == NULL || PyList_SetItem(census, i, pair) < 0)
            goto fail;
    }
    for (int s = 0; s < sc->nspecs; s++) {
        PyObject *item = spec_result(&sc->specs[s]);
        if (item == NULL || PyList_SetItem(per_spec, s, item) < 0)
            goto fail;
    }
    return Py_BuildValue("(NnN)", census, entries, per_spec);
fail:
    Py_DECREF(census);
    Py_DECREF(per_spec);
    return NULL;
}

static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *text, *cats, *specs, *shared;
    if (!PyArg_ParseTuple(args, "OO!OO!", &text, &PyDict_Type, &cats, &specs, &PyDict_Type,
                          &shared))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(text, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Scan sc;
    memset(&sc, 0, sizeof sc);
    sc.shared = shared;
    sc.cats = cats;
    PyObject *result = NULL;
    Py_ssize_t entries = 0;
    if (read_specs(&sc, specs) < 0 || table_grow(&sc) < 0)
        goto out;
    const char *p = view.buf;
    int r = scan_array(&sc, p, p + view.len, &entries, 0);
    if (r < 0)
        goto out;
    if (r == 0) {
        result = PyUnicode_FromString(sc.bail ? sc.bail : "gave up");
        goto out;
    }
    result = scan_result(&sc, entries);
out:
    free_scan(&sc);
    PyBuffer_Release(&view);
    return result;
}

/* ---- Scanner: the slices of one file read into one set of columns ------------------ */

typedef struct {
    PyObject_HEAD
    Scan sc;
    PyObject *refs;  /* (cats, specs, shared), kept alive while the scan points at them */
    Py_ssize_t entries, mark_entries;
} Scanner;

static void mark(Scanner *self) {
    Scan *sc = &self->sc;
    self->mark_entries = self->entries;
    for (int i = 0; i < sc->ncat; i++)
        sc->catv[i].mark_count = sc->catv[i].count;
    sc->mark_ncat = sc->ncat;
    for (int s = 0; s < sc->nspecs; s++) {
        Spec *spec = &sc->specs[s];
        spec->mark_rows = spec->rows;
        spec->mark_keys = spec->keys ? PyList_Size(spec->keys) : 0;
        for (int i = 0; i < spec->nfields; i++) {
            Field *f = &spec->fields[i];
            f->mark_values = f->values.len;
            f->mark_flags = f->flags.len;
            f->mark_list = f->list ? PyList_Size(f->list) : 0;
        }
    }
}

/* Drop what the current feed appended (it gave up part way). */
static int roll_back(Scanner *self) {
    Scan *sc = &self->sc;
    self->entries = self->mark_entries;
    sc->ncat = sc->mark_ncat;
    for (int i = 0; i < sc->ncat; i++)
        sc->catv[i].count = sc->catv[i].mark_count;
    for (int s = 0; s < sc->nspecs; s++) {
        Spec *spec = &sc->specs[s];
        spec->rows = spec->mark_rows;
        if (spec->keys && PyList_SetSlice(spec->keys, spec->mark_keys, PY_SSIZE_T_MAX, NULL) < 0)
            return -1;
        for (int i = 0; i < spec->nfields; i++) {
            Field *f = &spec->fields[i];
            f->values.len = f->mark_values;
            f->flags.len = f->mark_flags;
            if (f->list && PyList_SetSlice(f->list, f->mark_list, PY_SSIZE_T_MAX, NULL) < 0)
                return -1;
        }
    }
    return 0;
}

static PyObject *Scanner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *cats, *specs, *shared;
    if ((kwds != NULL && PyDict_Size(kwds) > 0)
        || !PyArg_ParseTuple(args, "O!OO!", &PyDict_Type, &cats, &specs, &PyDict_Type,
                             &shared))
        return NULL;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Scanner *self = (Scanner *)alloc(type, 0);
    if (self == NULL)
        return NULL;
    memset(&self->sc, 0, sizeof self->sc);
    self->entries = self->mark_entries = 0;
    self->refs = PyTuple_Pack(3, cats, specs, shared);
    if (self->refs == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->sc.cats = cats;
    self->sc.shared = shared;
    if (read_specs(&self->sc, specs) < 0 || table_grow(&self->sc) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Scanner_dealloc(Scanner *self) {
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    free_scan(&self->sc);
    Py_XDECREF(self->refs);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

/* feed(text, bare=False) -> rows per spec of this text (a tuple), or why it gave up (a str:
   nothing of the text is kept). bare: the text holds the events without the array's [ ]
   (a view of the slicer's buffer, not a copy). */
static PyObject *Scanner_feed(Scanner *self, PyObject *args) {
    PyObject *text;
    int bare = 0;
    if (!PyArg_ParseTuple(args, "O|p", &text, &bare))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(text, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Scan *sc = &self->sc;
    mark(self);
    sc->bail = NULL;
    const char *p = view.buf;
    int r = scan_array(sc, p, p + view.len, &self->entries, bare);
    PyBuffer_Release(&view);
    if (r <= 0) {
        if (roll_back(self) < 0 || r < 0)
            return NULL;
        return PyUnicode_FromString(sc->bail ? sc->bail : "gave up");
    }
    PyObject *rows = PyTuple_New(sc->nspecs);
    if (rows == NULL)
        return NULL;
    for (int s = 0; s < sc->nspecs; s++) {
        PyObject *n = PyLong_FromSsize_t(sc->specs[s].rows - sc->specs[s].mark_rows);
        if (n == NULL || PyTuple_SetItem(rows, s, n) < 0) {
            Py_DECREF(rows);
            return NULL;
        }
    }
    return rows;
}

/* take() -> (census, entries, per spec) of everything fed since the last take (see scan);
   the columns start again empty. */
static PyObject *Scanner_take(Scanner *self, PyObject *Py_UNUSED(ignored)) {
    Scan *sc = &self->sc;
    PyObject *result = scan_result(sc, self->entries);
    if (result == NULL)
        return NULL;
    self->entries = 0;
    sc->ncat = 0;
    for (int s = 0; s < sc->nspecs; s++) {
        Spec *spec = &sc->specs[s];
        spec->rows = 0;
        if (spec->keys != NULL) {
            Py_DECREF(spec->keys);
            if ((spec->keys = PyList_New(0)) == NULL)
                goto fail;
        }
        for (int i = 0; i < spec->nfields; i++) {
            Field *f = &spec->fields[i];
            free(f->values.data);
            free(f->flags.data);
            memset(&f->values, 0, sizeof f->values);
            memset(&f->flags, 0, sizeof f->flags);
            if (f->list != NULL) {
                Py_DECREF(f->list);
                if ((f->list = PyList_New(0)) == NULL)
                    goto fail;
            }
        }
    }
    return result;
fail:
    Py_DECREF(result);
    return NULL;
}

static PyMethodDef SCANNER_METHODS[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_VARARGS,
     "feed(text, bare=False) -> rows per category spec (tuple) | reason (str); bare: the\n"
     "events without the array's brackets"},
    {"take", (PyCFunction)Scanner_take, METH_NOARGS,
     "take() -> (census, entries, per_spec) of what was fed since the last take"},
    {NULL, NULL, 0, NULL}};

static PyType_Slot SCANNER_SLOTS[] = {
    {Py_tp_new, Scanner_new},
    {Py_tp_dealloc, Scanner_dealloc},
    {Py_tp_methods, SCANNER_METHODS},
    {Py_tp_doc, "Scanner(cats, specs, shared): the slices of one file read into one set of "
                "columns (tracekit.load.native)."},
    {0, NULL}};

static PyType_Spec SCANNER_SPEC = {
    "tracekit.load._scan.Scanner", sizeof(Scanner), 0, Py_TPFLAGS_DEFAULT, SCANNER_SLOTS};

static PyMethodDef METHODS[] = {
    {"scan", scan, METH_VARARGS,
     "scan(text, cats, specs, shared) -> (census, entries, per_spec) | reason\n\n"
     "Read a JSON array of trace events into columns (see tracekit/load/native.py)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_scan", "Trace events JSON -> columns (tracekit.load.native).",
    -1, METHODS};

PyMODINIT_FUNC PyInit__scan(void) {
    for (int c = 0; c < 256; c++)
        SPECIAL[c] = c == '"' || c == '\\' || c < 0x20 || c >= 0x80;
    for (int t = 0; t < N_TOP; t++)
        TOP_LENS[t] = (Py_ssize_t)strlen(TOP_KEYS[t]);
    PyObject *module = PyModule_Create(&MODULE);
    if (module == NULL)
        return NULL;
    PyObject *scanner = PyType_FromSpec(&SCANNER_SPEC);
    if (scanner == NULL || PyModule_AddObject(module, "Scanner", scanner) < 0) {
        Py_XDECREF(scanner);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
