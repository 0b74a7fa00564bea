//! runnel's instances: each one a process tree inside its own sandbox.
//!
//! Instances run untrusted code. The [`sandbox`] puts each in its own user, mount, PID,
//! network, IPC and UTS namespaces, with only a loopback interface, a read-only view of the
//! host in which `$RUNNEL_HOME` and other instances' files do not exist, and a private `/tmp`.
//! Its only links to the outside are Unix sockets in one directory that the daemon owns and
//! that belongs to this instance alone, so whatever arrives on them is attributable to it.
//!
//! This crate must never decide who may call whom: it only runs what it is told to, as
//! tightly confined as the kernel allows.

pub mod launch;
pub mod logs;
pub mod pool;
pub mod sandbox;
