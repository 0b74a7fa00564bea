//! IPv4 range rules for subnets and connectors.
//!
//! Kept apart from the resource types so the arithmetic can be property-tested alone.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::Invalid;

/// RFC 1918 private space and RFC 6598 shared address space: the ranges Cloud Run's
/// `private-ranges-only` egress setting sends through a VPC, and the only ranges runnel
/// accepts for subnets and connectors.
pub const PRIVATE_RANGES: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
];

fn private_nets() -> impl Iterator<Item = Ipv4Net> {
    PRIVATE_RANGES.iter().filter_map(|(a, p)| Ipv4Net::new(*a, *p).ok())
}

/// Whether an address lies in private space.
pub fn is_private(addr: Ipv4Addr) -> bool {
    private_nets().any(|n| n.contains(&addr))
}

/// Whether a whole range lies in private space.
pub fn is_private_range(net: &Ipv4Net) -> bool {
    private_nets().any(|n| n.contains(net))
}

/// Whether two ranges share at least one address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses `10.8.0.0/28`: an IPv4 range whose address is the first of the range.
pub fn parse_cidr(field: &str, value: &str) -> Result<Ipv4Net, Invalid> {
    let net: Ipv4Net = value.parse().map_err(|_| {
        Invalid::new(
            field,
            format!(
                "`{value}` is not an IPv4 range; write it as an address and a prefix length, such as `10.8.0.0/28`"
            ),
        )
    })?;
    if net.network() != net.addr() {
        return Err(Invalid::new(
            field,
            format!("`{value}` is not the start of its range; use `{}/{}`", net.network(), net.prefix_len()),
        ));
    }
    Ok(net)
}

/// A subnet range: private space, from /8 to /29 as on Compute Engine.
pub fn subnet_range(value: &str) -> Result<Ipv4Net, Invalid> {
    let net = parse_cidr("ipCidrRange", value)?;
    if !(8..=29).contains(&net.prefix_len()) {
        return Err(Invalid::new(
            "ipCidrRange",
            format!("`{value}` has prefix length /{}; a subnet's range is between /8 and /29", net.prefix_len()),
        ));
    }
    if !is_private_range(&net) {
        return Err(Invalid::new(
            "ipCidrRange",
            format!(
                "`{value}` is not inside private space; use a range in 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10"
            ),
        ));
    }
    Ok(net)
}

/// A Serverless VPC Access connector range: exactly a /28 inside private space.
pub fn connector_range(value: &str) -> Result<Ipv4Net, Invalid> {
    let net = parse_cidr("ipCidrRange", value)?;
    if net.prefix_len() != 28 {
        return Err(Invalid::new(
            "ipCidrRange",
            format!("`{value}` is a /{}; a connector's range must be a /28, such as `10.8.0.0/28`", net.prefix_len()),
        ));
    }
    if !is_private_range(&net) {
        return Err(Invalid::new(
            "ipCidrRange",
            format!(
                "`{value}` is not inside private space; use a /28 in 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10"
            ),
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap_or_else(|_| Ipv4Net::default())
    }

    #[test]
    fn connector_ranges() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.8.0.0/28", None),
            ("192.168.5.16/28", None),
            ("100.64.0.0/28", None),
            ("10.8.0.1/28", Some("ipCidrRange: `10.8.0.1/28` is not the start of its range; use `10.8.0.0/28`")),
            (
                "10.8.0.0/24",
                Some("ipCidrRange: `10.8.0.0/24` is a /24; a connector's range must be a /28, such as `10.8.0.0/28`"),
            ),
            (
                "8.8.8.0/28",
                Some(
                    "ipCidrRange: `8.8.8.0/28` is not inside private space; use a /28 in 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10",
                ),
            ),
            (
                "10.8.0.0",
                Some(
                    "ipCidrRange: `10.8.0.0` is not an IPv4 range; write it as an address and a prefix length, such as `10.8.0.0/28`",
                ),
            ),
            (
                "fd00::/28",
                Some(
                    "ipCidrRange: `fd00::/28` is not an IPv4 range; write it as an address and a prefix length, such as `10.8.0.0/28`",
                ),
            ),
        ];
        for (value, want) in cases {
            let got = connector_range(value).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), *want, "{value}");
        }
    }

    #[test]
    fn subnet_ranges() {
        assert!(subnet_range("10.0.0.0/24").is_ok());
        assert!(subnet_range("10.0.0.0/29").is_ok());
        let err = subnet_range("10.0.0.0/30").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("between /8 and /29"), "{err}");
        let err = subnet_range("11.0.0.0/24").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("not inside private space"), "{err}");
    }

    #[test]
    fn overlap_examples() {
        assert!(overlaps(&net("10.0.0.0/24"), &net("10.0.0.16/28")));
        assert!(overlaps(&net("10.0.0.16/28"), &net("10.0.0.0/24")));
        assert!(!overlaps(&net("10.0.0.0/28"), &net("10.0.0.16/28")));
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.255.255.240/28")));
    }

    proptest! {
        /// Overlap is symmetric and agrees with a brute-force check of shared addresses.
        #[test]
        fn overlap_matches_address_sets(a in any::<u32>(), pa in 20u8..=32, b in any::<u32>(), pb in 20u8..=32) {
            let na = Ipv4Net::new(Ipv4Addr::from(a), pa).map(|n| n.trunc());
            let nb = Ipv4Net::new(Ipv4Addr::from(b), pb).map(|n| n.trunc());
            if let (Ok(na), Ok(nb)) = (na, nb) {
                let (lo_a, hi_a) = (u32::from(na.network()), u32::from(na.broadcast()));
                let (lo_b, hi_b) = (u32::from(nb.network()), u32::from(nb.broadcast()));
                let shared = lo_a <= hi_b && lo_b <= hi_a;
                prop_assert_eq!(overlaps(&na, &nb), shared);
                prop_assert_eq!(overlaps(&na, &nb), overlaps(&nb, &na));
            }
        }

        /// Every accepted connector range is a /28 wholly inside private space.
        #[test]
        fn accepted_connector_ranges_are_private_28s(a in any::<u32>(), p in 0u8..=32) {
            let text = format!("{}/{}", Ipv4Addr::from(a), p);
            if let Ok(n) = connector_range(&text) {
                prop_assert_eq!(n.prefix_len(), 28);
                prop_assert!(is_private(n.network()) && is_private(n.broadcast()));
            }
        }
    }
}
