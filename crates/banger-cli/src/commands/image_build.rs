//! `banger image build`: starts the build in the daemon and follows it,
//! step by step, with a spinner and each step's time; Ctrl-C cancels it
//! (the daemon removes the builder VM and every temporary file).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use banger_proto::api::method;
use banger_proto::{BuildImageParams, BuildState, ImageBuild, ImageRef, StepState};
use indicatif::{ProgressBar, ProgressStyle};

use super::Context;
use crate::args::BuildArgs;
use crate::output;

pub fn run(args: BuildArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    if args.abort {
        return abort(&args.name, ctx);
    }
    if args.interactive && !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        anyhow::bail!(
            "--interactive opens a shell in the image and needs a terminal: run it from one, or leave --interactive out"
        );
    }
    let packages = match &args.packages {
        Some(path) => Some(banger_proto::validate::package_list(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading the package list {}", path.display()))?,
        )),
        None => None,
    };
    let base = match (&args.base, &args.base_rootfs) {
        (_, Some(path)) => Some(absolute(path)?),
        // A name with a slash, or an existing file, is a path: the daemon
        // does not share this shell's directory.
        (Some(given), None) if given.contains('/') || Path::new(given).is_file() => {
            Some(absolute(Path::new(given))?)
        }
        (given, None) => given.clone(),
    };
    let params = BuildImageParams {
        name: args.name.clone(),
        base,
        docker: args.docker,
        packages,
        size: args.size.clone(),
        interactive: args.interactive,
    };
    let mut client = ctx.client()?;
    let started: ImageBuild = client.call::<method::ImageBuild>(params)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, interrupted.clone()).context("watching for Ctrl-C")?;
    }
    let json = args.output.json;
    let mut view = StepView::new(!json && std::io::stderr().is_terminal());
    view.show(&started);
    let reference = ImageRef {
        image: started.name.clone(),
    };
    let mut cancel_sent = false;
    let last = loop {
        std::thread::sleep(Duration::from_millis(300));
        if interrupted.load(Ordering::SeqCst) && !cancel_sent {
            view.note("cancelling the build: removing its builder VM and files...");
            client
                .call::<method::ImageBuildCancel>(reference.clone())
                .context("asking the daemon to cancel the build")?;
            cancel_sent = true;
        }
        let status: ImageBuild = client
            .call::<method::ImageBuildStatus>(reference.clone())
            .context("the daemon stopped answering during the build; the next daemon start removes the builder VM and temporary files")?;
        view.show(&status);
        if let Some(shell) = &status.shell
            && !cancel_sent
        {
            view.pause();
            let keep = interactive_shell(ctx, &status.name, shell)?;
            client
                .call::<method::ImageBuildContinue>(banger_proto::ContinueBuildParams {
                    image: status.name.clone(),
                    keep,
                })
                .context("telling the daemon how the shell ended")?;
            view.resume();
        }
        if status.state != BuildState::Running {
            break status;
        }
    };
    view.finish();
    if json {
        output::print_json(&last)?;
    }
    match last.state {
        BuildState::Succeeded => {
            if !json {
                let image = last
                    .image
                    .as_ref()
                    .context("the daemon reported no image")?;
                let size = std::fs::metadata(&image.rootfs)
                    .map(|m| banger_proto::validate::format_size(m.len().div_ceil(1 << 20) << 20))
                    .unwrap_or_else(|_| "?".into());
                println!(
                    "built image {} ({size}) in {}s; create a VM with `banger vm create --image {}`",
                    image.name,
                    image.build_secs.unwrap_or(0),
                    image.name
                );
                println!("log: {}", last.log_path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        BuildState::Cancelled => {
            if let Some(why) = last.error.as_deref().filter(|e| e.starts_with("discarded")) {
                eprintln!("{why}");
            }
            eprintln!("cancelled: no image, builder VM or temporary file of it remains");
            eprintln!("log: {}", last.log_path.display());
            Ok(ExitCode::from(130))
        }
        BuildState::Failed | BuildState::Running => {
            eprintln!(
                "error: building image {}: {}",
                last.name,
                last.error.as_deref().unwrap_or("it failed")
            );
            eprintln!("log: {}", last.log_path.display());
            if !last.log_tail.is_empty() {
                eprintln!("its last lines:");
                for line in &last.log_tail {
                    eprintln!("    {line}");
                }
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `--abort`: cancels the running build of `name` and waits for it to end.
fn abort(name: &str, ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut client = ctx.client()?;
    let reference = ImageRef {
        image: name.to_owned(),
    };
    let mut status: ImageBuild = client.call::<method::ImageBuildCancel>(reference.clone())?;
    while status.state == BuildState::Running {
        std::thread::sleep(Duration::from_millis(300));
        status = client.call::<method::ImageBuildStatus>(reference.clone())?;
    }
    match status.state {
        BuildState::Cancelled => {
            println!(
                "cancelled the build of {name}: no image, builder VM or temporary file of it remains"
            );
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!(
            "the build of {name} had already ended ({}): nothing to cancel",
            serde_json::to_value(other)?.as_str().unwrap_or("ended")
        ),
    }
}

/// The `--interactive` step: a login shell in the mounted image, through
/// the builder's agent. Returns whether to seal (exit status 0). A second
/// connection keeps telling the daemon this terminal is still here.
fn interactive_shell(
    ctx: &Context,
    name: &str,
    shell: &banger_proto::BuildShell,
) -> anyhow::Result<bool> {
    eprintln!();
    eprintln!(
        "A shell in the image {name} (mounted in builder VM {}).",
        shell.vm
    );
    eprintln!("What you change here is sealed into the image when you exit with status 0;");
    eprintln!("`exit 1` (any non-zero status) discards the whole build.");
    eprintln!();
    let alive = Arc::new(AtomicBool::new(true));
    let heartbeat = {
        let (alive, reference, mut client) = (
            alive.clone(),
            ImageRef {
                image: name.to_owned(),
            },
            ctx.client()?,
        );
        std::thread::spawn(move || {
            while alive.load(Ordering::SeqCst) {
                let _ = client.call::<method::ImageBuildStatus>(reference.clone());
                for _ in 0..50 {
                    if !alive.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })
    };
    let args = crate::args::ExecArgs {
        vm: shell.vm.clone(),
        tty: true,
        env: Vec::new(),
        workdir: Some("/".into()),
        command: shell.argv.clone(),
    };
    let code = super::exec::status(&args, ctx);
    alive.store(false, Ordering::SeqCst);
    let _ = heartbeat.join();
    let code = code?;
    if code == 0 {
        eprintln!("the shell exited 0: sealing your changes into {name}");
    } else {
        eprintln!("the shell exited {code}: discarding the build");
    }
    Ok(code == 0)
}

fn absolute(path: &Path) -> anyhow::Result<String> {
    let path = std::path::absolute(path)
        .with_context(|| format!("{}: not a usable path", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// The steps as they go: a spinner with the running step and its time on
/// a terminal, a line per finished step otherwise.
struct StepView {
    bar: Option<ProgressBar>,
    /// How many steps have been reported finished.
    reported: usize,
    running: Option<usize>,
}

impl StepView {
    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            reported: 0,
            running: None,
        }
    }

    /// Out of the way while something else has the terminal.
    fn pause(&self) {
        if let Some(bar) = &self.bar {
            bar.disable_steady_tick();
            bar.finish_and_clear();
        }
    }

    fn resume(&mut self) {
        if self.bar.is_some() {
            *self = Self {
                reported: self.reported,
                ..Self::new(true)
            };
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn show(&mut self, status: &ImageBuild) {
        // Steps finish in order: report each once.
        while let Some(step) = status.steps.get(self.reported) {
            let mark = match step.state {
                StepState::Done => "done",
                StepState::Skipped => "skipped",
                StepState::Failed => "FAILED",
                StepState::Pending | StepState::Running => break,
            };
            let secs = step
                .elapsed_ms
                .map(|ms| format!(" ({:.1}s)", ms as f64 / 1000.0))
                .unwrap_or_default();
            self.note(&format!("{mark:>7}  {}{secs}", step.name));
            self.reported += 1;
        }
        let running = status
            .steps
            .iter()
            .position(|s| s.state == StepState::Running);
        if running != self.running {
            self.running = running;
            if let (Some(i), Some(bar)) = (running, &self.bar) {
                bar.reset_elapsed();
                bar.set_message(status.steps[i].name.clone());
            } else if let (Some(i), None) = (running, &self.bar) {
                eprintln!("  ...  {}", status.steps[i].name);
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
