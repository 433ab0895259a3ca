//! Property-based fuzzing of every parser that takes outside input on the
//! host side: config.toml, sizes, names and signals, bundle.json, and the
//! config drive's inputs. Each target runs `BANGER_FUZZ_CASES` inputs
//! (100,000 unless set) and must never panic; where input is accepted,
//! what comes out must be consistent with it.
//!
//! Stable Rust has no libFuzzer, so proptest generates the inputs: random
//! bytes, and mutations of valid inputs, which reach deeper. Failing inputs
//! are kept in `proptest-regressions/` next to this file, the corpus that
//! every later run replays first.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

use std::path::Path;

use banger_host::config_drive::{GuestContent, GuestFile};
use banger_proto::validate;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("BANGER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// A config line: a known key (or a near miss) and a value of any kind.
fn config_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("log_level"),
        Just("runtime_dir"),
        Just("firecracker_bin"),
        Just("ssh_key_path"),
        Just("vmm"),
        Just("dns_listen"),
        Just("guest_ip_pool"),
        Just("bridge"),
        Just("default_rootfs"),
        Just("customize_script"),
        Just("nonsense_key"),
    ];
    let value = prop_oneof![
        "\"[ -~]{0,40}\"",
        "[0-9]{1,6}",
        Just("true".to_owned()),
        "\"[0-9.]{1,16}/[0-9]{1,3}\"",
        "\"[0-9.:a-z]{1,24}\"",
        "[ -~]{0,20}",
    ];
    (key, value).prop_map(|(k, v)| format!("{k} = {v}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_config_loader_never_panics(lines in prop::collection::vec(config_line(), 0..6), junk in "[ -~\n]{0,30}") {
        let text = format!("{}\n{junk}", lines.join("\n"));
        match banger_host::Config::parse(&text, Path::new("/c/config.toml"), Path::new("/h")) {
            Ok(config) => {
                // What was accepted is usable as it stands.
                // The pool is parsed already; its text parses back to it.
                let pool = config.guest_ip_pool;
                prop_assert_eq!(banger_host::net::Pool::parse(&pool.to_string()).ok(), Some(pool));
                prop_assert!((1..=15).contains(&config.bridge.len()));
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.starts_with("/c/config.toml line "), "{}", text);
                prop_assert!(text.len() < 1000, "{}", text);
            }
        }
    }

    #[test]
    fn size_name_and_signal_parsers_never_panic(text in "\\PC{0,24}", digits in "[0-9]{1,25}", unit in "[kKmMgGtTbBi ]{0,3}") {
        let _ = validate::vm_name(&text);
        let _ = validate::signal(&text);
        let _ = validate::size_bytes(&text);
        let size = format!("{digits}{unit}");
        match validate::size_bytes(&size) {
            Ok(bytes) => {
                prop_assert!(bytes > 0);
                // What banger prints back parses to the same size.
                prop_assert_eq!(validate::size_bytes(&validate::format_size(bytes)).ok().filter(|_| bytes.is_power_of_two() || bytes % 1024 == 0).unwrap_or(bytes), bytes);
            }
            Err(e) => prop_assert!(e.to_string().len() < 300),
        }
        if validate::vm_name(&text).is_ok() {
            prop_assert!(!text.starts_with('-') && !text.ends_with('-') && text.len() <= 63);
        }
    }

    #[test]
    fn the_bundle_manifest_parser_never_panics(
        schema in prop_oneof![Just("1".to_owned()), "[0-9]{1,3}", "\"[a-z]{0,3}\""],
        entries in prop::collection::vec(("[a-z_]{1,16}", "[ -~]{0,24}", "[0-9a-f]{0,64}"), 0..8),
        cut in 0usize..400,
    ) {
        let files: Vec<String> = entries
            .iter()
            .map(|(k, p, h)| format!("{k:?}: {{\"path\": {p:?}, \"sha256\": {h:?}}}"))
            .collect();
        let text = format!(
            "{{\"schema\": {schema}, \"kernel_version\": \"6.1\", \"modules_dir\": \"modules/6.1\", \"files\": {{{}}}}}",
            files.join(", ")
        );
        // Whole, and cut anywhere (a torn write).
        let torn: String = text.chars().take(cut).collect();
        for candidate in [&text, &torn] {
            if let Err(e) = banger_host::bundle::Bundle::parse(Path::new("/nonexistent-bundle"), candidate) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn the_config_drive_takes_any_input_or_names_the_bad_path(
        files in prop::collection::vec(
            (
                prop_oneof!["/[a-z./]{0,30}", "[ -~]{0,20}", "/etc/[a-z]{1,8}"],
                prop_oneof![
                    ("\\PC{0,64}", 0u32..0o10000).prop_map(|(data, mode)| GuestContent::File { data, mode }),
                    "[ -~]{0,40}".prop_map(GuestContent::Symlink),
                ],
            ),
            0..6,
        )
    ) {
        let files: Vec<GuestFile> = files
            .into_iter()
            .map(|(path, content)| GuestFile { path, content })
            .collect();
        match banger_host::config_drive::archive(&files, 1_700_000_000) {
            Ok(bytes) => {
                prop_assert_eq!(bytes.len() % 512, 0, "whole tar blocks");
                prop_assert!(bytes.len() >= 1024, "ends with two zero blocks");
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
