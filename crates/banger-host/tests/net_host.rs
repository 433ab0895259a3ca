//! `IpTablesNetwork` against the real kernel, as root, inside a throwaway
//! network namespace: real bridge, TAPs and iptables rules, none of them
//! visible to the host. Skips, saying why, when not root or without the tools.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use banger_host::net::{HostNetwork, IpTablesNetwork, NatRule, Pool};
use banger_host::process::{Cmd, NetnsRunner, Runner};

pub fn namespace(tag: &str) -> Option<Arc<NetnsRunner>> {
    let test = format!("real-host network test {tag}");
    if !banger_testkit::require(
        banger_testkit::is_root(),
        &test,
        "needs root (CI runs as root)",
    ) {
        return None;
    }
    let missing = banger_testkit::missing_tool(&["ip", "iptables", "iptables-save", "sysctl"]);
    let why = format!(
        "{} is missing (apt-get install iproute2 iptables procps)",
        missing.unwrap_or_default()
    );
    if !banger_testkit::require(missing.is_none(), &test, &why) {
        return None;
    }
    let name = format!("banger-test-{}-{tag}", std::process::id());
    Some(Arc::new(
        NetnsRunner::create(&name).expect("creating a test network namespace"),
    ))
}

fn rules(runner: &NetnsRunner) -> Vec<String> {
    let text = runner.run(&Cmd::new("iptables-save")).unwrap();
    text.lines()
        .filter(|l| l.contains("BANGER"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn bridge_taps_and_nat_rules_on_a_real_kernel() {
    let Some(runner) = namespace("net") else {
        return;
    };
    // Bridged frames pass iptables here (br_netfilter, as Docker loads it),
    // whatever the host's own setting.
    let tmp = tempfile::tempdir().unwrap();
    let switch = tmp.path().join("bridge-nf-call-iptables");
    std::fs::write(&switch, "1\n").unwrap();
    let net = IpTablesNetwork::new(runner.clone(), false)
        .with_owner("t1")
        .with_bridge_netfilter(&switch);
    let other = IpTablesNetwork::new(runner.clone(), false)
        .with_owner("t2")
        .with_bridge_netfilter(&switch);
    let pool = Pool::parse("10.219.0.0/24").unwrap();

    net.ensure_bridge(&pool).unwrap();
    net.ensure_bridge(&pool).unwrap();
    let addr = runner
        .run(&Cmd::new("ip").args(["-o", "-4", "addr", "show", "dev", "banger0"]))
        .unwrap();
    assert!(addr.contains("10.219.0.1/24"), "{addr}");

    net.create_tap("bg-0011223344", 0).unwrap();
    net.create_tap("bg-0011223344", 0).unwrap();
    let link = runner
        .run(&Cmd::new("ip").args(["-o", "link", "show", "dev", "bg-0011223344"]))
        .unwrap();
    assert!(link.contains("master banger0"), "{link}");
    assert_eq!(net.list_taps().unwrap(), ["bg-0011223344"]);

    // Held: down and off the bridge; connected again by create_tap.
    let show = || {
        runner
            .run(&Cmd::new("ip").args(["-o", "link", "show", "dev", "bg-0011223344"]))
            .unwrap()
    };
    net.hold_tap("bg-0011223344", 0).unwrap();
    let held = show();
    assert!(!held.contains("master") && !held.contains(",UP"), "{held}");
    net.create_tap("bg-0011223344", 0).unwrap();
    let connected = show();
    assert!(
        connected.contains("master banger0") && connected.contains(",UP"),
        "{connected}"
    );

    let rule = NatRule {
        vm_id: "aa12bb34".into(),
        guest_ip: Ipv4Addr::new(10, 219, 0, 2),
    };
    net.add_nat(&rule).unwrap();
    net.add_nat(&rule).unwrap();
    assert_eq!(
        rules(&runner),
        [
            ":BANGER-FORWARD - [0:0]",
            "-A FORWARD -j BANGER-FORWARD",
            "-A BANGER-FORWARD -i banger0 -o banger0 -m comment --comment \"banger-bridge:t1\" -j ACCEPT",
            "-A BANGER-FORWARD -s 10.219.0.2/32 -i banger0 -m comment --comment \"banger:t1:aa12bb34\" -j ACCEPT",
            "-A BANGER-FORWARD -d 10.219.0.2/32 -o banger0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"banger:t1:aa12bb34\" -j ACCEPT",
            ":BANGER-POSTROUTING - [0:0]",
            "-A POSTROUTING -j BANGER-POSTROUTING",
            "-A BANGER-POSTROUTING -s 10.219.0.2/32 ! -o banger0 -m comment --comment \"banger:t1:aa12bb34\" -j MASQUERADE",
        ],
        "exactly the expected rules, added once"
    );
    let forward = runner
        .run(&Cmd::new("sysctl").args(["-n", "net.ipv4.ip_forward"]))
        .unwrap();
    assert_eq!(forward.trim(), "1");
    assert_eq!(net.nat_vms().unwrap(), ["aa12bb34"]);
    assert!(
        other.nat_vms().unwrap().is_empty(),
        "another daemon does not see these rules as its own"
    );
    other.remove_nat("aa12bb34").unwrap();
    assert_eq!(
        rules(&runner)
            .iter()
            .filter(|r| r.contains("banger:t1:"))
            .count(),
        3,
        "nor removes them"
    );

    net.remove_nat("aa12bb34").unwrap();
    net.remove_nat("aa12bb34").unwrap();
    assert!(
        rules(&runner).iter().all(|r| !r.contains("banger:")),
        "{:?}",
        rules(&runner)
    );
    net.delete_tap("bg-0011223344").unwrap();
    net.delete_tap("bg-0011223344").unwrap();
    assert!(net.list_taps().unwrap().is_empty());
}

/// Two daemons on one host: the bridge is the first one's, marked with its
/// tag; the second is refused it, and its own bridge with an overlapping
/// pool is refused by the route check, so no address is ever shared.
#[test]
fn a_second_daemon_cannot_share_the_bridge_or_the_pool() {
    let Some(runner) = namespace("owners") else {
        return;
    };
    let first = IpTablesNetwork::new(runner.clone(), false).with_owner("t1");
    let second = IpTablesNetwork::new(runner.clone(), false).with_owner("t2");
    let pool = Pool::parse("10.219.0.0/24").unwrap();
    first.ensure_bridge(&pool).unwrap();
    let alias = runner
        .run(&Cmd::new("ip").args(["-o", "-d", "link", "show", "dev", "banger0"]))
        .unwrap();
    assert!(alias.contains("alias banger:t1"), "{alias}");
    // A running VM of the first daemon's.
    first.create_tap("bg-1122334455", 0).unwrap();

    let err = second.ensure_bridge(&pool).unwrap_err().to_string();
    assert!(
        err.contains("bridge banger0 belongs to another banger daemon (t1)")
            && err.contains("guest_ip_pool"),
        "{err}"
    );

    let second = second.with_bridge("banger1");
    let routes = second.host_routes().unwrap();
    let conflict = banger_host::net::check_pool_against_routes(&pool, &routes)
        .unwrap_err()
        .to_string();
    assert!(
        conflict.contains("banger0"),
        "the first daemon's bridge route: {conflict}"
    );
    let own_pool = Pool::parse("10.220.0.0/24").unwrap();
    banger_host::net::check_pool_against_routes(&own_pool, &routes).unwrap();
    second.ensure_bridge(&own_pool).unwrap();
    second.create_tap("bg-5566778899", 0).unwrap();
    let link = runner
        .run(&Cmd::new("ip").args(["-o", "link", "show", "dev", "bg-5566778899"]))
        .unwrap();
    assert!(link.contains("master banger1"), "{link}");
    // The first daemon still owns and uses its own bridge.
    first.ensure_bridge(&pool).unwrap();

    // Once no TAP is on it (the first daemon's VMs are all stopped, or it
    // is gone), its bridge can change hands; while the new owner's VMs run,
    // the first is refused it.
    let fourth = IpTablesNetwork::new(runner.clone(), false).with_owner("t4");
    assert!(fourth.ensure_bridge(&pool).is_err(), "a TAP is on it");
    first.delete_tap("bg-1122334455").unwrap();
    fourth.ensure_bridge(&pool).unwrap();
    fourth.create_tap("bg-4444444444", 0).unwrap();
    let err = first.ensure_bridge(&pool).unwrap_err().to_string();
    assert!(
        err.contains("(t4)"),
        "the bridge is the fourth's now: {err}"
    );

    // A bridge an older banger made (no alias) is claimed by the first
    // daemon that uses it.
    runner
        .run(&Cmd::new("ip").args(["link", "add", "name", "banger2", "type", "bridge"]))
        .unwrap();
    let third = IpTablesNetwork::new(runner.clone(), false)
        .with_owner("t3")
        .with_bridge("banger2");
    third
        .ensure_bridge(&Pool::parse("10.221.0.0/24").unwrap())
        .unwrap();
    let alias = runner
        .run(&Cmd::new("ip").args(["-o", "-d", "link", "show", "dev", "banger2"]))
        .unwrap();
    assert!(alias.contains("alias banger:t3"), "{alias}");
}
