/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address helpers for the 16-byte (IPv4-mapped) form used by every ambit map. */
#ifndef AMBIT_NET_BPF_H
#define AMBIT_NET_BPF_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>
#include "ambit.h"

/* Not from <sys/socket.h>: BPF objects are built without libc headers. */
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

static __always_inline void addr_from_ip4(__u8 addr[16], __u32 ip4_be)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(&addr[12], &ip4_be, 4);
}

static __always_inline void addr_from_ip6(__u8 addr[16], __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	__builtin_memcpy(&addr[0], &w0, 4);
	__builtin_memcpy(&addr[4], &w1, 4);
	__builtin_memcpy(&addr[8], &w2, 4);
	__builtin_memcpy(&addr[12], &w3, 4);
}

static __always_inline int ip6_words_are_v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline int addr_is_v4_mapped(const __u8 addr[16])
{
	for (int i = 0; i < 10; i++)
		if (addr[i])
			return 0;
	return addr[10] == 0xff && addr[11] == 0xff;
}

/* 127.0.0.0/8 (mapped) or ::1. */
static __always_inline int addr_is_loopback(const __u8 addr[16])
{
	if (addr_is_v4_mapped(addr))
		return addr[12] == 127;
	for (int i = 0; i < 15; i++)
		if (addr[i])
			return 0;
	return addr[15] == 1;
}

static __always_inline int addr_in_cidr(const __u8 addr[16], const struct ambit_cidr *cidr)
{
	__u32 bits = cidr->prefix_len;

	if (bits > 128)
		return 0;
	for (int i = 0; i < 16; i++) {
		__u8 mask;

		if (bits == 0)
			return 1;
		mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((addr[i] ^ cidr->addr[i]) & mask)
			return 0;
		bits = bits >= 8 ? bits - 8 : 0;
	}
	return 1;
}

static __always_inline int port_in_list(const __u16 ports[AMBIT_MAX_EXCLUDED_PORTS], __u16 port)
{
	for (int i = 0; i < AMBIT_MAX_EXCLUDED_PORTS; i++)
		if (ports[i] && ports[i] == port)
			return 1;
	return 0;
}

#endif
