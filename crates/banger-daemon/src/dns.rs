//! A small authoritative DNS server for `.vm`: `<name>.vm` A records for
//! every VM with a guest IP. NXDOMAIN for unknown names in `.vm`, REFUSED
//! outside it, NODATA for other types of a known name. Malformed packets
//! are dropped; nothing a client sends can stop the server.

use std::net::SocketAddr;
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::capabilities::DnsTable;

pub const ZONE: &str = "vm.";
/// Short, so a recreated VM's new address is seen at once.
const TTL: u32 = 5;

fn soa() -> Record {
    let zone = Name::from_str(ZONE).expect("the zone name parses");
    let soa = SOA::new(
        Name::from_str("ns.vm.").expect("a valid name"),
        Name::from_str("hostmaster.vm.").expect("a valid name"),
        1,
        60,
        60,
        60,
        TTL,
    );
    Record::from_rdata(zone, TTL, RData::SOA(soa))
}

/// The response to one query packet, or `None` to drop it.
pub fn answer(table: &DnsTable, packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false);
    if request.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
        return response.to_vec().ok();
    }
    let [query] = request.queries() else {
        response.set_response_code(ResponseCode::FormErr);
        return response.to_vec().ok();
    };
    response.add_query(query.clone());
    let name = query.name().to_lowercase().to_ascii();
    let name = if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    };
    let Some(label) = name.strip_suffix(".vm.") else {
        let code = if name == ZONE {
            ResponseCode::NoError
        } else {
            ResponseCode::Refused
        };
        if code == ResponseCode::NoError {
            response.set_authoritative(true).add_name_server(soa());
        }
        response.set_response_code(code);
        return response.to_vec().ok();
    };
    response.set_authoritative(true);
    match table.lookup(label).filter(|_| !label.contains('.')) {
        None => {
            response
                .set_response_code(ResponseCode::NXDomain)
                .add_name_server(soa());
        }
        Some(ip) if matches!(query.query_type(), RecordType::A | RecordType::ANY) => {
            response.add_answer(Record::from_rdata(
                query.name().clone(),
                TTL,
                RData::A(A(ip)),
            ));
        }
        Some(_) => {
            response.add_name_server(soa());
        }
    }
    response.to_vec().ok()
}

/// Answers on `socket` until shutdown.
pub async fn serve(socket: UdpSocket, table: DnsTable, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, peer)) => {
                    if let Some(reply) = answer(&table, &buf[..len])
                        && let Err(e) = socket.send_to(&reply, peer).await
                    {
                        tracing::debug!(%peer, error = %e, "DNS reply not sent");
                    }
                }
                Err(e) => {
                    // ICMP errors from earlier replies surface here; keep serving.
                    tracing::debug!(error = %e, "DNS receive failed");
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Binds even before the address exists on a local interface (the bridge
/// gets it when the first VM starts).
pub fn bind_freebind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_freebind_v4(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn ask(table: &DnsTable, name: &str, kind: RecordType) -> Message {
        let mut request = Message::new();
        request.set_id(42).set_recursion_desired(true);
        request.add_query(Query::query(Name::from_str(name).unwrap(), kind));
        Message::from_vec(&answer(table, &request.to_vec().unwrap()).unwrap()).unwrap()
    }

    fn table() -> DnsTable {
        let table = DnsTable::default();
        table.set("calm-otter", "10.219.0.2".parse().unwrap());
        table
    }

    #[test]
    fn known_names_get_their_address() {
        let reply = ask(&table(), "calm-otter.vm.", RecordType::A);
        assert_eq!(reply.id(), 42);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.authoritative());
        let answers = reply.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(
            answers[0].data(),
            &RData::A(A("10.219.0.2".parse().unwrap()))
        );
        assert_eq!(answers[0].ttl(), TTL);
        let upper = ask(&table(), "CALM-OTTER.VM.", RecordType::A);
        assert_eq!(upper.answers().len(), 1, "names are case-insensitive");
    }

    #[test]
    fn unknown_other_zone_and_other_types() {
        let reply = ask(&table(), "nope.vm.", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        assert!(reply.answers().is_empty() && !reply.name_servers().is_empty());
        let reply = ask(&table(), "example.com.", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::Refused);
        let reply = ask(&table(), "calm-otter.vm.", RecordType::AAAA);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.answers().is_empty(), "NODATA");
        let reply = ask(&table(), "a.calm-otter.vm.", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn garbage_is_dropped() {
        let table = table();
        assert!(answer(&table, b"").is_none());
        assert!(answer(&table, &[0xff; 7]).is_none());
        let mut request = Message::new();
        request.add_query(Query::query(
            Name::from_str("calm-otter.vm.").unwrap(),
            RecordType::A,
        ));
        let bytes = request.to_vec().unwrap();
        assert!(
            answer(&table, &bytes[..bytes.len() - 3]).is_none(),
            "truncated"
        );
    }
}
