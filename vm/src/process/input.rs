//! What wakes the VMM's event loop: a command from its owner, the control socket closing, a
//! vCPU's event, or a new owner adopting it.

use std::os::unix::net::UnixStream;

use crate::machine::vcpu::VcpuEvent;
use crate::process::control::Command;

pub(crate) enum Input {
    Command(Command),
    ControlClosed(String),
    Vcpu(VcpuEvent),
    /// A new owner connected to the adopt socket: events go to this stream now.
    Adopted(UnixStream),
}
