//! `vm snapshot create|list|restore|delete` and `vm branch`.

use std::io::IsTerminal;
use std::process::ExitCode;

use banger_proto::api::method;
use banger_proto::{
    BranchVmParams, CreateSnapshotParams, RestoreSnapshotParams, Snapshot, SnapshotRef, Vm, VmRef,
};

use super::Context;
use crate::args::{BranchArgs, SnapshotCommand};
use crate::output;

pub fn run(command: SnapshotCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Create(args) => {
            progress(&format!("snapshotting {}", args.vm));
            let snapshot: Snapshot =
                ctx.client()?
                    .call::<method::VmSnapshotCreate>(CreateSnapshotParams {
                        vm: args.vm,
                        snapshot: args.snapshot,
                    })?;
            if args.output.json {
                output::print_json(&snapshot)?;
            } else {
                println!(
                    "{}: snapshot {} taken ({}, {})",
                    snapshot.vm,
                    snapshot.name,
                    holds(&snapshot),
                    output::approx_size(snapshot.allocated_bytes)
                );
            }
        }
        SnapshotCommand::List(target) => {
            let list: Vec<Snapshot> = ctx
                .client()?
                .call::<method::VmSnapshotList>(VmRef { vm: target.vm })?;
            if target.output.json {
                output::print_json(&list)?;
            } else {
                print!("{}", table(&list, output::now()));
            }
        }
        SnapshotCommand::Restore(args) => {
            progress(&format!("restoring {}", args.target.vm));
            let vm: Vm =
                ctx.client()?
                    .call::<method::VmSnapshotRestore>(RestoreSnapshotParams {
                        vm: args.target.vm,
                        snapshot: args.target.snapshot.clone(),
                        force: args.force,
                    })?;
            if args.target.output.json {
                output::print_json(&vm)?;
            } else {
                println!(
                    "{}: restored snapshot {}, now {}",
                    vm.name, args.target.snapshot, vm.state
                );
            }
        }
        SnapshotCommand::Delete(args) => {
            let snapshot: Snapshot =
                ctx.client()?
                    .call::<method::VmSnapshotDelete>(SnapshotRef {
                        vm: args.vm,
                        snapshot: args.snapshot,
                    })?;
            if args.output.json {
                output::print_json(&snapshot)?;
            } else {
                println!("{}: snapshot {} deleted", snapshot.vm, snapshot.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn branch(args: BranchArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    progress(&format!("branching {} into {}", args.source, args.name));
    let vm: Vm = ctx.client()?.call::<method::VmBranch>(BranchVmParams {
        source: args.source.clone(),
        name: args.name,
        no_memory: args.no_memory,
    })?;
    if args.output.json {
        output::print_json(&vm)?;
    } else {
        println!(
            "branched {} from {}: {}, ip {}; connect with `banger vm ssh {}`",
            vm.name,
            args.source,
            vm.state,
            vm.guest_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            vm.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What is slow is said on a terminal, rather than sat through silently.
fn progress(what: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{what}...");
    }
}

fn holds(snapshot: &Snapshot) -> &'static str {
    if snapshot.memory {
        "disks and memory"
    } else {
        "disks"
    }
}

fn table(list: &[Snapshot], now: i64) -> String {
    if list.is_empty() {
        return "no snapshots: take one with `banger vm snapshot create VM [NAME]`\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                output::age(s.created_at, now),
                holds(s).into(),
                output::approx_size(s.allocated_bytes),
            ]
        })
        .collect();
    output::table(&["NAME", "AGE", "HOLDS", "SIZE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_what_each_snapshot_holds() {
        let snapshot = |name: &str, memory| Snapshot {
            name: name.into(),
            vm: banger_proto::VmName::parse("calm-otter").unwrap(),
            created_at: 1000,
            memory,
            allocated_bytes: 3 << 20,
            vcpu: 2,
            memory_mib: 2048,
            disk_size_bytes: 16 << 30,
        };
        let text = table(&[snapshot("before", true), snapshot("cold", false)], 1060);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(
            lines[1].contains("before") && lines[1].contains("disks and memory"),
            "{text}"
        );
        assert!(
            lines[2].contains("cold") && !lines[2].contains("memory") && lines[2].contains("3.0M"),
            "{text}"
        );
        assert!(table(&[], 0).contains("banger vm snapshot create"));
    }
}
