/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Shared between the eBPF programs and the TypeScript loader.
 * `make bpf` regenerates src/ebpf/layout.generated.ts from the BTF of the compiled objects
 * and from the AMBIT_* constants below; change a layout here and the codecs follow.
 */
#ifndef AMBIT_H
#define AMBIT_H

#include <linux/types.h>

/* In-pod listener ports (see docs/ARCHITECTURE.md). */
#define AMBIT_PORT_OUTBOUND 15001
#define AMBIT_PORT_INBOUND 15006
#define AMBIT_PORT_HBONE 15008
/* The agent's DNS listener in every pod (UDP, 127.0.0.1 and ::1), where port 53 is steered. */
#define AMBIT_PORT_DNS 15053

/* SO_MARK the node agent puts on every socket it makes inside a pod: never redirected. */
#define AMBIT_SOCKET_MARK 0x539

#define AMBIT_MAX_EXCLUDED_PORTS 16
#define AMBIT_MAX_EXCLUDED_CIDRS 8

/* ambit_pod_config.flags */
#define AMBIT_POD_CAPTURE_OUTBOUND 1
#define AMBIT_POD_CAPTURE_INBOUND 2
/* UDP to port 53 goes to the agent's DNS listener (the agent's switch; off: left alone). */
#define AMBIT_POD_CAPTURE_DNS 4

#define AMBIT_MAX_PODS 65536
#define AMBIT_MAX_CONNECTIONS 262144
/* Health probes in flight from the node's prober (the kubelet) at one time. */
#define AMBIT_MAX_PROBES 16384
/* UDP sockets of pods whose DNS queries are steered at one time (LRU: the oldest go first). */
#define AMBIT_MAX_DNS_FLOWS 65536

/* Indices of the counters map. */
#define AMBIT_CTR_CONNECT_REDIRECTED 0
#define AMBIT_CTR_CONNECT_EXCLUDED 1
#define AMBIT_CTR_CONNECT_NOT_ENROLLED 2
#define AMBIT_CTR_ORIGDST_RECORDED 3
#define AMBIT_CTR_ORIGDST_MISSING 4
#define AMBIT_CTR_ORIGDST_DELETED 5
#define AMBIT_CTR_INBOUND_STEERED 6
#define AMBIT_CTR_INBOUND_PASSED 7
#define AMBIT_CTR_ERRORS 8
#define AMBIT_CTR_INBOUND_UNKNOWN_ADDR 9
#define AMBIT_CTR_PROBE_RECORDED 10
#define AMBIT_CTR_DNS_REDIRECTED 11
#define AMBIT_CTR_DNS_REPLY_REWRITTEN 12
#define AMBIT_CTR_DNS_ERRORS 13
#define AMBIT_CTR_COUNT 14
/* Slots in the counters map: more than in use, so that a new counter keeps the pinned map's shape. */
#define AMBIT_CTR_SLOTS 32

/*
 * Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), so one key and
 * one comparison serve both families. Ports are in host byte order.
 */
struct ambit_addr {
	__u8 addr[16];
};

struct ambit_cidr {
	__u8 addr[16];
	__u32 prefix_len; /* over the 128-bit form: an IPv4 /24 is 120 */
};

/* Per-pod settings, keyed by the pod's network namespace cookie (__u64). */
struct ambit_pod_config {
	__u32 flags;
	__u16 outbound_port;
	__u16 inbound_port;
	__u16 excluded_outbound_ports[AMBIT_MAX_EXCLUDED_PORTS]; /* 0 = unused slot */
	__u16 excluded_inbound_ports[AMBIT_MAX_EXCLUDED_PORTS];
	struct ambit_cidr excluded_cidrs[AMBIT_MAX_EXCLUDED_CIDRS];
	__u32 excluded_cidr_count;
};

/* A redirected connection as the agent sees it when it accepts on the capture listener. */
struct ambit_sock_key {
	__u64 netns_cookie;
	__u8 client_addr[16];
	__u8 listener_addr[16];
	__u16 client_port;
	__u16 listener_port;
	__u32 pad;
};

/* Where the application meant to connect. */
struct ambit_orig_dst {
	__u8 addr[16];
	__u16 port;
	__u16 family; /* AF_INET or AF_INET6, as the application asked */
	__u32 pad;
	__u64 socket_cookie;
};

#endif
