//! Everything the screen shows, and how answers from the daemon change it.
//! Nothing here draws or does I/O: keys and replies go in, [`Effect`]s
//! come out (see `keys.rs`), and `render.rs` draws a frame from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use banger_proto::check::Check;
use banger_proto::{DaemonStatus, Image, ImageDetail, Vm, VmState, VmStats, VmSummary};

use super::daemon::{Call, CallError, Reply};
use super::form::{Form, FormKind, NAME};

/// What the event loop does for the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Call(Call),
    /// Give the terminal to `banger vm ssh NAME`, then take it back.
    Ssh(String),
    Quit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum View {
    #[default]
    Vms,
    Images,
    Doctor,
    Daemon,
}

impl View {
    pub const ALL: [View; 4] = [View::Vms, View::Images, View::Doctor, View::Daemon];

    pub fn title(self) -> &'static str {
        match self {
            View::Vms => "VMs",
            View::Images => "Images",
            View::Doctor => "Doctor",
            View::Daemon => "Daemon",
        }
    }
}

/// A dialog over the view; it takes every key until it closes.
#[derive(Debug, Clone, PartialEq)]
pub enum Modal {
    Help,
    /// `y` runs `call`.
    Confirm {
        title: String,
        lines: Vec<String>,
        call: Call,
    },
    /// Choosing the signal for `vm kill`.
    Signal {
        vms: Vec<String>,
        index: usize,
    },
    Form(Form),
}

/// The signals offered by the kill picker, most useful first.
pub const SIGNALS: [(&str, &str); 5] = [
    ("KILL", "end the VMM at once"),
    ("TERM", "ask the VMM to exit"),
    ("INT", "interrupt the VMM"),
    ("HUP", "hang up"),
    ("QUIT", "quit with a core dump"),
];

#[derive(Debug, Clone, PartialEq)]
pub struct StatusLine {
    pub text: String,
    pub error: bool,
}

/// Recent CPU use of one VM, from the cumulative seconds `vm.stats` gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuHistory {
    /// The previous sample: CPU seconds, at monotonic seconds.
    last: Option<(f64, f64)>,
    /// Percent of one CPU, oldest first.
    pub percent: VecDeque<u64>,
}

/// Samples kept per VM (the sparkline's width).
pub const CPU_SAMPLES: usize = 30;

impl CpuHistory {
    pub fn record(&mut self, cpu_seconds: f64, at: f64) {
        if let Some((cpu, when)) = self.last
            && at > when
        {
            let share = ((cpu_seconds - cpu).max(0.0) / (at - when) * 100.0).round();
            // A float percentage into the sparkline's integer scale.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            self.percent.push_back(share as u64);
            if self.percent.len() > CPU_SAMPLES {
                self.percent.pop_front();
            }
        }
        self.last = Some((cpu_seconds, at));
    }

    pub fn latest(&self) -> Option<u64> {
        self.percent.back().copied()
    }
}

#[derive(Debug, Clone, Default)]
pub struct App {
    pub view: View,
    pub vms: Vec<VmSummary>,
    /// Whether the first list has arrived (an empty list is not "loading").
    pub loaded: bool,
    /// The selected row's VM name; kept across refreshes and filters.
    pub selected: Option<String>,
    pub marked: BTreeSet<String>,
    pub filter: String,
    pub filtering: bool,
    pub modal: Option<Modal>,
    pub status: Option<StatusLine>,
    /// VMs with an action under way, and its verb ("stopping").
    pub busy: BTreeMap<String, String>,
    pub cpu: HashMap<String, CpuHistory>,
    pub stats: HashMap<String, VmStats>,
    /// `vm show` of the selected VM, and its console's last lines.
    pub detail: Option<Vm>,
    pub console: Vec<String>,
    pub images: Vec<Image>,
    pub image_selected: usize,
    pub image_detail: Option<ImageDetail>,
    pub checks: Option<Vec<Check>>,
    pub daemon: Option<DaemonStatus>,
    /// Polls sent and not answered yet, so a slow daemon is not flooded.
    pub in_flight: Vec<Call>,
    /// Unix seconds, for ages and uptimes; set by the loop.
    pub clock: i64,
    /// Advances every tick, for the busy rows' spinner.
    pub spin: usize,
    /// The last poll error, shown until a poll succeeds.
    pub poll_error: Option<String>,
}

impl App {
    pub fn new() -> Self {
        Self {
            view: View::Vms,
            ..Self::default()
        }
    }

    pub fn view(&self) -> View {
        self.view
    }

    /// The rows the table shows: every VM, or those whose name, image,
    /// state or IP contains the filter.
    pub fn visible(&self) -> Vec<&VmSummary> {
        let needle = self.filter.to_lowercase();
        self.vms
            .iter()
            .filter(|vm| {
                needle.is_empty()
                    || vm.name.contains(needle.as_str())
                    || vm.image.to_lowercase().contains(&needle)
                    || vm.state.as_str().contains(&needle)
                    || vm
                        .guest_ip
                        .is_some_and(|ip| ip.to_string().contains(&needle))
            })
            .collect()
    }

    pub fn selected_index(&self) -> Option<usize> {
        let visible = self.visible();
        let name = self.selected.as_deref()?;
        visible.iter().position(|vm| vm.name == name)
    }

    pub fn selected_vm(&self) -> Option<&VmSummary> {
        let name = self.selected.as_deref()?;
        self.visible().into_iter().find(|vm| vm.name == name)
    }

    /// Whether every VM named in `names` satisfies `test`.
    pub fn all_of(&self, names: &[String], test: impl Fn(&VmSummary) -> bool) -> bool {
        self.vms
            .iter()
            .filter(|vm| names.iter().any(|n| vm.name == n.as_str()))
            .all(test)
    }

    /// Marked VMs, else the selected one.
    pub fn targets(&self) -> Vec<String> {
        if self.marked.is_empty() {
            self.selected_vm()
                .map(|vm| vec![vm.name.to_string()])
                .unwrap_or_default()
        } else {
            self.marked.iter().cloned().collect()
        }
    }

    pub fn select_index(&mut self, index: usize) {
        let name = self
            .visible()
            .get(index)
            .map(|vm| vm.name.to_string())
            .or_else(|| self.visible().last().map(|vm| vm.name.to_string()));
        if name != self.selected {
            self.detail = None;
            self.console.clear();
        }
        self.selected = name;
    }

    /// Keeps a selection on a visible row.
    fn fix_selection(&mut self) {
        if self.selected_index().is_none() {
            self.select_index(0);
        }
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.status = Some(StatusLine {
            text: text.into(),
            error: false,
        });
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.status = Some(StatusLine {
            text: text.into(),
            error: true,
        });
    }

    /// What the loop sends every second: the list (from the daemon's
    /// cache), stats of running VMs, and whatever the view shows.
    pub fn tick(&mut self, clock: i64) -> Vec<Effect> {
        self.clock = clock;
        self.spin = self.spin.wrapping_add(1);
        let mut calls = vec![Call::List];
        match self.view() {
            View::Vms => {
                calls.extend(
                    self.vms
                        .iter()
                        .filter(|vm| vm.state == VmState::Running)
                        .map(|vm| Call::Stats(vm.name.to_string())),
                );
                if let Some(name) = self.selected.clone() {
                    calls.push(Call::Show(name.clone()));
                    if let Some(vm) = self.detail.as_ref().filter(|vm| vm.name == name.as_str()) {
                        calls.push(Call::Console {
                            vm: name,
                            dir: vm.dir.clone(),
                        });
                    }
                }
            }
            View::Daemon => calls.push(Call::Status),
            View::Images | View::Doctor => {}
        }
        calls.retain(|call| !self.in_flight.contains(call));
        self.in_flight.extend(calls.iter().cloned());
        calls.into_iter().map(Effect::Call).collect()
    }

    /// An answer from the worker. `at` is monotonic seconds, for CPU shares.
    pub fn on_reply(&mut self, call: Call, result: Result<Reply, CallError>, at: f64) {
        if let Some(i) = self.in_flight.iter().position(|c| *c == call) {
            self.in_flight.swap_remove(i);
        }
        let reply = match result {
            Ok(reply) => reply,
            Err(error) => return self.on_error(&call, &error),
        };
        if call.is_poll() {
            self.poll_error = None;
        }
        match (call, reply) {
            (Call::List, Reply::Vms(vms)) => {
                self.vms = vms;
                self.loaded = true;
                let names: BTreeSet<String> = self.vms.iter().map(|v| v.name.to_string()).collect();
                self.marked.retain(|n| names.contains(n));
                self.cpu.retain(|n, _| names.contains(n));
                self.stats.retain(|n, _| names.contains(n));
                self.fix_selection();
            }
            (Call::Show(name), Reply::Vm(vm)) => {
                if self.selected.as_deref() == Some(name.as_str()) {
                    self.detail = Some(*vm);
                }
            }
            (Call::Console { vm, .. }, Reply::Console(lines)) => {
                if self.selected.as_deref() == Some(vm.as_str()) {
                    self.console = lines;
                }
            }
            (Call::Stats(name), Reply::Stats(stats)) => {
                if let Some(cpu) = stats.cpu_seconds {
                    self.cpu.entry(name.clone()).or_default().record(cpu, at);
                }
                self.stats.insert(name, stats);
            }
            (Call::Create(params), Reply::Vm(vm)) => {
                if let Some(name) = &params.name {
                    self.busy.remove(name);
                }
                self.busy.remove("new VM");
                self.info(format!(
                    "created {} ({}), ip {}: Enter to SSH when it has booted",
                    vm.name,
                    vm.state,
                    vm.guest_ip.map_or_else(|| "-".into(), |ip| ip.to_string())
                ));
                self.selected = Some(vm.name.to_string());
            }
            (
                call @ (Call::Start(_)
                | Call::Stop(_)
                | Call::Pause(_)
                | Call::Unpause(_)
                | Call::Suspend(_)
                | Call::Restart(_)
                | Call::Delete(_)
                | Call::Kill(_)
                | Call::Set(_)),
                Reply::Batch(result),
            ) => {
                for vm in targets_of(&call) {
                    self.busy.remove(&vm);
                }
                let verb = done_verb(&call);
                let (text, all_ok) = crate::output::batch_lines(&result, &verb);
                if all_ok {
                    let names: Vec<&str> = result.items.iter().map(|i| i.vm_ref.as_str()).collect();
                    self.info(format!("{verb} {}", names.join(", ")));
                } else {
                    let failed = result.items.iter().find_map(|item| {
                        let error = item.error.as_ref()?;
                        let causes = error
                            .data
                            .as_ref()
                            .map(|d| d.causes.clone())
                            .unwrap_or_default();
                        let chain = CallError {
                            message: error.message.clone(),
                            causes,
                        };
                        Some(format!("{}: {}", item.vm_ref, chain.one_line()))
                    });
                    self.error(failed.unwrap_or_else(|| text.replace('\n', "; ")));
                }
            }
            (Call::Rename(params), Reply::Vm(vm)) => {
                self.busy.remove(&params.vm);
                self.info(format!("renamed {} to {}", params.vm, vm.name));
                self.selected = Some(vm.name.to_string());
                self.detail = None;
            }
            (Call::SuggestName, Reply::Name(name)) => {
                if let Some(Modal::Form(form)) = &mut self.modal
                    && form.kind == FormKind::Create
                    && let Some(field) = form.fields.iter_mut().find(|f| f.label == NAME)
                    && field.value.is_empty()
                {
                    field.value = name.to_string();
                }
            }
            (call @ (Call::Images | Call::ImageDelete(_)), Reply::Images(images)) => {
                if let Call::ImageDelete(name) = call {
                    self.info(format!("deleted image {name}"));
                    self.image_detail = None;
                }
                self.images = images;
                self.image_selected = self.image_selected.min(self.images.len().saturating_sub(1));
                if let Some(Modal::Form(form)) = &mut self.modal {
                    let names: Vec<String> = self.images.iter().map(|i| i.name.clone()).collect();
                    for field in &mut form.fields {
                        if let super::form::FieldKind::Choice(options) = &mut field.kind {
                            *options = names.clone();
                        }
                    }
                }
            }
            (Call::ImageShow(_), Reply::Image(detail)) => self.image_detail = Some(*detail),
            (Call::Doctor, Reply::Checks(checks)) => self.checks = Some(checks),
            (Call::Status, Reply::Status(status)) => self.daemon = Some(*status),
            // The daemon answers each call with its own kind of reply.
            (_, _) => {}
        }
    }

    fn on_error(&mut self, call: &Call, error: &CallError) {
        for vm in targets_of(call) {
            self.busy.remove(&vm);
        }
        if let Call::Create(params) = call {
            self.busy.remove(params.name.as_deref().unwrap_or("new VM"));
        }
        if call.is_poll() {
            let text = error.one_line();
            // Said once; a vanished VM's stats are not news.
            if !matches!(call, Call::Stats(_) | Call::Show(_) | Call::Console { .. })
                && self.poll_error.as_deref() != Some(text.as_str())
            {
                self.error(format!("cannot refresh: {text}"));
                self.poll_error = Some(text);
            }
            return;
        }
        self.error(format!("{}: {}", failed_what(call), error.one_line()));
    }
}

/// The VMs a call acts on, for their busy marks.
pub fn targets_of(call: &Call) -> Vec<String> {
    match call {
        Call::Start(vms)
        | Call::Stop(vms)
        | Call::Pause(vms)
        | Call::Unpause(vms)
        | Call::Suspend(vms)
        | Call::Restart(vms)
        | Call::Delete(vms) => vms.clone(),
        Call::Kill(params) => params.vms.clone(),
        Call::Set(params) => params.vms.clone(),
        Call::Create(params) => params.name.iter().cloned().collect(),
        Call::Rename(params) => vec![params.vm.clone()],
        _ => Vec::new(),
    }
}

/// "stopping", shown in the row while the call runs.
pub fn busy_verb(call: &Call) -> &'static str {
    match call {
        Call::Start(_) => "starting",
        Call::Stop(_) => "stopping",
        Call::Pause(_) => "pausing",
        Call::Unpause(_) => "unpausing",
        Call::Suspend(_) => "suspending",
        Call::Restart(_) => "restarting",
        Call::Delete(_) => "deleting",
        Call::Kill(_) => "signalling",
        Call::Set(_) => "updating",
        Call::Create(_) => "creating",
        Call::Rename(_) => "renaming",
        _ => "working",
    }
}

fn done_verb(call: &Call) -> String {
    match call {
        Call::Start(_) => "started".into(),
        Call::Stop(_) => "stopped".into(),
        Call::Pause(_) => "paused".into(),
        Call::Unpause(_) => "unpaused".into(),
        Call::Suspend(_) => "suspended".into(),
        Call::Restart(_) => "restarted".into(),
        Call::Delete(_) => "deleted".into(),
        Call::Kill(params) => format!("sent {} to", params.signal),
        Call::Set(_) => "updated".into(),
        _ => "done".into(),
    }
}

fn failed_what(call: &Call) -> String {
    match call {
        Call::Create(params) => format!("create {}", params.name.as_deref().unwrap_or("a VM")),
        Call::ImageDelete(name) => format!("image delete {name}"),
        Call::ImageShow(name) => format!("image show {name}"),
        Call::Images => "image list".into(),
        Call::Doctor => "doctor".into(),
        Call::Status => "daemon status".into(),
        Call::SuggestName => "name generator".into(),
        other => {
            let word = match other {
                Call::Start(_) => "start",
                Call::Stop(_) => "stop",
                Call::Pause(_) => "pause",
                Call::Unpause(_) => "unpause",
                Call::Suspend(_) => "suspend",
                Call::Restart(_) => "restart",
                Call::Delete(_) => "delete",
                Call::Kill(_) => "kill",
                Call::Set(_) => "set",
                Call::Rename(_) => "rename",
                _ => "refresh",
            };
            format!("{word} {}", targets_of(other).join(", "))
        }
    }
}
