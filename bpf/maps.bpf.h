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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AMBIT_CTR_COUNT);
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
