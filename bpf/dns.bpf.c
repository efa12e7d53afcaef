// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * DNS capture: an enrolled pod's UDP datagrams to port 53 are steered to the node agent's DNS
 * listener in the pod (127.0.0.1:15053, ::1 or ::ffff:127.0.0.1 on IPv6 sockets), and the
 * replies the pod reads look as if they came from the resolver it asked.
 *
 *   cgroup/sendmsg4|6      sendto() of an unconnected socket (musl, dig): rewrite, record
 *   cgroup/connect4|6      connect() of a UDP socket (glibc, c-ares): rewrite, record
 *   cgroup/recvmsg4|6      a datagram from the listener: its source becomes the resolver
 *   cgroup/getpeername4|6  a connected socket's peer: the resolver, not the listener (also
 *                          for TCP to port 53, captured to 15001 by the outbound programs)
 *
 * The record (ambit_dns_flows) is keyed by what the agent sees of a query: the pod's netns, the
 * socket's port and the listener's address. sendmsg runs after the kernel bound the socket to a
 * port; connect runs before it does, so an unbound socket is bound here (bpf_bind) to a port
 * picked at random, as the kernel's own autobind would.
 * TCP to port 53 is captured by the outbound programs like any TCP connection.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.bpf.h"
#include "net.bpf.h"

#define DNS_PORT 53
/* The kernel's default ephemeral range (net.ipv4.ip_local_port_range: 32768-60999). */
#define EPHEMERAL_FIRST 32768
#define EPHEMERAL_COUNT 28232
#define BIND_TRIES 8

/*
 * Key: {netns cookie, client_addr zero, listener address, the socket's port, AMBIT_PORT_DNS}.
 * Value: the resolver the application addressed. No hook sees a UDP socket close: LRU reclaims
 * the entries of sockets that are gone, and a port's next socket overwrites its entry.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_DNS_FLOWS);
	__type(key, struct ambit_sock_key);
	__type(value, struct ambit_orig_dst);
} ambit_dns_flows SEC(".maps");

/* struct sockaddr_in / sockaddr_in6 for bpf_bind: BPF objects are built without libc headers. */
struct bind_in4 {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

struct bind_in6 {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u8 addr[16];
	__u32 scope_id;
};

static __always_inline void listener_addr(__u8 addr[16], int native6)
{
	if (native6) {
		__builtin_memset(addr, 0, 15);
		addr[15] = 1;
	} else {
		addr_from_ip4(addr, bpf_htonl(0x7f000001));
	}
}

static __always_inline void flow_key(struct ambit_sock_key *key, __u64 netns_cookie, __u16 port,
				     int native6)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->netns_cookie = netns_cookie;
	listener_addr(key->listener_addr, native6);
	key->client_port = port;
	key->listener_port = AMBIT_PORT_DNS;
}

/* Binds an unbound socket to a free ephemeral port (any address); returns the port, 0 if none. */
static __always_inline __u16 bind_ephemeral(struct bpf_sock_addr *ctx, int v6)
{
	for (int i = 0; i < BIND_TRIES; i++) {
		__u16 port = EPHEMERAL_FIRST + bpf_get_prandom_u32() % EPHEMERAL_COUNT;
		long err;

		if (v6) {
			struct bind_in6 sa = { .family = AF_INET6, .port = bpf_htons(port) };

			err = bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
		} else {
			struct bind_in4 sa = { .family = AF_INET, .port = bpf_htons(port) };

			err = bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
		}
		if (err == 0)
			return port;
	}
	return 0;
}

/*
 * Whether this datagram or connect to port 53 is steered, with its record written. `connecting`:
 * the socket may not have a port yet, and may be bound here. `v6`: an AF_INET6 socket.
 * Returns 1 to rewrite, 0 to leave alone.
 */
static __always_inline int capture(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 family,
				   int v6, int connecting)
{
	__u64 netns_cookie = bpf_get_netns_cookie(ctx);
	struct ambit_pod_config *pod = bpf_map_lookup_elem(&ambit_pods, &netns_cookie);
	struct bpf_sock *sk = ctx->sk;
	struct ambit_orig_dst dst = {};
	struct ambit_sock_key key;
	__u16 port;

	if (!pod || !(pod->flags & AMBIT_POD_CAPTURE_DNS))
		return 0;
	/*
	 * A resolver inside the pod (127.0.0.53) is the pod's own business; a link-local one
	 * (fe80::/10) needs its interface, which the agent's forward could not name.
	 */
	if (!sk || sk->mark == AMBIT_SOCKET_MARK || addr_is_loopback(addr) ||
	    (addr[0] == 0xfe && (addr[1] & 0xc0) == 0x80) ||
	    port_in_list(pod->excluded_outbound_ports, DNS_PORT))
		return 0;
	for (__u32 i = 0; i < AMBIT_MAX_EXCLUDED_CIDRS; i++) {
		if (i >= pod->excluded_cidr_count)
			break;
		if (addr_in_cidr(addr, &pod->excluded_cidrs[i]))
			return 0;
	}
	port = (__u16)sk->src_port;
	if (port == 0 && connecting)
		port = bind_ephemeral(ctx, v6);
	if (port == 0) {
		/* Nothing the agent could find the query by: the resolver gets it directly. */
		count(AMBIT_CTR_DNS_ERRORS);
		return 0;
	}
	flow_key(&key, netns_cookie, port, family == AF_INET6);
	__builtin_memcpy(dst.addr, addr, 16);
	dst.port = DNS_PORT;
	dst.family = family;
	dst.socket_cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&ambit_dns_flows, &key, &dst, BPF_ANY)) {
		count(AMBIT_CTR_DNS_ERRORS);
		return 0;
	}
	count(AMBIT_CTR_DNS_REDIRECTED);
	return 1;
}

static __always_inline int steer4(struct bpf_sock_addr *ctx, int connecting)
{
	__u8 addr[16];

	if (ctx->protocol != IPPROTO_UDP || ctx->user_port != bpf_htons(DNS_PORT))
		return 1;
	addr_from_ip4(addr, ctx->user_ip4);
	if (capture(ctx, addr, AF_INET, 0, connecting)) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(AMBIT_PORT_DNS);
	}
	return 1;
}

static __always_inline int steer6(struct bpf_sock_addr *ctx, int connecting)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	int mapped = ip6_words_are_v4_mapped(w0, w1, w2);
	__u8 addr[16];

	if (ctx->protocol != IPPROTO_UDP || ctx->user_port != bpf_htons(DNS_PORT))
		return 1;
	addr_from_ip6(addr, w0, w1, w2, w3);
	if (capture(ctx, addr, mapped ? AF_INET : AF_INET6, 1, connecting)) {
		/* ::ffff:127.0.0.1 keeps a mapped query on IPv4, where the v4 listener waits. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
		ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
		ctx->user_port = bpf_htons(AMBIT_PORT_DNS);
	}
	return 1;
}

SEC("cgroup/connect4")
int ambit_dnsconn4(struct bpf_sock_addr *ctx)
{
	return steer4(ctx, 1);
}

SEC("cgroup/connect6")
int ambit_dnsconn6(struct bpf_sock_addr *ctx)
{
	return steer6(ctx, 1);
}

SEC("cgroup/sendmsg4")
int ambit_dnssend4(struct bpf_sock_addr *ctx)
{
	return steer4(ctx, 0);
}

SEC("cgroup/sendmsg6")
int ambit_dnssend6(struct bpf_sock_addr *ctx)
{
	return steer6(ctx, 0);
}

/* The resolver recorded for this socket when `ctx` names the listener of family `native6`. */
static __always_inline struct ambit_orig_dst *recorded(struct bpf_sock_addr *ctx, int native6)
{
	struct bpf_sock *sk = ctx->sk;
	struct ambit_sock_key key;

	if (!sk || ctx->protocol != IPPROTO_UDP)
		return 0;
	flow_key(&key, bpf_get_netns_cookie(ctx), (__u16)sk->src_port, native6);
	return bpf_map_lookup_elem(&ambit_dns_flows, &key);
}

/*
 * DNS over TCP: a connection to port 53 was captured to the agent's 127.0.0.1:15001 (::1, or
 * ::ffff:127.0.0.1) like any TCP connection; its peer is the resolver it was addressed to.
 * Only port 53's: other captured connections keep showing the capture listener, as before.
 */
static __always_inline struct ambit_orig_dst *tcp_recorded(struct bpf_sock_addr *ctx, const __u8 listener[16])
{
	struct bpf_sock *sk = ctx->sk;
	struct ambit_orig_dst *dst;
	struct ambit_sock_key key = {};

	if (!sk)
		return 0;
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	if (sk->family == AF_INET)
		addr_from_ip4(key.client_addr, sk->src_ip4);
	else
		addr_from_ip6(key.client_addr, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2],
			      sk->src_ip6[3]);
	__builtin_memcpy(key.listener_addr, listener, 16);
	key.client_port = (__u16)sk->src_port;
	key.listener_port = AMBIT_PORT_OUTBOUND;
	dst = bpf_map_lookup_elem(&ambit_orig_dst, &key);
	return dst && dst->port == DNS_PORT ? dst : 0;
}

/* The source (recvmsg) or peer (getpeername) of an IPv4 socket: the listener becomes the resolver. */
static __always_inline int restore4(struct bpf_sock_addr *ctx)
{
	struct ambit_orig_dst *dst;
	__u8 listener[16];

	if (ctx->user_ip4 != bpf_htonl(0x7f000001))
		return 1;
	if (ctx->protocol == IPPROTO_TCP) {
		if (ctx->user_port != bpf_htons(AMBIT_PORT_OUTBOUND))
			return 1;
		listener_addr(listener, 0);
		dst = tcp_recorded(ctx, listener);
	} else if (ctx->user_port == bpf_htons(AMBIT_PORT_DNS)) {
		dst = recorded(ctx, 0);
	} else {
		return 1;
	}
	if (!dst || dst->family != AF_INET)
		return 1;
	ctx->user_ip4 = *(__u32 *)&dst->addr[12];
	ctx->user_port = bpf_htons(dst->port);
	count(AMBIT_CTR_DNS_REPLY_REWRITTEN);
	return 1;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	int mapped = ip6_words_are_v4_mapped(w0, w1, w2);
	struct ambit_orig_dst *dst;
	__u8 listener[16];

	if (mapped ? w3 != bpf_htonl(0x7f000001) : (w0 || w1 || w2 || w3 != bpf_htonl(1)))
		return 1;
	if (ctx->protocol == IPPROTO_TCP) {
		if (ctx->user_port != bpf_htons(AMBIT_PORT_OUTBOUND))
			return 1;
		listener_addr(listener, !mapped);
		dst = tcp_recorded(ctx, listener);
	} else if (ctx->user_port == bpf_htons(AMBIT_PORT_DNS)) {
		dst = recorded(ctx, !mapped);
	} else {
		return 1;
	}
	if (!dst)
		return 1;
	/* The mapped form of an IPv4 resolver is what an IPv6 socket reports for it. */
	ctx->user_ip6[0] = *(__u32 *)&dst->addr[0];
	ctx->user_ip6[1] = *(__u32 *)&dst->addr[4];
	ctx->user_ip6[2] = *(__u32 *)&dst->addr[8];
	ctx->user_ip6[3] = *(__u32 *)&dst->addr[12];
	ctx->user_port = bpf_htons(dst->port);
	count(AMBIT_CTR_DNS_REPLY_REWRITTEN);
	return 1;
}

SEC("cgroup/recvmsg4")
int ambit_dnsrecv4(struct bpf_sock_addr *ctx)
{
	return restore4(ctx);
}

SEC("cgroup/recvmsg6")
int ambit_dnsrecv6(struct bpf_sock_addr *ctx)
{
	return restore6(ctx);
}

SEC("cgroup/getpeername4")
int ambit_dnspeer4(struct bpf_sock_addr *ctx)
{
	return restore4(ctx);
}

SEC("cgroup/getpeername6")
int ambit_dnspeer6(struct bpf_sock_addr *ctx)
{
	return restore6(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
