//! The pod's addresses from a CNI result: `ips` (spec 0.3.0 and later) or
//! `ip4`/`ip6` (0.1.0, 0.2.0).

use serde_json::Value;
use std::net::IpAddr;

/// The address part of "10.89.0.5/16" (or a bare address).
fn address(s: &str) -> Option<IpAddr> {
    s.split('/').next()?.parse().ok()
}

/// The pod's IPs from `result`, IPv4 first, for the interface `ifname` inside
/// the pod when the result says which interface an address is on.
pub fn pod_ips(result: &Value, ifname: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        let ifaces = result
            .get("interfaces")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let in_pod = |idx: &Value| -> Option<bool> {
            let i = usize::try_from(idx.as_u64()?).ok()?;
            let iface = ifaces.get(i)?;
            let sandbox = iface.get("sandbox").and_then(Value::as_str).unwrap_or("");
            let name = iface.get("name").and_then(Value::as_str).unwrap_or("");
            Some(!sandbox.is_empty() && name == ifname)
        };
        let parsed: Vec<(Option<bool>, IpAddr)> = list
            .iter()
            .filter_map(|ip| {
                let a = address(ip.get("address")?.as_str()?)?;
                Some((ip.get("interface").and_then(in_pod), a))
            })
            .collect();
        // Addresses on the pod's interface; failing that, those on no known
        // interface; failing that, all of them.
        ips = parsed
            .iter()
            .filter(|(on, _)| *on == Some(true))
            .map(|(_, a)| *a)
            .collect();
        if ips.is_empty() {
            ips = parsed
                .iter()
                .filter(|(on, _)| on.is_none())
                .map(|(_, a)| *a)
                .collect();
        }
        if ips.is_empty() {
            ips = parsed.iter().map(|(_, a)| *a).collect();
        }
    } else {
        for key in ["ip4", "ip6"] {
            if let Some(a) = result
                .get(key)
                .and_then(|v| v.get("ip"))
                .and_then(Value::as_str)
                .and_then(address)
            {
                ips.push(a);
            }
        }
    }
    // Stable: IPv4 before IPv6, otherwise in the result's order.
    ips.sort_by_key(|a| a.is_ipv6());
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ips_of_the_pod_interface_ipv4_first() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "sycri0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/x/ns/net"}
            ],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.89.0.5/16", "gateway": "10.89.0.1", "interface": 2},
                {"address": "10.89.0.1/16", "interface": 0}
            ]
        });
        let got: Vec<String> = pod_ips(&r, "eth0").iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.89.0.5", "fd00::5"]);
    }

    #[test]
    fn results_without_interfaces_and_old_versions() {
        let r = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.2.3/24"}]});
        assert_eq!(pod_ips(&r, "eth0"), vec![IpAddr::from([10, 1, 2, 3])]);
        let r = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.4/24"}});
        assert_eq!(pod_ips(&r, "eth0"), vec![IpAddr::from([10, 1, 2, 4])]);
        assert!(pod_ips(&json!({}), "eth0").is_empty());
        assert!(pod_ips(&json!({"ips": [{"address": "junk"}]}), "eth0").is_empty());
    }
}
