//! The address a webhook request came from, for rate-limiting failed
//! authentication per client.
//!
//! By default it is the TCP peer. Behind a reverse proxy every request comes
//! from the proxy, so an operator may name a header the proxy sets, such as
//! `X-Forwarded-For`. Any client can send that header too, so it is trusted
//! only when the operator opts in, and only its last entry is read: a proxy
//! appends the address it saw after whatever the client sent.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};

/// Source of a request's client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClientAddressSource {
    /// The TCP peer of the connection.
    #[default]
    Peer,
    /// The last address in this header, falling back to the TCP peer when
    /// the header is missing or its last entry is not an address.
    Header(HeaderName),
}

impl ClientAddressSource {
    /// Parses the `--client-address-header` value: a header name, which
    /// HTTP compares case-insensitively.
    pub fn from_header_name(name: &str) -> Result<Self, String> {
        let name = name.trim();
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map(Self::Header)
            .map_err(|_| format!("--client-address-header: {name:?} is not a valid HTTP header name"))
    }

    /// Returns the client address of a request that arrived from `peer`
    /// with `headers`.
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let from_header = match self {
            Self::Peer => None,
            Self::Header(name) => last_forwarded_address(headers, name),
        };
        from_header.unwrap_or_else(|| peer.ip()).to_canonical()
    }
}

/// Reads the last entry of every `name` header line taken together, the one
/// the nearest proxy appended. Entries are comma-separated; each is an IP
/// address, optionally with a port (`192.0.2.1:443`, `[2001:db8::1]:443`),
/// or an RFC 7239 `Forwarded` element whose `for=` parameter is read.
fn last_forwarded_address(headers: &HeaderMap, name: &HeaderName) -> Option<IpAddr> {
    let last_line = headers.get_all(name).iter().next_back()?;
    let text = last_line.to_str().ok()?;
    let entry = text.rsplit(',').next()?.trim();
    parse_entry(entry)
}

fn parse_entry(entry: &str) -> Option<IpAddr> {
    // An RFC 7239 element such as `for=192.0.2.60;proto=https`.
    let entry = if entry.contains('=') {
        entry.split(';').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.trim().eq_ignore_ascii_case("for").then_some(value.trim())
        })?
    } else {
        entry
    };
    let entry = entry.trim_matches('"');

    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(address) = entry.parse::<SocketAddr>() {
        return Some(address.ip());
    }
    // A bracketed IPv6 address without a port.
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// Returns the key under which failures from `address` are counted: the
/// address itself for IPv4, and its /64 network for IPv6, because one
/// subscriber usually is assigned a whole /64 and could otherwise rotate through
/// 2^64 addresses.
pub fn limiter_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn peer() -> SocketAddr {
        "10.0.0.1:5000".parse().unwrap()
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn peer_source_ignores_headers() {
        let source = ClientAddressSource::Peer;
        let address = source.client_address(peer(), &headers(&[("x-forwarded-for", "192.0.2.9")]));
        assert_eq!(address, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn header_source_reads_last_entry() {
        let source = ClientAddressSource::from_header_name("X-Forwarded-For").unwrap();
        let cases = [
            (vec![("x-forwarded-for", "192.0.2.1")], "192.0.2.1"),
            (vec![("x-forwarded-for", "6.6.6.6, 192.0.2.1")], "192.0.2.1"),
            (
                vec![("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "192.0.2.2")],
                "192.0.2.2",
            ),
            (vec![("x-forwarded-for", "192.0.2.3:8443")], "192.0.2.3"),
            (vec![("x-forwarded-for", "[2001:db8::7]:8443")], "2001:db8::7"),
            (vec![("x-forwarded-for", "[2001:db8::8]")], "2001:db8::8"),
            (vec![("x-forwarded-for", "::ffff:192.0.2.4")], "192.0.2.4"),
            (vec![("x-forwarded-for", "192.0.2.1, not-an-address")], "10.0.0.1"),
            (vec![("x-real-ip", "192.0.2.5")], "10.0.0.1"),
            (vec![], "10.0.0.1"),
        ];
        for (lines, expected) in cases {
            let address = source.client_address(peer(), &headers(&lines));
            assert_eq!(address, expected.parse::<IpAddr>().unwrap(), "{lines:?}");
        }
    }

    #[test]
    fn forwarded_elements_read_for_parameter() {
        let source = ClientAddressSource::from_header_name("Forwarded").unwrap();
        let cases = [
            ("for=192.0.2.60;proto=https", "192.0.2.60"),
            ("for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            ("proto=https;by=203.0.113.43", "10.0.0.1"),
        ];
        for (value, expected) in cases {
            let address = source.client_address(peer(), &headers(&[("forwarded", value)]));
            assert_eq!(address, expected.parse::<IpAddr>().unwrap(), "{value}");
        }
    }

    #[test]
    fn invalid_header_name_is_rejected() {
        let error = ClientAddressSource::from_header_name("X Forwarded").unwrap_err();
        assert!(error.contains("--client-address-header"), "{error}");
    }

    #[test]
    fn ipv6_keys_cover_a_64_network() {
        let first = limiter_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let second = limiter_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let other = limiter_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(first, second);
        assert_eq!(first, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(first, other);
        assert_eq!(
            limiter_key("192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
