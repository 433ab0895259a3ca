//! Draws a frame from [`App`]: no I/O, no state change, so a test can
//! render any state into a `TestBackend` and compare the text.

use banger_proto::check::CheckStatus;
use banger_proto::validate::format_size;
use banger_proto::{VmState, VmSummary};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap};

use super::form::{FieldKind, Form};
use super::keys::HELP;
use super::state::{App, Modal, SIGNALS, View};
use crate::output;

const SPINNER: [&str; 4] = ["|", "/", "-", "\\"];
/// Block characters for the table's CPU column, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

pub fn render(app: &App, frame: &mut Frame) {
    let [tabs, body, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_tabs(app, frame, tabs);
    match app.view() {
        View::Vms => render_vms(app, frame, body),
        View::Images => render_images(app, frame, body),
        View::Doctor => render_doctor(app, frame, body),
        View::Daemon => render_daemon(app, frame, body),
    }
    render_status(app, frame, status);
    render_key_hints(app, frame, keys);
    match &app.modal {
        None => {}
        Some(Modal::Help) => render_help(frame),
        Some(Modal::Confirm { title, lines, .. }) => render_confirm(frame, title, lines),
        Some(Modal::Signal { vms, index }) => render_signals(frame, vms, *index),
        Some(Modal::Form(form)) => render_form(frame, form),
    }
}

fn render_tabs(app: &App, frame: &mut Frame, area: Rect) {
    let mut spans = vec![Span::from(" banger ").bold().reversed(), Span::from(" ")];
    for (i, view) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, view.title());
        spans.push(if *view == app.view() {
            Span::from(label).bold().underlined()
        } else {
            Span::from(label).dim()
        });
    }
    let running = app
        .vms
        .iter()
        .filter(|vm| vm.state == VmState::Running)
        .count();
    let summary = format!("{} VMs, {running} running ", app.vms.len());
    let [left, right] = Layout::horizontal([
        Constraint::Min(0),
        Constraint::Length(u16::try_from(summary.len()).unwrap_or(0)),
    ])
    .areas(area);
    frame.render_widget(Line::from(spans), left);
    frame.render_widget(Line::from(summary).dim(), right);
}

fn render_vms(app: &App, frame: &mut Frame, area: Rect) {
    let visible = app.visible();
    let table_height = u16::try_from(visible.len())
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let [table_area, detail_area] = Layout::vertical([
        Constraint::Length(table_height.clamp(4, area.height / 2).max(4)),
        Constraint::Min(0),
    ])
    .areas(area);
    let title = if app.filter.is_empty() && !app.filtering {
        " VMs ".to_owned()
    } else {
        format!(
            " VMs matching /{}{} ",
            app.filter,
            if app.filtering { "_" } else { "" }
        )
    };
    let block = Block::bordered().title(title);
    if visible.is_empty() {
        let text = if !app.loaded {
            "Loading..."
        } else if app.vms.is_empty() {
            "No VMs. Press c to create one."
        } else {
            "No VM matches the filter. Esc clears it."
        };
        frame.render_widget(Paragraph::new(text).block(block), table_area);
        render_detail(app, frame, detail_area);
        return;
    }
    let header = Row::new([
        " ", "NAME", "STATE", "IP", "VMM", "VCPU", "MEM", "IMAGE", "NAT", "UPTIME", "CPU", "RSS",
    ])
    .bold();
    let rows: Vec<Row> = visible.iter().map(|vm| vm_row(app, vm)).collect();
    let widths = [
        Constraint::Length(1),
        Constraint::Min(10),
        Constraint::Length(14),
        Constraint::Length(15),
        Constraint::Length(11),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Min(7),
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Length(13),
        Constraint::Length(9),
    ];
    // The `>` marks the selection where colours are not shown (and in
    // the snapshots); `*` in the first column marks a VM for an action.
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().reversed())
        .highlight_symbol(">")
        .highlight_spacing(ratatui::widgets::HighlightSpacing::Always);
    let mut state = TableState::default().with_selected(app.selected_index());
    frame.render_stateful_widget(table, table_area, &mut state);
    render_detail(app, frame, detail_area);
}

fn vm_row<'a>(app: &App, vm: &VmSummary) -> Row<'a> {
    let name = vm.name.to_string();
    let mark = if app.marked.contains(&name) { "*" } else { " " };
    let state = match app.busy.get(&name) {
        Some(verb) => Cell::from(format!("{} {verb}", SPINNER[app.spin % SPINNER.len()]))
            .style(Style::new().fg(Color::Yellow)),
        None => Cell::from(vm.state.to_string()).style(state_style(vm.state)),
    };
    let uptime = match (vm.state, vm.started_at) {
        (VmState::Running, Some(started)) => output::age(started, app.clock),
        _ => "-".into(),
    };
    let cpu = app.cpu.get(&name);
    let bars: String = cpu
        .map(|history| {
            history
                .percent
                .iter()
                .rev()
                .take(8)
                .rev()
                .map(|p| BARS[usize::try_from(*p / 13).unwrap_or(7).min(7)])
                .collect()
        })
        .unwrap_or_default();
    let cpu_text = match cpu.and_then(|h| h.latest()) {
        Some(percent) if vm.state == VmState::Running => format!("{percent:>3}% {bars}"),
        _ => "-".into(),
    };
    let rss = app
        .stats
        .get(&name)
        .and_then(|s| s.rss_bytes)
        .filter(|_| vm.state == VmState::Running)
        .map_or_else(|| "-".into(), format_size);
    Row::new(vec![
        Cell::from(mark),
        Cell::from(name),
        state,
        Cell::from(vm.guest_ip.map_or_else(|| "-".into(), |ip| ip.to_string())),
        Cell::from(vm.vmm.to_string()),
        Cell::from(vm.vcpu.to_string()),
        Cell::from(vm.memory_mib.0.to_string()),
        Cell::from(vm.image.clone()),
        Cell::from(if vm.nat { "on" } else { "off" }),
        Cell::from(uptime),
        Cell::from(cpu_text),
        Cell::from(rss),
    ])
}

fn state_style(state: VmState) -> Style {
    match state {
        VmState::Running => Style::new().fg(Color::Green),
        VmState::Failed => Style::new().fg(Color::Red),
        VmState::Stopped => Style::new().dim(),
        // At rest, like stopped, but with its memory kept.
        VmState::Suspended => Style::new().fg(Color::Cyan),
        _ => Style::new().fg(Color::Yellow),
    }
}

fn render_detail(app: &App, frame: &mut Frame, area: Rect) {
    if area.height < 3 {
        return;
    }
    let Some(vm) = app.selected_vm() else {
        return;
    };
    let [info, console] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let name = vm.name.to_string();
    let mut lines: Vec<Line> = match app.detail.as_ref().filter(|d| d.name == vm.name) {
        Some(detail) => output::vm_details(detail, app.clock)
            .lines()
            .map(|l| Line::from(l.to_owned()))
            .collect(),
        None => vec![Line::from("Loading...")],
    };
    if let Some(stats) = app.stats.get(&name) {
        let disk = |d: &banger_proto::DiskUsage| {
            format!(
                "{} of {}",
                format_size(d.allocated_bytes),
                format_size(d.apparent_bytes)
            )
        };
        lines.push(Line::from(format!(
            "{:<12} {}",
            "overlay use:",
            disk(&stats.overlay)
        )));
        lines.push(Line::from(format!(
            "{:<12} {}",
            "/root use:",
            disk(&stats.work_disk)
        )));
    }
    let history = app.cpu.get(&name);
    let spark_height = u16::from(history.is_some_and(|h| !h.percent.is_empty())) * 3;
    let [text_area, spark_area] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(spark_height)]).areas(info);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!(" {name} "))),
        text_area,
    );
    if let Some(history) = history.filter(|_| spark_height > 0) {
        let data: Vec<u64> = history.percent.iter().copied().collect();
        frame.render_widget(
            Sparkline::default()
                .block(Block::bordered().title(format!(" CPU {}% ", history.latest().unwrap_or(0))))
                .data(&data)
                .max(100),
            spark_area,
        );
    }
    let height = usize::from(console.height.saturating_sub(2));
    let tail: Vec<Line> = app
        .console
        .iter()
        .skip(app.console.len().saturating_sub(height))
        .map(|l| Line::from(l.clone()))
        .collect();
    frame.render_widget(
        Paragraph::new(tail).block(Block::bordered().title(" console ")),
        console,
    );
}

fn render_images(app: &App, frame: &mut Frame, area: Rect) {
    let [list, detail] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let rows: Vec<Row> = app
        .images
        .iter()
        .map(|i| {
            Row::new(vec![
                i.name.clone(),
                if i.docker { "yes" } else { "no" }.into(),
                if i.managed { "built" } else { "bundle" }.into(),
                i.rootfs.display().to_string(),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Fill(3),
        ],
    )
    .header(Row::new(["NAME", "DOCKER", "SOURCE", "ROOTFS"]).bold())
    .block(Block::bordered().title(" Images "))
    .row_highlight_style(Style::new().reversed());
    let selected = (!app.images.is_empty()).then_some(app.image_selected);
    frame.render_stateful_widget(
        table,
        list,
        &mut TableState::default().with_selected(selected),
    );
    let lines: Vec<Line> = match &app.image_detail {
        Some(detail) => {
            let image = &detail.image;
            let opt = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map_or_else(|| "-".into(), |p| p.display().to_string())
            };
            vec![
                format!("name:     {}", image.name),
                format!("rootfs:   {}", image.rootfs.display()),
                format!("kernel:   {}", opt(&image.kernel)),
                format!("initrd:   {}", opt(&image.initrd)),
                format!("docker:   {}", image.docker),
                format!("created:  {}", output::when(image.created_at, app.clock)),
                format!(
                    "used by:  {}",
                    if detail.used_by.is_empty() {
                        "no VM".to_owned()
                    } else {
                        detail
                            .used_by
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ]
            .into_iter()
            .map(Line::from)
            .collect()
        }
        None => vec![Line::from("Select an image.")],
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" image ")),
        detail,
    );
}

fn render_doctor(app: &App, frame: &mut Frame, area: Rect) {
    let block = Block::bordered().title(" Doctor: host and runtime bundle readiness ");
    let Some(checks) = &app.checks else {
        frame.render_widget(Paragraph::new("Checking...").block(block), area);
        return;
    };
    let mut lines = Vec::new();
    for check in checks {
        let color = match check.status {
            CheckStatus::Pass => Color::Green,
            CheckStatus::Warn => Color::Yellow,
            CheckStatus::Fail => Color::Red,
        };
        lines.push(Line::from(vec![
            Span::from(format!("{:<5}", check.status.as_str())).fg(color),
            Span::from(format!("{}  ", check.name)).bold(),
            Span::from(check.detail.clone()),
        ]));
        if let Some(fix) = check
            .fix
            .as_ref()
            .filter(|_| check.status != CheckStatus::Pass)
        {
            lines.push(Line::from(format!("     fix: {fix}")).dim());
        }
    }
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn render_daemon(app: &App, frame: &mut Frame, area: Rect) {
    let block = Block::bordered().title(" bangerd ");
    let Some(status) = &app.daemon else {
        frame.render_widget(Paragraph::new("Asking the daemon...").block(block), area);
        return;
    };
    let mut fields = vec![
        ("pid", status.pid.to_string()),
        ("version", status.version.clone()),
        ("uptime", output::duration(status.uptime_secs)),
        ("socket", status.socket.display().to_string()),
        ("log", status.log_path.display().to_string()),
        ("state dir", status.state_dir.display().to_string()),
        ("vmm", format!("{} ({})", status.vmm, status.vmm_reason)),
        ("dns", status.dns_listen.clone()),
        ("guest IPs", status.guest_ip_pool.clone()),
        ("vms", status.vm_count.to_string()),
    ];
    if let Some(error) = &status.dns_error {
        fields.push(("dns error", error.clone()));
    }
    if let Some(reason) = &status.guest_ip_pool_reason {
        fields.push(("pool reason", reason.clone()));
    }
    let lines: Vec<Line> = fields
        .into_iter()
        .map(|(k, v)| Line::from(format!("{:<12} {v}", format!("{k}:"))))
        .collect();
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn render_status(app: &App, frame: &mut Frame, area: Rect) {
    let line = match &app.status {
        Some(status) if status.error => Line::from(vec![
            Span::from(" error ").bold().white().on_red(),
            Span::from(format!(" {}", status.text)).fg(Color::Red),
        ]),
        Some(status) => Line::from(format!(" {}", status.text)),
        None => Line::from(""),
    };
    frame.render_widget(line, area);
}

fn render_key_hints(app: &App, frame: &mut Frame, area: Rect) {
    let hints = if app.filtering {
        "type to filter  Enter keep  Esc clear"
    } else {
        match app.view() {
            View::Vms => {
                "Enter ssh  c new  u start  x stop  r restart  p pause  z suspend  K kill  d del  n nat  e set  / filter  ? help  q quit"
            }
            View::Images => "↑↓ select  d delete  b build  ? help  q quit",
            View::Doctor | View::Daemon => "r refresh  1-4 views  ? help  q quit",
        }
    };
    frame.render_widget(Line::from(format!(" {hints}")).dim(), area);
}

/// A box of `width` x `height` in the middle of the screen, cleared.
fn popup(frame: &mut Frame, width: u16, height: u16) -> Rect {
    let area = frame.area();
    let width = width.min(area.width);
    let height = height.min(area.height);
    let rect = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, rect);
    rect
}

fn render_help(frame: &mut Frame) {
    let mut lines = Vec::new();
    for (section, keys) in HELP {
        lines.push(Line::from(*section).bold());
        for (key, what) in *keys {
            lines.push(Line::from(format!("  {key:<12} {what}")));
        }
    }
    lines.push(Line::from(""));
    lines.push(Line::from("any key closes this").dim());
    let height = u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    let area = popup(frame, 64, height);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        area,
    );
}

fn render_confirm(frame: &mut Frame, title: &str, lines: &[String]) {
    let mut text: Vec<Line> = lines.iter().map(|l| Line::from(l.clone())).collect();
    text.push(Line::from(""));
    text.push(Line::from(vec![
        Span::from(" y ").bold().reversed(),
        Span::from(" yes    "),
        Span::from(" n ").bold().reversed(),
        Span::from(" no"),
    ]));
    // Two lines more than given: the second line wraps at this width.
    let area = popup(frame, 60, 6 + u16::try_from(lines.len()).unwrap_or(0));
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(format!(" {title} ")).red()),
        area,
    );
}

fn render_signals(frame: &mut Frame, vms: &[String], index: usize) {
    let mut lines = vec![Line::from(format!("to {}", vms.join(", "))), Line::from("")];
    for (i, (signal, what)) in SIGNALS.iter().enumerate() {
        let line = Line::from(format!(" {signal:<5} {what}"));
        lines.push(if i == index { line.reversed() } else { line });
    }
    lines.push(Line::from(""));
    lines.push(Line::from("Enter send  Esc cancel").dim());
    let area = popup(frame, 44, 11);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" kill: which signal? ")),
        area,
    );
}

fn render_form(frame: &mut Frame, form: &Form) {
    let mut lines = Vec::new();
    for (i, field) in form.fields.iter().enumerate() {
        let focused = i == form.focus;
        let value = match &field.kind {
            FieldKind::Choice(_) if field.value.is_empty() => {
                format!("< {} >", field.placeholder)
            }
            FieldKind::Choice(_) => format!("< {} >", field.value),
            FieldKind::Toggle => format!("[{}]", if field.is_on() { "x" } else { " " }),
            FieldKind::Text if field.value.is_empty() && !focused => field.placeholder.to_owned(),
            FieldKind::Text => {
                format!("{}{}", field.value, if focused { "_" } else { "" })
            }
        };
        let style = if focused {
            Style::new().add_modifier(Modifier::BOLD).fg(Color::Cyan)
        } else if field.value.is_empty() && field.kind == FieldKind::Text {
            Style::new().dim()
        } else {
            Style::new()
        };
        lines.push(Line::from(vec![
            Span::from(format!(
                "{} {:<13}",
                if focused { ">" } else { " " },
                field.label
            )),
            Span::styled(value, style),
        ]));
    }
    lines.push(Line::from(""));
    if let Some(error) = &form.error {
        lines.push(Line::from(error.clone()).fg(Color::Red));
    }
    lines.push(Line::from("Enter submit  Tab next  ←→ change  Esc cancel").dim());
    let height = u16::try_from(lines.len()).unwrap_or(u16::MAX) + 2;
    let area = popup(frame, 64, height);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" {} ", form.title()))),
        area,
    );
}
