//! Which IP addresses a download may reach. Shared by the control plane (which refuses
//! literal forbidden addresses at submission) and the agent (which checks every resolved
//! address on every redirect hop): only globally routable unicast addresses pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when `ip` is globally routable unicast: not loopback, private, link-local, CGNAT,
/// 0.0.0.0/8, multicast, reserved, documentation, benchmarking, unique-local, and not an
/// IPv4-mapped, IPv4-compatible, NAT64 or 6to4 form of a forbidden IPv4 address.
pub fn is_globally_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_ok(v4),
        IpAddr::V6(v6) => v6_ok(v6),
    }
}

fn v4_ok(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // 0.0.0.0/8 "this network"
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)              // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (b == 18 || b == 19))  // benchmarking
        || (a == 198 && b == 51 && c == 100)   // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)    // TEST-NET-3
        || a >= 224) // multicast, reserved, broadcast
}

fn v6_ok(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d
    if s[0..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        return v4_ok(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
    if s[0] == 0x64 && s[1] == 0xff9b {
        return v4_ok(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    // 6to4 2002:AABB:CCDD::/48 embeds an IPv4 address
    if s[0] == 0x2002 {
        return v4_ok(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    !((s[0] & 0xfe00) == 0xfc00        // unique-local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80   // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0   // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00   // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only 100::/64
}

/// Host names that always mean "this machine" or a metadata service.
pub fn is_forbidden_host_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "metadata"
        || h == "metadata.google.internal"
        || h.ends_with(".internal") && h.starts_with("metadata")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_and_allowed_addresses() {
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "10.1.2.3",
            "100.64.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = bad.parse().expect("test literal");
            assert!(!is_globally_routable(ip), "{bad} passed");
        }
        for good in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            let ip: IpAddr = good.parse().expect("test literal");
            assert!(is_globally_routable(ip), "{good} refused");
        }
    }

    #[test]
    fn host_names() {
        assert!(is_forbidden_host_name("LOCALHOST."));
        assert!(is_forbidden_host_name("a.localhost"));
        assert!(is_forbidden_host_name("metadata.google.internal"));
        assert!(!is_forbidden_host_name("example.com"));
    }
}
