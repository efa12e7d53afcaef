// SPDX-License-Identifier: Apache-2.0
/*
 * connect-loop: times blocking TCP connect() calls, one after the other. Built and run by
 * bench/connect-latency.ts inside a pod's cgroup and netns, so its sockets meet the pod's hooks.
 *
 *   connect-loop HOST PORT COUNT [WARMUP]    WARMUP unrecorded connects, then COUNT recorded
 *   connect-loop HOST PORT --control FIFO    for each line K read from FIFO, K recorded
 *                                            connects; stops at a line 0 or end of file
 *
 * Each connect: socket(); t0; connect(); t1; wait for the server to close (read to EOF);
 * close with SO_LINGER {1,0}, i.e. an RST. The server closes first and the client resets, so
 * neither side keeps a TIME_WAIT socket and the ephemeral ports never run out; one connection
 * at a time, so no accept queue can overflow. Only t1 - t0 is recorded: the time the
 * application spends in connect(). Every wait is bounded (5 s timeouts on the socket).
 *
 * After each batch, one JSON line on stdout:
 *   {"ok":K,"errors":E,"errno":"FIRST","stalls":S,"ns":[...]}
 * ok: successful connects, warmup included; errors: failed connects (errno: the first one's);
 * stalls: servers that did not close within 5 s; ns: the recorded latencies in nanoseconds.
 * Exit status 0 only when every connect succeeded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_COUNT 10000000L
#define MAX_CONSECUTIVE_ERRORS 20
#define MAX_READS 64

static struct sockaddr_storage addr;
static socklen_t addr_len;
static int family;
static long failed_total;

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *errno_name(int err)
{
	const char *name = err ? strerrorname_np(err) : NULL;

	return name ? name : "";
}

static long parse_count(const char *text, const char *what, long min)
{
	char *end;
	long value;

	errno = 0;
	value = strtol(text, &end, 10);
	while (*end == '\n' || *end == '\r')
		end++;
	if (errno || end == text || *end || value < min || value > MAX_COUNT) {
		fprintf(stderr, "connect-loop: bad %s: %s\n", what, text);
		exit(64);
	}
	return value;
}

/* Runs warmup + count connects; records the last count; prints the batch's JSON line. */
static void batch(long warmup, long count, long long *ns)
{
	const struct timeval timeout = { .tv_sec = 5, .tv_usec = 0 };
	const struct linger reset = { .l_onoff = 1, .l_linger = 0 };
	long recorded = 0, ok = 0, errors = 0, stalls = 0, consecutive = 0;
	int first_errno = 0;

	for (long i = 0; i < warmup + count; i++) {
		long long t0, t1;
		char buf[256];
		ssize_t n = 1;
		int rc, fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (fd < 0) {
			perror("connect-loop: socket");
			exit(1);
		}
		/* SO_SNDTIMEO bounds a blocking connect(), SO_RCVTIMEO the wait for the server's close. */
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));

		t0 = now_ns();
		rc = connect(fd, (struct sockaddr *)&addr, addr_len);
		t1 = now_ns();

		if (rc < 0) {
			int err = errno;

			errors++;
			if (!first_errno)
				first_errno = err;
			close(fd);
			if (++consecutive >= MAX_CONSECUTIVE_ERRORS) {
				fprintf(stderr, "connect-loop: %ld consecutive failures, last: %s\n",
					consecutive, strerror(err));
				break;
			}
			continue;
		}
		consecutive = 0;
		ok++;
		for (int reads = 0; n > 0 && reads < MAX_READS; reads++)
			n = read(fd, buf, sizeof(buf));
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			stalls++;
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
		close(fd);
		if (i >= warmup)
			ns[recorded++] = t1 - t0;
	}

	printf("{\"ok\":%ld,\"errors\":%ld,\"errno\":\"%s\",\"stalls\":%ld,\"ns\":[", ok, errors,
	       errno_name(first_errno), stalls);
	for (long i = 0; i < recorded; i++)
		printf(i ? ",%lld" : "%lld", ns[i]);
	printf("]}\n");
	fflush(stdout);
	failed_total += errors + (count - recorded);
}

int main(int argc, char **argv)
{
	long port;
	long long *ns;

	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: %s HOST PORT COUNT [WARMUP]\n"
				"       %s HOST PORT --control FIFO\n", argv[0], argv[0]);
		return 64;
	}
	port = parse_count(argv[2], "port", 1);
	if (port > 65535) {
		fprintf(stderr, "connect-loop: bad port: %s\n", argv[2]);
		return 64;
	}

	memset(&addr, 0, sizeof(addr));
	if (inet_pton(AF_INET, argv[1], &((struct sockaddr_in *)&addr)->sin_addr) == 1) {
		struct sockaddr_in *in = (struct sockaddr_in *)&addr;

		family = AF_INET;
		in->sin_family = AF_INET;
		in->sin_port = htons((unsigned short)port);
		addr_len = sizeof(*in);
	} else if (inet_pton(AF_INET6, argv[1], &((struct sockaddr_in6 *)&addr)->sin6_addr) == 1) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;

		family = AF_INET6;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((unsigned short)port);
		addr_len = sizeof(*in6);
	} else {
		fprintf(stderr, "connect-loop: not an IP address: %s\n", argv[1]);
		return 64;
	}

	if (strcmp(argv[3], "--control") == 0) {
		char line[64];
		FILE *control;

		if (argc != 5) {
			fprintf(stderr, "connect-loop: --control needs a FIFO path\n");
			return 64;
		}
		control = fopen(argv[4], "r");
		if (!control) {
			perror("connect-loop: control FIFO");
			return 1;
		}
		while (fgets(line, sizeof(line), control)) {
			long count = parse_count(line, "batch size", 0);

			if (count == 0)
				break;
			ns = calloc((size_t)count, sizeof(*ns));
			if (!ns) {
				perror("connect-loop: calloc");
				return 1;
			}
			batch(0, count, ns);
			free(ns);
		}
		fclose(control);
	} else {
		long count = parse_count(argv[3], "count", 1);
		long warmup = argc == 5 ? parse_count(argv[4], "warmup", 0) : 0;

		ns = calloc((size_t)count, sizeof(*ns));
		if (!ns) {
			perror("connect-loop: calloc");
			return 1;
		}
		batch(warmup, count, ns);
		free(ns);
	}
	return failed_total ? 1 : 0;
}
