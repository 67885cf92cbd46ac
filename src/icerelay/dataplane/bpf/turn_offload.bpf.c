// SPDX-License-Identifier: GPL-2.0
/*
 * icerelay: TURN ChannelData relayed in the kernel (TC ingress, cls_bpf direct action).
 *
 * For a UDP allocation with a bound channel, userspace (icerelay.dataplane.turn_offload)
 * installs two entries:
 *   c2p: ChannelData from the client (client -> server listening address, channel number)
 *        becomes a plain datagram relayed address -> peer: the 4-byte ChannelData header and
 *        any (zero) padding are removed;
 *   p2c: a datagram from the peer to the relayed address becomes ChannelData from the
 *        server's listening address to the client: the header is added.
 * Addresses, lengths and checksums are rewritten in place. Every entry carries a deadline
 * (CLOCK_MONOTONIC ns): the earliest of the channel's, the permission's and the allocation's
 * expiry as userspace last saw them, so the kernel never relays past what the engine allows;
 * at or after it the packet goes up to userspace, which decides (and refreshes the entry).
 * Anything this program does not fully understand (IP options, fragments, IPv6 extension
 * headers, malformed or oddly padded ChannelData, a datagram that would outgrow the MTU) is
 * left alone and passed on: userspace is the reference, the kernel only a shortcut.
 *
 * Only uapi headers are used (no vmlinux.h, no kernel headers): the program touches
 * struct __sk_buff and packet bytes, both stable ABI.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_ENTRIES 65536
/* The payload is moved by 4 bytes in chunks (see shift_down/shift_up); larger datagrams go
 * to userspace. 12 x 128 covers a 1500-byte MTU. */
#define CHUNK 128
#define MAX_CHUNKS 12
#define MAX_PAYLOAD (CHUNK * MAX_CHUNKS)
#define MAX_SLOTS 65536

/* Family tags in keys (not AF_*: what matters is that userspace writes the same). */
#define FAMILY_V4 4
#define FAMILY_V6 6

struct c2p_key {
	__u8 family;
	__u8 pad;
	__be16 channel;
	__be16 client_port;
	__be16 server_port;
	__u8 client_ip[16];
	__u8 server_ip[16];
};

struct c2p_value {
	__u8 relay_ip[16];
	__u8 peer_ip[16];
	__be16 relay_port;
	__be16 peer_port;
	__u32 slot;
	__u64 deadline_ns;
	__u32 ifindex; /* 0: deliver to this host's stack; else redirect out of it */
	__u32 pad;
};

struct p2c_key {
	__u8 family;
	__u8 pad;
	__be16 relay_port;
	__be16 peer_port;
	__u16 pad2;
	__u8 relay_ip[16];
	__u8 peer_ip[16];
};

struct p2c_value {
	__u8 client_ip[16];
	__u8 server_ip[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
	__u32 slot;
	__u32 ifindex;
	__u64 deadline_ns;
	__u32 mtu; /* largest datagram (IP) the client's path takes; 0: no check */
	__u32 pad2;
};

/* Per channel binding (slot chosen by userspace), both directions. */
struct channel_stats {
	__u64 packets_to_peer;
	__u64 bytes_to_peer;
	__u64 packets_to_client;
	__u64 bytes_to_client;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct c2p_key);
	__type(value, struct c2p_value);
} c2p SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct p2c_key);
	__type(value, struct p2c_value);
} p2c SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct channel_stats);
} stats SEC(".maps");

/* alive[0]: until when (CLOCK_MONOTONIC ns) the server that owns these maps vouches for
 * them. It renews this every second; if it dies without detaching, the program stops
 * relaying within seconds instead of rewriting traffic for ports that may be reused. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} alive SEC(".maps");

/* Where the parsed headers are (offsets from the start of the frame). */
struct frame {
	__u32 l3;
	__u32 l4;
	__u8 family;
};

static __always_inline __u16 fold(__s64 sum)
{
	__u64 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Ethernet + IPv4 (no options, not a fragment) or IPv6 (UDP right after the fixed header)
 * + UDP whose length matches the IP payload. Returns the UDP payload length, or -1. */
static __always_inline int parse(struct __sk_buff *skb, struct frame *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u32 l3_len;

	if ((void *)(eth + 1) > end)
		return -1;
	f->l3 = sizeof(*eth);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
			return -1;
		if (ip->frag_off & bpf_htons(0x3fff)) /* MF or an offset */
			return -1;
		f->family = FAMILY_V4;
		f->l4 = f->l3 + sizeof(*ip);
		l3_len = bpf_ntohs(ip->tot_len) - sizeof(*ip);
		udp = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return -1;
		f->family = FAMILY_V6;
		f->l4 = f->l3 + sizeof(*ip6);
		l3_len = bpf_ntohs(ip6->payload_len);
		udp = (void *)(ip6 + 1);
	} else {
		return -1;
	}
	if ((void *)(udp + 1) > end)
		return -1;
	if (bpf_ntohs(udp->len) != l3_len || l3_len < sizeof(*udp))
		return -1;
	if (skb->len < f->l4 + l3_len) /* truncated */
		return -1;
	return l3_len - sizeof(*udp);
}

static __always_inline void copy_ip(__u8 *to, const void *from, __u8 family)
{
	if (family == FAMILY_V4)
		__builtin_memcpy(to, from, 4);
	else
		__builtin_memcpy(to, from, 16);
}

/*
 * Rewrite the addresses, the ports, the lengths and the checksums of a datagram whose UDP
 * header now starts at f->l4 and whose UDP length is ulen. old_* describe the datagram as it
 * arrived; extra_old/extra_new are the ChannelData header word removed or added (0 if none).
 *
 * The UDP checksum is updated incrementally, in two parts: the pseudo-header (addresses and
 * length) with BPF_F_PSEUDO_HDR, and the rest (ports, UDP length, ChannelData header) without.
 * A datagram a local socket sent still carries only its pseudo-header sum (CHECKSUM_PARTIAL,
 * completed by whoever transmits it); the kernel then applies the first part only, which is
 * what such a datagram needs. An IPv4 datagram without checksum (0) keeps none.
 */
static __always_inline int rewrite(struct __sk_buff *skb, struct frame *f, const __u8 *src_ip,
				   const __u8 *dst_ip, __be16 sport, __be16 dport, __u32 ulen,
				   const __u8 *old_src, const __u8 *old_dst, __be32 old_ports,
				   __u32 old_ulen, __be16 old_check, __be32 extra_old, __be32 extra_new)
{
	void *data, *end;
	__be32 pseudo_old[9] = {}, pseudo_new[9] = {};
	__be32 rest_old[3], rest_new[3];
	struct udphdr *udp;
	__s64 diff;
	__u32 words;

	if (f->family == FAMILY_V4) {
		struct iphdr *ip;

		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end)
			return -1;
		__builtin_memcpy(&ip->saddr, src_ip, 4);
		__builtin_memcpy(&ip->daddr, dst_ip, 4);
		ip->tot_len = bpf_htons(ulen + sizeof(*ip));
		/* A new datagram from the server, as its own stack would send it, not a forwarded
		 * one: a fresh TTL (the DSCP and DF bits the sender chose are kept). */
		ip->ttl = 64;
		ip->check = 0;
		ip->check = fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		__builtin_memcpy(&pseudo_old[0], old_src, 4);
		__builtin_memcpy(&pseudo_old[1], old_dst, 4);
		__builtin_memcpy(&pseudo_new[0], src_ip, 4);
		__builtin_memcpy(&pseudo_new[1], dst_ip, 4);
		pseudo_old[2] = bpf_htonl(old_ulen);
		pseudo_new[2] = bpf_htonl(ulen);
		words = 3;
	} else {
		struct ipv6hdr *ip6;

		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end)
			return -1;
		__builtin_memcpy(&ip6->saddr, src_ip, 16);
		__builtin_memcpy(&ip6->daddr, dst_ip, 16);
		ip6->payload_len = bpf_htons(ulen);
		ip6->hop_limit = 64;
		__builtin_memcpy(&pseudo_old[0], old_src, 16);
		__builtin_memcpy(&pseudo_old[4], old_dst, 16);
		__builtin_memcpy(&pseudo_new[0], src_ip, 16);
		__builtin_memcpy(&pseudo_new[4], dst_ip, 16);
		pseudo_old[8] = bpf_htonl(old_ulen);
		pseudo_new[8] = bpf_htonl(ulen);
		words = 9;
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	udp = data + f->l4;
	if ((void *)(udp + 1) > end)
		return -1;
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(ulen);
	udp->check = old_check;
	rest_old[0] = old_ports;
	rest_new[0] = ((__be32)dport << 16) | sport; /* the same two words; only the sum matters */
	rest_old[1] = bpf_htonl(old_ulen);
	rest_new[1] = bpf_htonl(ulen);
	rest_old[2] = extra_old;
	rest_new[2] = extra_new;
	if (words == 3)
		diff = bpf_csum_diff(pseudo_old, 12, pseudo_new, 12, 0);
	else
		diff = bpf_csum_diff(pseudo_old, 36, pseudo_new, 36, 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, f->l4 + offsetof(struct udphdr, check), 0, (__u32)diff,
				BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0))
		return -1;
	diff = bpf_csum_diff(rest_old, sizeof(rest_old), rest_new, sizeof(rest_new), 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, f->l4 + offsetof(struct udphdr, check), 0, (__u32)diff,
				BPF_F_MARK_MANGLED_0))
		return -1;
	return 0;
}

/*
 * The ChannelData header is removed or inserted by moving the payload, not the headers:
 * bpf_skb_adjust_room() moves the IP header and leaves a locally sent datagram's
 * checksum offset (CHECKSUM_PARTIAL's csum_start) pointing 4 bytes off, and the receiver
 * then rejects it. With the headers in place the offset stays right, and only the tail
 * changes length (bpf_skb_change_tail, which also drops a device's full-packet checksum so
 * the kernel checks the UDP checksum we keep correct).
 */
static __always_inline int shift_down(struct __sk_buff *skb, __u32 start, __u32 len)
{
	__u8 buf[CHUNK];

	for (int i = 0; i < MAX_CHUNKS; i++) {
		__u32 done = i * CHUNK;
		__u32 n;

		if (done >= len)
			break;
		n = len - done;
		if (n > CHUNK)
			n = CHUNK;
		/* n is 1..CHUNK already; written so that the verifier sees it too */
		n = ((n - 1) & (CHUNK - 1)) + 1;
		if (bpf_skb_load_bytes(skb, start + 4 + done, buf, n))
			return -1;
		if (bpf_skb_store_bytes(skb, start + done, buf, n, 0))
			return -1;
	}
	return 0;
}

/* Move [start, start + len) up by 4 bytes (the room was added at the tail), last chunk
 * first so nothing is overwritten before it is read. */
static __always_inline int shift_up(struct __sk_buff *skb, __u32 start, __u32 len)
{
	__u8 buf[CHUNK];

	for (int i = 0; i < MAX_CHUNKS; i++) {
		__u32 done = i * CHUNK;
		__u32 n, from;

		if (done >= len)
			break;
		n = len - done;
		if (n > CHUNK)
			n = CHUNK;
		/* n is 1..CHUNK already; written so that the verifier sees it too */
		n = ((n - 1) & (CHUNK - 1)) + 1;
		from = start + len - done - n;
		if (bpf_skb_load_bytes(skb, from, buf, n))
			return -1;
		if (bpf_skb_store_bytes(skb, from + 4, buf, n, 0))
			return -1;
	}
	return 0;
}

static __always_inline int deliver(__u32 ifindex)
{
	if (ifindex == 0)
		return TC_ACT_OK; /* a local address: up this host's stack */
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

/* ChannelData from a client: strip the header, relayed address -> peer. */
static __always_inline int client_to_peer(struct __sk_buff *skb, struct frame *f, __u32 plen)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 old_src[16] = {}, old_dst[16] = {};
	struct c2p_value *value;
	struct c2p_key key = {};
	struct channel_stats *st;
	struct udphdr *udp;
	__u32 length, padding, slot;
	__be32 header, old_ports;
	__be16 old_check;
	__u8 *payload;

	udp = data + f->l4;
	payload = (void *)(udp + 1);
	if ((void *)(payload + 4) > end)
		return TC_ACT_UNSPEC;
	key.family = f->family;
	__builtin_memcpy(&key.channel, payload, 2);
	key.client_port = udp->source;
	key.server_port = udp->dest;
	if (f->family == FAMILY_V4) {
		struct iphdr *ip = data + f->l3;

		if ((void *)(ip + 1) > end)
			return TC_ACT_UNSPEC;
		copy_ip(key.client_ip, &ip->saddr, FAMILY_V4);
		copy_ip(key.server_ip, &ip->daddr, FAMILY_V4);
	} else {
		struct ipv6hdr *ip6 = data + f->l3;

		if ((void *)(ip6 + 1) > end)
			return TC_ACT_UNSPEC;
		copy_ip(key.client_ip, &ip6->saddr, FAMILY_V6);
		copy_ip(key.server_ip, &ip6->daddr, FAMILY_V6);
	}
	value = bpf_map_lookup_elem(&c2p, &key);
	if (!value || bpf_ktime_get_ns() >= value->deadline_ns)
		return TC_ACT_UNSPEC;
	length = ((__u32)payload[2] << 8) | payload[3];
	if (length + 4 > plen)
		return TC_ACT_UNSPEC; /* malformed: userspace counts it */
	padding = plen - 4 - length;
	if (padding > 3)
		return TC_ACT_UNSPEC;
	if (padding) {
		/* RFC 8656 §12.5 lets UDP ChannelData be padded; only zeros leave the checksum as
		 * it is when the padding is cut off. */
		__u32 tail = 0;

		if (bpf_skb_load_bytes(skb, f->l4 + 8 + 4 + length, &tail, padding))
			return TC_ACT_UNSPEC;
		if (tail)
			return TC_ACT_UNSPEC;
	}
	slot = value->slot;
	__builtin_memcpy(&header, payload, 4);
	__builtin_memcpy(&old_ports, udp, 4);
	old_check = udp->check;
	__builtin_memcpy(old_src, key.client_ip, 16);
	__builtin_memcpy(old_dst, key.server_ip, 16);
	/* The value may be deleted meanwhile (RCU keeps it readable): copy what is needed. */
	{
		__u8 relay_ip[16], peer_ip[16];
		__be16 relay_port = value->relay_port, peer_port = value->peer_port;
		__u32 ifindex = value->ifindex;

		__builtin_memcpy(relay_ip, value->relay_ip, 16);
		__builtin_memcpy(peer_ip, value->peer_ip, 16);
		if (length > MAX_PAYLOAD)
			return TC_ACT_UNSPEC;
		if (shift_down(skb, f->l4 + sizeof(struct udphdr), length))
			return TC_ACT_SHOT; /* the packet may already be changed */
		if (bpf_skb_change_tail(skb, skb->len - 4 - padding, 0))
			return TC_ACT_SHOT;
		if (rewrite(skb, f, relay_ip, peer_ip, relay_port, peer_port, 8 + length, old_src,
			    old_dst, old_ports, 8 + plen, old_check, header, 0))
			return TC_ACT_SHOT;
		st = bpf_map_lookup_elem(&stats, &slot);
		if (st) {
			__sync_fetch_and_add(&st->packets_to_peer, 1);
			__sync_fetch_and_add(&st->bytes_to_peer, length);
		}
		return deliver(ifindex);
	}
}

/* A datagram from a peer to a relayed address: add the header, listening address -> client. */
static __always_inline int peer_to_client(struct __sk_buff *skb, struct frame *f, __u32 plen)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 old_src[16] = {}, old_dst[16] = {};
	struct p2c_value *value;
	struct p2c_key key = {};
	struct channel_stats *st;
	struct udphdr *udp;
	__be32 header, old_ports;
	__be16 old_check;
	__u32 slot;

	udp = data + f->l4;
	if ((void *)(udp + 1) > end)
		return TC_ACT_UNSPEC;
	key.family = f->family;
	key.peer_port = udp->source;
	key.relay_port = udp->dest;
	if (f->family == FAMILY_V4) {
		struct iphdr *ip = data + f->l3;

		if ((void *)(ip + 1) > end)
			return TC_ACT_UNSPEC;
		copy_ip(key.peer_ip, &ip->saddr, FAMILY_V4);
		copy_ip(key.relay_ip, &ip->daddr, FAMILY_V4);
	} else {
		struct ipv6hdr *ip6 = data + f->l3;

		if ((void *)(ip6 + 1) > end)
			return TC_ACT_UNSPEC;
		copy_ip(key.peer_ip, &ip6->saddr, FAMILY_V6);
		copy_ip(key.relay_ip, &ip6->daddr, FAMILY_V6);
	}
	value = bpf_map_lookup_elem(&p2c, &key);
	if (!value || bpf_ktime_get_ns() >= value->deadline_ns)
		return TC_ACT_UNSPEC;
	if (plen > 0xffff - 4)
		return TC_ACT_UNSPEC;
	if (value->mtu && f->l4 - f->l3 + 8 + 4 + plen > value->mtu)
		return TC_ACT_UNSPEC; /* would not fit: userspace sends it (and the kernel fragments) */
	slot = value->slot;
	header = bpf_htonl(((__u32)bpf_ntohs(value->channel) << 16) | plen);
	__builtin_memcpy(&old_ports, udp, 4);
	old_check = udp->check;
	__builtin_memcpy(old_src, key.peer_ip, 16);
	__builtin_memcpy(old_dst, key.relay_ip, 16);
	{
		__u8 client_ip[16], server_ip[16];
		__be16 client_port = value->client_port, server_port = value->server_port;
		__u32 ifindex = value->ifindex;
		__be32 *cd;

		__builtin_memcpy(client_ip, value->client_ip, 16);
		__builtin_memcpy(server_ip, value->server_ip, 16);
		if (plen > MAX_PAYLOAD)
			return TC_ACT_UNSPEC;
		if (bpf_skb_change_tail(skb, skb->len + 4, 0))
			return TC_ACT_UNSPEC; /* nothing changed yet */
		if (shift_up(skb, f->l4 + sizeof(struct udphdr), plen))
			return TC_ACT_SHOT;
		if (rewrite(skb, f, server_ip, client_ip, server_port, client_port, 8 + 4 + plen,
			    old_src, old_dst, old_ports, 8 + plen, old_check, 0, header))
			return TC_ACT_SHOT;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		cd = data + f->l4 + sizeof(struct udphdr);
		if ((void *)(cd + 1) > end)
			return TC_ACT_SHOT;
		*cd = header;
		st = bpf_map_lookup_elem(&stats, &slot);
		if (st) {
			__sync_fetch_and_add(&st->packets_to_client, 1);
			__sync_fetch_and_add(&st->bytes_to_client, plen);
		}
		return deliver(ifindex);
	}
}

SEC("tc")
int turn_offload(struct __sk_buff *skb)
{
	struct frame f = {};
	void *data, *end;
	__u32 zero = 0;
	__u64 *until;
	__u8 *payload;
	int plen;

	until = bpf_map_lookup_elem(&alive, &zero);
	if (!until || bpf_ktime_get_ns() >= *until)
		return TC_ACT_UNSPEC;
	/* An aggregate of several datagrams (GRO/GSO) is not one ChannelData message. */
	if (skb->gso_segs > 1)
		return TC_ACT_UNSPEC;
	plen = parse(skb, &f);
	if (plen < 0)
		return TC_ACT_UNSPEC;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	payload = data + f.l4 + sizeof(struct udphdr);
	if ((void *)(payload + 1) <= end && plen >= 4 && payload[0] >= 0x40 && payload[0] <= 0x7f) {
		int verdict = client_to_peer(skb, &f, plen);

		if (verdict != TC_ACT_UNSPEC)
			return verdict;
	}
	return peer_to_client(skb, &f, plen);
}

char LICENSE[] SEC("license") = "GPL";
