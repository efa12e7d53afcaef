// SPDX-License-Identifier: Apache-2.0
/*
 * http-load: a fixed-rate HTTP/1.1 load generator in the manner of wrk2, for bench/l4-hop.ts.
 * One thread, epoll, non-blocking sockets, N keep-alive connections, one request in flight per
 * connection (no pipelining).
 *
 *   http-load --host IP --port PORT --rate R [--connections N] [--duration S] [--warmup W]
 *             [--drain T] [--path /] [--host-header NAME]
 *
 * The schedule is fixed before the run: request i (i = 0, 1, ...) is due at
 * start + i / R seconds, and belongs to connection i mod N, so every connection carries R / N
 * requests per second at evenly interleaved times. A request is sent when it is due and its
 * connection has received the previous response; if that response is late, the request leaves
 * late. Its latency is counted from the time it was *due*, not from when it left ("corrected"
 * for coordinated omission: a stall shows up in every request it delayed, not only in the
 * one that met it). The latency from the actual send is kept too ("uncorrected").
 *
 * The first W seconds of the schedule (default 1) are warmup: sent and checked, not recorded.
 * The next S seconds (default 10) are recorded. After the last request is due, responses
 * still outstanding get T seconds (default 5); then the run stops whatever is left: requests
 * not answered by then are counted as "late", never as latencies. Every connection is opened
 * before the schedule starts; a connection that fails is reopened (after 100 ms when it keeps
 * failing) and the request it carried is counted as an error.
 *
 * Timers: a timerfd armed at the next due time (absolute CLOCK_MONOTONIC) with the thread's
 * timer slack set to 1 ns, so requests leave within microseconds of their due time on an idle
 * CPU. Latencies go to log-linear histograms: exact below 2,048 ns, then 1,024 sub-buckets per
 * power of two (relative error < 0.1%), up to 2^40 ns. Memory is bounded whatever the rate.
 *
 * One JSON object on stdout at the end (latencies in microseconds; "first_error" names the
 * first failure). Exit status 0 when every recorded request was answered with a 200, 1
 * otherwise, 64 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define MAX_HEADER 8192
#define MAX_EVENTS 256
#define RECONNECT_BACKOFF_NS (100 * 1000000LL)
#define CONNECT_PHASE_NS (5 * NS)

/* ---- histogram -------------------------------------------------------------------------- */

#define SUB_BITS 10
#define LINEAR (2 << SUB_BITS)	/* 2048: values below are exact */
#define MAX_EXP 40
#define BUCKETS (LINEAR + (MAX_EXP - SUB_BITS - 1 + 1) * (1 << SUB_BITS))

struct hist {
	uint64_t count[BUCKETS];
	uint64_t n;
	long double sum;
	long long max;
};

static int bucket_of(long long v)
{
	int e, shift;

	if (v < 0)
		v = 0;
	if (v >= (1LL << MAX_EXP))
		v = (1LL << MAX_EXP) - 1;
	if (v < LINEAR)
		return (int)v;
	e = 63 - __builtin_clzll((unsigned long long)v);	/* >= SUB_BITS + 1 */
	shift = e - SUB_BITS;
	return LINEAR + (e - SUB_BITS - 1) * (1 << SUB_BITS) + (int)((v >> shift) - (1 << SUB_BITS));
}

/* The middle of bucket b, in ns. */
static double bucket_value(int b)
{
	int e, shift;
	long long mant;

	if (b < LINEAR)
		return b;
	e = (b - LINEAR) / (1 << SUB_BITS) + SUB_BITS + 1;
	shift = e - SUB_BITS;
	mant = (b - LINEAR) % (1 << SUB_BITS) + (1 << SUB_BITS);
	return (double)(mant << shift) + (double)(1LL << shift) / 2.0;
}

static void hist_add(struct hist *h, long long v)
{
	h->count[bucket_of(v)]++;
	h->n++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

/* Nearest-rank percentile q (0..1], in ns; the exact max for the last rank. */
static double hist_at(const struct hist *h, double q)
{
	uint64_t rank, seen = 0;

	if (h->n == 0)
		return NAN;
	rank = (uint64_t)ceil(q * (double)h->n);
	if (rank < 1)
		rank = 1;
	if (rank >= h->n)
		return (double)h->max;
	for (int b = 0; b < BUCKETS; b++) {
		seen += h->count[b];
		if (seen >= rank) {
			double v = bucket_value(b);

			return v > (double)h->max ? (double)h->max : v;
		}
	}
	return (double)h->max;
}

static void print_num(const char *name, double ns, int comma)
{
	if (isnan(ns))
		printf("\"%s\":null", name);
	else
		printf("\"%s\":%.1f", name, ns / 1000.0);
	if (comma)
		putchar(',');
}

static void hist_print(const char *name, const struct hist *h)
{
	printf("\"%s\":{", name);
	print_num("p50", hist_at(h, 0.50), 1);
	print_num("p75", hist_at(h, 0.75), 1);
	print_num("p90", hist_at(h, 0.90), 1);
	print_num("p99", hist_at(h, 0.99), 1);
	print_num("p999", hist_at(h, 0.999), 1);
	print_num("p9999", hist_at(h, 0.9999), 1);
	print_num("max", h->n ? (double)h->max : NAN, 1);
	print_num("mean", h->n ? (double)(h->sum / (long double)h->n) : NAN, 0);
	putchar('}');
}

/* ---- connections ------------------------------------------------------------------------ */

enum state { CLOSED, CONNECTING, IDLE, SENDING, RECEIVING };

struct conn {
	int fd;
	int id;
	enum state state;
	int failures;		/* consecutive */
	long long retry_at;	/* when CLOSED: reopen at */
	long long next;		/* the next request index this connection sends */
	long long index;	/* the request in flight */
	long long due, sent;
	size_t out_off;
	int out_watched;	/* EPOLLOUT is in the epoll set (a partial write waits) */
	size_t hdr_len;
	int status;		/* the response's status once its header block is parsed, else 0 */
	long long body_left;
	char hdr[MAX_HEADER];
};

static struct sockaddr_in addr;
static int ep, tfd;
static struct conn *conns;
static int nconns;
static double rate;
static long long start_ns, total, warmup_count;
static char request[512];
static size_t request_len;

static struct hist corrected, uncorrected;
static unsigned long long completed_all, completed, errors_all, errors, connects, connect_errors;
static unsigned long long bytes_received, non_200;
static char first_error[128];

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * NS + ts.tv_nsec;
}

static long long due_of(long long index)
{
	/* index < 2^33 and NS < 2^30: the product fits in 63 bits. */
	return start_ns + (long long)((double)index * (double)NS / rate);
}

static void note_error(const char *fmt, const char *detail)
{
	if (!first_error[0])
		snprintf(first_error, sizeof(first_error), fmt, detail);
}

static void watch(struct conn *c, int op, unsigned int events)
{
	struct epoll_event ev = { .events = events, .data.ptr = c };

	if (epoll_ctl(ep, op, c->fd, &ev) < 0) {
		perror("http-load: epoll_ctl");
		exit(1);
	}
}

static void conn_fail(struct conn *c, const char *why, long long now);

static void conn_open(struct conn *c, long long now)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		perror("http-load: socket");
		exit(1);
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->hdr_len = 0;
	c->status = 0;
	c->out_watched = 0;
	connects++;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
		c->state = IDLE;
		watch(c, EPOLL_CTL_ADD, EPOLLIN | EPOLLRDHUP);
		return;
	}
	c->state = CONNECTING;
	if (errno != EINPROGRESS) {
		char what[96];

		snprintf(what, sizeof(what), "connect: %s", strerror(errno));
		conn_fail(c, what, now);
		return;
	}
	watch(c, EPOLL_CTL_ADD, EPOLLOUT);
}

/* The connection failed: count the request it carried, close, reopen later. */
static void conn_fail(struct conn *c, const char *why, long long now)
{
	if (c->state == SENDING || c->state == RECEIVING) {
		errors_all++;
		if (c->index >= warmup_count)
			errors++;
	}
	if (c->state == CONNECTING)
		connect_errors++;
	note_error("%s", why);
	close(c->fd);
	c->fd = -1;
	c->state = CLOSED;
	c->failures++;
	c->retry_at = c->failures > 1 ? now + RECONNECT_BACKOFF_NS : now;
}

static void try_send(struct conn *c, long long now)
{
	while (c->out_off < request_len) {
		ssize_t n = write(c->fd, request + c->out_off, request_len - c->out_off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (!c->out_watched)
					watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP | EPOLLOUT);
				c->out_watched = 1;
				return;
			}
			conn_fail(c, strerror(errno), now);
			return;
		}
		c->out_off += (size_t)n;
	}
	if (c->out_watched)
		watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
	c->out_watched = 0;
	c->state = RECEIVING;
}

static void start_request(struct conn *c, long long now)
{
	c->index = c->next;
	c->next += nconns;
	c->due = due_of(c->index);
	c->sent = now;
	c->out_off = 0;
	c->hdr_len = 0;
	c->status = 0;
	c->body_left = 0;
	c->state = SENDING;
	try_send(c, now);
}

static void finish_response(struct conn *c, long long now, int status)
{
	completed_all++;
	if (status != 200) {
		non_200++;
		errors_all++;
		if (c->index >= warmup_count)
			errors++;
		if (!first_error[0])
			snprintf(first_error, sizeof(first_error), "HTTP status %d", status);
	} else if (c->index >= warmup_count) {
		completed++;
		hist_add(&corrected, now - c->due);
		hist_add(&uncorrected, now - c->sent);
	}
	c->failures = 0;
	c->state = IDLE;
}

/* Parses the header block in c->hdr (complete, hdr_end bytes); returns the status or -1. */
static int parse_headers(struct conn *c, size_t hdr_end, long long *content_length)
{
	char *p = c->hdr, *end = c->hdr + hdr_end, *eol;
	int status;

	if (hdr_end < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
		return -1;
	status = atoi(p + 9);
	if (status < 100 || status > 599)
		return -1;
	*content_length = -1;
	eol = memmem(p, (size_t)(end - p), "\r\n", 2);
	while (eol && eol + 2 < end) {
		char *line = eol + 2;

		eol = memmem(line, (size_t)(end - line), "\r\n", 2);
		if (!eol)
			break;
		if (eol - line > 15 && strncasecmp(line, "Content-Length:", 15) == 0) {
			char *num_end;
			long long v = strtoll(line + 15, &num_end, 10);

			while (num_end < eol && (*num_end == ' ' || *num_end == '\t'))
				num_end++;
			if (num_end != eol || v < 0)
				return -1;
			*content_length = v;
		} else if (eol - line > 18 && strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
			return -1;	/* the bench's server never chunks */
		}
	}
	if (*content_length < 0)
		return -1;
	return status;
}

static void on_readable(struct conn *c, long long now)
{
	char buf[65536];

	for (;;) {
		ssize_t n;
		char *data;
		size_t len;

		if (c->state != RECEIVING && c->state != SENDING) {
			/* Idle: only an EOF or an error may come; anything else breaks the protocol. */
			n = read(c->fd, buf, sizeof(buf));
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				return;
			conn_fail(c, n == 0 ? "the server closed an idle connection" : n < 0 ? strerror(errno) : "data from the server with no request in flight", now);
			return;
		}
		if (!c->status) {
			n = read(c->fd, c->hdr + c->hdr_len, sizeof(c->hdr) - c->hdr_len);
		} else {
			size_t want = c->body_left < (long long)sizeof(buf) ? (size_t)c->body_left : sizeof(buf);

			/* Read one byte more than the body: extra bytes mean a broken response. */
			n = read(c->fd, buf, want < sizeof(buf) ? want + 1 : want);
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			conn_fail(c, strerror(errno), now);
			return;
		}
		if (n == 0) {
			conn_fail(c, "the server closed the connection before the response ended", now);
			return;
		}
		bytes_received += (unsigned long long)n;
		if (!c->status) {
			char *end;
			long long cl;
			int status;

			c->hdr_len += (size_t)n;
			end = memmem(c->hdr, c->hdr_len, "\r\n\r\n", 4);
			if (!end) {
				if (c->hdr_len == sizeof(c->hdr)) {
					conn_fail(c, "response header block over 8 KiB", now);
					return;
				}
				continue;
			}
			status = parse_headers(c, (size_t)(end - c->hdr) + 4, &cl);
			if (status < 0) {
				conn_fail(c, "malformed response header", now);
				return;
			}
			c->status = status;
			data = end + 4;
			len = c->hdr_len - (size_t)(data - c->hdr);
			c->body_left = cl;
		} else {
			data = buf;
			len = (size_t)n;
		}
		if ((long long)len > c->body_left || c->state == SENDING) {
			conn_fail(c, c->state == SENDING ? "a response before the request was sent" : "more bytes than the response's Content-Length", now);
			return;
		}
		c->body_left -= (long long)len;
		if (c->body_left == 0) {
			finish_response(c, now, c->status);
			return;
		}
	}
}

static void on_writable(struct conn *c, long long now)
{
	if (c->state == CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			char what[96];

			snprintf(what, sizeof(what), "connect: %s", strerror(err));
			conn_fail(c, what, now);
			return;
		}
		c->state = IDLE;
		watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
	} else if (c->state == SENDING) {
		try_send(c, now);
	}
}

static void arm(long long at)
{
	struct itimerspec its = { 0 };

	if (at <= 0)
		at = 1;	/* 0 would disarm; 1 ns is in the past: fires at once */
	its.it_value.tv_sec = at / NS;
	its.it_value.tv_nsec = at % NS;
	if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
		perror("http-load: timerfd_settime");
		exit(1);
	}
}

static void dispatch(int timeout_ms)
{
	struct epoll_event events[MAX_EVENTS];
	int n = epoll_wait(ep, events, MAX_EVENTS, timeout_ms);
	long long now = now_ns();

	if (n < 0) {
		if (errno == EINTR)
			return;
		perror("http-load: epoll_wait");
		exit(1);
	}
	for (int i = 0; i < n; i++) {
		struct conn *c = events[i].data.ptr;
		unsigned int e = events[i].events;

		if (!c) {
			uint64_t expirations;

			if (read(tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
				perror("http-load: timerfd read");
			continue;
		}
		if (c->fd < 0)
			continue;
		if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			on_writable(c, now);
		if (c->fd >= 0 && (c->state == IDLE || c->state == SENDING || c->state == RECEIVING) &&
		    (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
			on_readable(c, now);
	}
}

static double parse_number(const char *name, const char *text, double min, double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end || !(v >= min && v <= max)) {
		fprintf(stderr, "http-load: --%s: expected a number in %g..%g, got %s\n", name, min, max, text);
		exit(64);
	}
	return v;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s --host IP --port PORT --rate R [--connections N] [--duration S] [--warmup W]\n"
		"          [--drain T] [--path PATH] [--host-header NAME]\n", argv0);
	exit(64);
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "host", required_argument, NULL, 'h' },
		{ "port", required_argument, NULL, 'p' },
		{ "rate", required_argument, NULL, 'r' },
		{ "connections", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "drain", required_argument, NULL, 't' },
		{ "path", required_argument, NULL, 'P' },
		{ "host-header", required_argument, NULL, 'H' },
		{ NULL, 0, NULL, 0 },
	};
	const char *host = NULL, *path = "/", *host_header = NULL;
	double duration = 10, warmup = 1, drain = 5;
	long long deadline, last_due, end_ns;
	struct epoll_event ev;
	unsigned long long late = 0, scheduled;
	long port = 0;
	int opt;

	nconns = 4;
	rate = 0;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'h': host = optarg; break;
		case 'p': port = (long)parse_number("port", optarg, 1, 65535); break;
		case 'r': rate = parse_number("rate", optarg, 1, 1000000); break;
		case 'c': nconns = (int)parse_number("connections", optarg, 1, 10000); break;
		case 'd': duration = parse_number("duration", optarg, 0.001, 3600); break;
		case 'w': warmup = parse_number("warmup", optarg, 0, 3600); break;
		case 't': drain = parse_number("drain", optarg, 0, 600); break;
		case 'P': path = optarg; break;
		case 'H': host_header = optarg; break;
		default: usage(argv[0]);
		}
	}
	if (optind != argc || !host || !port || rate <= 0)
		usage(argv[0]);
	addr.sin_family = AF_INET;
	addr.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
		fprintf(stderr, "http-load: --host: not an IPv4 address: %s\n", host);
		return 64;
	}
	if (strlen(path) > 200 || path[0] != '/' || (host_header && strlen(host_header) > 200)) {
		fprintf(stderr, "http-load: --path must start with / and, like --host-header, be at most 200 bytes\n");
		return 64;
	}
	request_len = (size_t)snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n",
				       path, host_header ? host_header : host);
	total = llround(rate * (warmup + duration));
	warmup_count = llround(rate * warmup);
	if (total - warmup_count < 1) {
		fprintf(stderr, "http-load: rate x duration is below one request\n");
		return 64;
	}

	signal(SIGPIPE, SIG_IGN);
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	ep = epoll_create1(EPOLL_CLOEXEC);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (ep < 0 || tfd < 0) {
		perror("http-load: epoll_create1/timerfd_create");
		return 1;
	}
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;	/* NULL marks the timer */
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);

	conns = calloc((size_t)nconns, sizeof(*conns));
	if (!conns) {
		perror("http-load: calloc");
		return 1;
	}

	/* Open every connection before the schedule starts (bounded: CONNECT_PHASE_NS). */
	{
		long long t0 = now_ns();
		int ready = 0;

		for (int i = 0; i < nconns; i++) {
			conns[i].id = i;
			conns[i].next = i;
			conns[i].fd = -1;
			conn_open(&conns[i], t0);
		}
		while (now_ns() - t0 < CONNECT_PHASE_NS) {
			long long now = now_ns();

			ready = 0;
			for (int i = 0; i < nconns; i++) {
				if (conns[i].state == IDLE)
					ready++;
				else if (conns[i].state == CLOSED && conns[i].retry_at <= now)
					conn_open(&conns[i], now);
			}
			if (ready == nconns)
				break;
			dispatch(10);
		}
		if (ready < nconns) {
			fprintf(stderr, "http-load: only %d of %d connections to %s:%ld opened within %lld s (%s)\n",
				ready, nconns, host, port, CONNECT_PHASE_NS / NS, first_error[0] ? first_error : "timeout");
			printf("{\"error\":\"connect\",\"first_error\":\"%s\",\"connects\":%llu,\"connect_errors\":%llu}\n",
			       first_error, connects, connect_errors);
			return 1;
		}
		/* Failures while opening are the path's warmup, not the run's. */
		first_error[0] = 0;
		errors_all = 0;
	}

	start_ns = now_ns() + 1000000LL;
	last_due = due_of(total - 1);
	deadline = last_due + (long long)(drain * NS);

	for (;;) {
		long long now = now_ns(), next_wake = deadline;
		int busy = 0;

		if (now >= deadline)
			break;
		for (int i = 0; i < nconns; i++) {
			struct conn *c = &conns[i];

			if (c->state == CLOSED) {
				if (c->retry_at <= now) {
					conn_open(c, now);
				} else {
					if (c->retry_at < next_wake)
						next_wake = c->retry_at;
					busy |= c->next < total;
					continue;
				}
			}
			if (c->state == IDLE && c->next < total) {
				long long due = due_of(c->next);

				if (due <= now) {
					start_request(c, now);
				} else if (due < next_wake) {
					next_wake = due;
				}
			}
			busy |= c->next < total || c->state == SENDING || c->state == RECEIVING || c->state == CONNECTING;
		}
		if (!busy)
			break;
		arm(next_wake);
		dispatch(-1);
	}
	end_ns = now_ns();

	/* Whatever was recorded but neither answered nor failed is late. */
	for (int i = 0; i < nconns; i++) {
		struct conn *c = &conns[i];
		long long first = c->next;	/* the first never sent; first = id (mod nconns) */

		if ((c->state == SENDING || c->state == RECEIVING) && c->index >= warmup_count)
			late++;
		if (first < warmup_count)
			first += (warmup_count - first + nconns - 1) / nconns * nconns;
		if (first < total)
			late += (unsigned long long)((total - first + nconns - 1) / nconns);
		if (c->fd >= 0)
			close(c->fd);
	}
	scheduled = (unsigned long long)(total - warmup_count);

	printf("{\"rate\":%g,\"connections\":%d,\"warmup_s\":%g,\"duration_s\":%g,", rate, nconns, warmup, duration);
	printf("\"scheduled\":%llu,\"completed\":%llu,\"errors\":%llu,\"late\":%llu,", scheduled, completed, errors, late);
	printf("\"completed_all\":%llu,\"errors_all\":%llu,\"non_200\":%llu,", completed_all, errors_all, non_200);
	printf("\"connects\":%llu,\"connect_errors\":%llu,\"bytes_received\":%llu,", connects, connect_errors, bytes_received);
	printf("\"elapsed_s\":%.3f,", (double)(end_ns - start_ns) / NS);
	printf("\"achieved_rps\":%.1f,", (double)completed / (duration > 0 ? duration : 1));
	hist_print("corrected_us", &corrected);
	putchar(',');
	hist_print("uncorrected_us", &uncorrected);
	printf(",\"first_error\":\"");
	for (const char *p = first_error; *p; p++)
		putchar(*p == '"' || *p == '\\' ? '\'' : *p);
	printf("\"}\n");
	fflush(stdout);
	return completed == scheduled && errors == 0 ? 0 : 1;
}
