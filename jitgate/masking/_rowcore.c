/* Compiled core of RowPlan.mask_row (jitgate/masking/rows.py is the reference).
 *
 * The per-row, per-field loop is where Python itself is the limit on a bulk SELECT under
 * masking, so this module does, in C, exactly what the reference does:
 *
 * - walks a DataRow's column lengths and checks them (same MalformedRow messages);
 * - masks the columns of its plan; everything else is copied as the bytes it came in;
 * - HASH_TEXT: a column rule's hash token of an unlimited text value (HMAC-SHA256, the
 *   same keyed states as strategies.Hasher);
 * - DETECT_TEXT: detectors on an unlimited text value. A value with a character that folds
 *   (jitgate/masking/fold.py: full-width and other scripts' digits, ZWSP, NBSP, dashes...; the
 *   set comes from Python as a bitmap, set_fold_table) goes to the Python scan of its column,
 *   which detects on the folded view. For the others (ASCII, accented text) a prefilter that
 *   is a necessary condition of each detector family (the reference's, plus the digit-count
 *   gates that find_all and find_phones apply inside each numeric cluster) rejects most
 *   values; a value where only emails, cards, SSNs and phone numbers can match has them found
 *   (the same spans as detectors.find_all, regexes matched in their engine's order, Unicode
 *   classes where Python's decide) and replaced here with each detector's strategy; any
 *   other value (an IBAN or secret candidate) goes to the Python scan of its column;
 * - PYTHON: any other column masker is called as it is.
 *
 * tests/masking/test_rowcore.py runs the masking tests against both; property tests check
 * identical spans and identical bytes on random rows, and bound the steps on 1 MB values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifdef JITGATE_OPENSSL
/* libcrypto's SHA-256 uses the CPU's SHA instructions where there are any (several times the
 * portable code below). Its low-level calls are deprecated in OpenSSL 3 but kept: a keyed
 * state copied per value is what makes a short HMAC cheap, and EVP allocates per call. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#endif

/* ---- SHA-256 (FIPS 180-4), when libcrypto's headers were not there at build time ------ */
#ifndef JITGATE_OPENSSL

typedef struct {
    uint32_t h[8];
    uint64_t length; /* bytes absorbed */
    uint8_t block[64];
    size_t used;
} Sha256;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_compress(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha256_init(Sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->length = 0;
    s->used = 0;
}

static void sha256_update(Sha256 *s, const uint8_t *p, size_t n)
{
    s->length += n;
    if (s->used) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take; p += take; n -= take;
        if (s->used < 64)
            return;
        sha256_compress(s->h, s->block);
        s->used = 0;
    }
    while (n >= 64) {
        sha256_compress(s->h, p);
        p += 64; n -= 64;
    }
    memcpy(s->block, p, n);
    s->used = n;
}

static void sha256_final(Sha256 *s, uint8_t out[32])
{
    uint64_t bits = s->length * 8;
    uint8_t pad = 0x80;
    sha256_update(s, &pad, 1);
    uint8_t zero = 0;
    while (s->used != 56)
        sha256_update(s, &zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24); out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8); out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

#endif

/* ---- Hmac: keyed states computed once, like strategies.Hasher ----------------------- */

#define TOKEN_LENGTH 18 /* "h:" + 16 hex digits (strategies.HASH_PREFIX, HASH_HEX_DIGITS) */

#ifdef JITGATE_OPENSSL
typedef SHA256_CTX HashState;
#define STATE_INIT(s) SHA256_Init(s)
#define STATE_UPDATE(s, p, n) SHA256_Update((s), (p), (n))
#define STATE_FINAL(s, out) SHA256_Final((out), (s))
#else
typedef Sha256 HashState;
#define STATE_INIT(s) sha256_init(s)
#define STATE_UPDATE(s, p, n) sha256_update((s), (p), (n))
#define STATE_FINAL(s, out) sha256_final((s), (out))
#endif

typedef struct {
    PyObject_HEAD
    HashState inner, outer;
} HmacObject;

static int Hmac_init(HmacObject *self, PyObject *args, PyObject *kwds)
{
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key))
        return -1;
    uint8_t block[64] = {0};
    if (key.len > 64) {
        HashState s;
        STATE_INIT(&s);
        STATE_UPDATE(&s, key.buf, (size_t)key.len);
        STATE_FINAL(&s, block);
    } else {
        memcpy(block, key.buf, (size_t)key.len);
    }
    PyBuffer_Release(&key);
    uint8_t ipad[64], opad[64];
    for (int i = 0; i < 64; i++) {
        ipad[i] = block[i] ^ 0x36;
        opad[i] = block[i] ^ 0x5c;
    }
    STATE_INIT(&self->inner);
    STATE_UPDATE(&self->inner, ipad, 64);
    STATE_INIT(&self->outer);
    STATE_UPDATE(&self->outer, opad, 64);
    return 0;
}

static void hmac_digest(const HmacObject *h, const uint8_t *p, size_t n, uint8_t out[32])
{
    HashState s = h->inner;
    uint8_t inner[32];
    STATE_UPDATE(&s, p, n);
    STATE_FINAL(&s, inner);
    s = h->outer;
    STATE_UPDATE(&s, inner, 32);
    STATE_FINAL(&s, out);
}

static void hmac_token(const HmacObject *h, const uint8_t *p, size_t n, char out[TOKEN_LENGTH])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t digest[32];
    hmac_digest(h, p, n, digest);
    out[0] = 'h';
    out[1] = ':';
    for (int i = 0; i < 8; i++) {
        out[2 + 2 * i] = hex[digest[i] >> 4];
        out[3 + 2 * i] = hex[digest[i] & 15];
    }
}

static PyObject *Hmac_digest(HmacObject *self, PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    uint8_t out[32];
    hmac_digest(self, data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *Hmac_token(HmacObject *self, PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    char out[TOKEN_LENGTH];
    hmac_token(self, data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize(out, TOKEN_LENGTH);
}

static PyMethodDef Hmac_methods[] = {
    {"digest", (PyCFunction)Hmac_digest, METH_O, "HMAC-SHA256 of the bytes."},
    {"token", (PyCFunction)Hmac_token, METH_O, "b'h:' + the first 16 hex digits of the HMAC."},
    {NULL},
};

static PyTypeObject HmacType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jitgate.masking._rowcore.Hmac",
    .tp_basicsize = sizeof(HmacObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "HMAC-SHA256 with its keyed states computed once (strategies.Hasher in C).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Hmac_init,
    .tp_methods = Hmac_methods,
};

/* ---- prefilter (detectors.Prefilter and find_all's gates) ------------------------------ */

#define FAMILY_EMAIL 1
#define FAMILY_NUMERIC 2
#define FAMILY_IBAN 4
#define FAMILY_SECRET 8

static inline int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static inline int is_upper(uint8_t c) { return c >= 'A' && c <= 'Z'; }
static inline int is_alpha(uint8_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static inline int is_alnum(uint8_t c) { return is_digit(c) || is_alpha(c); }
/* detectors._NUMERIC_CLUSTER: [0-9(+][0-9 ().+-]{8,} */
static inline int cluster_start(uint8_t c) { return is_digit(c) || c == '(' || c == '+'; }
static inline int cluster_char(uint8_t c)
{
    return is_digit(c) || c == ' ' || c == '(' || c == ')' || c == '.' || c == '+' || c == '-';
}

static int contains(const uint8_t *p, Py_ssize_t n, const char *needle)
{
    Py_ssize_t m = (Py_ssize_t)strlen(needle);
    for (Py_ssize_t i = 0; i + m <= n; i++) {
        const uint8_t *hit = memchr(p + i, needle[0], (size_t)(n - m - i + 1));
        if (hit == NULL)
            return 0;
        i = hit - p;
        if (memcmp(hit, needle, (size_t)m) == 0)
            return 1;
    }
    return 0;
}

/* Could a numeric cluster of this text hold a card, an SSN or a phone number? Clusters are
 * found as detectors._NUMERIC_CLUSTER finds them (leftmost, greedy; its classes are ASCII,
 * so UTF-8 bytes give the same clusters as the decoded text). Inside a cluster find_all runs
 * cards from 13 digits, SSNs from 9 digits with a '-', phones from 8 digits; a phone match
 * lies inside its cluster (all its characters are cluster characters) and find_phones keeps
 * it only with a '+' (international) or 10+ digits (North American, trunk). */
static int numeric_possible(const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        if (!cluster_start(p[i])) {
            i++;
            continue;
        }
        Py_ssize_t j = i + 1;
        while (j < n && cluster_char(p[j]))
            j++;
        if (j - i - 1 >= 8) {
            int digits = 0, dash = 0, plus = 0;
            for (Py_ssize_t k = i; k < j; k++) {
                digits += is_digit(p[k]);
                dash |= p[k] == '-';
                plus |= p[k] == '+';
            }
            if (digits >= 10 || (digits >= 9 && dash) || (digits >= 8 && plus))
                return 1;
            i = j;
        } else {
            /* no start inside this run can reach 8 more cluster characters either */
            i = j;
        }
    }
    return 0;
}

/* ---- the characters that fold (jitgate/masking/fold.py) ----------------------------------
 *
 * The detectors read a value with such a character through its folded view, which only the
 * Python scan builds; these values are handed to it whole. The set is a bitmap over every code
 * point, from fold.bitmap() (set_fold_table, once, when rows.py loads this module); until it
 * is set every value that is not ASCII counts as folding (the Python scan decides: slower,
 * never wrong). */
#define FOLD_TABLE_SIZE (0x110000 / 8)
static uint8_t fold_table[FOLD_TABLE_SIZE];
static int fold_table_set = 0;

static int utf8_sequence(const uint8_t *p, Py_ssize_t left, Py_UCS4 *cp);
static int is_ascii(const uint8_t *p, Py_ssize_t n);

/* Does a character of this value (UTF-8, a byte that is not UTF-8 being one character that
 * never folds, as its lone surrogate does not in Python) fold? */
static int needs_fold(const uint8_t *p, Py_ssize_t n)
{
    if (is_ascii(p, n))
        return 0;
    if (!fold_table_set)
        return 1;
    Py_ssize_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        Py_UCS4 cp;
        int length = utf8_sequence(p + i, n - i, &cp);
        if (length == 0) {
            i++;
            continue;
        }
        if (fold_table[cp >> 3] & (1u << (cp & 7)))
            return 1;
        i += length;
    }
    return 0;
}

static int families_of(const uint8_t *p, Py_ssize_t n, int enabled)
{
    int found = 0;
    if ((enabled & FAMILY_EMAIL) && memchr(p, '@', (size_t)n) != NULL)
        found |= FAMILY_EMAIL;
    if ((enabled & FAMILY_NUMERIC) && numeric_possible(p, n))
        found |= FAMILY_NUMERIC;
    if (enabled & FAMILY_IBAN) {
        for (Py_ssize_t i = 0; i + 4 <= n; i++) {
            if (is_upper(p[i]) && is_upper(p[i + 1]) && is_digit(p[i + 2]) && is_digit(p[i + 3])) {
                found |= FAMILY_IBAN;
                break;
            }
        }
    }
    if ((enabled & FAMILY_SECRET) && (contains(p, n, "-----BEGIN ") || contains(p, n, "eyJ") || contains(p, n, "AKIA")
                                      || contains(p, n, "ASIA") || contains(p, n, "xox") || contains(p, n, "private_key")))
        found |= FAMILY_SECRET;
    return found;
}

/* ---- detections on ASCII text: the spans detectors.find_all gives ---------------------- */

/* Detector kinds, numbered as detectors.DETECTOR_KINDS: the number is the merge priority. */
#define KIND_SECRET 0
#define KIND_EMAIL 1
#define KIND_IBAN 2
#define KIND_CARD 3
#define KIND_SSN 4
#define KIND_PHONE 5
#define KIND_COUNT 6

static const char *const KIND_NAMES[KIND_COUNT] = {"secret", "email", "iban", "card", "ssn", "phone"};

typedef struct {
    Py_ssize_t start, end;
    int kind;
} Span;

/* One value being scanned: the spans found so far, and a count of the steps taken (the
 * tests bound it on attacker input: every finder here is linear in the value). */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    Span *spans;
    Py_ssize_t count, cap;
    uint64_t ops;
    /* find_phones' international shape: first end reachable from (offset, groups done), per '+' */
    int memo_stamp[48][7];
    int memo_end[48][7];
    int memo_generation;
} Scan;

static void scan_init(Scan *sc, const uint8_t *p, Py_ssize_t n)
{
    sc->p = p;
    sc->n = n;
    sc->spans = NULL;
    sc->count = sc->cap = 0;
    sc->ops = 0;
    sc->memo_generation = 0; /* memo_stamp is cleared on first use */
}

static int add_span(Scan *sc, Py_ssize_t start, Py_ssize_t end, int kind)
{
    if (sc->count == sc->cap) {
        Py_ssize_t cap = sc->cap ? 2 * sc->cap : 8;
        Span *grown = PyMem_Realloc(sc->spans, (size_t)cap * sizeof(Span));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        sc->spans = grown;
        sc->cap = cap;
    }
    sc->spans[sc->count].start = start;
    sc->spans[sc->count].end = end;
    sc->spans[sc->count].kind = kind;
    sc->count++;
    return 0;
}

/* ---- text as the detectors see it: characters, not bytes ----
 *
 * The detectors run on the value decoded with surrogateescape, and outside ASCII only three
 * things about a character matter to them: str.isdigit(), str.isalnum() (= the regex class
 * \w without '_'), or neither. A value that is not ASCII is scanned as one byte per
 * character: ASCII characters as themselves, every other character as one of the classes
 * below (a byte that is not UTF-8 is one character of CLASS_OTHER, as its lone surrogate is
 * in Python), so positions, windows and look-arounds count characters as Python's do. */
#define CLASS_DIGIT 0x80 /* not ASCII: isdigit() (so also isalnum() and \w) */
#define CLASS_ALNUM 0x81 /* not ASCII: isalnum() and \w, not isdigit() */
#define CLASS_OTHER 0x82 /* not ASCII: neither */

static inline int is_alnum_u(uint8_t c) { return is_alnum(c) || c == CLASS_DIGIT || c == CLASS_ALNUM; } /* str.isalnum */
static inline int is_digit_u(uint8_t c) { return is_digit(c) || c == CLASS_DIGIT; }                  /* str.isdigit */
static inline int is_word(uint8_t c) { return is_alnum_u(c) || c == '_'; }                           /* \w */

/* Length of the valid UTF-8 sequence at p (no overlong forms, no surrogates, at most
 * U+10FFFF) and its character, or 0: then Python's decoder escapes this one byte (every byte
 * of an invalid part becomes its own surrogate, and no valid sequence starts on a
 * continuation byte, so deciding byte by byte gives the same characters). */
static int utf8_sequence(const uint8_t *p, Py_ssize_t left, Py_UCS4 *cp)
{
    uint8_t b = p[0];
    if (b >= 0xC2 && b <= 0xDF) {
        if (left < 2 || (p[1] & 0xC0) != 0x80)
            return 0;
        *cp = (Py_UCS4)(b & 0x1F) << 6 | (p[1] & 0x3F);
        return 2;
    }
    if (b >= 0xE0 && b <= 0xEF) {
        uint8_t low = b == 0xE0 ? 0xA0 : 0x80, high = b == 0xED ? 0x9F : 0xBF;
        if (left < 3 || p[1] < low || p[1] > high || (p[2] & 0xC0) != 0x80)
            return 0;
        *cp = (Py_UCS4)(b & 0x0F) << 12 | (Py_UCS4)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        uint8_t low = b == 0xF0 ? 0x90 : 0x80, high = b == 0xF4 ? 0x8F : 0xBF;
        if (left < 4 || p[1] < low || p[1] > high || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        *cp = (Py_UCS4)(b & 0x07) << 18 | (Py_UCS4)(p[1] & 0x3F) << 12 | (Py_UCS4)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
        return 4;
    }
    return 0;
}

/* One byte per character of p (see above) into classes, and each character's byte offset
 * into offsets (plus the end at offsets[count]). Returns the character count. */
static Py_ssize_t classify(const uint8_t *p, Py_ssize_t n, uint8_t *classes, uint32_t *offsets)
{
    Py_ssize_t count = 0, i = 0;
    while (i < n) {
        Py_UCS4 cp;
        int length = 1;
        offsets[count] = (uint32_t)i;
        if (p[i] < 0x80) {
            classes[count] = p[i];
        } else if ((length = utf8_sequence(p + i, n - i, &cp)) == 0) {
            classes[count] = CLASS_OTHER;
            length = 1;
        } else {
            classes[count] = Py_UNICODE_ISDIGIT(cp) ? CLASS_DIGIT : Py_UNICODE_ISALNUM(cp) ? CLASS_ALNUM : CLASS_OTHER;
        }
        count++;
        i += length;
    }
    offsets[count] = (uint32_t)n;
    return count;
}
static inline int is_sep(uint8_t c) { return c == ' ' || c == '.' || c == '-'; } /* [ .-] */

/* ---- email (detectors.find_emails) ---- */

static inline int email_local_char(uint8_t c) /* [\w.%+-] on ASCII */
{
    return is_word(c) || c == '.' || c == '%' || c == '+' || c == '-';
}
static inline int label_char(uint8_t c) { return is_alnum(c) || c == '-'; }

/* End of a maximal [A-Za-z0-9-] run from i, before stop. */
static Py_ssize_t segment_end(Scan *sc, Py_ssize_t i, Py_ssize_t stop)
{
    Py_ssize_t from = i;
    while (i < stop && label_char(sc->p[i]))
        i++;
    sc->ops += (uint64_t)(i - from) + 1;
    return i;
}

static int valid_label(const uint8_t *p, Py_ssize_t s, Py_ssize_t e)
{
    return e - s >= 1 && e - s <= 63 && is_alnum(p[s]) && is_alnum(p[e - 1]);
}

static int valid_tld(const uint8_t *p, Py_ssize_t s, Py_ssize_t e)
{
    if (e - s < 2 || e - s > 24)
        return 0;
    for (Py_ssize_t i = s; i < e; i++)
        if (!is_alpha(p[i]))
            return 0;
    return 1;
}

/* detectors._EMAIL_DOMAIN matched at s with endpos stop: label (\.label)* \.tld (?![A-Za-z0-9-]).
 * A label or the tld must cover a whole dot-separated segment (what follows a shorter one is a
 * label character, which neither '.' nor the look-ahead accepts), and the regex engine's
 * greedy order takes the deepest run of labels first, then tries the tld from the last
 * segment back. Returns the end of the match or -1. */
static Py_ssize_t email_domain(Scan *sc, Py_ssize_t s, Py_ssize_t stop)
{
    const uint8_t *p = sc->p;
    Py_ssize_t seg_start[130], seg_end[130]; /* a 256-character window has at most 129 segments */
    Py_ssize_t e = segment_end(sc, s, stop);
    if (!valid_label(p, s, e) || e >= stop || p[e] != '.')
        return -1;
    int count = 0; /* segments after the first, each preceded by a '.' */
    Py_ssize_t dot = e;
    int depth = 0; /* labels s_1..s_depth each followed by a '.' */
    int deepest_known = 0;
    while (dot < stop && p[dot] == '.' && count < 129) {
        Py_ssize_t a = dot + 1, b = segment_end(sc, a, stop);
        seg_start[count] = a;
        seg_end[count] = b;
        count++;
        if (!deepest_known && valid_label(p, a, b) && b < stop && p[b] == '.') {
            depth = count;
        } else {
            deepest_known = 1;
            break;
        }
        dot = b;
    }
    /* tld at segment depth+1 (if it exists), then depth, ..., 1 */
    for (int j = (count > depth ? depth + 1 : depth); j >= 1; j--) {
        sc->ops += 1;
        if (valid_tld(p, seg_start[j - 1], seg_end[j - 1]))
            return seg_end[j - 1];
    }
    return -1;
}

/* Every email span, as detectors.find_emails gives them (not merged). 0 or -1 (no memory). */
static int find_emails(Scan *sc)
{
    const uint8_t *p = sc->p;
    Py_ssize_t n = sc->n;
    const uint8_t *hit = memchr(p, '@', (size_t)n);
    while (hit != NULL) {
        Py_ssize_t at = hit - p, k = 0;
        while (k < 64 && at - 1 - k >= 0 && email_local_char(p[at - 1 - k]))
            k++;
        sc->ops += (uint64_t)k + 1;
        Py_ssize_t end = -1;
        if (k > 0) {
            Py_ssize_t stop = at + 1 + 256 < n ? at + 1 + 256 : n;
            end = email_domain(sc, at + 1, stop);
        }
        if (end >= 0) {
            if (add_span(sc, at - k, end, KIND_EMAIL) < 0)
                return -1;
            hit = end < n ? memchr(p + end, '@', (size_t)(n - end)) : NULL;
        } else {
            hit = at + 1 < n ? memchr(p + at + 1, '@', (size_t)(n - at - 1)) : NULL;
        }
    }
    return 0;
}

/* ---- payment cards (detectors.find_cards, _cards_in_groups, _is_card_number) ---- */

/* detectors._TIMESTAMP_DIGITS at the start of 8+ digits: yyyymmdd from 1900 to 2099. */
static int timestamp_prefix(const char *d)
{
    if (!((d[0] == '1' && d[1] == '9') || (d[0] == '2' && d[1] == '0')))
        return 0;
    int month = (d[4] == '0' && d[5] >= '1') || (d[4] == '1' && d[5] <= '2');
    int day = (d[6] == '0' && d[7] >= '1') || d[6] == '1' || d[6] == '2' || (d[6] == '3' && d[7] <= '1');
    return month && day;
}

static int card_number(const char *d, int len, int separated)
{
    if (len < 13 || len > 19 || d[0] < '2' || d[0] > '6')
        return 0;
    if (!separated && timestamp_prefix(d))
        return 0;
    int total = 0;
    for (int i = 0; i < len; i++) {
        int v = d[len - 1 - i] - '0';
        if (i & 1) {
            v *= 2;
            if (v > 9)
                v -= 9;
        }
        total += v;
    }
    return total % 10 == 0;
}

/* The digit groups of [from, to) (digits with single separators between them): group-aligned
 * windows of 13-19 digits that pass Luhn, longest first, left to right. */
static int cards_in_groups(Scan *sc, Py_ssize_t from, Py_ssize_t to)
{
    const uint8_t *p = sc->p;
    Py_ssize_t i = from; /* start of group i */
    while (i < to) {
        char digits[20];
        int len = 0;
        Py_ssize_t best = -1, g = i, first_end = -1;
        while (g < to) {
            Py_ssize_t e = g;
            while (e < to && is_digit(p[e]))
                e++;
            sc->ops += (uint64_t)(e - g) + 1;
            if (first_end < 0)
                first_end = e;
            if (len + (e - g) > 19)
                break;
            memcpy(digits + len, p + g, (size_t)(e - g));
            len += (int)(e - g);
            if (len >= 13 && card_number(digits, len, g > i))
                best = e; /* keep looking: a longer window wins */
            g = e + 1;    /* past the separator */
        }
        if (best >= 0) {
            if (add_span(sc, i, best, KIND_CARD) < 0)
                return -1;
            i = best + 1;
        } else {
            i = first_end + 1;
        }
    }
    return 0;
}

static int find_cards(Scan *sc, Py_ssize_t start, Py_ssize_t end)
{
    const uint8_t *p = sc->p;
    Py_ssize_t n = sc->n, i = start;
    while (i < end) {
        sc->ops++;
        if (!is_digit(p[i])) {
            i++;
            continue;
        }
        /* a maximal run of _DIGIT_RUN: [0-9]+(?:[ -][0-9]+)* */
        Py_ssize_t run_start = i, j = i;
        while (j < end && is_digit(p[j]))
            j++;
        while (j + 1 < end && (p[j] == ' ' || p[j] == '-') && is_digit(p[j + 1])) {
            j++;
            while (j < end && is_digit(p[j]))
                j++;
        }
        sc->ops += (uint64_t)(j - i);
        Py_ssize_t run_end = j;
        i = j;
        if (run_end - run_start < 13)
            continue;
        Py_ssize_t first = run_start, last = run_end;
        /* A group glued to a word, a dash or a dot belongs to an identifier or an amount. */
        if (first > 0 && (is_alnum_u(p[first - 1]) || p[first - 1] == '_' || p[first - 1] == '.' || p[first - 1] == '-')) {
            while (first < run_end && is_digit(p[first]))
                first++;
            sc->ops += (uint64_t)(first - run_start);
            first++; /* past the separator; beyond run_end when it was the only group */
        }
        if (first >= run_end)
            continue;
        if (last < n && (is_word(p[last])
                         || (last + 1 < n && (p[last] == '.' || p[last] == ',' || p[last] == '-') && is_digit_u(p[last + 1])))) {
            while (last > first && is_digit(p[last - 1]))
                last--;
            sc->ops += (uint64_t)(run_end - last);
            last--; /* before the separator; before first when it was the only group */
        }
        if (last <= first)
            continue;
        if (cards_in_groups(sc, first, last) < 0)
            return -1;
    }
    return 0;
}

/* ---- US SSN (detectors._SSN) ---- */

static int ssn_at(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end)
{
    if (pos > 0 && (is_word(p[pos - 1]) || p[pos - 1] == '-'))
        return 0;
    const uint8_t *d = p + pos;
    for (int k = 0; k < 11; k++) {
        if (k == 3 || k == 6) {
            if (d[k] != '-')
                return 0;
        } else if (!is_digit(d[k])) {
            return 0;
        }
    }
    if ((d[0] == '0' && d[1] == '0' && d[2] == '0') || (d[0] == '6' && d[1] == '6' && d[2] == '6') || d[0] == '9')
        return 0;
    if (d[4] == '0' && d[5] == '0')
        return 0;
    if (d[7] == '0' && d[8] == '0' && d[9] == '0' && d[10] == '0')
        return 0;
    Py_ssize_t q = pos + 11;
    if (q < end && (is_word(p[q]) || p[q] == '-'))
        return 0;
    if (q + 1 < end && p[q] == '.' && is_digit(p[q + 1]))
        return 0;
    return 1;
}

static int find_ssns(Scan *sc, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t pos = start;
    while (pos + 11 <= end) {
        sc->ops += 2;
        if (ssn_at(sc->p, pos, end)) {
            if (add_span(sc, pos, pos + 11, KIND_SSN) < 0)
                return -1;
            pos += 11;
        } else {
            pos++;
        }
    }
    return 0;
}

/* ---- phone numbers (detectors._PHONE and find_phones) ----
 *
 * The regex is matched as Python's backtracking engine matches it: at each position the
 * alternatives in order, each quantifier greedy, and the first path whose end passes the
 * look-ahead wins. Every part is bounded (an international number spans at most 46
 * characters), and the international shape's repetitions are memoized per '+', so a value
 * costs linear time however it is built. */

static int phone_end_ok(const uint8_t *p, Py_ssize_t q, Py_ssize_t end) /* (?![\w]|[.,:/-][0-9]) */
{
    if (q < end && is_word(p[q]))
        return 0;
    if (q + 1 < end && (p[q] == '.' || p[q] == ',' || p[q] == ':' || p[q] == '/' || p[q] == '-') && is_digit(p[q + 1]))
        return 0;
    return 1;
}

static Py_ssize_t digit_run(const uint8_t *p, Py_ssize_t q, Py_ssize_t end, Py_ssize_t most)
{
    Py_ssize_t k = 0;
    while (k < most && q + k < end && is_digit(p[q + k]))
        k++;
    return k;
}

/* (?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6} from q with `done` repetitions matched, then
 * the look-ahead: the first end in the engine's order, or -1. */
static Py_ssize_t intl_groups(Scan *sc, Py_ssize_t origin, Py_ssize_t q, int done, Py_ssize_t end)
{
    const uint8_t *p = sc->p;
    int slot = (int)(q - origin);
    if (slot >= 48) /* unreachable: 1 + 3 + 6 * 7 characters at most */
        return -1;
    if (sc->memo_stamp[slot][done] == sc->memo_generation)
        return sc->memo_end[slot][done] < 0 ? -1 : origin + sc->memo_end[slot][done];
    sc->ops++;
    Py_ssize_t found = -1;
    if (done < 6) {
        Py_ssize_t starts[2];
        int choices = 0;
        if (q < end && is_sep(p[q]))
            starts[choices++] = q + 1; /* [ .-]? is greedy */
        starts[choices++] = q;
        for (int c = 0; c < choices && found < 0; c++) {
            Py_ssize_t s = starts[c];
            if (s < end && p[s] == '(') {
                Py_ssize_t digits = digit_run(p, s + 1, end, 5);
                if (digits >= 1 && digits <= 4 && s + 1 + digits < end && p[s + 1 + digits] == ')')
                    found = intl_groups(sc, origin, s + 2 + digits, done + 1, end);
            } else {
                for (Py_ssize_t k = digit_run(p, s, end, 5); k >= 1 && found < 0; k--)
                    found = intl_groups(sc, origin, s + k, done + 1, end);
            }
        }
    }
    if (found < 0 && done >= 1 && phone_end_ok(p, q, end))
        found = q;
    sc->memo_stamp[slot][done] = sc->memo_generation;
    sc->memo_end[slot][done] = found < 0 ? -1 : (int)(found - origin);
    return found;
}

/* \+[0-9]{1,3} then the groups. */
static Py_ssize_t intl_at(Scan *sc, Py_ssize_t pos, Py_ssize_t end)
{
    if (sc->memo_generation == 0 || sc->memo_generation == INT32_MAX) {
        memset(sc->memo_stamp, 0, sizeof sc->memo_stamp);
        sc->memo_generation = 0;
    }
    sc->memo_generation++;
    for (Py_ssize_t k = digit_run(sc->p, pos + 1, end, 3); k >= 1; k--) {
        Py_ssize_t found = intl_groups(sc, pos, pos + 1 + k, 0, end);
        if (found >= 0)
            return found;
    }
    return -1;
}

/* [2-9][0-9]{2}[ .-][0-9]{4} then the look-ahead */
static Py_ssize_t nanp_tail(const uint8_t *p, Py_ssize_t b, Py_ssize_t end)
{
    if (b + 8 > end || p[b] < '2' || p[b] > '9' || !is_digit(p[b + 1]) || !is_digit(p[b + 2]) || !is_sep(p[b + 3]))
        return -1;
    for (int k = 4; k < 8; k++)
        if (!is_digit(p[b + k]))
            return -1;
    return phone_end_ok(p, b + 8, end) ? b + 8 : -1;
}

/* (?:1[ .-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-]) then the tail. */
static Py_ssize_t nanp_at(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end)
{
    Py_ssize_t starts[2];
    int choices = 0;
    if (pos + 1 < end && p[pos] == '1' && is_sep(p[pos + 1]))
        starts[choices++] = pos + 2;
    starts[choices++] = pos;
    for (int c = 0; c < choices; c++) {
        Py_ssize_t a = starts[c], found;
        if (a + 4 < end && p[a] == '(' && p[a + 1] >= '2' && p[a + 1] <= '9' && is_digit(p[a + 2]) && is_digit(p[a + 3])
            && p[a + 4] == ')') {
            if (a + 5 < end && p[a + 5] == ' ' && (found = nanp_tail(p, a + 6, end)) >= 0)
                return found;
            if ((found = nanp_tail(p, a + 5, end)) >= 0)
                return found;
        }
        if (a + 3 < end && p[a] >= '2' && p[a] <= '9' && is_digit(p[a + 1]) && is_digit(p[a + 2]) && is_sep(p[a + 3])
            && (found = nanp_tail(p, a + 4, end)) >= 0)
            return found;
    }
    return -1;
}

/* (?:(?P=sep)[0-9]{2,4}){1,3} from q with `done` repetitions, then the look-ahead. */
static Py_ssize_t trunk_groups(Scan *sc, Py_ssize_t q, uint8_t sep, int done, Py_ssize_t end)
{
    const uint8_t *p = sc->p;
    sc->ops++;
    if (done < 3 && q < end && p[q] == sep) {
        for (Py_ssize_t k = digit_run(p, q + 1, end, 4); k >= 2; k--) {
            Py_ssize_t found = trunk_groups(sc, q + 1 + k, sep, done + 1, end);
            if (found >= 0)
                return found;
        }
    }
    return done >= 1 && phone_end_ok(p, q, end) ? q : -1;
}

/* 0[0-9]{1,4}(?P<sep>[ .-])[0-9]{2,4} then the repetitions. */
static Py_ssize_t trunk_at(Scan *sc, Py_ssize_t pos, Py_ssize_t end)
{
    const uint8_t *p = sc->p;
    for (Py_ssize_t k = digit_run(p, pos + 1, end, 4); k >= 1; k--) {
        Py_ssize_t s = pos + 1 + k;
        if (s >= end || !is_sep(p[s]))
            continue;
        for (Py_ssize_t g = digit_run(p, s + 1, end, 4); g >= 2; g--) {
            Py_ssize_t found = trunk_groups(sc, s + 1 + g, p[s], 0, end);
            if (found >= 0)
                return found;
        }
    }
    return -1;
}

static int find_phones(Scan *sc, Py_ssize_t start, Py_ssize_t end)
{
    const uint8_t *p = sc->p;
    Py_ssize_t pos = start;
    while (pos < end) {
        sc->ops++;
        uint8_t before = pos > 0 ? p[pos - 1] : ' ';
        if (is_word(before) || before == '+' || before == '.' || before == '/' || before == '-') { /* (?<![\w+./-]) */
            pos++;
            continue;
        }
        Py_ssize_t found = -1;
        int digits_min = 10, digits_max = 12;
        if (p[pos] == '+') {
            found = intl_at(sc, pos, end);
            digits_min = 8;
            digits_max = 15;
        } else if (p[pos] == '0') {
            found = trunk_at(sc, pos, end);
        } else {
            found = nanp_at(p, pos, end);
            digits_min = 0;
            digits_max = 64;
        }
        if (found < 0) {
            pos++;
            continue;
        }
        int digits = 0;
        for (Py_ssize_t k = pos; k < found; k++)
            digits += is_digit(p[k]);
        sc->ops += (uint64_t)(found - pos);
        if (digits >= digits_min && digits <= digits_max && add_span(sc, pos, found, KIND_PHONE) < 0)
            return -1;
        pos = found; /* a match the digit count rejects still ends the search here, as finditer does */
    }
    return 0;
}

/* ---- find_all and merge_overlaps ---- */

/* A value's text as the finders read it: the bytes themselves when ASCII, else one class
 * byte per character, with each character's byte offset (free with text_free). */
typedef struct {
    const uint8_t *chars;
    Py_ssize_t count;
    uint8_t *classes;  /* NULL for ASCII */
    uint32_t *offsets; /* NULL for ASCII */
} Text;

static void text_free(Text *t)
{
    PyMem_Free(t->classes);
    PyMem_Free(t->offsets);
}

/* 0, or -1 with an error (no memory, or a value past 4 GB). */
static int text_of(Text *t, const uint8_t *p, Py_ssize_t n, int ascii)
{
    t->chars = p;
    t->count = n;
    t->classes = NULL;
    t->offsets = NULL;
    if (ascii)
        return 0;
    if ((uint64_t)n >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a value to scan must be under 4 GB");
        return -1;
    }
    t->classes = PyMem_Malloc((size_t)n + 1);
    t->offsets = PyMem_Malloc(((size_t)n + 1) * sizeof(uint32_t));
    if (t->classes == NULL || t->offsets == NULL) {
        text_free(t);
        PyErr_NoMemory();
        return -1;
    }
    t->count = classify(p, n, t->classes, t->offsets);
    t->chars = t->classes;
    return 0;
}

static int span_order(const void *a, const void *b) /* by start, then longest first */
{
    const Span *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    if (x->end != y->end)
        return x->end > y->end ? -1 : 1;
    return x->kind - y->kind;
}

/* detectors.merge_overlaps: overlapping spans become one, named after the longest member
 * (on a tie, the kind with the higher priority). */
static void merge_spans(Scan *sc)
{
    if (sc->count < 2)
        return;
    qsort(sc->spans, (size_t)sc->count, sizeof(Span), span_order);
    Py_ssize_t merged = 0;
    Span current = sc->spans[0];
    Py_ssize_t best = current.end - current.start;
    for (Py_ssize_t i = 1; i < sc->count; i++) {
        Span s = sc->spans[i];
        if (s.start < current.end) {
            if (s.end - s.start > best || (s.end - s.start == best && s.kind < current.kind)) {
                current.kind = s.kind;
                best = s.end - s.start;
            }
            if (s.end > current.end)
                current.end = s.end;
        } else {
            sc->spans[merged++] = current;
            current = s;
            best = s.end - s.start;
        }
    }
    sc->spans[merged++] = current;
    sc->count = merged;
}

/* detectors.find_all on a text (ASCII, or its characters' classes) for the email and numeric
 * kinds in `kinds` (a bit per KIND_*), the numeric ones only inside numeric clusters, with
 * find_all's gates. Spans merged. 0 or -1 (no memory). */
static int detect_spans(Scan *sc, int kinds)
{
    const uint8_t *p = sc->p;
    Py_ssize_t n = sc->n;
    if ((kinds & (1 << KIND_EMAIL)) && find_emails(sc) < 0)
        return -1;
    if (kinds & ((1 << KIND_CARD) | (1 << KIND_SSN) | (1 << KIND_PHONE))) {
        Py_ssize_t i = 0;
        while (i < n) {
            sc->ops++;
            if (!cluster_start(p[i])) {
                i++;
                continue;
            }
            Py_ssize_t j = i + 1;
            int digits = is_digit(p[i]), dash = 0;
            while (j < n && cluster_char(p[j])) {
                digits += is_digit(p[j]);
                dash |= p[j] == '-';
                j++;
            }
            sc->ops += (uint64_t)(j - i);
            if (j - i >= 9) { /* _NUMERIC_CLUSTER: [0-9(+][0-9 ().+-]{8,} */
                /* two characters past the cluster: the detectors' look-aheads see what follows */
                Py_ssize_t end = j + 2 < n ? j + 2 : n;
                if (digits >= 13 && (kinds & (1 << KIND_CARD)) && find_cards(sc, i, end) < 0)
                    return -1;
                if (digits >= 9 && dash && (kinds & (1 << KIND_SSN)) && find_ssns(sc, i, end) < 0)
                    return -1;
                if (digits >= 8 && (kinds & (1 << KIND_PHONE)) && find_phones(sc, i, end) < 0)
                    return -1;
            }
            i = j; /* a later start inside this run reaches no further */
        }
    }
    merge_spans(sc);
    return 0;
}

#define STRATEGY_REDACT 0
#define STRATEGY_PARTIAL 1
#define STRATEGY_HASH 2
#define STRATEGY_NULL 3

/* ---- RowCore ------------------------------------------------------------------------- */

#define STEP_PYTHON 0
#define STEP_HASH_TEXT 1
#define STEP_DETECT_TEXT 2

typedef struct {
    Py_ssize_t column;
    int kind;
    PyObject *masker;   /* the Python masker of the column (STEP_PYTHON, and DETECT_TEXT's fallback) */
    HmacObject *hmac;   /* STEP_HASH_TEXT, and DETECT_TEXT's hash strategy */
    int families;       /* DETECT_TEXT: FAMILY_* enabled by the column's detectors */
    int strategy[KIND_COUNT];  /* DETECT_TEXT: STRATEGY_* per KIND_*, -1 for a detector that is off */
    int keep_last[KIND_COUNT]; /* DETECT_TEXT: the partial strategy's kept characters per KIND_* */
    int kinds;                 /* DETECT_TEXT: a bit per KIND_* whose detector is on and done here */
    Py_ssize_t max_scanned;
    PyObject *column_number; /* int, for the changed set */
    PyObject *scan;     /* DETECT_TEXT: scan(value, families) for values C does not settle, or NULL */
} Step;

typedef struct {
    PyObject_HEAD
    Py_ssize_t column_count;
    Py_ssize_t step_count;
    Step *steps;
    PyObject *changed;       /* set of column indexes whose value some row changed */
    PyObject *malformed;     /* MalformedRow */
    PyObject *value_errors;  /* tuple: errors of a Python masker that mean "not a valid value" */
} RowCoreObject;

static void RowCore_dealloc(RowCoreObject *self)
{
    for (Py_ssize_t i = 0; i < self->step_count; i++) {
        Py_XDECREF(self->steps[i].masker);
        Py_XDECREF((PyObject *)self->steps[i].hmac);
        Py_XDECREF(self->steps[i].column_number);
        Py_XDECREF(self->steps[i].scan);
    }
    PyMem_Free(self->steps);
    Py_XDECREF(self->changed);
    Py_XDECREF(self->malformed);
    Py_XDECREF(self->value_errors);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* RowCore(column_count, steps, changed, MalformedRow, value_errors); each step is
 * (column, kind, masker, hmac or None, families, strategies, max_scanned, scan or None), where strategies
 * is (strategy, keep_last) of the email, card, ssn and phone detectors, flat (strategy -1: off). */
static int RowCore_init(RowCoreObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *steps, *changed, *malformed, *value_errors;
    if (!PyArg_ParseTuple(args, "nO!O!OO!", &self->column_count, &PyTuple_Type, &steps, &PySet_Type, &changed,
                          &malformed, &PyTuple_Type, &value_errors))
        return -1;
    Py_ssize_t count = PyTuple_GET_SIZE(steps);
    self->steps = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Step));
    if (self->steps == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t previous = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        Step *step = &self->steps[i];
        PyObject *hmac, *scan;
        int *st = step->strategy, *kl = step->keep_last;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(steps, i), "niOOi(iiiiiiii)nO", &step->column, &step->kind, &step->masker,
                              &hmac, &step->families, &st[KIND_EMAIL], &kl[KIND_EMAIL], &st[KIND_CARD], &kl[KIND_CARD],
                              &st[KIND_SSN], &kl[KIND_SSN], &st[KIND_PHONE], &kl[KIND_PHONE], &step->max_scanned, &scan))
            return -1;
        st[KIND_SECRET] = st[KIND_IBAN] = -1; /* values where these could match go to Python */
        int hashes = 0;
        step->kinds = 0;
        for (int k = 0; k < KIND_COUNT; k++) {
            if (st[k] < -1 || st[k] > STRATEGY_NULL) {
                PyErr_SetString(PyExc_ValueError, "a detector's strategy must be -1 or one of STRATEGY_*");
                return -1;
            }
            if (st[k] >= 0)
                step->kinds |= 1 << k;
            hashes |= st[k] == STRATEGY_HASH;
        }
        self->step_count = i + 1;
        Py_INCREF(step->masker);
        if (scan != Py_None) {
            Py_INCREF(scan);
            step->scan = scan;
        }
        if (hmac != Py_None) {
            if (!PyObject_TypeCheck(hmac, &HmacType)) {
                PyErr_SetString(PyExc_TypeError, "a step's hmac must be an Hmac or None");
                return -1;
            }
            Py_INCREF(hmac);
            step->hmac = (HmacObject *)hmac;
        }
        if (step->column <= previous || step->column >= self->column_count) {
            PyErr_SetString(PyExc_ValueError, "steps must be in ascending column order, inside the row");
            return -1;
        }
        if ((step->kind == STEP_HASH_TEXT || (step->kind == STEP_DETECT_TEXT && hashes))
            && step->hmac == NULL) {
            PyErr_SetString(PyExc_ValueError, "a hashing step needs its Hmac");
            return -1;
        }
        previous = step->column;
        step->column_number = PyLong_FromSsize_t(step->column);
        if (step->column_number == NULL)
            return -1;
    }
    Py_INCREF(changed);
    self->changed = changed;
    Py_INCREF(malformed);
    self->malformed = malformed;
    Py_INCREF(value_errors);
    self->value_errors = value_errors;
    return 0;
}

static PyObject *malformed(RowCoreObject *self, const char *format, ...)
{
    va_list va;
    va_start(va, format);
    PyObject *message = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (message != NULL) {
        PyErr_SetObject(self->malformed, message);
        Py_DECREF(message);
    }
    return NULL;
}

static inline int32_t read_i32(const uint8_t *p)
{
    return (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
}

static inline void write_i32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* A Python masker's answer: a new reference, or NULL with MalformedRow set. */
static PyObject *call_python(RowCoreObject *self, PyObject *masker, PyObject *value, Py_ssize_t column)
{
    PyObject *masked = PyObject_CallOneArg(masker, value);
    if (masked != NULL) {
        if (masked != Py_None && !PyBytes_Check(masked)) {
            Py_DECREF(masked);
            PyErr_SetString(PyExc_TypeError, "a column masker returned something other than bytes or None");
            return NULL;
        }
        return masked;
    }
    if (PyErr_ExceptionMatches(self->malformed) || !PyErr_ExceptionMatches(self->value_errors))
        return NULL;
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    PyObject *text = exc != NULL ? PyObject_Str(exc) : NULL;
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    if (text == NULL)
        return NULL;
    malformed(self, "DataRow column %zd is not a valid value of its type: %U", column, text);
    Py_DECREF(text);
    return NULL;
}

/* The token of a card, SSN or phone number: over its letters and digits, upper-cased
 * (strategies.normalized_detection), fed to the HMAC in small chunks (no allocation). */
static void hmac_token_alnum(const HmacObject *h, const uint8_t *p, Py_ssize_t n, char out[TOKEN_LENGTH])
{
    static const char hex[] = "0123456789abcdef";
    HashState s = h->inner;
    uint8_t chunk[64], inner[32], digest[32];
    size_t used = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!is_alnum(p[i]))
            continue;
        chunk[used++] = (p[i] >= 'a' && p[i] <= 'z') ? (uint8_t)(p[i] - 32) : p[i];
        if (used == sizeof chunk) {
            STATE_UPDATE(&s, chunk, used);
            used = 0;
        }
    }
    STATE_UPDATE(&s, chunk, used);
    STATE_FINAL(&s, inner);
    s = h->outer;
    STATE_UPDATE(&s, inner, 32);
    STATE_FINAL(&s, digest);
    out[0] = 'h';
    out[1] = ':';
    for (int i = 0; i < 8; i++) {
        out[2 + 2 * i] = hex[digest[i] >> 4];
        out[3 + 2 * i] = hex[digest[i] & 15];
    }
}

static const char *const MARKERS[KIND_COUNT] = {"[secret]", "[email]", "[iban]", "[card]", "[ssn]", "[phone]"};

/* The last '@' of a span, or -1 (strategies.partial_detection keeps what follows it). */
static Py_ssize_t last_at(const uint8_t *p, const Span *s)
{
    for (Py_ssize_t k = s->end - 1; k >= s->start; k--)
        if (p[k] == '@')
            return k;
    return -1;
}

/* Size of one detection's replacement (scanner.Scanner._replace, strategies.render_detection). */
static Py_ssize_t replacement_size(const Step *step, const uint8_t *p, const Span *s)
{
    switch (step->strategy[s->kind]) {
    case STRATEGY_HASH:
        return TOKEN_LENGTH;
    case STRATEGY_PARTIAL:
        if (s->kind == KIND_EMAIL) {
            Py_ssize_t at = last_at(p, s);
            return 4 + s->end - (at < 0 ? s->start : at + 1);
        }
        return s->end - s->start; /* one '*' per hidden letter or digit */
    default:
        return (Py_ssize_t)strlen(MARKERS[s->kind]);
    }
}

static void write_replacement(const Step *step, const uint8_t *p, const Span *s, uint8_t *w)
{
    switch (step->strategy[s->kind]) {
    case STRATEGY_HASH:
        if (s->kind == KIND_EMAIL)
            hmac_token(step->hmac, p + s->start, (size_t)(s->end - s->start), (char *)w);
        else
            hmac_token_alnum(step->hmac, p + s->start, s->end - s->start, (char *)w);
        return;
    case STRATEGY_PARTIAL:
        if (s->kind == KIND_EMAIL) {
            Py_ssize_t at = last_at(p, s), from = at < 0 ? s->start : at + 1;
            memcpy(w, "***@", 4);
            memcpy(w + 4, p + from, (size_t)(s->end - from));
        } else {
            Py_ssize_t alnum = 0;
            for (Py_ssize_t k = s->start; k < s->end; k++)
                alnum += is_alnum(p[k]);
            Py_ssize_t keep = alnum / 2 < step->keep_last[s->kind] ? alnum / 2 : step->keep_last[s->kind];
            Py_ssize_t hide = alnum - keep;
            for (Py_ssize_t k = s->start; k < s->end; k++) {
                if (is_alnum(p[k]) && hide > 0) {
                    *w++ = '*';
                    hide--;
                } else {
                    *w++ = p[k];
                }
            }
        }
        return;
    default:
        memcpy(w, MARKERS[s->kind], strlen(MARKERS[s->kind]));
    }
}

/* Every detection of an ASCII value replaced by its kind's strategy: new bytes, Py_None (a
 * detection whose strategy is null: the value becomes SQL NULL) or NULL with an error. */
static PyObject *render_spans(const Step *step, const uint8_t *p, Py_ssize_t n, const Span *spans, Py_ssize_t count)
{
    Py_ssize_t size = n;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (step->strategy[spans[i].kind] == STRATEGY_NULL)
            Py_RETURN_NONE;
        size += replacement_size(step, p, &spans[i]) - (spans[i].end - spans[i].start);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t last = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        memcpy(w, p + last, (size_t)(spans[i].start - last));
        w += spans[i].start - last;
        write_replacement(step, p, &spans[i], w);
        w += replacement_size(step, p, &spans[i]);
        last = spans[i].end;
    }
    memcpy(w, p + last, (size_t)(n - last));
    return out;
}

static int is_ascii(const uint8_t *p, Py_ssize_t n)
{
    uint8_t any = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        any |= p[i];
    return any < 0x80;
}

#define FAMILIES_UNKNOWN (-1) /* call_scan: the scan runs its own prefilter (on the folded view) */

/* A value the C code does not settle, through the column's Python scan with the families
 * found here (the same answer the scan's own prefilter would give, or stricter where no
 * detection is possible: see numeric_possible), or FAMILIES_UNKNOWN. */
static PyObject *call_scan(RowCoreObject *self, const Step *step, const uint8_t *p, Py_ssize_t n, int found,
                           int *unchanged)
{
    PyObject *value = PyBytes_FromStringAndSize((const char *)p, n);
    if (value == NULL)
        return NULL;
    PyObject *families = found == FAMILIES_UNKNOWN
                             ? Py_NewRef(Py_None)
                             : Py_BuildValue("(OOOO)", found & FAMILY_EMAIL ? Py_True : Py_False,
                                             found & FAMILY_NUMERIC ? Py_True : Py_False,
                                             found & FAMILY_IBAN ? Py_True : Py_False,
                                             found & FAMILY_SECRET ? Py_True : Py_False);
    if (families == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    PyObject *args[2] = {value, families};
    PyObject *masked = PyObject_Vectorcall(step->scan, args, 2, NULL);
    Py_DECREF(families);
    if (masked == NULL) {
        Py_DECREF(value);
        if (PyErr_ExceptionMatches(self->malformed) || !PyErr_ExceptionMatches(self->value_errors))
            return NULL;
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        PyObject *text = exc != NULL ? PyObject_Str(exc) : NULL;
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        if (text != NULL) {
            malformed(self, "DataRow column %zd is not a valid value of its type: %U", step->column, text);
            Py_DECREF(text);
        }
        return NULL;
    }
    if (masked == value) {
        Py_DECREF(masked);
        Py_DECREF(value);
        *unchanged = 1;
        return NULL;
    }
    Py_DECREF(value);
    if (masked != Py_None && !PyBytes_Check(masked)) {
        Py_DECREF(masked);
        PyErr_SetString(PyExc_TypeError, "a column scan returned something other than bytes or None");
        return NULL;
    }
    return masked;
}

/* The email, card, SSN and phone detections of a value (`found`: its prefilter families)
 * replaced: a new reference (bytes or Py_None), NULL with an error, or *unchanged = 1. A
 * detection the C rendering cannot reproduce (partial or hash of a card, SSN or phone span
 * that took in characters outside ASCII from an overlapping email) sends the value to the
 * Python scan instead. */
static PyObject *mask_detections(RowCoreObject *self, const Step *step, const uint8_t *p, Py_ssize_t n, int found,
                                 int *unchanged)
{
    int kinds = step->kinds & (((found & FAMILY_EMAIL) ? 1 << KIND_EMAIL : 0)
                               | ((found & FAMILY_NUMERIC) ? (1 << KIND_CARD | 1 << KIND_SSN | 1 << KIND_PHONE) : 0));
    Text text;
    if (text_of(&text, p, n, is_ascii(p, n)) < 0)
        return NULL;
    Scan sc;
    scan_init(&sc, text.chars, text.count);
    PyObject *out = NULL;
    int python = 0;
    if (detect_spans(&sc, kinds) < 0)
        goto done;
    if (sc.count == 0) {
        *unchanged = 1;
        goto done;
    }
    if (text.offsets != NULL) {
        for (Py_ssize_t i = 0; i < sc.count; i++) {
            Span *s = &sc.spans[i];
            s->start = text.offsets[s->start];
            s->end = text.offsets[s->end];
            int rendered_from_text = step->strategy[s->kind] == STRATEGY_PARTIAL || step->strategy[s->kind] == STRATEGY_HASH;
            if (s->kind != KIND_EMAIL && rendered_from_text && !is_ascii(p + s->start, s->end - s->start))
                python = 1;
        }
    }
    if (python && step->scan != NULL)
        out = call_scan(self, step, p, n, found, unchanged);
    else if (python)
        PyErr_SetString(PyExc_RuntimeError, "a detection needs the Python scan, and the step has none");
    else
        out = render_spans(step, p, n, sc.spans, sc.count);
done:
    PyMem_Free(sc.spans);
    text_free(&text);
    return out;
}

/* The masked value of one non-NULL column: a new reference (bytes or Py_None), NULL with an
 * error, or *unchanged = 1 (and NULL returned without an error) when the value stays as it is. */
static PyObject *mask_value(RowCoreObject *self, const Step *step, const uint8_t *p, Py_ssize_t n, int *unchanged)
{
    *unchanged = 0;
    if (step->kind == STEP_HASH_TEXT) {
        char token[TOKEN_LENGTH];
        hmac_token(step->hmac, p, (size_t)n, token);
        return PyBytes_FromStringAndSize(token, TOKEN_LENGTH);
    }
    if (step->kind == STEP_DETECT_TEXT && n <= step->max_scanned && needs_fold(p, n)) {
        if (step->scan != NULL)
            return call_scan(self, step, p, n, FAMILIES_UNKNOWN, unchanged);
    } else if (step->kind == STEP_DETECT_TEXT && n <= step->max_scanned) {
        int found = families_of(p, n, step->families);
        if (found == 0) {
            *unchanged = 1;
            return NULL;
        }
        /* Values whose only candidates are emails, cards, SSNs and phone numbers are masked
         * here; the others (an IBAN or secret candidate) go to the column's Python scan. */
        if (!(found & (FAMILY_IBAN | FAMILY_SECRET)))
            return mask_detections(self, step, p, n, found, unchanged);
        if (step->scan != NULL)
            return call_scan(self, step, p, n, found, unchanged);
    }
    PyObject *value = PyBytes_FromStringAndSize((const char *)p, n);
    if (value == NULL)
        return NULL;
    PyObject *masked = call_python(self, step->masker, value, step->column);
    if (masked == value) {
        Py_DECREF(masked);
        Py_DECREF(value);
        *unchanged = 1;
        return NULL;
    }
    Py_DECREF(value);
    return masked;
}

typedef struct {
    Py_ssize_t from, to; /* the column's (length, value) bytes in the payload */
    PyObject *masked;    /* bytes or Py_None */
} Replacement;

/* A growing output buffer of DataRow messages. */
typedef struct {
    uint8_t *bytes;
    Py_ssize_t used, size;
} Out;

static int out_reserve(Out *out, Py_ssize_t more)
{
    if (out->used + more <= out->size)
        return 0;
    Py_ssize_t size = out->size ? out->size : 256;
    while (size < out->used + more) {
        if (size > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        size *= 2;
    }
    uint8_t *grown = PyMem_Realloc(out->bytes, (size_t)size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->bytes = grown;
    out->size = size;
    return 0;
}

/* One DataRow payload (after its 5-byte header) masked into out as a complete message.
 * 0, or -1 with an error set (MalformedRow for a row that does not add up). */
static int mask_payload(RowCoreObject *self, const uint8_t *p, Py_ssize_t size, Out *out)
{
    if (size < 2) {
        malformed(self, "DataRow is shorter than its column count");
        return -1;
    }
    Py_ssize_t count = (int16_t)((uint16_t)p[0] << 8 | p[1]);
    if (count != self->column_count) {
        malformed(self, "DataRow has %zd columns but its RowDescription announced %zd", count, self->column_count);
        return -1;
    }
    Replacement stack_replacements[16];
    Replacement *replacements = stack_replacements;
    if (self->step_count > 16) {
        replacements = PyMem_Malloc((size_t)self->step_count * sizeof(Replacement));
        if (replacements == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_ssize_t replaced = 0, pos = 2, column = 0;
    int status = -1;
    for (Py_ssize_t s = 0; s < self->step_count; s++) {
        const Step *step = &self->steps[s];
        while (column < step->column) {
            if (pos + 4 > size) {
                malformed(self, "DataRow ends inside a column length");
                goto done;
            }
            int32_t length = read_i32(p + pos);
            pos += 4;
            if (length > 0)
                pos += length;
            else if (length < -1) {
                malformed(self, "DataRow column %zd has invalid length %d", column, (int)length);
                goto done;
            }
            column++;
        }
        if (pos + 4 > size) {
            malformed(self, "DataRow ends inside a column length");
            goto done;
        }
        int32_t length = read_i32(p + pos);
        if (length == -1) { /* NULL stays NULL under every strategy */
            pos += 4;
            column++;
            continue;
        }
        Py_ssize_t value_end = pos + 4 + (Py_ssize_t)length;
        if (length < -1 || value_end > size) {
            malformed(self, "DataRow column %zd has invalid length %d", column, (int)length);
            goto done;
        }
        int unchanged;
        PyObject *masked = mask_value(self, step, p + pos + 4, length, &unchanged);
        if (!unchanged) {
            if (masked == NULL)
                goto done;
            int differs = masked == Py_None || PyBytes_GET_SIZE(masked) != length
                          || memcmp(PyBytes_AS_STRING(masked), p + pos + 4, (size_t)length) != 0;
            if (differs) {
                int known = PySet_Contains(self->changed, step->column_number);
                if (known < 0 || (!known && PySet_Add(self->changed, step->column_number) < 0)) {
                    Py_DECREF(masked);
                    goto done;
                }
            }
            replacements[replaced].from = pos;
            replacements[replaced].to = value_end;
            replacements[replaced].masked = masked;
            replaced++;
        }
        pos = value_end;
        column++;
    }
    /* The columns after the last affected one are checked, not only copied. */
    while (column < count) {
        if (pos + 4 > size) {
            malformed(self, "DataRow ends inside a column length");
            goto done;
        }
        int32_t length = read_i32(p + pos);
        pos += 4;
        if (length > 0)
            pos += length;
        else if (length < -1) {
            malformed(self, "DataRow column %zd has invalid length %d", column, (int)length);
            goto done;
        }
        column++;
    }
    if (pos != size) {
        malformed(self, "DataRow lengths do not add up to its message length");
        goto done;
    }
    Py_ssize_t body = size;
    for (Py_ssize_t i = 0; i < replaced; i++) {
        PyObject *m = replacements[i].masked;
        body += (m == Py_None ? 4 : 4 + PyBytes_GET_SIZE(m)) - (replacements[i].to - replacements[i].from);
    }
    if (body + 4 > INT32_MAX) {
        malformed(self, "a masked DataRow would exceed the protocol's message size");
        goto done;
    }
    if (out_reserve(out, 5 + body) < 0)
        goto done;
    uint8_t *w = out->bytes + out->used;
    w[0] = 'D';
    write_i32(w + 1, (uint32_t)(body + 4));
    w += 5;
    Py_ssize_t carried_from = 0;
    for (Py_ssize_t i = 0; i < replaced; i++) {
        memcpy(w, p + carried_from, (size_t)(replacements[i].from - carried_from));
        w += replacements[i].from - carried_from;
        PyObject *m = replacements[i].masked;
        if (m == Py_None) {
            write_i32(w, 0xffffffffu);
            w += 4;
        } else {
            write_i32(w, (uint32_t)PyBytes_GET_SIZE(m));
            memcpy(w + 4, PyBytes_AS_STRING(m), (size_t)PyBytes_GET_SIZE(m));
            w += 4 + PyBytes_GET_SIZE(m);
        }
        carried_from = replacements[i].to;
    }
    memcpy(w, p + carried_from, (size_t)(size - carried_from));
    out->used += 5 + body;
    status = 0;
done:
    for (Py_ssize_t i = 0; i < replaced; i++)
        Py_DECREF(replacements[i].masked);
    if (replacements != stack_replacements)
        PyMem_Free(replacements);
    return status;
}

static PyObject *out_bytes(Out *out)
{
    PyObject *result = PyBytes_FromStringAndSize((const char *)out->bytes, out->used);
    PyMem_Free(out->bytes);
    return result;
}

static PyObject *RowCore_mask_row(RowCoreObject *self, PyObject *payload)
{
    if (!PyBytes_Check(payload)) {
        PyErr_SetString(PyExc_TypeError, "mask_row needs bytes");
        return NULL;
    }
    Out out = {NULL, 0, 0};
    if (mask_payload(self, (const uint8_t *)PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), &out) < 0) {
        PyMem_Free(out.bytes);
        return NULL;
    }
    return out_bytes(&out);
}

/* mask_rows(data, begin, stop) -> (messages, rows): a run of whole DataRow messages. */
static PyObject *RowCore_mask_rows(RowCoreObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t begin, stop;
    if (!PyArg_ParseTuple(args, "y*nn", &data, &begin, &stop))
        return NULL;
    PyObject *result = NULL;
    Out out = {NULL, 0, 0};
    Py_ssize_t rows = 0;
    if (begin < 0 || stop > data.len || begin > stop) {
        PyErr_SetString(PyExc_ValueError, "mask_rows: begin and stop must lie inside the data");
        goto done;
    }
    const uint8_t *p = data.buf;
    if (out_reserve(&out, stop - begin + 64) < 0)
        goto done;
    for (Py_ssize_t pos = begin; pos < stop; rows++) {
        int32_t length = pos + 5 <= stop ? read_i32(p + pos + 1) : 0;
        if (pos + 5 > stop || p[pos] != 'D' || length < 4 || length > stop - pos - 1) {
            malformed(self, "a run of DataRows holds another message or a partial one");
            goto done;
        }
        if (mask_payload(self, p + pos + 5, (Py_ssize_t)length - 4, &out) < 0)
            goto done;
        pos += 1 + (Py_ssize_t)length;
    }
    PyObject *messages = out_bytes(&out);
    out.bytes = NULL;
    if (messages != NULL) {
        result = Py_BuildValue("(Nn)", messages, rows);
    }
done:
    PyMem_Free(out.bytes);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef RowCore_methods[] = {
    {"mask_row", (PyCFunction)RowCore_mask_row, METH_O, "A DataRow payload in, a complete DataRow message out."},
    {"mask_rows", (PyCFunction)RowCore_mask_rows, METH_VARARGS, "(messages, rows) for the DataRows data[begin:stop]."},
    {NULL},
};

static PyTypeObject RowCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jitgate.masking._rowcore.RowCore",
    .tp_basicsize = sizeof(RowCoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RowPlan.mask_row in C (see jitgate/masking/rows.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RowCore_init,
    .tp_dealloc = (destructor)RowCore_dealloc,
    .tp_methods = RowCore_methods,
};

/* ---- module-level helpers, exposed for the equivalence tests ---------------------------- */

static PyObject *py_families(PyObject *module, PyObject *args)
{
    Py_buffer data;
    int enabled;
    if (!PyArg_ParseTuple(args, "y*i", &data, &enabled))
        return NULL;
    /* a value that folds is handed to the Python scan: every family may match */
    int found = needs_fold(data.buf, data.len) ? enabled : families_of(data.buf, data.len, enabled);
    PyBuffer_Release(&data);
    return PyLong_FromLong(found);
}

static PyObject *py_needs_fold(PyObject *module, PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    int folds = needs_fold(data.buf, data.len);
    PyBuffer_Release(&data);
    return PyBool_FromLong(folds);
}

static PyObject *py_set_fold_table(PyObject *module, PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    if (data.len != FOLD_TABLE_SIZE) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "the fold table is a bitmap of %d bytes", FOLD_TABLE_SIZE);
        return NULL;
    }
    memcpy(fold_table, data.buf, FOLD_TABLE_SIZE);
    fold_table_set = 1;
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

/* detect(data, kinds) -> (spans, ops): the merged spans the C finders give for the kinds named
 * (a bit per KIND_*), in characters of the text decoded with surrogateescape (as
 * detectors.find_all gives them), and the steps they took. */
static PyObject *py_detect(PyObject *module, PyObject *args)
{
    Py_buffer data;
    int kinds;
    if (!PyArg_ParseTuple(args, "y*i", &data, &kinds))
        return NULL;
    Text text;
    if (text_of(&text, data.buf, data.len, is_ascii(data.buf, data.len)) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    Scan sc;
    scan_init(&sc, text.chars, text.count);
    PyObject *out = NULL;
    if (detect_spans(&sc, kinds) == 0) {
        out = PyList_New(sc.count);
        for (Py_ssize_t i = 0; out != NULL && i < sc.count; i++) {
            PyObject *item = Py_BuildValue("(nns)", sc.spans[i].start, sc.spans[i].end, KIND_NAMES[sc.spans[i].kind]);
            if (item == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, item);
        }
    }
    PyMem_Free(sc.spans);
    text_free(&text);
    PyBuffer_Release(&data);
    if (out == NULL)
        return NULL;
    return Py_BuildValue("(NK)", out, (unsigned long long)sc.ops);
}

static PyMethodDef module_methods[] = {
    {"families", py_families, METH_VARARGS, "FAMILY_* bits that could match in these bytes."},
    {"detect", py_detect, METH_VARARGS, "(merged spans in characters, steps taken) of the C detectors."},
    {"needs_fold", py_needs_fold, METH_VARARGS, "Does a character of these UTF-8 bytes fold (fold.py)?"},
    {"set_fold_table", py_set_fold_table, METH_VARARGS, "The bitmap of the code points that fold (fold.bitmap())."},
    {NULL},
};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 ""  /* setup.py defines it; jitgate.native refuses a build without it */
#endif

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "jitgate.masking._rowcore", "Compiled core of RowPlan.mask_row.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__rowcore(void)
{
    if (PyType_Ready(&HmacType) < 0 || PyType_Ready(&RowCoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HmacType);
    Py_INCREF(&RowCoreType);
    if (PyModule_AddObject(m, "Hmac", (PyObject *)&HmacType) < 0
        || PyModule_AddObject(m, "RowCore", (PyObject *)&RowCoreType) < 0
        || PyModule_AddIntConstant(m, "FAMILY_EMAIL", FAMILY_EMAIL) < 0
        || PyModule_AddIntConstant(m, "FAMILY_NUMERIC", FAMILY_NUMERIC) < 0
        || PyModule_AddIntConstant(m, "FAMILY_IBAN", FAMILY_IBAN) < 0
        || PyModule_AddIntConstant(m, "FAMILY_SECRET", FAMILY_SECRET) < 0
        || PyModule_AddIntConstant(m, "STEP_PYTHON", STEP_PYTHON) < 0
        || PyModule_AddIntConstant(m, "STEP_HASH_TEXT", STEP_HASH_TEXT) < 0
        || PyModule_AddIntConstant(m, "STEP_DETECT_TEXT", STEP_DETECT_TEXT) < 0
        || PyModule_AddIntConstant(m, "STRATEGY_REDACT", STRATEGY_REDACT) < 0
        || PyModule_AddIntConstant(m, "STRATEGY_PARTIAL", STRATEGY_PARTIAL) < 0
        || PyModule_AddIntConstant(m, "STRATEGY_HASH", STRATEGY_HASH) < 0
        || PyModule_AddIntConstant(m, "STRATEGY_NULL", STRATEGY_NULL) < 0
        || PyModule_AddIntConstant(m, "KIND_EMAIL", KIND_EMAIL) < 0
        || PyModule_AddIntConstant(m, "KIND_CARD", KIND_CARD) < 0
        || PyModule_AddIntConstant(m, "KIND_SSN", KIND_SSN) < 0
        || PyModule_AddIntConstant(m, "KIND_PHONE", KIND_PHONE) < 0
        || PyModule_AddStringConstant(m, "SOURCE_SHA256", SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
