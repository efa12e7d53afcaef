/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps shared by every ambit object. The loader pins each one by name under the agent's pin
 * root, so the outbound and inbound objects (and a restarted agent) use the same instances:
 * the definitions here must stay identical for all of them.
 */
#ifndef AMBIT_MAPS_BPF_H
#define AMBIT_MAPS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "ambit.h"

/* netns cookie -> per-pod settings; absent = not enrolled. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AMBIT_MAX_PODS);
	__type(key, __u64);
	__type(value, struct ambit_pod_config);
} ambit_pods SEC(".maps");

/*
 * Pod address -> the pod's netns cookie. sk_lookup programs cannot call
 * bpf_get_netns_cookie(), so the destination address names the pod instead; the program is
 * attached only to enrolled pods' namespaces, whose addresses are unique on a node.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AMBIT_MAX_PODS * 2);
	__type(key, struct ambit_addr);
	__type(value, __u64);
} ambit_pod_addrs SEC(".maps");

/*
 * Connections the node's prober (the kubelet's cgroup) opened to a pod, keyed as the pod sees
 * them (netns_cookie 0, client = the prober's address and port, listener = the pod's): the agent
 * exempts exactly these from STRICT and policy, not everything that comes from the node's IP.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_PROBES);
	__type(key, struct ambit_sock_key);
	__type(value, __u64);
} ambit_probe_flows SEC(".maps");

/*
 * A captured TCP connection, keyed as the agent sees it when it accepts it on the capture
 * listener -> where the application meant to connect. Written and deleted by the outbound
 * sockops program (LRU only a backstop against a full map); read by the DNS object's
 * getpeername programs too.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_CONNECTIONS);
	__type(key, struct ambit_sock_key);
	__type(value, struct ambit_orig_dst);
} ambit_orig_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AMBIT_CTR_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} ambit_counters SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&ambit_counters, &index);

	if (value)
		*value += 1;
}

#endif
