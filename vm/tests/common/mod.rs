//! Helpers shared by the KVM integration tests of this crate.
#![allow(dead_code)]

use std::io::Write;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use novacron_vm::machine::vcpu::VcpuEvent;
use novacron_vm::machine::MachineIo;

pub fn kvm_usable(test: &str) -> bool {
    novacron_vm::machine::check_kvm()
        .map_err(|e| eprintln!("skipping {test}: {e}"))
        .is_ok()
}

#[derive(Clone, Default)]
pub struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub fn io() -> (MachineIo, Console, Receiver<VcpuEvent>) {
    let console = Console::default();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let io = MachineIo {
        serial: Box::new(console.clone()),
        events: Arc::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }),
    };
    (io, console, rx)
}

pub fn no_setup(_: usize) -> Option<novacron_vm::machine::vcpu::ThreadSetup> {
    None
}

/// Waits for a report with `code` whose value is at least `min`.
pub fn wait_report(rx: &Receiver<VcpuEvent>, code: u32, min: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(VcpuEvent::Report { report, .. }) if report.code == code && report.value >= min => {
                return report.value
            }
            Ok(VcpuEvent::Failed { reason, .. }) => panic!("vCPU failed: {reason}"),
            Ok(_) => {}
            Err(e) => panic!("no report {code} >= {min}: {e}"),
        }
    }
}
