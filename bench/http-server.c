// SPDX-License-Identifier: Apache-2.0
/*
 * http-server: the application server of bench/l4-hop.ts. One thread, epoll, non-blocking
 * sockets. Answers every HTTP/1.x GET with 200 and a 1,024-byte body and keeps the connection
 * open (HTTP/1.1 keep-alive; pipelined requests are answered in order). Anything else gets a
 * 400/405/431 and the connection is closed after the answer is written.
 *
 *   http-server PORT [ADDR]      listen on ADDR:PORT (default 0.0.0.0); runs until killed
 *
 * Partial reads: a request may arrive in any number of pieces; bytes are kept per connection
 * until a complete header block (CRLF CRLF) is there. Partial writes: answers are queued per
 * connection and written as far as the socket takes them; the rest waits for EPOLLOUT, and the
 * connection is not read while more than OUT_HIGH bytes wait (a client that never reads
 * cannot make the server grow without bound). A request header block over MAX_HEADER bytes is
 * refused with 431. GET requests with a body (Content-Length > 0 or chunked) are refused: this
 * server never needs them, and skipping bodies correctly is more code than it is worth here.
 *
 * SIGTERM/SIGINT end it (default action); the bench kills it with its pod. On SIGUSR1 it prints
 * one JSON line to stderr: {"accepted":A,"requests":R,"open":O}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BODY_SIZE 1024
#define MAX_HEADER 8192
#define IN_CAP (MAX_HEADER + 1)
#define OUT_HIGH (256 * 1024)
#define MAX_EVENTS 256

struct conn {
	int fd;
	int closing;		/* close once out is flushed */
	size_t in_len;
	char in[IN_CAP];
	char *out;
	size_t out_len, out_off, out_cap;
	unsigned int events;	/* what epoll watches now */
};

static int ep;
static char ok_response[512 + BODY_SIZE];
static size_t ok_len;
static volatile sig_atomic_t report;
static unsigned long long accepted, requests, open_conns;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void on_usr1(int sig)
{
	(void)sig;
	report = 1;
}

static void set_events(struct conn *c, unsigned int events)
{
	struct epoll_event ev = { .events = events, .data.ptr = c };

	if (events == c->events)
		return;
	if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
		die("http-server: epoll_ctl MOD");
	c->events = events;
}

static void conn_close(struct conn *c)
{
	close(c->fd);	/* also removes it from the epoll set */
	free(c->out);
	free(c);
	open_conns--;
}

static int queue(struct conn *c, const char *data, size_t len)
{
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_len + len > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		char *p;

		/* Compact before growing. */
		if (c->out_off > 0) {
			memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
			c->out_len -= c->out_off;
			c->out_off = 0;
		}
		while (cap < c->out_len + len)
			cap *= 2;
		if (cap != c->out_cap) {
			p = realloc(c->out, cap);
			if (!p)
				return -1;
			c->out = p;
			c->out_cap = cap;
		}
	}
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
	return 0;
}

static void queue_error(struct conn *c, const char *status)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf),
			 "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);

	if (queue(c, buf, (size_t)n) < 0)
		c->out_len = c->out_off;	/* out of memory: close without an answer */
	c->closing = 1;
}

/* Writes what is queued. Returns -1 when the connection is to be closed now. */
static int flush(struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			return -1;
		}
		c->out_off += (size_t)n;
	}
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		if (c->closing)
			return -1;
	}
	return 0;
}

/* The value of header NAME in the block [h, end) (after the request line), or NULL. */
static const char *header(const char *h, const char *end, const char *name, size_t *vlen)
{
	size_t nlen = strlen(name);

	while (h < end) {
		const char *eol = memmem(h, (size_t)(end - h), "\r\n", 2);

		if (!eol)
			eol = end;
		if ((size_t)(eol - h) > nlen && h[nlen] == ':' && strncasecmp(h, name, nlen) == 0) {
			const char *v = h + nlen + 1;

			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			*vlen = (size_t)(eol - v);
			while (*vlen > 0 && (v[*vlen - 1] == ' ' || v[*vlen - 1] == '\t'))
				(*vlen)--;
			return v;
		}
		h = eol + 2;
	}
	return NULL;
}

static int value_is(const char *v, size_t vlen, const char *word)
{
	return v && vlen == strlen(word) && strncasecmp(v, word, vlen) == 0;
}

/* Answers every complete request in c->in. */
static void handle_requests(struct conn *c)
{
	size_t off = 0;

	while (!c->closing) {
		char *start = c->in + off;
		size_t avail = c->in_len - off;
		char *end = memmem(start, avail, "\r\n\r\n", 4);
		char *line_end, *sp1, *sp2;
		const char *v;
		size_t vlen;
		int http10, keep;

		if (!end) {
			if (avail >= MAX_HEADER)
				queue_error(c, "431 Request Header Fields Too Large");
			break;
		}
		line_end = memmem(start, (size_t)(end - start) + 2, "\r\n", 2);
		sp1 = memchr(start, ' ', (size_t)(line_end - start));
		sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
		off += (size_t)(end - start) + 4;
		if (!sp1 || !sp2 || line_end - sp2 - 1 != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
			queue_error(c, "400 Bad Request");
			break;
		}
		if (sp1 - start != 3 || memcmp(start, "GET", 3) != 0) {
			queue_error(c, "405 Method Not Allowed");
			break;
		}
		v = header(line_end + 2, end + 2, "Content-Length", &vlen);
		if ((v && !value_is(v, vlen, "0")) || header(line_end + 2, end + 2, "Transfer-Encoding", &vlen)) {
			queue_error(c, "400 Bad Request");
			break;
		}
		http10 = sp2[8] == '0';
		v = header(line_end + 2, end + 2, "Connection", &vlen);
		keep = http10 ? value_is(v, vlen, "keep-alive") : !value_is(v, vlen, "close");
		requests++;
		if (queue(c, ok_response, ok_len) < 0) {
			c->out_len = c->out_off;
			c->closing = 1;
			break;
		}
		if (!keep)
			c->closing = 1;
	}
	if (off > 0) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
}

/* Reads what is there and answers it. Returns -1 when the connection is to be closed now. */
static int on_readable(struct conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->closing || c->out_len - c->out_off > OUT_HIGH)
			return 0;	/* stop reading until the answers are out */
		n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		if (n == 0)
			return -1;	/* the client closed: nothing to answer to any more */
		c->in_len += (size_t)n;
		handle_requests(c);
		if (flush(c) < 0)
			return -1;
	}
}

static void update_events(struct conn *c)
{
	unsigned int want = 0;

	if (!c->closing && c->out_len - c->out_off <= OUT_HIGH)
		want |= EPOLLIN | EPOLLRDHUP;
	if (c->out_off < c->out_len)
		want |= EPOLLOUT;
	set_events(c, want);
}

static void on_accept(int lfd)
{
	for (;;) {
		int one = 1, fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct epoll_event ev;
		struct conn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				perror("http-server: accept");
				return;
			}
			die("http-server: accept");
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->events = EPOLLIN | EPOLLRDHUP;
		ev.events = c->events;
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			die("http-server: epoll_ctl ADD");
		accepted++;
		open_conns++;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	struct epoll_event ev, events[MAX_EVENTS];
	int one = 1, lfd;
	char *end;
	long port;
	size_t head;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s PORT [ADDR]\n", argv[0]);
		return 64;
	}
	port = strtol(argv[1], &end, 10);
	if (*end || port < 1 || port > 65535) {
		fprintf(stderr, "http-server: bad port: %s\n", argv[1]);
		return 64;
	}
	addr.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, argc == 3 ? argv[2] : "0.0.0.0", &addr.sin_addr) != 1) {
		fprintf(stderr, "http-server: not an IPv4 address: %s\n", argv[2]);
		return 64;
	}

	head = (size_t)snprintf(ok_response, sizeof(ok_response),
				"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
				"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n", BODY_SIZE);
	for (size_t i = 0; i < BODY_SIZE; i++)
		ok_response[head + i] = (char)('a' + i % 26);
	ok_len = head + BODY_SIZE;

	signal(SIGPIPE, SIG_IGN);
	signal(SIGUSR1, on_usr1);

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("http-server: socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die("http-server: bind");
	if (listen(lfd, 1024) < 0)
		die("http-server: listen");
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("http-server: epoll_create1");
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;	/* NULL marks the listener */
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
		die("http-server: epoll_ctl ADD listener");
	fprintf(stderr, "http-server: listening on %s:%ld\n", argc == 3 ? argv[2] : "0.0.0.0", port);

	for (;;) {
		int n = epoll_wait(ep, events, MAX_EVENTS, -1);

		if (report) {
			report = 0;
			fprintf(stderr, "{\"accepted\":%llu,\"requests\":%llu,\"open\":%llu}\n",
				accepted, requests, open_conns);
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("http-server: epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = events[i].data.ptr;
			unsigned int e = events[i].events;

			if (!c) {
				on_accept(lfd);
				continue;
			}
			if (e & EPOLLOUT) {
				if (flush(c) < 0) {
					conn_close(c);
					continue;
				}
			}
			if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
				if (on_readable(c) < 0) {
					conn_close(c);
					continue;
				}
				/* EPOLLHUP/ERR without readable data: read() reported nothing new. */
				if ((e & (EPOLLHUP | EPOLLERR)) && c->out_off == c->out_len) {
					conn_close(c);
					continue;
				}
			}
			update_events(c);
		}
	}
}
