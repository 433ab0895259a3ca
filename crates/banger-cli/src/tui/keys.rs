//! Keys in, effects out: the one place that says what each key does.

use banger_proto::{KillParams, SetVmParams, VmState};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::daemon::Call;
use super::form::{Form, FormKind};
use super::state::{App, Effect, Modal, SIGNALS, View, busy_verb, targets_of};

/// Every key, by view, for the help screen.
pub const HELP: &[(&str, &[(&str, &str)])] = &[
    (
        "everywhere",
        &[
            ("1-4, Tab", "VMs, Images, Doctor, Daemon views"),
            ("?", "this help"),
            ("q, Ctrl-C", "quit"),
        ],
    ),
    (
        "VMs",
        &[
            ("↑↓ j k, g G", "select"),
            ("space", "mark or unmark (actions apply to marked VMs)"),
            ("Esc", "clear marks and filter"),
            ("/", "filter by name, image, state or IP"),
            ("Enter, s", "SSH into the VM"),
            ("c", "create a VM"),
            ("u", "start, or resume a suspended VM"),
            ("x", "stop"),
            ("r", "restart"),
            ("p", "pause or unpause (vCPUs frozen in place)"),
            ("z", "suspend (memory to disk; u resumes)"),
            ("K", "kill (choose the signal)"),
            ("d", "delete (asks first)"),
            ("n", "toggle NAT"),
            ("e", "set vCPU, memory, disk size (stopped VMs)"),
            ("R", "rename"),
        ],
    ),
    (
        "Images",
        &[
            ("↑↓ j k", "select (details below)"),
            ("d", "delete (asks first)"),
            ("b", "build"),
        ],
    ),
    ("Doctor, Daemon", &[("r", "check again")]),
    (
        "forms",
        &[
            ("Tab ↑↓", "next, previous field"),
            ("←→, space", "change a choice or toggle"),
            ("Enter", "submit"),
            ("Esc", "cancel"),
        ],
    ),
];

impl App {
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return vec![Effect::Quit];
        }
        if let Some(modal) = self.modal.take() {
            return self.on_modal_key(modal, key);
        }
        if self.filtering {
            match key.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            if self.selected_index().is_none() {
                self.select_index(0);
            }
            return Vec::new();
        }
        match key.code {
            KeyCode::Char('q') => return vec![Effect::Quit],
            KeyCode::Char('?') => {
                self.modal = Some(Modal::Help);
                return Vec::new();
            }
            KeyCode::Char(c @ '1'..='4') => {
                let index = usize::from(c as u8 - b'1');
                return self.switch_view(View::ALL[index]);
            }
            KeyCode::Tab => {
                let at = View::ALL
                    .iter()
                    .position(|v| *v == self.view())
                    .unwrap_or(0);
                return self.switch_view(View::ALL[(at + 1) % View::ALL.len()]);
            }
            _ => {}
        }
        match self.view() {
            View::Vms => self.on_vms_key(key),
            View::Images => self.on_images_key(key),
            View::Doctor => match key.code {
                KeyCode::Char('r') => {
                    self.checks = None;
                    vec![Effect::Call(Call::Doctor)]
                }
                _ => Vec::new(),
            },
            View::Daemon => match key.code {
                KeyCode::Char('r') => vec![Effect::Call(Call::Status)],
                _ => Vec::new(),
            },
        }
    }

    fn switch_view(&mut self, view: View) -> Vec<Effect> {
        self.view = view;
        match view {
            View::Vms => vec![Effect::Call(Call::List)],
            View::Images => {
                let mut calls = vec![Effect::Call(Call::Images)];
                if let Some(image) = self.images.get(self.image_selected) {
                    calls.push(Effect::Call(Call::ImageShow(image.name.clone())));
                }
                calls
            }
            View::Doctor => {
                self.checks = None;
                vec![Effect::Call(Call::Doctor)]
            }
            View::Daemon => vec![Effect::Call(Call::Status)],
        }
    }

    fn on_vms_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let count = self.visible().len();
        let at = self.selected_index().unwrap_or(0);
        match key.code {
            KeyCode::Down | KeyCode::Char('j') => {
                self.select_index((at + 1).min(count.saturating_sub(1)))
            }
            KeyCode::Up | KeyCode::Char('k') => self.select_index(at.saturating_sub(1)),
            KeyCode::Home | KeyCode::Char('g') => self.select_index(0),
            KeyCode::End | KeyCode::Char('G') => self.select_index(count.saturating_sub(1)),
            KeyCode::Char('/') => self.filtering = true,
            KeyCode::Esc => {
                self.marked.clear();
                self.filter.clear();
            }
            KeyCode::Char(' ') => {
                if let Some(name) = self.selected_vm().map(|vm| vm.name.to_string()) {
                    if !self.marked.remove(&name) {
                        self.marked.insert(name);
                    }
                    self.select_index(at + 1);
                }
            }
            KeyCode::Enter | KeyCode::Char('s') => return self.ssh(),
            KeyCode::Char('c') => {
                let images: Vec<String> = self.images.iter().map(|i| i.name.clone()).collect();
                self.modal = Some(Modal::Form(Form::create(None, &images)));
                return vec![Effect::Call(Call::SuggestName), Effect::Call(Call::Images)];
            }
            KeyCode::Char('u') => return self.act(Call::Start),
            KeyCode::Char('x') => return self.act(Call::Stop),
            KeyCode::Char('r') => return self.act(Call::Restart),
            KeyCode::Char('K') => {
                let vms = self.targets();
                if !vms.is_empty() {
                    self.modal = Some(Modal::Signal { vms, index: 0 });
                }
            }
            KeyCode::Char('d') => {
                let vms = self.targets();
                if !vms.is_empty() {
                    self.modal = Some(Modal::Confirm {
                        title: format!(
                            "Delete {}?",
                            if vms.len() == 1 {
                                vms[0].clone()
                            } else {
                                format!("{} VMs", vms.len())
                            }
                        ),
                        lines: vec![
                            vms.join(", "),
                            "Their disks, /root included, and every file they own are removed."
                                .into(),
                        ],
                        call: Call::Delete(vms),
                    });
                }
            }
            // Toggles go one direction for all targets: the other way
            // only when every target is already there.
            KeyCode::Char('p') => {
                let vms = self.targets();
                if !vms.is_empty() {
                    let all_paused =
                        self.all_of(&vms, |vm| vm.state == banger_proto::VmState::Paused);
                    return self.start(if all_paused {
                        Call::Unpause(vms)
                    } else {
                        Call::Pause(vms)
                    });
                }
            }
            KeyCode::Char('z') => {
                let vms = self.targets();
                if !vms.is_empty() {
                    return self.start(Call::Suspend(vms));
                }
            }
            KeyCode::Char('n') => {
                let vms = self.targets();
                if !vms.is_empty() {
                    let all_on = self.all_of(&vms, |vm| vm.nat);
                    return self.start(Call::Set(SetVmParams {
                        vms,
                        nat: Some(!all_on),
                        ..SetVmParams::default()
                    }));
                }
            }
            KeyCode::Char('R') => {
                if let Some(vm) = self.selected_vm() {
                    self.modal = Some(Modal::Form(Form::rename(&vm.name)));
                }
            }
            KeyCode::Char('e') => {
                let names = self.targets();
                let vms: Vec<_> = self
                    .vms
                    .iter()
                    .filter(|vm| names.iter().any(|n| vm.name == n.as_str()))
                    .collect();
                if !vms.is_empty() {
                    self.modal = Some(Modal::Form(Form::set(&vms)));
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn on_images_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let count = self.images.len();
        let before = self.image_selected;
        match key.code {
            KeyCode::Down | KeyCode::Char('j') => {
                self.image_selected = (before + 1).min(count.saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => self.image_selected = before.saturating_sub(1),
            KeyCode::Char('d') => {
                if let Some(image) = self.images.get(before) {
                    self.modal = Some(Modal::Confirm {
                        title: format!("Delete image {}?", image.name),
                        lines: vec![
                            format!("Its files under {} are removed.", image.rootfs.display()),
                            "VMs using it keep it: the daemon refuses while any does.".into(),
                        ],
                        call: Call::ImageDelete(image.name.clone()),
                    });
                }
                return Vec::new();
            }
            KeyCode::Char('b') => {
                self.error(
                    "images are built from a shell, where the steps show: banger image build --name NAME (see --help)",
                );
                return Vec::new();
            }
            _ => return Vec::new(),
        }
        match self.images.get(self.image_selected) {
            Some(image) if self.image_selected != before || self.image_detail.is_none() => {
                vec![Effect::Call(Call::ImageShow(image.name.clone()))]
            }
            _ => Vec::new(),
        }
    }

    fn ssh(&mut self) -> Vec<Effect> {
        let Some(vm) = self.selected_vm() else {
            return Vec::new();
        };
        if vm.state != VmState::Running {
            let name = vm.name.to_string();
            let state = vm.state;
            self.error(format!("{name} is {state}: start it with u, then SSH"));
            return Vec::new();
        }
        vec![Effect::Ssh(vm.name.to_string())]
    }

    /// A batch action on the targets.
    fn act(&mut self, call: fn(Vec<String>) -> Call) -> Vec<Effect> {
        let vms = self.targets();
        if vms.is_empty() {
            return Vec::new();
        }
        self.start(call(vms))
    }

    /// Marks the call's VMs busy, says so, and sends it. Marks are spent:
    /// the next action is on the selection again.
    fn start(&mut self, call: Call) -> Vec<Effect> {
        self.marked.clear();
        let verb = busy_verb(&call);
        let vms = targets_of(&call);
        for vm in &vms {
            self.busy.insert(vm.clone(), verb.to_owned());
        }
        if let Call::Create(params) = &call
            && params.name.is_none()
        {
            self.busy.insert("new VM".into(), verb.to_owned());
        }
        let what = if vms.is_empty() {
            "a new VM".to_owned()
        } else {
            vms.join(", ")
        };
        self.info(format!("{verb} {what}..."));
        vec![Effect::Call(call)]
    }

    fn on_modal_key(&mut self, modal: Modal, key: KeyEvent) -> Vec<Effect> {
        match modal {
            Modal::Help => Vec::new(),
            Modal::Confirm { title, lines, call } => match key.code {
                KeyCode::Char('y') | KeyCode::Enter => {
                    if matches!(call, Call::ImageDelete(_)) {
                        vec![Effect::Call(call)]
                    } else {
                        self.start(call)
                    }
                }
                KeyCode::Char('n') | KeyCode::Esc | KeyCode::Char('q') => {
                    self.info("cancelled");
                    Vec::new()
                }
                _ => {
                    self.modal = Some(Modal::Confirm { title, lines, call });
                    Vec::new()
                }
            },
            Modal::Signal { vms, index } => match key.code {
                KeyCode::Down | KeyCode::Char('j') => {
                    self.modal = Some(Modal::Signal {
                        vms,
                        index: (index + 1).min(SIGNALS.len() - 1),
                    });
                    Vec::new()
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    self.modal = Some(Modal::Signal {
                        vms,
                        index: index.saturating_sub(1),
                    });
                    Vec::new()
                }
                KeyCode::Enter => self.start(Call::Kill(KillParams {
                    vms,
                    signal: SIGNALS[index].0.to_owned(),
                })),
                KeyCode::Esc | KeyCode::Char('q') => Vec::new(),
                _ => {
                    self.modal = Some(Modal::Signal { vms, index });
                    Vec::new()
                }
            },
            Modal::Form(mut form) => {
                match key.code {
                    KeyCode::Esc => return Vec::new(),
                    KeyCode::Tab | KeyCode::Down => form.next(),
                    KeyCode::BackTab | KeyCode::Up => form.previous(),
                    KeyCode::Left => form.cycle(false),
                    KeyCode::Right => form.cycle(true),
                    KeyCode::Backspace => form.backspace(),
                    KeyCode::Char(c) => form.type_char(c),
                    KeyCode::Enter => {
                        let submitted = match &form.kind {
                            FormKind::Create => form.create_params().map(Call::Create),
                            FormKind::Set { .. } => {
                                let states: Vec<(String, VmState)> = self
                                    .vms
                                    .iter()
                                    .map(|vm| (vm.name.to_string(), vm.state))
                                    .collect();
                                form.set_params(&states).map(Call::Set)
                            }
                            FormKind::Rename { .. } => form.rename_params().map(Call::Rename),
                        };
                        match submitted {
                            Ok(call) => return self.start(call),
                            Err(error) => form.error = Some(error),
                        }
                    }
                    _ => {}
                }
                self.modal = Some(Modal::Form(form));
                Vec::new()
            }
        }
    }
}
