//! banger's RPC vocabulary, shared by the CLI and the daemon. No I/O lives here
//! (the agent's frames are read from and written to streams callers give).

pub mod agent;
pub mod api;
pub mod check;
pub mod ping;
pub mod port;
pub mod rpc;
pub mod validate;
pub mod vm;

pub use api::*;
pub use port::PortMapping;
pub use rpc::{ErrorKind, MAX_MESSAGE_BYTES, Request, Response, RpcError};
pub use vm::*;
