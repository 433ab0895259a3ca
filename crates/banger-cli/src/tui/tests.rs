//! The screen as text (ratatui's `TestBackend`, compared with insta
//! snapshots in `snapshots/`), and key sequences run against a recording
//! fake daemon.

use std::sync::Mutex;

use banger_proto::{
    BatchItem, BatchResult, CreateVmParams, KillParams, RpcError, SetVmParams, Vm, VmName, VmState,
    VmStats, VmSummary,
};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::json;

use super::daemon::{Call, CallError, Daemon, Reply};
use super::render::render;
use super::state::{App, Effect, Modal};

/// 2026-11-28 12:00:00 UTC: ages in the snapshots do not move.
const CLOCK: i64 = 1_795_867_200;

fn summary(name: &str, state: VmState, ip: Option<&str>, nat: bool) -> VmSummary {
    let running = state == VmState::Running;
    serde_json::from_value(json!({
        "id": format!("{:0<32}", name.replace('-', "")),
        "name": name,
        "state": state,
        "image": "default",
        "vmm": "qemu",
        "vcpu": 2,
        "memory_mib": 1024,
        "disk_size_bytes": 8u64 << 30,
        "nat": nat,
        "guest_ip": ip,
        "pid": if running { Some(4242) } else { None },
        "created_at": CLOCK - 86_400,
        "started_at": if running { Some(CLOCK - 3_725) } else { None },
    }))
    .unwrap()
}

fn detail(vm: &VmSummary) -> Vm {
    let dir = format!("/home/dev/.local/state/banger/vms/{}", vm.id);
    serde_json::from_value(json!({
        "id": vm.id, "name": vm.name, "state": vm.state, "image": vm.image,
        "vmm": vm.vmm, "vcpu": vm.vcpu, "memory_mib": vm.memory_mib,
        "disk_size_bytes": vm.disk_size_bytes, "nat": vm.nat, "guest_ip": vm.guest_ip,
        "tap": "bgtap0", "vsock_cid": 3, "vsock_path": format!("{dir}/vsock.sock"),
        "pid": vm.pid, "created_at": vm.created_at, "started_at": vm.started_at,
        "stopped_at": null, "exit_reason": null, "last_error": null,
        "dir": dir, "overlay_path": format!("{dir}/overlay.qcow2"),
        "work_disk_path": format!("{dir}/work.ext4"), "vmm_log_path": format!("{dir}/vmm.log"),
    }))
    .unwrap()
}

fn stats(vm: &VmSummary, cpu_seconds: f64) -> VmStats {
    serde_json::from_value(json!({
        "vm": vm.name, "id": vm.id, "state": vm.state, "pid": vm.pid,
        "cpu_seconds": cpu_seconds, "rss_bytes": 612u64 << 20, "uptime_secs": 3725,
        "overlay": {"allocated_bytes": 96u64 << 20, "apparent_bytes": 4u64 << 30},
        "work_disk": {"allocated_bytes": 300u64 << 20, "apparent_bytes": 8u64 << 30},
    }))
    .unwrap()
}

fn mixed() -> Vec<VmSummary> {
    vec![
        summary("calm-otter", VmState::Running, Some("172.30.0.2"), true),
        summary("web-1", VmState::Stopped, Some("172.30.0.3"), false),
        summary("api-2", VmState::Failed, Some("172.30.0.4"), false),
        summary("build-box", VmState::Running, Some("172.30.0.5"), false),
    ]
}

/// An app showing `vms`, as after the first refresh.
fn app_with(vms: Vec<VmSummary>) -> App {
    let mut app = App::new();
    app.tick(CLOCK);
    app.on_reply(Call::List, Ok(Reply::Vms(vms)), 0.0);
    app
}

fn screen(app: &App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(120, 32)).unwrap();
    terminal.draw(|frame| render(app, frame)).unwrap();
    terminal.backend().to_string()
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn keys(app: &mut App, text: &str) -> Vec<Effect> {
    text.chars()
        .flat_map(|c| app.on_key(key(KeyCode::Char(c))))
        .collect()
}

#[test]
fn snapshot_empty_list() {
    insta::assert_snapshot!(screen(&app_with(Vec::new())));
}

#[test]
fn snapshot_mixed_states_with_marks_and_progress() {
    let mut app = app_with(mixed());
    let vms = app.vms.clone();
    for (at, cpu) in [(0.0, 10.0), (1.0, 10.35), (2.0, 11.0)] {
        app.on_reply(
            Call::Stats("calm-otter".into()),
            Ok(Reply::Stats(stats(&vms[0], cpu))),
            at,
        );
    }
    app.marked.insert("api-2".into());
    app.busy.insert("web-1".into(), "starting".into());
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn snapshot_detail_pane() {
    let mut app = app_with(mixed());
    let vm = app.vms[0].clone();
    app.on_reply(
        Call::Show("calm-otter".into()),
        Ok(Reply::Vm(Box::new(detail(&vm)))),
        0.0,
    );
    app.on_reply(
        Call::Stats("calm-otter".into()),
        Ok(Reply::Stats(stats(&vm, 3.0))),
        0.0,
    );
    app.on_reply(
        Call::Stats("calm-otter".into()),
        Ok(Reply::Stats(stats(&vm, 3.4))),
        1.0,
    );
    app.on_reply(
        Call::Console {
            vm: "calm-otter".into(),
            dir: "/x".into(),
        },
        Ok(Reply::Console(vec![
            "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.".into(),
            "[  OK  ] Reached target multi-user.target - Multi-User System.".into(),
            "calm-otter login:".into(),
        ])),
        1.0,
    );
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn snapshot_confirm_dialog() {
    let mut app = app_with(mixed());
    keys(&mut app, " ");
    let effects = keys(&mut app, "d");
    assert!(effects.is_empty(), "nothing is deleted before the answer");
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn snapshot_create_form_with_a_validation_error() {
    let mut app = app_with(mixed());
    keys(&mut app, "c");
    app.on_reply(
        Call::SuggestName,
        Ok(Reply::Name(VmName::parse("brisk-heron").unwrap())),
        0.0,
    );
    app.on_key(key(KeyCode::Tab));
    app.on_key(key(KeyCode::Tab));
    keys(&mut app, "64");
    let effects = app.on_key(key(KeyCode::Enter));
    assert!(effects.is_empty(), "a bad form sends nothing");
    let Some(Modal::Form(form)) = &app.modal else {
        panic!("the form stays open");
    };
    assert_eq!(
        form.error.as_deref(),
        Some("vcpu: invalid vCPU count 64: use 1 to 32")
    );
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn snapshot_status_line_after_an_error() {
    let mut app = app_with(mixed());
    app.on_reply(
        Call::Start(vec!["web-1".into()]),
        Err(CallError {
            message: "starting web-1".into(),
            causes: vec![
                "creating TAP device bgtap1".into(),
                "Operation not permitted (os error 1)".into(),
            ],
        }),
        0.0,
    );
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn snapshot_help_screen() {
    let mut app = app_with(mixed());
    keys(&mut app, "?");
    insta::assert_snapshot!(screen(&app));
}

/// Answers like a daemon with a fixed set of VMs, and records every call.
#[derive(Default)]
struct RecordingDaemon {
    calls: Mutex<Vec<Call>>,
}

impl Daemon for RecordingDaemon {
    fn call(&self, call: &Call) -> Result<Reply, CallError> {
        self.calls.lock().unwrap().push(call.clone());
        let batch = |vms: &[String]| {
            Reply::Batch(BatchResult {
                items: vms
                    .iter()
                    .map(|vm| BatchItem {
                        vm_ref: vm.clone(),
                        vm: None,
                        error: None,
                    })
                    .collect(),
            })
        };
        Ok(match call {
            Call::List => Reply::Vms(mixed()),
            Call::Start(vms)
            | Call::Stop(vms)
            | Call::Pause(vms)
            | Call::Unpause(vms)
            | Call::Suspend(vms)
            | Call::Restart(vms)
            | Call::Delete(vms) => batch(vms),
            Call::Kill(p) => batch(&p.vms),
            Call::Set(p) => batch(&p.vms),
            Call::SuggestName => Reply::Name(VmName::parse("brisk-heron").unwrap()),
            Call::Rename(p) => {
                let vm = summary(&p.name, VmState::Running, None, false);
                Reply::Vm(Box::new(detail(&vm)))
            }
            Call::Create(p) => {
                let vm = summary(
                    p.name.as_deref().unwrap_or("x"),
                    VmState::Running,
                    None,
                    p.nat,
                );
                Reply::Vm(Box::new(detail(&vm)))
            }
            Call::Images => Reply::Images(Vec::new()),
            other => return Err(CallError::new(format!("unexpected {other:?}"))),
        })
    }

    fn ssh(&self, _vm: &str) -> Result<String, CallError> {
        unreachable!("the loop runs SSH, not these tests")
    }
}

/// Types `input` (one key per char; `\n` is Enter, `\t` Tab) and runs each
/// call against the fake at once, as the loop would.
fn drive(app: &mut App, fake: &RecordingDaemon, input: &str) -> Vec<Effect> {
    let mut others = Vec::new();
    for c in input.chars() {
        let code = match c {
            '\n' => KeyCode::Enter,
            '\t' => KeyCode::Tab,
            '\u{1b}' => KeyCode::Esc,
            '\u{8}' => KeyCode::Backspace,
            c => KeyCode::Char(c),
        };
        for effect in app.on_key(key(code)) {
            match effect {
                Effect::Call(call) => {
                    let result = fake.call(&call);
                    app.on_reply(call, result, 0.0);
                }
                other => others.push(other),
            }
        }
    }
    others
}

fn recorded(fake: &RecordingDaemon) -> Vec<Call> {
    std::mem::take(&mut *fake.calls.lock().unwrap())
}

#[test]
fn actions_on_the_selected_or_marked_vms_make_their_calls() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    drive(&mut app, &fake, "x");
    assert_eq!(recorded(&fake), [Call::Stop(vec!["calm-otter".into()])]);
    assert_eq!(app.status.as_ref().unwrap().text, "stopped calm-otter");

    // Mark web-1 and api-2 (space moves down), then start both.
    drive(&mut app, &fake, "j  u");
    assert_eq!(
        recorded(&fake),
        [Call::Start(vec!["api-2".into(), "web-1".into()])]
    );

    drive(&mut app, &fake, "r");
    assert_eq!(recorded(&fake), [Call::Restart(vec!["build-box".into()])]);

    // Kill: the picker's second signal is TERM.
    drive(&mut app, &fake, "gKj\n");
    assert_eq!(
        recorded(&fake),
        [Call::Kill(KillParams {
            vms: vec!["calm-otter".into()],
            signal: "TERM".into()
        })]
    );

    // NAT: calm-otter has it, so n turns it off.
    drive(&mut app, &fake, "n");
    assert_eq!(
        recorded(&fake),
        [Call::Set(SetVmParams {
            vms: vec!["calm-otter".into()],
            nat: Some(false),
            ..SetVmParams::default()
        })]
    );
}

#[test]
fn delete_asks_first_and_no_cancels() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    drive(&mut app, &fake, "dn");
    assert!(recorded(&fake).is_empty());
    assert_eq!(app.status.as_ref().unwrap().text, "cancelled");
    drive(&mut app, &fake, "jdy");
    assert_eq!(recorded(&fake), [Call::Delete(vec!["web-1".into()])]);
}

#[test]
fn the_create_form_sends_what_was_typed() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    drive(&mut app, &fake, "c");
    assert_eq!(recorded(&fake), [Call::SuggestName, Call::Images]);
    // Keep the suggested name; 4 vCPUs, 2048 MiB, 16G, NAT on, one port.
    drive(&mut app, &fake, "\t\t4\t2048\t16G\t \t8080:80\n");
    assert_eq!(
        recorded(&fake),
        [Call::Create(CreateVmParams {
            name: Some("brisk-heron".into()),
            image: None,
            vcpu: Some(4),
            memory_mib: Some(2048),
            disk_size: Some("16G".into()),
            nat: true,
            vmm: None,
            publish: vec!["127.0.0.1:8080:80".parse().unwrap()],
        })]
    );
    assert!(app.modal.is_none());
    assert!(
        app.status
            .as_ref()
            .unwrap()
            .text
            .starts_with("created brisk-heron")
    );
}

#[test]
fn set_is_refused_while_running_and_sends_only_changes() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    drive(&mut app, &fake, "e\t\u{8}\u{8}\u{8}\u{8}4096\n");
    let Some(Modal::Form(form)) = &app.modal else {
        panic!("the form stays open");
    };
    assert!(
        form.error
            .as_deref()
            .unwrap()
            .contains("calm-otter is running"),
        "{:?}",
        form.error
    );
    drive(&mut app, &fake, "\u{1b}");
    assert!(recorded(&fake).is_empty());

    // web-1 is stopped: only the memory changes.
    drive(&mut app, &fake, "je\t");
    for _ in 0..4 {
        app.on_key(key(KeyCode::Backspace));
    }
    drive(&mut app, &fake, "4096\n");
    assert_eq!(
        recorded(&fake),
        [Call::Set(SetVmParams {
            vms: vec!["web-1".into()],
            memory_mib: Some(4096),
            ..SetVmParams::default()
        })]
    );
}

#[test]
fn rename_sends_the_new_name_and_the_selection_follows() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    drive(&mut app, &fake, "R");
    for _ in 0.."calm-otter".len() {
        app.on_key(key(KeyCode::Backspace));
    }
    drive(&mut app, &fake, "Bad\n");
    let Some(Modal::Form(form)) = &app.modal else {
        panic!("a bad name keeps the form open");
    };
    assert!(form.error.as_deref().unwrap().starts_with("new name: "));
    app.on_key(key(KeyCode::Backspace));
    app.on_key(key(KeyCode::Backspace));
    app.on_key(key(KeyCode::Backspace));
    drive(&mut app, &fake, "calm-heron\n");
    assert_eq!(
        recorded(&fake),
        [Call::Rename(banger_proto::RenameVmParams {
            vm: "calm-otter".into(),
            name: "calm-heron".into()
        })]
    );
    assert_eq!(
        app.status.as_ref().unwrap().text,
        "renamed calm-otter to calm-heron"
    );
    assert_eq!(app.selected.as_deref(), Some("calm-heron"));
}

#[test]
fn ssh_is_offered_only_for_running_vms_and_quit_quits() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    assert_eq!(
        drive(&mut app, &fake, "\n"),
        [Effect::Ssh("calm-otter".into())]
    );
    assert_eq!(drive(&mut app, &fake, "js"), []);
    assert!(
        app.status
            .as_ref()
            .unwrap()
            .text
            .contains("web-1 is stopped")
    );
    assert_eq!(drive(&mut app, &fake, "q"), [Effect::Quit]);
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(app.on_key(ctrl_c), [Effect::Quit]);
}

#[test]
fn the_filter_narrows_the_rows_and_actions_follow_it() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    drive(&mut app, &fake, "/build\n");
    assert_eq!(app.visible().len(), 1);
    drive(&mut app, &fake, "x");
    assert_eq!(recorded(&fake), [Call::Stop(vec!["build-box".into()])]);
}

#[test]
fn a_failed_item_shows_the_daemons_message_and_causes() {
    let mut app = app_with(mixed());
    let error = RpcError::new(banger_proto::ErrorKind::Conflict, "web-1 is stopped")
        .with_causes(vec!["nothing to stop".into()]);
    app.on_reply(
        Call::Stop(vec!["web-1".into()]),
        Ok(Reply::Batch(BatchResult {
            items: vec![BatchItem {
                vm_ref: "web-1".into(),
                vm: None,
                error: Some(error),
            }],
        })),
        0.0,
    );
    let status = app.status.unwrap();
    assert!(status.error);
    assert_eq!(status.text, "web-1: web-1 is stopped: nothing to stop");
}

#[test]
fn polls_are_not_sent_again_while_one_is_in_flight() {
    let mut app = App::new();
    assert_eq!(app.tick(CLOCK), [Effect::Call(Call::List)]);
    assert_eq!(app.tick(CLOCK + 1), []);
    app.on_reply(Call::List, Ok(Reply::Vms(mixed())), 0.0);
    let next = app.tick(CLOCK + 2);
    assert!(next.contains(&Effect::Call(Call::List)));
    assert!(next.contains(&Effect::Call(Call::Stats("calm-otter".into()))));
    assert!(next.contains(&Effect::Call(Call::Show("calm-otter".into()))));
}

#[test]
fn cpu_share_is_the_change_in_cpu_seconds_over_wall_time() {
    let mut history = super::state::CpuHistory::default();
    history.record(10.0, 0.0);
    assert_eq!(history.latest(), None);
    history.record(10.5, 1.0);
    history.record(12.0, 2.0);
    assert_eq!(history.percent, [50, 150]);
}

#[test]
fn z_suspends_the_targets() {
    let fake = RecordingDaemon::default();
    let mut app = app_with(mixed());
    drive(&mut app, &fake, "z");
    assert_eq!(recorded(&fake), [Call::Suspend(vec!["calm-otter".into()])]);
    assert_eq!(app.status.as_ref().unwrap().text, "suspended calm-otter");
}

#[test]
fn p_pauses_and_unpauses_when_every_target_is_paused() {
    let fake = RecordingDaemon::default();
    let mut vms = mixed();
    let mut app = app_with(vms.clone());
    drive(&mut app, &fake, "p");
    assert_eq!(recorded(&fake), [Call::Pause(vec!["calm-otter".into()])]);
    assert_eq!(app.status.as_ref().unwrap().text, "paused calm-otter");
    vms[0].state = VmState::Paused;
    let mut app = app_with(vms);
    drive(&mut app, &fake, "p");
    assert_eq!(recorded(&fake), [Call::Unpause(vec!["calm-otter".into()])]);
}
