//! `banger tui`: the VM manager in the terminal.
//!
//! Kept apart as gitui does: [`state::App`] holds what is shown,
//! `keys.rs` turns keys into [`state::Effect`]s, `render.rs` draws a frame
//! from the state alone, and this loop runs effects: calls go to worker
//! threads (the screen never waits on the daemon), SSH gets the terminal.

pub mod daemon;
pub mod form;
pub mod keys;
pub mod render;
pub mod state;
#[cfg(test)]
mod tests;

use std::io::{IsTerminal, Stdout};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::{cursor, execute, terminal};

use self::daemon::{Call, CallError, CliDaemon, Daemon, Reply};
use self::state::{App, Effect};
use crate::commands::Context;

/// How often the list, stats and detail are polled.
const REFRESH: Duration = Duration::from_secs(1);
/// How long the loop waits for a key before looking at replies.
const INPUT_WAIT: Duration = Duration::from_millis(50);

pub fn run(ctx: Context) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        std::io::stdout().is_terminal() && std::io::stdin().is_terminal(),
        "banger tui needs a terminal: run it in one, or script with `banger vm list --json`"
    );
    // Started (or reached) before the screen changes, so a daemon that
    // cannot start is reported as the CLI reports it.
    ctx.client()?;
    let daemon: Arc<dyn Daemon> = Arc::new(CliDaemon { ctx });
    let signals = Signals::register()?;
    let mut screen = Screen::enter()?;
    let outcome = event_loop(&mut screen, &daemon, &signals);
    drop(screen);
    outcome.map(|()| ExitCode::SUCCESS)
}

/// Answers from the worker threads.
type Answer = (Call, Result<Reply, CallError>);

/// Runs each call on a thread of its own and sends its answer back.
struct Worker {
    daemon: Arc<dyn Daemon>,
    answers: mpsc::Sender<Answer>,
}

impl Worker {
    fn submit(&self, call: Call) {
        let daemon = Arc::clone(&self.daemon);
        let answers = self.answers.clone();
        std::thread::spawn(move || {
            let result = daemon.call(&call);
            // The loop may have ended; nobody is left to tell.
            let _ = answers.send((call, result));
        });
    }
}

fn event_loop(
    screen: &mut Screen,
    daemon: &Arc<dyn Daemon>,
    signals: &Signals,
) -> anyhow::Result<()> {
    let (answers, replies) = mpsc::channel();
    let worker = Worker {
        daemon: Arc::clone(daemon),
        answers,
    };
    let mut app = App::new();
    let started = Instant::now();
    let mut next_refresh = Instant::now();
    let mut next_spin = Instant::now();
    worker.submit(Call::Images);
    loop {
        if signals.quit.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut dirty = false;
        let now = Instant::now();
        if now >= next_refresh {
            next_refresh = now + REFRESH;
            for effect in app.tick(crate::output::now()) {
                if let Effect::Call(call) = effect {
                    worker.submit(call);
                }
            }
            dirty = true;
        }
        if !app.busy.is_empty() && now >= next_spin {
            next_spin = now + Duration::from_millis(250);
            app.spin = app.spin.wrapping_add(1);
            dirty = true;
        }
        while let Ok((call, result)) = replies.try_recv() {
            app.on_reply(call, result, started.elapsed().as_secs_f64());
            dirty = true;
        }
        if dirty {
            screen.draw(&app)?;
        }
        if !event::poll(INPUT_WAIT).context("reading the terminal")? {
            continue;
        }
        match event::read().context("reading the terminal")? {
            Event::Key(key) if key.kind == KeyEventKind::Press => {
                for effect in app.on_key(key) {
                    match effect {
                        Effect::Quit => return Ok(()),
                        Effect::Call(call) => worker.submit(call),
                        Effect::Ssh(vm) => {
                            let reminder = screen.suspended(|| {
                                eprintln!("banger tui: ssh to {vm}; exit the shell to come back");
                                daemon.ssh(&vm)
                            })?;
                            // A Ctrl-C typed during SSH was the session's.
                            signals.interrupt.store(false, Ordering::Relaxed);
                            match reminder {
                                Ok(line) => app.info(line),
                                Err(e) => app.error(format!("ssh {vm}: {}", e.one_line())),
                            }
                            next_refresh = Instant::now();
                        }
                    }
                }
                screen.draw(&app)?;
            }
            Event::Resize(..) => screen.draw(&app)?,
            _ => {}
        }
        if signals.interrupt.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

/// SIGTERM and SIGHUP end the TUI (and restore the terminal) like `q`;
/// SIGINT too, unless it came during an SSH session.
struct Signals {
    quit: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> anyhow::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let quit = Arc::new(AtomicBool::new(false));
        let interrupt = Arc::new(AtomicBool::new(false));
        for signal in [SIGTERM, SIGHUP] {
            signal_hook::flag::register(signal, Arc::clone(&quit))
                .context("watching for SIGTERM")?;
        }
        signal_hook::flag::register(SIGINT, Arc::clone(&interrupt))
            .context("watching for SIGINT")?;
        Ok(Self { quit, interrupt })
    }
}

/// The terminal in raw mode on the alternate screen; restored on drop,
/// and by the panic hook installed on entry.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        take_terminal()?;
        let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
            .context("setting up the terminal")?;
        Ok(Self { terminal })
    }

    fn draw(&mut self, app: &App) -> anyhow::Result<()> {
        self.terminal
            .draw(|frame| render::render(app, frame))
            .context("drawing the screen")?;
        Ok(())
    }

    /// Gives the terminal back for `f` (SSH), then takes it again.
    fn suspended<T>(&mut self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        restore_terminal();
        let out = f();
        take_terminal()?;
        self.terminal.clear().context("redrawing the screen")?;
        Ok(out)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn take_terminal() -> anyhow::Result<()> {
    terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
    execute!(
        std::io::stdout(),
        terminal::EnterAlternateScreen,
        cursor::Hide
    )
    .context("switching to the alternate screen")?;
    Ok(())
}

/// Best effort: runs from Drop and the panic hook, where errors have
/// nowhere to go.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
}
