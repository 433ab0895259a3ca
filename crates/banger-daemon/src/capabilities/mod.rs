//! banger's capabilities, in pipeline order.

pub mod dns;
pub mod nat;
pub mod network;
pub mod publish;
pub mod ssh;
pub mod storage;
pub mod vsock;

pub use dns::{DnsCapability, DnsTable};
pub use nat::NatCapability;
pub use network::NetworkCapability;
pub use publish::PublishCapability;
pub use ssh::SshCapability;
pub use storage::StorageCapability;
pub use vsock::VsockCapability;
