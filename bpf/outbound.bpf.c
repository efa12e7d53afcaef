// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Outbound capture: connect() of an enrolled pod's TCP socket is rewritten to the pod-local
 * capture listener, and the original destination is kept where the agent can find it from the
 * accepted connection's addresses.
 *
 *   cgroup/connect4|6  socket cookie -> original destination      (ambit_pending)
 *   sockops CONNECT    move it to (netns, client, listener) tuple (ambit_orig_dst)
 *   sockops STATE      delete the tuple entry when the socket closes
 *
 * The source port is not chosen yet when connect4/6 run, hence the two steps.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.bpf.h"
#include "net.bpf.h"

/* Entries live from connect() to the SYN; LRU only reclaims those of connects that failed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_CONNECTIONS);
	__type(key, __u64);
	__type(value, struct ambit_orig_dst);
} ambit_pending SEC(".maps");

/* ambit_orig_dst (maps.bpf.h): written at the SYN, deleted at close by the sockops program. */

/*
 * Decides whether this connect is captured, and records the destination if so.
 * Returns 1 to capture, 0 to leave the connect alone, -1 when the record could not be
 * written: the connect then fails (EPERM) rather than silently bypassing the mesh.
 */
static __always_inline int capture(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port,
				   __u16 family, __u16 *capture_port)
{
	__u64 netns_cookie = bpf_get_netns_cookie(ctx);
	struct ambit_pod_config *pod = bpf_map_lookup_elem(&ambit_pods, &netns_cookie);
	struct bpf_sock *sk = ctx->sk;
	struct ambit_orig_dst dst = {};
	__u64 cookie;

	if (!pod || !(pod->flags & AMBIT_POD_CAPTURE_OUTBOUND)) {
		count(AMBIT_CTR_CONNECT_NOT_ENROLLED);
		return 0;
	}
	if (!sk || sk->mark == AMBIT_SOCKET_MARK || addr_is_loopback(addr) ||
	    port_in_list(pod->excluded_outbound_ports, port)) {
		count(AMBIT_CTR_CONNECT_EXCLUDED);
		return 0;
	}
	for (__u32 i = 0; i < AMBIT_MAX_EXCLUDED_CIDRS; i++) {
		if (i >= pod->excluded_cidr_count)
			break;
		if (addr_in_cidr(addr, &pod->excluded_cidrs[i])) {
			count(AMBIT_CTR_CONNECT_EXCLUDED);
			return 0;
		}
	}

	cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(dst.addr, addr, 16);
	dst.port = port;
	dst.family = family;
	dst.socket_cookie = cookie;
	if (bpf_map_update_elem(&ambit_pending, &cookie, &dst, BPF_ANY)) {
		count(AMBIT_CTR_ERRORS);
		return -1;
	}
	*capture_port = pod->outbound_port;
	count(AMBIT_CTR_CONNECT_REDIRECTED);
	return 1;
}

SEC("cgroup/connect4")
int ambit_connect4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	__u32 ip4 = ctx->user_ip4;
	__u16 capture_port = 0;
	int verdict;

	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	addr_from_ip4(addr, ip4);
	verdict = capture(ctx, addr, bpf_ntohs((__u16)ctx->user_port), AF_INET, &capture_port);
	if (verdict < 0)
		return 0;
	if (verdict > 0) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(capture_port);
	}
	return 1;
}

SEC("cgroup/connect6")
int ambit_connect6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	int mapped = ip6_words_are_v4_mapped(w0, w1, w2);
	__u16 capture_port = 0;
	int verdict;

	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	addr_from_ip6(addr, w0, w1, w2, w3);
	/* An IPv4-mapped destination is IPv4 on the wire: record it as such. */
	verdict = capture(ctx, addr, bpf_ntohs((__u16)ctx->user_port), mapped ? AF_INET : AF_INET6,
			  &capture_port);
	if (verdict < 0)
		return 0;
	if (verdict > 0) {
		/* ::ffff:127.0.0.1 keeps a mapped connect on IPv4, where the v4 listener waits. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
		ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
		ctx->user_port = bpf_htons(capture_port);
	}
	return 1;
}

/* One 4-byte context load each: the verifier rejects the 8-byte loads clang would merge them into. */
#define CTX_U32(field) (*(volatile __u32 *)&(field))

static __always_inline void sock_key(struct bpf_sock_ops *skops, struct ambit_sock_key *key)
{
	__u32 family = skops->family;
	__u32 r0 = CTX_U32(skops->remote_ip6[0]), r1 = CTX_U32(skops->remote_ip6[1]);
	__u32 r2 = CTX_U32(skops->remote_ip6[2]);

	key->netns_cookie = bpf_get_netns_cookie(skops);
	/* A mapped connect on an IPv6 socket runs the IPv4 path; its ip6 fields may be unset yet. */
	if (family == AF_INET || ip6_words_are_v4_mapped(r0, r1, r2)) {
		addr_from_ip4(key->client_addr, skops->local_ip4);
		addr_from_ip4(key->listener_addr, skops->remote_ip4);
	} else {
		addr_from_ip6(key->client_addr, CTX_U32(skops->local_ip6[0]),
			      CTX_U32(skops->local_ip6[1]), CTX_U32(skops->local_ip6[2]),
			      CTX_U32(skops->local_ip6[3]));
		addr_from_ip6(key->listener_addr, r0, r1, r2, CTX_U32(skops->remote_ip6[3]));
	}
	key->client_port = (__u16)skops->local_port;
	/* remote_port holds the network-order port in its upper 16 bits. */
	key->listener_port = bpf_ntohs((__u16)(skops->remote_port >> 16));
	key->pad = 0;
}

SEC("sockops")
int ambit_sockops(struct bpf_sock_ops *skops)
{
	struct ambit_sock_key key = {};
	struct ambit_orig_dst *dst;
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		cookie = bpf_get_socket_cookie(skops);
		dst = bpf_map_lookup_elem(&ambit_pending, &cookie);
		if (!dst)
			break;
		sock_key(skops, &key);
		if (bpf_map_update_elem(&ambit_orig_dst, &key, dst, BPF_ANY)) {
			count(AMBIT_CTR_ERRORS);
		} else {
			count(AMBIT_CTR_ORIGDST_RECORDED);
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
		}
		bpf_map_delete_elem(&ambit_pending, &cookie);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		sock_key(skops, &key);
		/* A prober's socket (see ambit_probe_sockops) also reports its close here. */
		if (!bpf_map_lookup_elem(&ambit_pods, &key.netns_cookie))
			break;
		if (bpf_map_delete_elem(&ambit_orig_dst, &key) == 0)
			count(AMBIT_CTR_ORIGDST_DELETED);
		else
			count(AMBIT_CTR_ORIGDST_MISSING);
		break;
	}
	return 1;
}

/*
 * Attached to the cgroup of the node's health prober (the kubelet): a connection it opens to
 * an enrolled pod's address is recorded by its addresses and ports as the pod will see them,
 * so that the agent can tell the kubelet's probes from anything else that comes from the
 * node's IP (host-network pods, NodePort traffic). Deleted when the socket closes.
 */
SEC("sockops")
int ambit_probe_sockops(struct bpf_sock_ops *skops)
{
	struct ambit_sock_key key = {};
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		sock_key(skops, &key);
		if (!bpf_map_lookup_elem(&ambit_pod_addrs, key.listener_addr))
			break;
		key.netns_cookie = 0;
		cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_update_elem(&ambit_probe_flows, &key, &cookie, BPF_ANY)) {
			count(AMBIT_CTR_ERRORS);
			break;
		}
		count(AMBIT_CTR_PROBE_RECORDED);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		sock_key(skops, &key);
		key.netns_cookie = 0;
		bpf_map_delete_elem(&ambit_probe_flows, &key);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
