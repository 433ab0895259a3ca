//! The `.vm` DNS server through a real UDP client, against a daemon whose
//! VMs have guest IPs.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use support::World;

fn query(name: &str, kind: RecordType, id: u16) -> Vec<u8> {
    let mut message = Message::new();
    message.set_id(id).set_recursion_desired(true);
    message.add_query(Query::query(Name::from_str(name).unwrap(), kind));
    message.to_vec().unwrap()
}

fn ask(client: &UdpSocket, server: SocketAddr, name: &str, kind: RecordType) -> Message {
    client.send_to(&query(name, kind, 7), server).unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = client.recv_from(&mut buf).unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

/// A UDP socket to ask with, and the world's daemon's DNS address.
fn dns_client(world: &World) -> (UdpSocket, SocketAddr) {
    let status: serde_json::Value =
        serde_json::from_str(&world.ok(&["daemon", "status", "--json"])).unwrap();
    let server: SocketAddr = status["dns_listen"].as_str().unwrap().parse().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    (client, server)
}

#[test]
fn vm_names_resolve_over_udp_and_garbage_harms_nothing() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let vm: serde_json::Value =
        serde_json::from_str(&world.ok(&["vm", "create", "--name", "calm-otter", "--json"]))
            .unwrap();
    let ip = vm["guest_ip"].as_str().unwrap().to_owned();
    let (client, server) = dns_client(&world);

    let reply = ask(&client, server, "calm-otter.vm.", RecordType::A);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(
        reply.answers()[0].data(),
        &RData::A(ip.parse::<std::net::Ipv4Addr>().unwrap().into())
    );
    assert_eq!(
        ask(&client, server, "nobody.vm.", RecordType::A).response_code(),
        ResponseCode::NXDomain
    );
    assert_eq!(
        ask(&client, server, "example.com.", RecordType::A).response_code(),
        ResponseCode::Refused
    );
    let aaaa = ask(&client, server, "calm-otter.vm.", RecordType::AAAA);
    assert_eq!(aaaa.response_code(), ResponseCode::NoError);
    assert!(aaaa.answers().is_empty());

    // A truncated packet gets no answer; the server keeps going.
    let packet = query("calm-otter.vm.", RecordType::A, 9);
    client.send_to(&packet[..packet.len() - 4], server).unwrap();
    let mut buf = [0u8; 1500];
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        client.recv_from(&mut buf).is_err(),
        "no reply to a truncated query"
    );

    // 10,000 random packets, then a correct query still gets the right answer.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..10_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = usize::try_from(seed % 512).unwrap();
        let bytes: Vec<u8> = (0..len)
            .map(|i| (seed >> (i % 56)).to_le_bytes()[0])
            .collect();
        client.send_to(&bytes, server).unwrap();
    }
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while client.recv_from(&mut buf).is_ok() {}
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let reply = ask(&client, server, "calm-otter.vm.", RecordType::A);
    assert_eq!(reply.id(), 7);
    assert_eq!(reply.answers().len(), 1);

    // Deleting the VM removes its record.
    world.ok(&["vm", "delete", "calm-otter"]);
    assert_eq!(
        ask(&client, server, "calm-otter.vm.", RecordType::A).response_code(),
        ResponseCode::NXDomain
    );
    daemon.stop(&world);
}

#[test]
fn a_renamed_vm_answers_to_its_new_name_only() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let vm: serde_json::Value =
        serde_json::from_str(&world.ok(&["vm", "create", "--name", "old-name", "--json"])).unwrap();
    let text = world.ok(&["vm", "rename", "old-name", "new-name"]);
    assert!(
        text.starts_with("renamed old-name to new-name: new-name.vm answers now;"),
        "{text}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&world.ok(&["vm", "show", "new-name", "--json"])).unwrap();
    assert_eq!(
        (&shown["id"], &shown["guest_ip"]),
        (&vm["id"], &vm["guest_ip"])
    );

    let (client, server) = dns_client(&world);
    let ip: std::net::Ipv4Addr = vm["guest_ip"].as_str().unwrap().parse().unwrap();
    let reply = ask(&client, server, "new-name.vm.", RecordType::A);
    assert_eq!(reply.answers()[0].data(), &RData::A(ip.into()));
    assert_eq!(
        ask(&client, server, "old-name.vm.", RecordType::A).response_code(),
        ResponseCode::NXDomain
    );

    // Bad names are refused before anything changes; so is a taken one.
    let bad = world.banger(&["vm", "rename", "new-name", "Bad_Name"]);
    assert_eq!(bad.status.code(), Some(2));
    world.ok(&["vm", "create", "--name", "other"]);
    let taken = world.banger(&["vm", "rename", "new-name", "other"]);
    assert_eq!(taken.status.code(), Some(1));
    assert!(
        support::stderr(&taken).contains("a VM named \"other\" already exists"),
        "{}",
        support::stderr(&taken)
    );
    assert!(world.ok(&["vm", "list"]).contains("new-name"));
    daemon.stop(&world);
}
