//! The `banger` command line: parse, dispatch to a command, print the
//! result or the whole error chain.

pub mod args;
pub mod client;
pub mod commands;
pub mod output;
pub mod tui;

use std::process::ExitCode;

use clap::Parser;

pub fn main_entry() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {}", cause.to_string().replace('\n', "\n  "));
            }
            exit_code_for(&err)
        }
    }
}

/// Exit status 2 for bad input, whether clap, the CLI or the daemon refused
/// it (nothing was changed); 1 for every other failure.
pub const EXIT_BAD_INPUT: u8 = 2;

fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    use banger_proto::{ErrorKind, RpcError};
    let bad_input = |rpc: &RpcError| {
        rpc.data
            .as_ref()
            .is_some_and(|d| matches!(d.kind, ErrorKind::InvalidInput | ErrorKind::InvalidParams))
    };
    let refused = err.chain().any(|cause| {
        cause.downcast_ref::<RpcError>().is_some_and(bad_input)
            || matches!(cause.downcast_ref::<client::ClientError>(), Some(client::ClientError::Rpc(rpc)) if bad_input(rpc))
    });
    if refused {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::FAILURE
    }
}
