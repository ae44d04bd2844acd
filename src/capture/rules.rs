//! `egret capture`'s NAT rules as data: what istio-init (`istio-iptables`) installs for the
//! outbound side of a sidecar, rendered as the exact input of `iptables-restore --noflush` (per
//! address family) or of `nft -f -`. Pure: no I/O here; `apply.rs` runs the commands.
//!
//! The chain, in order (the first match wins), for TCP leaving the pod's network namespace:
//! 1. from egret's own uid or gid: untouched (egret's upstream connections are never looped
//!    back into it);
//! 2. with `--dns-capture`: TCP to port 53 goes to the DNS proxy;
//! 3. through `lo` (127.0.0.0/8, the pod's own addresses, egret's own ports): untouched, so an
//!    app that names egret as its proxy still reaches it directly;
//! 4. `--exclude-outbound-ports`: untouched; 5. `--include-outbound-ports`: redirected whatever
//!    the destination; 6. `--exclude-outbound-cidrs`: untouched; 7. `--include-outbound-cidrs`
//!    (`*`: everything else): redirected to the outbound listener.
//!
//! UDP to port 53 (with `--dns-capture`), except from egret's uid/gid, goes to the DNS proxy:
//! only to the resolv.conf nameservers (Istio's default), or to any server with
//! `--dns-capture-all`.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Chains egret owns in the `nat` table (iptables) and its nft table: re-applying replaces
/// their contents, removing deletes them; nothing else in the table is touched.
pub const OUTPUT_CHAIN: &str = "EGRET_OUTPUT";
pub const REDIRECT_CHAIN: &str = "EGRET_REDIRECT";
pub const DNS_CHAIN: &str = "EGRET_DNS";
pub const NFT_TABLE: &str = "egret";

/// The jumps from the built-in `OUTPUT` chain into egret's chains, as `iptables-save` prints
/// them (so their presence can be checked in its output).
pub const TCP_JUMP: &str = "-A OUTPUT -p tcp -j EGRET_OUTPUT";
pub const UDP_JUMP: &str = "-A OUTPUT -p udp -j EGRET_DNS";

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or an address alone (a host).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"))?;
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => full,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= full => n,
                _ => return Err(format!("`{s}`: the prefix length must be 0..={full}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which destinations are redirected: all (`*`, the default) or the listed networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Include {
    All,
    Only(Vec<Cidr>),
}

impl Include {
    /// `*`, or a comma-separated list of CIDRs (empty: none, as Istio's `""`).
    pub fn parse(s: &str) -> Result<Include, String> {
        if s.trim() == "*" {
            return Ok(Include::All);
        }
        Ok(Include::Only(parse_cidrs(s)?))
    }
}

/// A comma-separated list of CIDRs (blank items ignored).
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(Cidr::parse)
        .collect()
}

/// A comma-separated list of ports (blank items ignored).
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{p}` is not a port (1..=65535)")),
        })
        .collect()
}

/// What to capture: `egret capture`'s flags, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub proxy_uid: Vec<u32>,
    pub proxy_gid: Vec<u32>,
    pub outbound_port: u16,
    pub include_cidrs: Include,
    pub exclude_cidrs: Vec<Cidr>,
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    /// `Some` with `--dns-capture`.
    pub dns: Option<DnsCapture>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCapture {
    /// The DNS proxy's port (egret's `--dns-listen` on 127.0.0.1).
    pub port: u16,
    /// UDP to port 53 of these servers is captured; empty: of any server.
    pub servers: Vec<IpAddr>,
}

/// The address families rules are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    fn has(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// The rule lines (iptables syntax without the `-A CHAIN` head) for one family: (chain, rule).
pub fn iptables_rules(spec: &Spec, fam: Family) -> Vec<(&'static str, String)> {
    let mut r: Vec<(&'static str, String)> = Vec::new();
    let out = OUTPUT_CHAIN;
    for u in &spec.proxy_uid {
        r.push((out, format!("-m owner --uid-owner {u} -j RETURN")));
    }
    for g in &spec.proxy_gid {
        r.push((out, format!("-m owner --gid-owner {g} -j RETURN")));
    }
    if let Some(dns) = &spec.dns {
        r.push((
            out,
            format!("-p tcp --dport 53 -j REDIRECT --to-ports {}", dns.port),
        ));
    }
    r.push((out, "-o lo -j RETURN".into()));
    r.push((out, format!("-d {} -j RETURN", fam.loopback())));
    for p in &spec.exclude_ports {
        r.push((out, format!("-p tcp --dport {p} -j RETURN")));
    }
    for p in &spec.include_ports {
        r.push((out, format!("-p tcp --dport {p} -j {REDIRECT_CHAIN}")));
    }
    for c in spec.exclude_cidrs.iter().filter(|c| fam.has(c.addr)) {
        r.push((out, format!("-d {c} -j RETURN")));
    }
    match &spec.include_cidrs {
        Include::All => r.push((out, format!("-j {REDIRECT_CHAIN}"))),
        Include::Only(list) => {
            for c in list.iter().filter(|c| fam.has(c.addr)) {
                r.push((out, format!("-d {c} -j {REDIRECT_CHAIN}")));
            }
        }
    }
    r.push((
        REDIRECT_CHAIN,
        format!("-p tcp -j REDIRECT --to-ports {}", spec.outbound_port),
    ));
    if let Some(dns) = &spec.dns {
        for u in &spec.proxy_uid {
            r.push((DNS_CHAIN, format!("-m owner --uid-owner {u} -j RETURN")));
        }
        for g in &spec.proxy_gid {
            r.push((DNS_CHAIN, format!("-m owner --gid-owner {g} -j RETURN")));
        }
        let servers: Vec<&IpAddr> = dns.servers.iter().filter(|ip| fam.has(**ip)).collect();
        if dns.servers.is_empty() {
            r.push((
                DNS_CHAIN,
                format!("-p udp --dport 53 -j REDIRECT --to-ports {}", dns.port),
            ));
        }
        for ip in servers {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            r.push((
                DNS_CHAIN,
                format!(
                    "-d {ip}/{len} -p udp --dport 53 -j REDIRECT --to-ports {}",
                    dns.port
                ),
            ));
        }
    }
    r
}

/// What is in the `nat` table now, as far as egret's rules go (from `iptables-save -t nat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present {
    pub tcp_jump: bool,
    pub udp_jump: bool,
    pub chains: bool,
}

impl Present {
    /// Reads `iptables-save -t nat` output.
    pub fn from_save(save: &str) -> Present {
        let mut p = Present::default();
        for line in save.lines().map(str::trim) {
            p.tcp_jump |= line == TCP_JUMP;
            p.udp_jump |= line == UDP_JUMP;
            p.chains |= [OUTPUT_CHAIN, REDIRECT_CHAIN, DNS_CHAIN]
                .iter()
                .any(|c| line.starts_with(&format!(":{c} ")));
        }
        p
    }
}

/// The `iptables-restore --noflush` input that installs `spec` for `fam`, given what is there
/// now: egret's chains are declared (which creates or empties them), refilled, and the jumps
/// from `OUTPUT` added only where missing, in one transaction. Applying it twice gives the
/// same table; without `--dns-capture` a DNS chain left by an earlier run is removed.
pub fn iptables_apply(spec: &Spec, fam: Family, now: Present) -> String {
    let mut s = String::from("*nat\n");
    for c in [OUTPUT_CHAIN, REDIRECT_CHAIN, DNS_CHAIN] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for (chain, rule) in iptables_rules(spec, fam) {
        let _ = writeln!(s, "-A {chain} {rule}");
    }
    if !now.tcp_jump {
        let _ = writeln!(s, "{TCP_JUMP}");
    }
    match (&spec.dns, now.udp_jump) {
        (Some(_), false) => {
            let _ = writeln!(s, "{UDP_JUMP}");
        }
        (None, true) => {
            let _ = writeln!(s, "{}", UDP_JUMP.replacen("-A", "-D", 1));
            let _ = writeln!(s, "-X {DNS_CHAIN}");
        }
        (None, false) => {
            let _ = writeln!(s, "-X {DNS_CHAIN}");
        }
        (Some(_), true) => {}
    }
    s.push_str("COMMIT\n");
    s
}

/// The `iptables-restore --noflush` input that removes everything egret installed (`None`:
/// nothing to remove).
pub fn iptables_remove(now: Present) -> Option<String> {
    if !(now.tcp_jump || now.udp_jump || now.chains) {
        return None;
    }
    let mut s = String::from("*nat\n");
    for c in [OUTPUT_CHAIN, REDIRECT_CHAIN, DNS_CHAIN] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    if now.tcp_jump {
        let _ = writeln!(s, "{}", TCP_JUMP.replacen("-A", "-D", 1));
    }
    if now.udp_jump {
        let _ = writeln!(s, "{}", UDP_JUMP.replacen("-A", "-D", 1));
    }
    for c in [OUTPUT_CHAIN, REDIRECT_CHAIN, DNS_CHAIN] {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// The `nft -f -` input that installs `spec` (both families, table `inet egret`): the table is
/// created if absent, then deleted and redefined in the same transaction, so re-applying is
/// idempotent.
pub fn nft_apply(spec: &Spec) -> String {
    let mut s = nft_remove();
    let _ = writeln!(s, "table inet {NFT_TABLE} {{");
    s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n");
    let mut rule = |r: String| {
        let _ = writeln!(s, "    {r}");
    };
    for u in &spec.proxy_uid {
        rule(format!("meta skuid {u} return"));
    }
    for g in &spec.proxy_gid {
        rule(format!("meta skgid {g} return"));
    }
    if let Some(dns) = &spec.dns {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
            dns.servers.iter().copied().partition(|ip| ip.is_ipv4());
        if dns.servers.is_empty() {
            rule(format!("udp dport 53 redirect to :{}", dns.port));
        }
        if !v4.is_empty() {
            rule(format!(
                "ip daddr {} udp dport 53 redirect to :{}",
                nft_set(&v4),
                dns.port
            ));
        }
        if !v6.is_empty() {
            rule(format!(
                "ip6 daddr {} udp dport 53 redirect to :{}",
                nft_set(&v6),
                dns.port
            ));
        }
        rule(format!("tcp dport 53 redirect to :{}", dns.port));
    }
    rule("meta l4proto != tcp return".into());
    rule("oifname \"lo\" return".into());
    rule("ip daddr 127.0.0.1 return".into());
    rule("ip6 daddr ::1 return".into());
    if !spec.exclude_ports.is_empty() {
        rule(format!("tcp dport {} return", nft_set(&spec.exclude_ports)));
    }
    let port = spec.outbound_port;
    if !spec.include_ports.is_empty() {
        rule(format!(
            "tcp dport {} redirect to :{port}",
            nft_set(&spec.include_ports)
        ));
    }
    let (ex4, ex6): (Vec<&Cidr>, Vec<&Cidr>) = spec.exclude_cidrs.iter().partition(|c| c.is_v4());
    if !ex4.is_empty() {
        rule(format!("ip daddr {} return", nft_set(&ex4)));
    }
    if !ex6.is_empty() {
        rule(format!("ip6 daddr {} return", nft_set(&ex6)));
    }
    match &spec.include_cidrs {
        Include::All => rule(format!("meta l4proto tcp redirect to :{port}")),
        Include::Only(list) => {
            let (in4, in6): (Vec<&Cidr>, Vec<&Cidr>) = list.iter().partition(|c| c.is_v4());
            if !in4.is_empty() {
                rule(format!(
                    "meta l4proto tcp ip daddr {} redirect to :{port}",
                    nft_set(&in4)
                ));
            }
            if !in6.is_empty() {
                rule(format!(
                    "meta l4proto tcp ip6 daddr {} redirect to :{port}",
                    nft_set(&in6)
                ));
            }
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// The `nft -f -` input that removes egret's table (a no-op when it is absent).
pub fn nft_remove() -> String {
    format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
}

fn nft_set<T: std::fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", inner.join(", "))
}

/// The nameservers of a resolv.conf.
pub fn resolv_conf_servers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 nameserver (fe80::1%eth0) is matched without its zone.
            w.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            proxy_uid: vec![1337],
            proxy_gid: vec![1337],
            outbound_port: 15001,
            include_cidrs: Include::All,
            exclude_cidrs: vec![],
            include_ports: vec![],
            exclude_ports: vec![],
            dns: None,
        }
    }

    #[test]
    fn the_default_is_istio_init_outbound_rules() {
        let got = iptables_apply(&spec(), Family::V4, Present::default());
        assert_eq!(
            got,
            "*nat\n:EGRET_OUTPUT - [0:0]\n:EGRET_REDIRECT - [0:0]\n:EGRET_DNS - [0:0]\n\
             -A EGRET_OUTPUT -m owner --uid-owner 1337 -j RETURN\n\
             -A EGRET_OUTPUT -m owner --gid-owner 1337 -j RETURN\n\
             -A EGRET_OUTPUT -o lo -j RETURN\n\
             -A EGRET_OUTPUT -d 127.0.0.1/32 -j RETURN\n\
             -A EGRET_OUTPUT -j EGRET_REDIRECT\n\
             -A EGRET_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n\
             -A OUTPUT -p tcp -j EGRET_OUTPUT\n-X EGRET_DNS\nCOMMIT\n"
        );
    }

    #[test]
    fn reapplying_adds_no_second_jump_and_drops_a_stale_dns_chain() {
        let now = Present {
            tcp_jump: true,
            udp_jump: true,
            chains: true,
        };
        let got = iptables_apply(&spec(), Family::V4, now);
        assert!(!got.contains("-A OUTPUT"), "{got}");
        assert!(
            got.contains("-D OUTPUT -p udp -j EGRET_DNS\n-X EGRET_DNS\n"),
            "{got}"
        );
    }

    #[test]
    fn excludes_and_includes_in_istio_order_per_family() {
        let mut s = spec();
        s.include_cidrs = Include::parse("10.0.0.0/8,fd00::/8").expect("cidrs");
        s.exclude_cidrs = parse_cidrs("10.1.0.0/16, 192.168.0.1").expect("cidrs");
        s.exclude_ports = parse_ports("22").expect("ports");
        s.include_ports = parse_ports("9092").expect("ports");
        let v4: Vec<String> = iptables_rules(&s, Family::V4)
            .into_iter()
            .map(|(c, r)| format!("{c} {r}"))
            .collect();
        let at = |needle: &str| {
            v4.iter()
                .position(|l| l == needle)
                .unwrap_or_else(|| panic!("{needle} not in {v4:#?}"))
        };
        assert!(
            at("EGRET_OUTPUT -p tcp --dport 22 -j RETURN")
                < at("EGRET_OUTPUT -p tcp --dport 9092 -j EGRET_REDIRECT")
        );
        assert!(
            at("EGRET_OUTPUT -d 10.1.0.0/16 -j RETURN")
                < at("EGRET_OUTPUT -d 10.0.0.0/8 -j EGRET_REDIRECT")
        );
        assert!(
            at("EGRET_OUTPUT -d 192.168.0.1/32 -j RETURN") > at("EGRET_OUTPUT -o lo -j RETURN")
        );
        assert!(!v4.iter().any(|l| l.contains("fd00")), "{v4:#?}");
        assert!(!v4.iter().any(|l| l == "EGRET_OUTPUT -j EGRET_REDIRECT"));
        let v6 = iptables_rules(&s, Family::V6);
        assert!(v6.iter().any(|(_, r)| r == "-d fd00::/8 -j EGRET_REDIRECT"));
        assert!(v6.iter().any(|(_, r)| r == "-d ::1/128 -j RETURN"));
    }

    #[test]
    fn dns_capture_goes_to_the_nameservers_and_skips_the_proxy() {
        let mut s = spec();
        s.dns = Some(DnsCapture {
            port: 15053,
            servers: resolv_conf_servers(
                "search x\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\n",
            ),
        });
        let got = iptables_apply(&s, Family::V4, Present::default());
        assert!(
            got.contains("-A EGRET_DNS -m owner --uid-owner 1337 -j RETURN\n"),
            "{got}"
        );
        assert!(
            got.contains(
                "-A EGRET_DNS -d 10.96.0.10/32 -p udp --dport 53 -j REDIRECT --to-ports 15053\n"
            ),
            "{got}"
        );
        assert!(
            got.contains("-A EGRET_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053\n"),
            "{got}"
        );
        assert!(got.contains("-A OUTPUT -p udp -j EGRET_DNS\n"), "{got}");
        assert!(!got.contains("-X"), "{got}");
        let v6 = iptables_apply(&s, Family::V6, Present::default());
        assert!(v6.contains("-d fe80::1/128 -p udp"), "{v6}");
        s.dns = Some(DnsCapture {
            port: 15053,
            servers: vec![],
        });
        let all = iptables_apply(&s, Family::V4, Present::default());
        assert!(
            all.contains("-A EGRET_DNS -p udp --dport 53 -j REDIRECT --to-ports 15053\n"),
            "{all}"
        );
    }

    #[test]
    fn removal_only_when_something_is_there() {
        assert_eq!(iptables_remove(Present::default()), None);
        let save = "*nat\n:OUTPUT ACCEPT [0:0]\n:EGRET_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j EGRET_OUTPUT\nCOMMIT\n";
        let now = Present::from_save(save);
        assert_eq!(
            now,
            Present {
                tcp_jump: true,
                udp_jump: false,
                chains: true
            }
        );
        let got = iptables_remove(now).expect("something to remove");
        assert!(got.contains("-D OUTPUT -p tcp -j EGRET_OUTPUT\n"), "{got}");
        assert!(!got.contains("-D OUTPUT -p udp"), "{got}");
    }

    #[test]
    fn nft_has_the_same_order() {
        let mut s = spec();
        s.exclude_cidrs = parse_cidrs("10.1.0.0/16").expect("cidrs");
        s.dns = Some(DnsCapture {
            port: 15053,
            servers: vec![],
        });
        let got = nft_apply(&s);
        assert!(got.starts_with("table inet egret\ndelete table inet egret\ntable inet egret {\n"));
        let pos = |n: &str| got.find(n).unwrap_or_else(|| panic!("{n} not in {got}"));
        assert!(pos("meta skuid 1337 return") < pos("udp dport 53 redirect to :15053"));
        assert!(pos("oifname \"lo\" return") < pos("ip daddr { 10.1.0.0/16 } return"));
        assert!(
            pos("ip daddr { 10.1.0.0/16 } return") < pos("meta l4proto tcp redirect to :15001")
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(Cidr::parse("ten").unwrap_err().contains("not an IP"));
        assert!(parse_ports("80,0").unwrap_err().contains("`0`"));
        assert_eq!(Include::parse("").expect("empty"), Include::Only(vec![]));
    }
}
