//! The create and set forms: fields typed into, then checked with the
//! CLI's own parsers so a bad value gets the same words as `vm create`.

use banger_proto::{CreateVmParams, RenameVmParams, SetVmParams, VmState, VmSummary};

use crate::args;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    Text,
    /// One of these, cycled with ←/→; empty means the default.
    Choice(Vec<String>),
    Toggle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub label: &'static str,
    pub value: String,
    pub kind: FieldKind,
    /// Shown when the value is empty.
    pub placeholder: &'static str,
}

impl Field {
    fn text(label: &'static str, value: impl Into<String>, placeholder: &'static str) -> Self {
        Self {
            label,
            value: value.into(),
            kind: FieldKind::Text,
            placeholder,
        }
    }

    pub fn is_on(&self) -> bool {
        self.value == "yes"
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FormKind {
    Create,
    /// Changes to these VMs; `initial` holds the values shown at opening,
    /// so only what the user changed is sent.
    Set {
        vms: Vec<String>,
        initial: Vec<String>,
    },
    Rename {
        vm: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    pub kind: FormKind,
    pub fields: Vec<Field>,
    pub focus: usize,
    pub error: Option<String>,
}

pub const NAME: &str = "name";
pub const IMAGE: &str = "image";
pub const VCPU: &str = "vcpu";
pub const MEMORY: &str = "memory (MiB)";
pub const DISK: &str = "disk size";
pub const NAT: &str = "nat";
pub const PUBLISH: &str = "publish";
pub const NEW_NAME: &str = "new name";

impl Form {
    /// `name` is the generator's suggestion, when it has arrived.
    pub fn create(name: Option<&str>, images: &[String]) -> Self {
        Self {
            kind: FormKind::Create,
            fields: vec![
                Field::text(NAME, name.unwrap_or_default(), "generated"),
                Field {
                    label: IMAGE,
                    value: String::new(),
                    kind: FieldKind::Choice(images.to_vec()),
                    placeholder: "default image",
                },
                Field::text(VCPU, "", "default"),
                Field::text(MEMORY, "", "default"),
                Field::text(DISK, "", "default"),
                Field {
                    label: NAT,
                    value: "no".into(),
                    kind: FieldKind::Toggle,
                    placeholder: "",
                },
                Field::text(PUBLISH, "", "none (like 8080:80 2222:22)"),
            ],
            focus: 0,
            error: None,
        }
    }

    /// Prefilled with the first VM's current sizes.
    pub fn set(vms: &[&VmSummary]) -> Self {
        let first = vms[0];
        let initial = vec![
            first.vcpu.to_string(),
            first.memory_mib.0.to_string(),
            banger_proto::validate::format_size(first.disk_size_bytes.0),
        ];
        Self {
            kind: FormKind::Set {
                vms: vms.iter().map(|vm| vm.name.to_string()).collect(),
                initial: initial.clone(),
            },
            fields: vec![
                Field::text(VCPU, initial[0].clone(), ""),
                Field::text(MEMORY, initial[1].clone(), ""),
                Field::text(DISK, initial[2].clone(), ""),
            ],
            focus: 0,
            error: None,
        }
    }

    pub fn rename(vm: &str) -> Self {
        Self {
            kind: FormKind::Rename { vm: vm.to_owned() },
            fields: vec![Field::text(NEW_NAME, vm, "")],
            focus: 0,
            error: None,
        }
    }

    pub fn title(&self) -> String {
        match &self.kind {
            FormKind::Create => "create a VM".into(),
            FormKind::Set { vms, .. } => format!("set {}", vms.join(", ")),
            FormKind::Rename { vm } => format!("rename {vm}"),
        }
    }

    /// The rename request, or the CLI's words for a bad name.
    pub fn rename_params(&self) -> Result<RenameVmParams, String> {
        let FormKind::Rename { vm } = &self.kind else {
            return Err("not a rename form".into());
        };
        let name = self.value(NEW_NAME).trim();
        Ok(RenameVmParams {
            vm: vm.clone(),
            name: args::parse_name(name).map_err(|e| format!("{NEW_NAME}: {e}"))?,
        })
    }

    pub fn value(&self, label: &str) -> &str {
        self.fields
            .iter()
            .find(|f| f.label == label)
            .map_or("", |f| f.value.as_str())
    }

    pub fn focused(&mut self) -> &mut Field {
        &mut self.fields[self.focus]
    }

    pub fn next(&mut self) {
        self.focus = (self.focus + 1) % self.fields.len();
    }

    pub fn previous(&mut self) {
        self.focus = (self.focus + self.fields.len() - 1) % self.fields.len();
    }

    pub fn type_char(&mut self, c: char) {
        let field = self.focused();
        match &field.kind {
            FieldKind::Text => field.value.push(c),
            FieldKind::Toggle if c == ' ' => self.toggle(),
            _ => {}
        }
        self.error = None;
    }

    pub fn backspace(&mut self) {
        if self.focused().kind == FieldKind::Text {
            self.focused().value.pop();
        }
        self.error = None;
    }

    pub fn toggle(&mut self) {
        let field = self.focused();
        if field.kind == FieldKind::Toggle {
            field.value = if field.is_on() { "no" } else { "yes" }.into();
        }
    }

    /// ←/→ on a choice: the next or previous option, through "default".
    pub fn cycle(&mut self, forward: bool) {
        let field = self.focused();
        match &field.kind {
            FieldKind::Choice(options) => {
                // Position 0 is the default (empty); options follow.
                let count = options.len() + 1;
                let at = options
                    .iter()
                    .position(|o| *o == field.value)
                    .map_or(0, |i| i + 1);
                let next = if forward {
                    (at + 1) % count
                } else {
                    (at + count - 1) % count
                };
                field.value = if next == 0 {
                    String::new()
                } else {
                    options[next - 1].clone()
                };
            }
            FieldKind::Toggle => self.toggle(),
            FieldKind::Text => {}
        }
    }

    /// The create request, or the first field's error in the CLI's words.
    pub fn create_params(&self) -> Result<CreateVmParams, String> {
        let optional = |label: &str| Some(self.value(label).trim()).filter(|v| !v.is_empty());
        let checked = |label: &str, error: String| format!("{label}: {error}");
        Ok(CreateVmParams {
            name: optional(NAME)
                .map(|v| args::parse_name(v).map_err(|e| checked(NAME, e)))
                .transpose()?,
            image: optional(IMAGE).map(str::to_owned),
            vcpu: optional(VCPU)
                .map(|v| args::parse_vcpu(v).map_err(|e| checked(VCPU, e)))
                .transpose()?,
            memory_mib: optional(MEMORY)
                .map(|v| args::parse_memory(v).map_err(|e| checked(MEMORY, e)))
                .transpose()?,
            disk_size: optional(DISK)
                .map(|v| args::parse_size(v).map_err(|e| checked(DISK, e)))
                .transpose()?,
            nat: self.fields.iter().any(|f| f.label == NAT && f.is_on()),
            vmm: None,
            publish: self
                .value(PUBLISH)
                .split([' ', ','])
                .filter(|v| !v.is_empty())
                .map(|v| args::parse_forward(v).map_err(|e| checked(PUBLISH, e)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The set request with only the changed sizes, refused while any of
    /// the VMs runs (sizes change only when stopped) or when nothing changed.
    pub fn set_params(&self, states: &[(String, VmState)]) -> Result<SetVmParams, String> {
        let FormKind::Set { vms, initial } = &self.kind else {
            return Err("not a set form".into());
        };
        let changed = |i: usize| {
            let value = self.fields[i].value.trim();
            (value != initial[i]).then_some(value)
        };
        let checked = |label: &str, error: String| format!("{label}: {error}");
        let params = SetVmParams {
            vms: vms.clone(),
            vcpu: changed(0)
                .map(|v| args::parse_vcpu(v).map_err(|e| checked(VCPU, e)))
                .transpose()?,
            memory_mib: changed(1)
                .map(|v| args::parse_memory(v).map_err(|e| checked(MEMORY, e)))
                .transpose()?,
            disk_size: changed(2)
                .map(|v| args::parse_size(v).map_err(|e| checked(DISK, e)))
                .transpose()?,
            ..SetVmParams::default()
        };
        if params.vcpu.is_none() && params.memory_mib.is_none() && params.disk_size.is_none() {
            return Err("nothing to change: edit a value first (Esc closes the form)".into());
        }
        if let Some((name, state)) = states
            .iter()
            .find(|(name, state)| vms.contains(name) && state.has_vmm())
        {
            return Err(format!(
                "{name} is {state}: vCPU, memory and disk size change only while stopped; stop it with x first"
            ));
        }
        Ok(params)
    }
}
