//! Property-based fuzzing of what the daemon reads from outside: the RPC
//! framing and envelope, and DNS queries. `BANGER_FUZZ_CASES` inputs each
//! (100,000 unless set); none may panic, and every answer must be well
//! formed. Failing inputs are kept in `fuzz_tests.regressions`, the corpus
//! replayed first on every run.

use proptest::prelude::*;
use tokio::io::BufReader;

use crate::capabilities::DnsTable;
use crate::dns::answer;
use crate::server::{Buffered, Frame, read_frame};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("BANGER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

fn table() -> DnsTable {
    let table = DnsTable::default();
    table.set("calm-otter", "10.219.0.2".parse().unwrap());
    table
}

/// A valid query for `name`, then a few of its bytes replaced: mutations
/// of real packets get past the header checks that random bytes fail.
fn mutated_query(name: &str, id: u16, edits: &[(usize, u8)]) -> Vec<u8> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    let mut message = Message::new();
    message.set_id(id).set_recursion_desired(true);
    if let Ok(name) = Name::from_str(name) {
        message.add_query(Query::query(name, RecordType::A));
    }
    let mut bytes = message.to_vec().unwrap_or_default();
    for (at, value) in edits {
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] = *value;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_dns_handler_answers_well_formed_or_drops(
        raw in prop::collection::vec(any::<u8>(), 0..600),
        name in "[a-zA-Z0-9.-]{0,40}",
        id in any::<u16>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        let table = table();
        for packet in [raw, mutated_query(&format!("{name}.vm."), id, &edits)] {
            if let Some(reply) = answer(&table, &packet) {
                let parsed = hickory_proto::op::Message::from_vec(&reply);
                prop_assert!(parsed.is_ok(), "a reply that does not parse: {:?}", reply);
                prop_assert!(reply.len() <= 512, "fits a plain UDP answer");
            }
        }
    }

    #[test]
    fn rpc_framing_holds_its_bounds(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
        capacity in 1usize..16,
        max in 1usize..64,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let input: Vec<u8> = chunks.concat();
        let budget = Buffered::default();
        runtime.block_on(async {
            let mut reader = BufReader::with_capacity(capacity, &input[..]);
            let mut frames = 0;
            while let Some(frame) = read_frame(&mut reader, max, &budget).await.unwrap() {
                if let Frame::Line(line) = frame {
                    assert!(line.len() <= max && !line.contains(&b'\n'));
                }
                frames += 1;
                assert!(frames <= input.len() + 1);
            }
        });
        prop_assert_eq!(budget.held(), 0, "every partial message released its bytes");
    }

    #[test]
    fn rpc_envelopes_decode_or_fail_cleanly(
        raw in prop::collection::vec(any::<u8>(), 0..200),
        method in "[a-z._]{0,20}",
        id in any::<u64>(),
        params in "[ -~]{0,40}",
    ) {
        let _ = serde_json::from_slice::<banger_proto::Request>(&raw);
        let text = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        let _ = serde_json::from_str::<banger_proto::Request>(&text);
        // The client's fast path slices results out of response lines.
        let line = format!("{}{params}}}\n", banger_proto::Response::success_prefix(id));
        if let Some(result) = banger_proto::Response::success_result(line.as_bytes(), id) {
            prop_assert_eq!(result, params.as_bytes());
        }
        let _ = banger_proto::Response::success_result(&raw, id);
    }
}
