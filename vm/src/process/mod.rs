//! The VMM process: `novacron vmm` running one [`crate::machine::Machine`] in its jail
//! ([`vmm`]), the control protocol it speaks ([`control`]), and its parent's side: spawning
//! it ([`launcher`]), adopting one whose parent died ([`adopt`]), children that die with
//! their owner ([`child_lifetime`]) and sockets passed into the jail ([`fd_passing`]).

pub mod adopt;
pub mod child_lifetime;
pub mod control;
pub mod fd_passing;
mod input;
mod jail;
pub mod launcher;
mod migration;
pub mod result_port;
mod usage;
pub mod vmm;
