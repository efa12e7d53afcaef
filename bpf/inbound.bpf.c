// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Inbound capture: attached to each enrolled pod's network namespace, steers TCP connections
 * that arrive from outside the pod to the agent's in-pod plaintext listener (15006).
 * Left alone: HBONE (15008, already mTLS), the listener's own port (the agent refuses what
 * arrives there directly), ports the pod excludes, and connections the pod makes to itself (the agent's own hand-off to the application
 * connects from inside the pod). A packet from outside cannot claim a pod address as its
 * source: the kernel drops such martians (accept_local=0), so the source check is safe.
 * A destination address of an enrolled netns that is not one of the pod's known addresses is
 * dropped: every address of a meshed pod is steered or refused, none bypasses the mesh.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.bpf.h"
#include "net.bpf.h"

#define LOOPBACK_IFINDEX 1

/* netns cookie -> the agent's inbound listener in that pod. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, AMBIT_MAX_PODS);
	__type(key, __u64);
	__type(value, __u64);
} ambit_inbound_listeners SEC(".maps");

SEC("sk_lookup")
int ambit_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct ambit_addr local = {}, remote = {};
	__u64 *remote_cookie;
	__u64 *netns_cookie;
	struct ambit_pod_config *pod;
	struct bpf_sock *listener;
	__u16 port = (__u16)ctx->local_port;
	long err;

	if (ctx->protocol != IPPROTO_TCP || ctx->ingress_ifindex == LOOPBACK_IFINDEX)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		addr_from_ip4(local.addr, ctx->local_ip4);
		addr_from_ip4(remote.addr, ctx->remote_ip4);
	} else {
		addr_from_ip6(local.addr, ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
			      ctx->local_ip6[3]);
		addr_from_ip6(remote.addr, ctx->remote_ip6[0], ctx->remote_ip6[1],
			      ctx->remote_ip6[2], ctx->remote_ip6[3]);
	}
	netns_cookie = bpf_map_lookup_elem(&ambit_pod_addrs, &local);
	if (!netns_cookie) {
		/*
		 * The program runs only in enrolled pods' namespaces: an address the agent was not
		 * told of (an IPv6 link-local, a second address the pod's status does not list) would
		 * reach the application around the mesh. Refused; the agent counts it.
		 */
		count(AMBIT_CTR_INBOUND_UNKNOWN_ADDR);
		return SK_DROP;
	}
	/* From the pod to itself: not inbound. */
	remote_cookie = bpf_map_lookup_elem(&ambit_pod_addrs, &remote);
	if (addr_is_loopback(remote.addr) || (remote_cookie && *remote_cookie == *netns_cookie))
		return SK_PASS;
	pod = bpf_map_lookup_elem(&ambit_pods, netns_cookie);
	if (!pod || !(pod->flags & AMBIT_POD_CAPTURE_INBOUND))
		return SK_PASS;
	if (port == AMBIT_PORT_HBONE || port == pod->inbound_port ||
	    port_in_list(pod->excluded_inbound_ports, port)) {
		count(AMBIT_CTR_INBOUND_PASSED);
		return SK_PASS;
	}

	/*
	 * No listener means the agent is (re)starting: drop the SYN so the client retransmits,
	 * rather than letting plaintext reach the application unchecked.
	 */
	listener = bpf_map_lookup_elem(&ambit_inbound_listeners, netns_cookie);
	if (!listener) {
		count(AMBIT_CTR_ERRORS);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, listener, 0);
	bpf_sk_release(listener);
	if (err) {
		count(AMBIT_CTR_ERRORS);
		return SK_DROP;
	}
	count(AMBIT_CTR_INBOUND_STEERED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
