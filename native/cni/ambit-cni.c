/*
 * ambit-cni: the chained CNI plugin of the ambit mesh (CNI spec 1.0).
 *
 * It does no networking itself. ADD and DEL are forwarded, as one JSON line, to the node
 * agent on a unix socket; the agent answers "<exit code>\n<body>" and the plugin relays the
 * body to stdout and exits with the code. VERSION is answered here; CHECK, STATUS and GC
 * are no-ops.
 *
 * Whether ambit is installed on this node is told by a marker file next to this executable,
 * `<this binary>.installed` (on the host's persistent disk, like the binary and the chain entry):
 * the node agent writes it after the binary and before the entry, and removes it first on
 * uninstall. The agent's socket lives in a tmpfs (/var/run), so after a reboot it is gone while
 * the chain entry is still there: with the marker present, an unreachable agent fails ADD with
 * "try again" until the agent is back; only without the marker (uninstalled, or uninstall cut
 * short) does the plugin pass the primary result through.
 *
 * The runtime blocks pod sandbox creation on this process, so everything is bounded:
 * input size, JSON nesting depth and time. It depends on libc only, so it can be copied
 * onto any node as one static file. Build with scripts/build-cni.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONFIG (1024 * 1024)     /* stdin larger than this is refused */
#define MAX_ANSWER (4 * 1024 * 1024) /* the agent's answer carries at most a result */
#define MAX_DEPTH 128                /* JSON nesting; the scanner recurses once per level */
#define STDIN_TIMEOUT_S 10.0         /* the runtime writes the config at once; never wait forever */
#define ADD_TIMEOUT_S 30.0           /* default of the config key timeoutSeconds */
#define DEL_TIMEOUT_S 10.0           /* DEL waits at most this long (or timeoutSeconds if smaller) */
#define MAX_TIMEOUT_S 3600.0
#define DEFAULT_SOCKET "/var/run/ambit/cni.sock"
#define DEFAULT_VERSION "1.0.0"
#define MARKER_SUFFIX ".installed" /* <this executable>.installed: ambit is installed on the node */

/* Well-known CNI error codes (spec, "Error codes"). */
enum {
	CNI_ERR_ENV = 4,       /* invalid necessary environment variables */
	CNI_ERR_IO = 5,        /* e.g. failed to read the network config from stdin */
	CNI_ERR_DECODE = 6,    /* failed to decode the network config */
	CNI_ERR_CONFIG = 7,    /* invalid network config */
	CNI_ERR_TRY_AGAIN = 11 /* transient: the runtime retries later */
};

/* ---------------------------------------------------------------- buffers and output */

struct buf {
	char *data;
	size_t len, cap; /* data[len] is always a NUL once data is allocated */
};

struct span {
	const char *p; /* NULL: absent */
	size_t n;
};

/* The cniVersion every result carries: the config's once it is known. */
static const char *g_version = DEFAULT_VERSION;

static void die_oom(void)
{
	static const char msg[] =
		"{\"cniVersion\":\"" DEFAULT_VERSION "\",\"code\":5,\"msg\":\"ambit-cni: out of memory\"}\n";
	/* Best effort: if even this write fails there is nothing left to report with. */
	ssize_t w = write(STDOUT_FILENO, msg, sizeof msg - 1);
	(void)w;
	_exit(1);
}

static void buf_reserve(struct buf *b, size_t extra)
{
	if (extra > SIZE_MAX / 2 - b->len)
		die_oom();
	size_t need = b->len + extra + 1; /* +1 keeps room for the terminating NUL */
	if (need <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p)
		die_oom();
	b->data = p;
	b->cap = cap;
}

static void buf_put(struct buf *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

/* Length of the valid UTF-8 sequence starting at p (n bytes available), or 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
	size_t len;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		len = 3;
		lo = p[0] == 0xe0 ? 0xa0 : lo; /* no overlong forms */
		hi = p[0] == 0xed ? 0x9f : hi; /* no UTF-16 surrogates */
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4;
		lo = p[0] == 0xf0 ? 0x90 : lo;
		hi = p[0] == 0xf4 ? 0x8f : hi; /* nothing above U+10FFFF */
	} else {
		return 0;
	}
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t k = 2; k < len; k++)
		if (p[k] < 0x80 || p[k] > 0xbf)
			return 0;
	return len;
}

/*
 * Appends s as a JSON string literal. Environment values are arbitrary bytes, so control
 * characters become \uXXXX and bytes that are not UTF-8 become U+FFFD: the agent always
 * receives valid JSON.
 */
static void put_json_string(struct buf *b, const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t n = strlen(s);
	buf_put(b, "\"", 1);
	for (size_t i = 0; i < n;) {
		size_t len;
		if (u[i] == '"' || u[i] == '\\') {
			char esc[2] = { '\\', (char)u[i] };
			buf_put(b, esc, 2);
			i++;
		} else if (u[i] < 0x20) {
			char esc[8];
			snprintf(esc, sizeof esc, "\\u%04x", u[i]);
			buf_put(b, esc, 6);
			i++;
		} else if (u[i] < 0x80) {
			buf_put(b, &u[i], 1);
			i++;
		} else if ((len = utf8_len(u + i, n - i)) > 0) {
			buf_put(b, &u[i], len);
			i += len;
		} else {
			buf_puts(b, "\\ufffd");
			i++;
		}
	}
	buf_put(b, "\"", 1);
}

/* Writes all of p to fd: retries on EINTR and after partial writes. */
static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int emit(const char *p, size_t n)
{
	if (write_all(STDOUT_FILENO, p, n) == 0)
		return 0;
	fprintf(stderr, "ambit-cni: writing the result to stdout: %s\n", strerror(errno));
	return -1;
}

static void warn(const char *msg, const char *details)
{
	fprintf(stderr, "ambit-cni: %s%s%s\n", msg, details ? ": " : "", details ? details : "");
}

/* Prints a CNI error result on stdout (and one line on stderr); returns the exit code 1. */
static int fail(int code, const char *msg, const char *details)
{
	struct buf b = { 0 };
	char num[16];
	warn(msg, details);
	buf_puts(&b, "{\"cniVersion\":");
	put_json_string(&b, g_version);
	snprintf(num, sizeof num, "%d", code);
	buf_puts(&b, ",\"code\":");
	buf_puts(&b, num);
	buf_puts(&b, ",\"msg\":");
	put_json_string(&b, msg);
	if (details) {
		buf_puts(&b, ",\"details\":");
		put_json_string(&b, details);
	}
	buf_puts(&b, "}\n");
	emit(b.data, b.len);
	free(b.data);
	return 1;
}

/* ---------------------------------------------------------------- time */

static double now_s(void)
{
	struct timespec ts;
	/* CLOCK_MONOTONIC always exists on Linux; wall time is a safe enough fallback. */
	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		return (double)time(NULL);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int is_timeout(int err)
{
	/* SO_RCVTIMEO/SO_SNDTIMEO expiry shows as EAGAIN (also from connect on unix sockets). */
	return err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT || err == EINPROGRESS;
}

/* ---------------------------------------------------------------- stdin */

/* Waits until fd is readable or the deadline passes (errno ETIMEDOUT). */
static int wait_readable(int fd, double deadline)
{
	for (;;) {
		double left = deadline - now_s();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int r = poll(&pfd, 1, (int)(left * 1000) + 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			continue; /* re-check the deadline */
		if (pfd.revents & POLLNVAL) {
			errno = EBADF;
			return -1;
		}
		return 0; /* POLLIN, POLLHUP or POLLERR: read() tells which */
	}
}

/*
 * Reads all of stdin into b. Returns 0, or a CNI error code with *why set. At most
 * MAX_CONFIG + 1 bytes are read: one more than allowed is enough to refuse.
 */
static int read_stdin(struct buf *b, const char **why)
{
	double deadline = now_s() + STDIN_TIMEOUT_S;
	buf_reserve(b, 0);
	if (isatty(STDIN_FILENO))
		return 0; /* run by hand (e.g. VERSION): there is no config to wait for */
	for (;;) {
		size_t want = MAX_CONFIG + 1 - b->len;
		if (want > 65536)
			want = 65536;
		buf_reserve(b, want);
		if (wait_readable(STDIN_FILENO, deadline) < 0) {
			*why = errno == ETIMEDOUT ? "timed out reading the network config from stdin"
						  : "reading the network config from stdin failed";
			return CNI_ERR_IO;
		}
		ssize_t r = read(STDIN_FILENO, b->data + b->len, want);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0) {
			*why = "reading the network config from stdin failed";
			return CNI_ERR_IO;
		}
		if (r == 0)
			return 0;
		b->len += (size_t)r;
		b->data[b->len] = '\0';
		if (b->len > MAX_CONFIG) {
			*why = "the network config on stdin is larger than 1 MiB";
			return CNI_ERR_IO;
		}
	}
}

/* ---------------------------------------------------------------- JSON scanner */

/*
 * A validating scanner, not a parser: it walks the document once, checks it is well-formed
 * JSON, and reports the spans of top-level members. Values are never copied except the
 * few strings the plugin needs, which are decoded on demand.
 */
struct scan {
	const char *s;
	size_t n, i;
};

typedef int (*member_fn)(void *ctx, struct span key, struct span value);

static int scan_value(struct scan *sc, int depth);

static int peek(const struct scan *sc)
{
	return sc->i < sc->n ? (unsigned char)sc->s[sc->i] : -1;
}

static int is_ws(int c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(struct scan *sc)
{
	while (is_ws(peek(sc)))
		sc->i++;
}

static int hex_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Skips a string literal (at its opening quote), escapes included. */
static int scan_string(struct scan *sc)
{
	sc->i++;
	while (sc->i < sc->n) {
		unsigned char c = (unsigned char)sc->s[sc->i++];
		if (c == '"')
			return 0;
		if (c < 0x20)
			return -1; /* raw control characters (newlines too) are not allowed in strings */
		if (c != '\\')
			continue;
		if (sc->i >= sc->n)
			return -1;
		c = (unsigned char)sc->s[sc->i++];
		if (c == 'u') {
			for (int k = 0; k < 4; k++, sc->i++)
				if (hex_value(peek(sc)) < 0)
					return -1;
		} else if (!memchr("\"\\/bfnrt", c, 8)) {
			return -1;
		}
	}
	return -1; /* unterminated */
}

static int scan_digits(struct scan *sc)
{
	size_t start = sc->i;
	while (peek(sc) >= '0' && peek(sc) <= '9')
		sc->i++;
	return sc->i > start ? 0 : -1;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(struct scan *sc)
{
	if (peek(sc) == '-')
		sc->i++;
	if (peek(sc) == '0')
		sc->i++;
	else if (peek(sc) < '1' || peek(sc) > '9' || scan_digits(sc) < 0)
		return -1;
	if (peek(sc) == '.') {
		sc->i++;
		if (scan_digits(sc) < 0)
			return -1;
	}
	if (peek(sc) == 'e' || peek(sc) == 'E') {
		sc->i++;
		if (peek(sc) == '+' || peek(sc) == '-')
			sc->i++;
		if (scan_digits(sc) < 0)
			return -1;
	}
	return 0;
}

static int scan_literal(struct scan *sc, const char *word)
{
	size_t n = strlen(word);
	if (sc->n - sc->i < n || memcmp(sc->s + sc->i, word, n) != 0)
		return -1;
	sc->i += n;
	return 0;
}

/* Skips an object (at its '{'); on_member, if given, sees each member's key and value. */
static int scan_object(struct scan *sc, int depth, member_fn on_member, void *ctx)
{
	if (depth > MAX_DEPTH)
		return -1;
	sc->i++;
	skip_ws(sc);
	if (peek(sc) == '}') {
		sc->i++;
		return 0;
	}
	for (;;) {
		skip_ws(sc);
		struct span key = { sc->s + sc->i, 0 };
		if (peek(sc) != '"' || scan_string(sc) < 0)
			return -1;
		key.n = (size_t)(sc->s + sc->i - key.p);
		skip_ws(sc);
		if (peek(sc) != ':')
			return -1;
		sc->i++;
		skip_ws(sc);
		struct span value = { sc->s + sc->i, 0 };
		if (scan_value(sc, depth) < 0)
			return -1;
		value.n = (size_t)(sc->s + sc->i - value.p);
		if (on_member && on_member(ctx, key, value) < 0)
			return -1;
		skip_ws(sc);
		int c = peek(sc);
		sc->i++;
		if (c == '}')
			return 0;
		if (c != ',')
			return -1;
	}
}

static int scan_array(struct scan *sc, int depth)
{
	if (depth > MAX_DEPTH)
		return -1;
	sc->i++;
	skip_ws(sc);
	if (peek(sc) == ']') {
		sc->i++;
		return 0;
	}
	for (;;) {
		skip_ws(sc);
		if (scan_value(sc, depth) < 0)
			return -1;
		skip_ws(sc);
		int c = peek(sc);
		sc->i++;
		if (c == ']')
			return 0;
		if (c != ',')
			return -1;
	}
}

/* Skips one value; depth is the nesting level of the container holding it. */
static int scan_value(struct scan *sc, int depth)
{
	switch (peek(sc)) {
	case '"':
		return scan_string(sc);
	case '{':
		return scan_object(sc, depth + 1, NULL, NULL);
	case '[':
		return scan_array(sc, depth + 1);
	case 't':
		return scan_literal(sc, "true");
	case 'f':
		return scan_literal(sc, "false");
	case 'n':
		return scan_literal(sc, "null");
	default:
		return scan_number(sc);
	}
}

/* Appends code point cp to out as UTF-8; -1 if it does not fit (one byte stays for the NUL). */
static int put_utf8(char *out, size_t cap, size_t *o, unsigned long cp)
{
	unsigned char tmp[4];
	size_t n;
	if (cp < 0x80) {
		tmp[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		tmp[0] = (unsigned char)(0xc0 | (cp >> 6));
		tmp[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		tmp[0] = (unsigned char)(0xe0 | (cp >> 12));
		tmp[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		tmp[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		tmp[0] = (unsigned char)(0xf0 | (cp >> 18));
		tmp[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		tmp[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		tmp[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	if (cap - *o <= n)
		return -1;
	memcpy(out + *o, tmp, n);
	*o += n;
	return 0;
}

/* Reads the 4 hex digits of a \u escape at p + i (validated by scan_string). */
static unsigned long hex4(const char *p, size_t i)
{
	unsigned long v = 0;
	for (int k = 0; k < 4; k++)
		v = v << 4 | (unsigned long)hex_value((unsigned char)p[i + (size_t)k]);
	return v;
}

/* Decodes the \u escape whose 'u' is at sp.p[*i], joining surrogate pairs; -1 on a lone one. */
static long decode_u(struct span sp, size_t *i, unsigned long *cp)
{
	*cp = hex4(sp.p, *i + 1);
	*i += 5;
	if (*cp >= 0xdc00 && *cp <= 0xdfff)
		return -1;
	if (*cp < 0xd800 || *cp > 0xdbff)
		return 0;
	/* A high surrogate must be followed by \u and a low one, inside the closing quote. */
	if (*i + 6 >= sp.n || sp.p[*i] != '\\' || sp.p[*i + 1] != 'u')
		return -1;
	unsigned long lo = hex4(sp.p, *i + 2);
	if (lo < 0xdc00 || lo > 0xdfff)
		return -1;
	*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
	*i += 6;
	return 0;
}

/*
 * Decodes the string literal sp (quotes included, validated by scan_string) into out, NUL
 * terminated. Returns the decoded length, or -1 if it does not fit in cap or is not
 * representable (a lone surrogate).
 */
static long decode_string(struct span sp, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 1; i + 1 < sp.n;) {
		unsigned long cp = (unsigned char)sp.p[i++];
		if (cp == '\\') {
			char c = sp.p[i];
			const char *from = "btnfr", *to = "\b\t\n\f\r";
			const char *hit = strchr(from, c);
			if (c == 'u') {
				if (decode_u(sp, &i, &cp) < 0)
					return -1;
			} else {
				cp = hit && c ? (unsigned char)to[hit - from] : (unsigned char)c; /* \" \\ \/ */
				i++;
			}
			if (put_utf8(out, cap, &o, cp) < 0)
				return -1;
		} else {
			if (cap - o <= 1)
				return -1;
			out[o++] = (char)cp; /* raw bytes are copied as they are */
		}
	}
	out[o] = '\0';
	return (long)o;
}

/* ---------------------------------------------------------------- the network config */

struct config {
	struct span doc; /* the whole config, surrounding whitespace trimmed */
	struct span version, socket, prev, timeout; /* raw values of the top-level keys we read */
	char version_str[64];
	char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	double timeout_s;
};

/* Records the top-level members the plugin reads; the last duplicate wins, as in Go. */
static int on_config_member(void *ctx, struct span key, struct span value)
{
	struct config *cfg = ctx;
	char name[32];
	if (decode_string(key, name, sizeof name) < 0)
		return 0; /* longer than any key we want */
	if (strcmp(name, "cniVersion") == 0)
		cfg->version = value;
	else if (strcmp(name, "socket") == 0)
		cfg->socket = value;
	else if (strcmp(name, "prevResult") == 0)
		cfg->prev = value;
	else if (strcmp(name, "timeoutSeconds") == 0)
		cfg->timeout = value;
	return 0;
}

static int config_version(struct config *cfg, const char **why)
{
	if (!cfg->version.p)
		return 0;
	if (cfg->version.p[0] != '"' ||
	    decode_string(cfg->version, cfg->version_str, sizeof cfg->version_str) <= 0) {
		*why = "cniVersion must be a non-empty string of at most 63 bytes";
		return CNI_ERR_CONFIG;
	}
	g_version = cfg->version_str;
	return 0;
}

static int config_socket(struct config *cfg, const char **why)
{
	long n;
	if (!cfg->socket.p) {
		strcpy(cfg->socket_path, DEFAULT_SOCKET);
		return 0;
	}
	*why = "socket must be a non-empty string naming a unix socket path (at most 107 bytes)";
	if (cfg->socket.p[0] != '"')
		return CNI_ERR_CONFIG;
	n = decode_string(cfg->socket, cfg->socket_path, sizeof cfg->socket_path);
	/* A \u0000 inside would silently cut the path short. */
	if (n <= 0 || strlen(cfg->socket_path) != (size_t)n)
		return CNI_ERR_CONFIG;
	return 0;
}

static int config_timeout(struct config *cfg, const char **why)
{
	char num[64];
	cfg->timeout_s = ADD_TIMEOUT_S;
	if (!cfg->timeout.p)
		return 0;
	*why = "timeoutSeconds must be a number greater than 0 and at most 3600";
	if (cfg->timeout.p[0] != '-' && (cfg->timeout.p[0] < '0' || cfg->timeout.p[0] > '9'))
		return CNI_ERR_CONFIG;
	if (cfg->timeout.n >= sizeof num)
		return CNI_ERR_CONFIG;
	memcpy(num, cfg->timeout.p, cfg->timeout.n);
	num[cfg->timeout.n] = '\0';
	cfg->timeout_s = strtod(num, NULL); /* the scanner validated the number's syntax */
	if (!(cfg->timeout_s > 0 && cfg->timeout_s <= MAX_TIMEOUT_S))
		return CNI_ERR_CONFIG;
	return 0;
}

/* Scans the config on stdin. Returns 0, or a CNI error code with *why set. */
static int parse_config(const struct buf *in, struct config *cfg, const char **why)
{
	struct scan sc = { in->data, in->len, 0 };
	int err;
	memset(cfg, 0, sizeof *cfg);
	skip_ws(&sc);
	while (sc.n > sc.i && is_ws((unsigned char)sc.s[sc.n - 1]))
		sc.n--;
	cfg->doc = (struct span){ sc.s + sc.i, sc.n - sc.i };
	*why = "the network config on stdin is not a valid JSON object";
	if (sc.i == sc.n) {
		*why = "no network config on stdin";
		return CNI_ERR_DECODE;
	}
	if (peek(&sc) != '{' || scan_object(&sc, 1, on_config_member, cfg) < 0 || sc.i != sc.n)
		return CNI_ERR_DECODE;
	if ((err = config_version(cfg, why)) || (err = config_socket(cfg, why)) || (err = config_timeout(cfg, why)))
		return err;
	if (cfg->prev.p && cfg->prev.p[0] != '{')
		cfg->prev.p = NULL; /* only an object is a result to pass on */
	return 0;
}

/* ---------------------------------------------------------------- talking to the agent */

/*
 * The request: one JSON object on one line. The config goes in verbatim except that line
 * breaks become spaces; in valid JSON they can only be whitespace between tokens (raw
 * control characters inside strings are rejected), so the value is unchanged.
 */
static void build_request(struct buf *b, const char *command, const struct config *cfg)
{
	static const char *const fields[][2] = {
		{ "containerId", "CNI_CONTAINERID" },
		{ "netns", "CNI_NETNS" },
		{ "ifname", "CNI_IFNAME" },
		{ "args", "CNI_ARGS" },
	};
	buf_puts(b, "{\"command\":");
	put_json_string(b, command);
	for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
		const char *v = getenv(fields[k][1]);
		buf_puts(b, ",\"");
		buf_puts(b, fields[k][0]);
		buf_puts(b, "\":");
		put_json_string(b, v ? v : "");
	}
	buf_puts(b, ",\"config\":");
	size_t start = b->len;
	buf_put(b, cfg->doc.p, cfg->doc.n);
	for (size_t i = start; i < b->len; i++)
		if (b->data[i] == '\n' || b->data[i] == '\r')
			b->data[i] = ' ';
	buf_puts(b, "}\n");
}

enum outcome {
	AGENT_ANSWERED,
	AGENT_ABSENT,      /* the socket path does not exist: no agent running (or none installed) */
	AGENT_UNREACHABLE, /* connect failed otherwise, e.g. refused: no agent behind the socket */
	AGENT_TIMEOUT,
	AGENT_BROKEN, /* the connection failed after connect */
};

/*
 * SO_RCVTIMEO/SO_SNDTIMEO bound each call, not the whole exchange, so they are re-armed
 * with what is left of the deadline before every blocking call.
 */
static int arm_timeouts(int fd, double deadline)
{
	double left = deadline - now_s();
	if (left <= 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	struct timeval tv;
	tv.tv_sec = (time_t)left;
	tv.tv_usec = (suseconds_t)((left - (double)tv.tv_sec) * 1e6);
	if (tv.tv_sec == 0 && tv.tv_usec == 0)
		tv.tv_usec = 1; /* zero would mean "no timeout" */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
		return -1;
	return 0;
}

static int connect_agent(int fd, const char *path, double deadline)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path) + 1); /* length checked by config_socket */
	for (;;) {
		if (arm_timeouts(fd, deadline) < 0)
			return -1;
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
			return 0;
		if (errno == EISCONN)
			return 0; /* an interrupted connect that completed */
		if (errno != EINTR)
			return -1;
	}
}

static int send_all(int fd, const char *p, size_t n, double deadline)
{
	while (n > 0) {
		if (arm_timeouts(fd, deadline) < 0)
			return -1;
		/* MSG_NOSIGNAL: an agent that hangs up yields EPIPE instead of killing us. */
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int recv_all(int fd, struct buf *b, double deadline)
{
	for (;;) {
		if (arm_timeouts(fd, deadline) < 0)
			return -1;
		buf_reserve(b, 65536);
		ssize_t r = recv(fd, b->data + b->len, 65536, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return 0;
		b->len += (size_t)r;
		b->data[b->len] = '\0';
		if (b->len > MAX_ANSWER) {
			errno = EMSGSIZE;
			return -1;
		}
	}
}

/* Sends the request and reads the whole answer; *err is the errno of a failure. */
static enum outcome exchange(int fd, const struct config *cfg, const struct buf *req, struct buf *answer,
			     double deadline, int *err)
{
	if (connect_agent(fd, cfg->socket_path, deadline) < 0) {
		*err = errno;
		if (errno == ENOENT)
			return AGENT_ABSENT;
		return is_timeout(errno) ? AGENT_TIMEOUT : AGENT_UNREACHABLE;
	}
	/* shutdown(SHUT_WR) tells the agent the request is complete. */
	if (send_all(fd, req->data, req->len, deadline) < 0 || shutdown(fd, SHUT_WR) < 0 ||
	    recv_all(fd, answer, deadline) < 0) {
		*err = errno;
		return is_timeout(errno) ? AGENT_TIMEOUT : AGENT_BROKEN;
	}
	return AGENT_ANSWERED;
}

static enum outcome talk(const char *command, const struct config *cfg, double timeout_s, struct buf *answer,
			 int *err)
{
	struct buf req = { 0 };
	double deadline = now_s() + timeout_s;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = errno;
		return AGENT_UNREACHABLE;
	}
	build_request(&req, command, cfg);
	enum outcome out = exchange(fd, cfg, &req, answer, deadline, err);
	close(fd); /* nothing useful to do if close fails: the answer is complete or abandoned */
	free(req.data);
	return out;
}

/* The answer is "<exit code>\n<body>". Returns the code (0-255) and the body, or -1. */
static int parse_answer(const struct buf *a, struct span *body)
{
	size_t i = 0;
	int code = 0;
	while (i < a->len && i < 3 && a->data[i] >= '0' && a->data[i] <= '9')
		code = code * 10 + (a->data[i++] - '0');
	if (i == 0 || i >= a->len || a->data[i] != '\n' || code > 255)
		return -1;
	body->p = a->data + i + 1;
	body->n = a->len - i - 1;
	return code;
}

/* ---------------------------------------------------------------- installed or not */

/*
 * Whether ambit is installed on this node: the marker next to this executable exists. Any
 * doubt (no /proc, a path too long, a marker that cannot be checked) counts as installed, so
 * the plugin fails closed. *marker gets the marker's path, or a note saying why it is unknown.
 */
static int ambit_installed(char *marker, size_t cap)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n <= 0 || (size_t)n + sizeof MARKER_SUFFIX > cap) {
		snprintf(marker, cap, "(marker path unknown: %s)", n <= 0 ? strerror(errno) : "too long");
		return 1;
	}
	exe[n] = '\0';
	/* The installer replaces the binary by a rename: a run of the old one sees its path so marked. */
	static const char deleted[] = " (deleted)";
	if ((size_t)n > sizeof deleted - 1 && strcmp(exe + n - (sizeof deleted - 1), deleted) == 0)
		exe[n - (sizeof deleted - 1)] = '\0';
	snprintf(marker, cap, "%s%s", exe, MARKER_SUFFIX);
	if (access(marker, F_OK) == 0)
		return 1;
	return !(errno == ENOENT || errno == ENOTDIR);
}

/* ---------------------------------------------------------------- commands */

static int cmd_version(void)
{
	struct buf b = { 0 };
	buf_puts(&b, "{\"cniVersion\":");
	put_json_string(&b, g_version);
	buf_puts(&b, ",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\"]}\n");
	int rc = emit(b.data, b.len) < 0;
	free(b.data);
	return rc;
}

/* Ambit not installed on this node: a chained plugin must hand the previous result on unchanged. */
static int pass_through(const struct config *cfg)
{
	if (cfg->prev.p)
		return emit(cfg->prev.p, cfg->prev.n) < 0;
	struct buf b = { 0 };
	buf_puts(&b, "{\"cniVersion\":");
	put_json_string(&b, g_version);
	buf_puts(&b, "}");
	int rc = emit(b.data, b.len) < 0;
	free(b.data);
	return rc;
}

static int relay(int code, struct span body)
{
	if (emit(body.p, body.n) < 0)
		return code ? code : 1; /* a success without its result is not a success */
	return code;
}

/*
 * Reports why ADD got no usable answer; every case is transient from the runtime's view.
 * `marker`: the install marker that made an unreachable agent an error (named, with the way
 * out, for a node ambit was removed from while it was away).
 */
static int add_failed(enum outcome out, const struct config *cfg, int err, const char *marker)
{
	const char *what = "unreadable answer from the ambit node agent at ";
	const char *details = NULL;
	char msg[256];
	char why[PATH_MAX + 512];
	switch (out) {
	case AGENT_UNREACHABLE:
		what = "ambit node agent not reachable at ";
		details = strerror(err);
		break;
	case AGENT_BROKEN:
		what = "connection failed to the ambit node agent at ";
		details = strerror(err);
		break;
	case AGENT_TIMEOUT:
		what = "no answer in time from the ambit node agent at ";
		break;
	case AGENT_ABSENT:
		what = "ambit node agent not running at ";
		snprintf(why, sizeof why,
			 "no socket: the node restarted or the agent has not started yet; ambit is installed on this node (%s), "
			 "so pods wait for its agent. If ambit was removed from the cluster while this node was away, delete "
			 "that file and the ambit-cni entry of the node's CNI config",
			 marker);
		details = why;
		break;
	case AGENT_ANSWERED:
		break;
	}
	snprintf(msg, sizeof msg, "%s%s", what, cfg->socket_path);
	if (out == AGENT_TIMEOUT) {
		char limit[64];
		snprintf(limit, sizeof limit, "no answer within %g s (timeoutSeconds)", cfg->timeout_s);
		return fail(CNI_ERR_TRY_AGAIN, msg, limit);
	}
	return fail(CNI_ERR_TRY_AGAIN, msg, details);
}

/*
 * ADD fails closed: if ambit is installed (the marker) but its agent cannot be reached, the pod
 * must not start outside the mesh. Code 11 makes the kubelet retry the sandbox later. Only an
 * unreachable agent with no marker (ambit uninstalled) lets the pod through.
 */
static int cmd_add(const struct config *cfg)
{
	struct buf answer = { 0 };
	struct span body;
	char marker[PATH_MAX + 64] = "";
	int err = 0, code;
	enum outcome out = talk("ADD", cfg, cfg->timeout_s, &answer, &err);
	int unreachable = out == AGENT_ABSENT || out == AGENT_UNREACHABLE;
	if (unreachable && !ambit_installed(marker, sizeof marker))
		code = pass_through(cfg);
	else if (out == AGENT_ANSWERED && (code = parse_answer(&answer, &body)) >= 0)
		code = relay(code, body);
	else
		code = add_failed(out, cfg, err, marker);
	free(answer.data);
	return code;
}

/*
 * DEL never blocks a pod's deletion on ambit: whatever goes wrong on our side exits 0 (with
 * a note on stderr). Only the agent's own answer can fail it.
 */
static int cmd_del(const struct config *cfg)
{
	struct buf answer = { 0 };
	struct span body;
	double timeout_s = cfg->timeout_s < DEL_TIMEOUT_S ? cfg->timeout_s : DEL_TIMEOUT_S;
	int err = 0, code;
	switch (talk("DEL", cfg, timeout_s, &answer, &err)) {
	case AGENT_ABSENT:
		return 0;
	case AGENT_UNREACHABLE:
	case AGENT_BROKEN:
		warn("DEL: ambit node agent not reachable, ignored", strerror(err));
		return 0;
	case AGENT_TIMEOUT:
		warn("DEL: ambit node agent did not answer in time, ignored", NULL);
		return 0;
	case AGENT_ANSWERED:
		break;
	}
	if ((code = parse_answer(&answer, &body)) < 0) {
		warn("DEL: unreadable answer from the ambit node agent, ignored", NULL);
		code = 0;
	} else {
		code = relay(code, body);
	}
	free(answer.data);
	return code;
}

static int is_noop(const char *command)
{
	return strcmp(command, "CHECK") == 0 || strcmp(command, "STATUS") == 0 || strcmp(command, "GC") == 0;
}

int main(void)
{
	const char *command = getenv("CNI_COMMAND");
	struct buf in = { 0 };
	struct config cfg;
	const char *why = NULL;

	/* A runtime that stops reading our stdout must give us EPIPE, not kill us silently. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		warn("cannot ignore SIGPIPE", strerror(errno));
	if (!command)
		command = "";

	/* Stdin is always consumed, so a runtime writing the config never sees EPIPE. */
	int read_err = read_stdin(&in, &why);
	if (is_noop(command))
		return 0;
	int cfg_err = read_err ? read_err : parse_config(&in, &cfg, &why);
	int is_del = strcmp(command, "DEL") == 0;

	if (strcmp(command, "VERSION") == 0) /* an odd config only costs the default version */
		return read_err ? fail(read_err, why, NULL) : cmd_version();
	if (!is_del && strcmp(command, "ADD") != 0)
		return fail(CNI_ERR_ENV, "unknown or missing CNI_COMMAND", *command ? command : "not set");
	if (cfg_err && is_del) {
		warn("DEL: network config unusable, ignored", why);
		return 0;
	}
	if (cfg_err)
		return fail(cfg_err, why, NULL);
	/* The agent tells sandboxes apart by it: a late DEL of an old one must not hit the new one. */
	const char *container = getenv("CNI_CONTAINERID");
	if (!is_del && (!container || !*container))
		return fail(CNI_ERR_ENV, "CNI_CONTAINERID is not set", "the runtime must name the sandbox");
	return is_del ? cmd_del(&cfg) : cmd_add(&cfg);
}
