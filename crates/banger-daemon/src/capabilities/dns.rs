//! `<name>.vm` A records for every VM with a guest IP, served by the DNS
//! server from this in-memory table.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use crate::capability::{Capability, Result, VmContext};
use crate::store::VmRecord;

/// VM name to guest IP, shared with the DNS server.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    records: Arc<RwLock<HashMap<String, Ipv4Addr>>>,
}

impl DnsTable {
    pub fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    pub fn set(&self, name: &str, ip: Ipv4Addr) {
        self.records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), ip);
    }

    pub fn remove(&self, name: &str) {
        self.records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    pub fn replace_all(&self, records: HashMap<String, Ipv4Addr>) {
        *self.records.write().unwrap_or_else(|p| p.into_inner()) = records;
    }

    pub fn len(&self) -> usize {
        self.records.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct DnsCapability {
    table: DnsTable,
}

impl DnsCapability {
    pub fn new(table: DnsTable) -> Self {
        Self { table }
    }
}

fn record(vm: &VmRecord) -> Option<(String, Ipv4Addr)> {
    Some((vm.name.to_string(), vm.guest_ip?))
}

impl Capability for DnsCapability {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn provision(&self, vm: &VmRecord, _ctx: &VmContext) -> Result<()> {
        if let Some((name, ip)) = record(vm) {
            self.table.set(&name, ip);
        }
        Ok(())
    }

    fn deprovision(&self, vm: &VmRecord, _ctx: &VmContext) -> Result<()> {
        self.table.remove(&vm.name);
        Ok(())
    }

    /// A renamed VM answers to its new name only.
    fn update(
        &self,
        old: &VmRecord,
        new: &VmRecord,
        _ctx: &VmContext,
        _running: bool,
    ) -> Result<()> {
        if old.name != new.name {
            self.table.remove(&old.name);
        }
        if let Some((name, ip)) = record(new) {
            self.table.set(&name, ip);
        }
        Ok(())
    }

    fn reconcile(&self, vms: &[VmRecord], _running: &[&VmRecord]) -> Result<()> {
        self.table
            .replace_all(vms.iter().filter_map(record).collect());
        Ok(())
    }
}
