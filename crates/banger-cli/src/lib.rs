//! The `banger` command line: parse, dispatch to a command, print the
//! result or the whole error chain.

pub mod args;
pub mod client;
pub mod commands;
pub mod output;

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
            ExitCode::FAILURE
        }
    }
}
