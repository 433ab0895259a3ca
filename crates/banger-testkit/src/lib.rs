//! Test-only helpers shared by the workspace's test suites (a
//! dev-dependency everywhere, never linked into a binary).
//!
//! A test that needs root, a host tool or a binary calls [`require`]. When
//! the requirement holds it returns `true`; when it does not, the test
//! either stops with a `SKIPPED: …` line that is never hidden by libtest's
//! output capture, or, when `BANGER_REQUIRE_ALL=1` (CI sets it), fails, so a
//! CI run can never pass by skipping.

use std::io::Write;

/// Set to `1` to turn every unmet test requirement into a failure.
pub const REQUIRE_ALL_VAR: &str = "BANGER_REQUIRE_ALL";

/// `true` when the test may go on. `test` names the test, `why` says what
/// is missing and how to get it.
///
/// # Panics
/// When the requirement is unmet and `BANGER_REQUIRE_ALL=1`.
pub fn require(met: bool, test: &str, why: &str) -> bool {
    if met {
        return true;
    }
    if std::env::var(REQUIRE_ALL_VAR).is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {why} ({REQUIRE_ALL_VAR}=1 forbids skipping)");
    }
    // Written straight to the process's stderr: libtest captures only the
    // print macros, so this line shows even for a test reported as `ok`.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why}");
    false
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `tool` is on `PATH` (found by the shell, as the code under test
/// would find it).
pub fn have_tool(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The first of `tools` missing from `PATH`, if any.
pub fn missing_tool<'a>(tools: &[&'a str]) -> Option<&'a str> {
    tools.iter().copied().find(|t| !have_tool(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_requirement_lets_the_test_run() {
        assert!(require(true, "t", "never said"));
    }

    #[test]
    fn tools_are_found_on_path() {
        assert!(have_tool("sh"));
        assert!(!have_tool("banger-no-such-tool"));
        assert_eq!(
            missing_tool(&["sh", "banger-no-such-tool"]),
            Some("banger-no-such-tool")
        );
    }
}
