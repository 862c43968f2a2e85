//! Snapshots of a whole machine: capture its state, write it with its memory to a snapshot
//! directory (full or incremental), and build a paused machine back from one.

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};

use crate::boot;
use crate::machine::arch;
use crate::machine::devices::lock;
use crate::machine::memory::{take_vmm_dirty_bits, DirtyConsumer, DirtyTracker, PageBitmaps};
use crate::machine::state::{from_blob, to_blob, MachineState, STATE_FORMAT_VERSION};
use crate::machine::{
    kvm_err, BeforeMemory, Lifecycle, Machine, MachineConfig, MachineIo, StateMismatchError,
    VcpuSetupFactory, VmError,
};
use crate::storage::{self, SnapshotDir, StorageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Every page the guest or VMM ever wrote.
    Full,
    /// Only pages written since the previous snapshot (which must exist in the directory).
    Incremental,
}

#[derive(Clone, Debug)]
pub struct SnapshotStats {
    pub kind: SnapshotKind,
    pub pages: u64,
    pub state_bytes: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("snapshot in {dir} describes an impossible machine: {reason}")]
    BadSnapshot {
        dir: String,
        reason: StateMismatchError,
    },
}

fn read_irqchip(m: &Machine, chip_id: u32) -> Result<Vec<u8>, VmError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    m.vm_fd()
        .get_irqchip(&mut chip)
        .map_err(kvm_err("get irqchip"))?;
    Ok(to_blob(&chip))
}

fn write_irqchip(m: &Machine, chip_id: u32, blob: &[u8]) -> Result<(), VmError> {
    let mut chip: kvm_irqchip = from_blob("irqchip", blob)?;
    if chip.chip_id != chip_id {
        return Err(VmError::Vcpu(format!(
            "saved irqchip {} is in the slot of irqchip {chip_id}",
            chip.chip_id
        )));
    }
    chip.chip_id = chip_id;
    m.vm_fd().set_irqchip(&chip).map_err(kvm_err("set irqchip"))
}

impl Machine {
    /// Captures everything but memory. The machine must not be running.
    pub fn capture_state(&self) -> Result<MachineState, VmError> {
        if self.lifecycle() == Lifecycle::Running {
            return Err(VmError::WrongState {
                actual: Lifecycle::Running,
                needed: "paused",
            });
        }
        let supported = self
            .kvm()
            .get_msr_index_list()
            .map_err(kvm_err("get MSR index list"))?;
        let msr_indices = boot::msrs::snapshot_msr_indices(supported.as_slice());
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for index in 0..self.vcpus.len() {
            let indices = msr_indices.clone();
            vcpus.push(self.on_vcpu(index, move |fd| arch::save_vcpu(fd, &indices))??);
        }
        let mut clock = self.vm_fd().get_clock().map_err(kvm_err("get clock"))?;
        clock.flags = 0;
        Ok(MachineState {
            format_version: STATE_FORMAT_VERSION,
            mem_regions: self.layout().to_vec(),
            guest: self.guest_description().to_string(),
            vcpus,
            pic_master: read_irqchip(self, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: read_irqchip(self, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: read_irqchip(self, KVM_IRQCHIP_IOAPIC)?,
            pit: to_blob(&self.vm_fd().get_pit2().map_err(kvm_err("get PIT"))?),
            clock: to_blob(&clock),
            serial: lock(&self.devices().serial).snapshot(),
            pv_port: lock(&self.devices().pv_port).snapshot(),
        })
    }

    /// Writes a snapshot of this machine into `dir`. The machine must be paused (or never
    /// started); it stays paused. If writing fails, the previous snapshot in `dir` is
    /// intact and the pages this one would have saved count as dirty again.
    pub fn snapshot(
        &mut self,
        dir: &Path,
        kind: SnapshotKind,
    ) -> Result<SnapshotStats, SnapshotError> {
        let started = Instant::now();
        let state = self.capture_state()?.encode().map_err(VmError::from)?;
        let taken = self.take_dirty_pages(DirtyConsumer::Checkpoint)?;
        let captured_at = started.elapsed();
        let result = self.write_snapshot(dir, kind, &state, &taken);
        tracing::debug!(dir = %dir.display(), ?kind,
            capture_ms = captured_at.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3, ok = result.is_ok(),
            "machine snapshot");
        match result {
            Ok(pages) => Ok(SnapshotStats {
                kind,
                pages,
                state_bytes: state.len() as u64,
                elapsed: started.elapsed(),
            }),
            Err(e) => {
                self.restore_dirty_pages(DirtyConsumer::Checkpoint, &taken);
                Err(e)
            }
        }
    }

    fn write_snapshot(
        &self,
        dir: &Path,
        kind: SnapshotKind,
        state: &[u8],
        since_checkpoint: &PageBitmaps,
    ) -> Result<u64, SnapshotError> {
        let mut snap_dir = SnapshotDir::create_or_open(dir)?;
        let pages = match kind {
            SnapshotKind::Full => self.dirty.touched(),
            SnapshotKind::Incremental => since_checkpoint,
        };
        let runs = page_runs(pages);
        match kind {
            SnapshotKind::Full => snap_dir.write_full(state, self.memory(), &runs)?,
            SnapshotKind::Incremental => snap_dir.write_incremental(state, self.memory(), &runs)?,
        };
        Ok(pages.count_pages())
    }

    /// The machine a snapshot describes (memory and vCPUs), read and verified without
    /// building it: a spawner sizes the VMM's jail with it.
    pub fn describe_snapshot(dir: &Path) -> Result<MachineConfig, SnapshotError> {
        let loaded = storage::load(dir)?;
        let state = MachineState::decode(&loaded.state).map_err(VmError::from)?;
        snapshot_config(dir, &state)
    }

    /// Builds a paused machine from the snapshot in `dir`.
    pub fn restore(
        dir: &Path,
        io: MachineIo,
        vcpu_setup: VcpuSetupFactory<'_>,
    ) -> Result<Machine, SnapshotError> {
        Self::restore_gated(dir, io, vcpu_setup, &|| Ok(()))
    }

    /// [`restore`](Self::restore), calling `before_memory` once the KVM objects exist and
    /// before the snapshot's memory is written (see [`Machine::create_gated`]).
    pub fn restore_gated(
        dir: &Path,
        io: MachineIo,
        vcpu_setup: VcpuSetupFactory<'_>,
        before_memory: BeforeMemory<'_>,
    ) -> Result<Machine, SnapshotError> {
        let started = Instant::now();
        let loaded = storage::load(dir)?;
        let state = MachineState::decode(&loaded.state).map_err(VmError::from)?;
        let loaded_at = started.elapsed();
        let bad = |reason: StateMismatchError| SnapshotError::BadSnapshot {
            dir: dir.display().to_string(),
            reason,
        };
        // A state that does not fit this VMM is the snapshot's fault: name its directory.
        let snapshot_error = |e| match e {
            VmError::StateMismatch(reason) => bad(reason),
            e => SnapshotError::Vm(e),
        };
        let mut machine = Machine::create_for_state(&state, io, vcpu_setup, before_memory)
            .map_err(snapshot_error)?;
        let created_at = started.elapsed();
        let restored = loaded.apply_memory(machine.memory())?;
        let applied_at = started.elapsed();
        take_vmm_dirty_bits(machine.memory());
        let mut bitmaps = PageBitmaps::empty_for(machine.layout());
        for run in &restored.applied {
            bitmaps.mark_range(
                run.first_page_gpa,
                run.pages * crate::machine::layout::PAGE_SIZE,
            );
        }
        machine.dirty = DirtyTracker::from_restored(bitmaps);
        machine.apply_state(&state).map_err(snapshot_error)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(dir = %dir.display(), load_ms = ms(loaded_at),
            create_ms = ms(created_at - loaded_at), memory_ms = ms(applied_at - created_at),
            devices_ms = ms(started.elapsed() - applied_at), pages = restored.pages,
            "machine restored");
        Ok(machine)
    }

    /// Creates the machine a decoded state describes (its memory size and vCPU count), with
    /// `before_memory` called as in [`Machine::create_gated`]. Guest memory is left zeroed
    /// and nothing of the state is applied: write the memory (from a snapshot or migration
    /// chunks), then call [`apply_state`](Self::apply_state). A state that cannot describe a
    /// machine this VMM builds (hostile sizes) is [`VmError::StateMismatch`].
    pub fn create_for_state(
        state: &MachineState,
        io: MachineIo,
        vcpu_setup: VcpuSetupFactory<'_>,
        before_memory: BeforeMemory<'_>,
    ) -> Result<Machine, VmError> {
        let config = config_of(state).map_err(VmError::StateMismatch)?;
        Machine::create_gated(&config, io, vcpu_setup, before_memory)
    }

    /// Applies everything of `state` but memory: devices (serial, paravirtual port), PIT,
    /// clock, irqchips, every vCPU's registers, and the guest description. The machine must
    /// be freshly created with the state's memory layout and vCPU count (else
    /// [`VmError::StateMismatch`], nothing applied); it ends paused, ready to
    /// [`resume`](Self::resume). Memory must already hold the state's memory: vCPU registers
    /// point into it.
    pub fn apply_state(&mut self, state: &MachineState) -> Result<(), VmError> {
        if self.lifecycle() != Lifecycle::Created {
            return Err(VmError::WrongState {
                actual: self.lifecycle(),
                needed: "freshly created for the state",
            });
        }
        if self.layout() != state.mem_regions.as_slice() {
            return Err(VmError::StateMismatch(StateMismatchError::Layout {
                state: state.mem_regions.clone(),
                machine: self.layout().to_vec(),
            }));
        }
        if state.vcpus.len() != self.vcpus.len() {
            return Err(VmError::StateMismatch(StateMismatchError::VcpuCount {
                state: state.vcpus.len(),
                machine: self.vcpus.len(),
            }));
        }
        self.devices()
            .restore(&state.serial, &state.pv_port)
            .map_err(|e| VmError::StateMismatch(e.into()))?;
        let vm = self.vm_fd();
        vm.set_pit2(&from_blob("PIT", &state.pit)?)
            .map_err(kvm_err("set PIT"))?;
        vm.set_clock(&from_blob("clock", &state.clock)?)
            .map_err(kvm_err("set clock"))?;
        write_irqchip(self, KVM_IRQCHIP_PIC_MASTER, &state.pic_master)?;
        write_irqchip(self, KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave)?;
        write_irqchip(self, KVM_IRQCHIP_IOAPIC, &state.ioapic)?;
        for (index, vcpu_state) in state.vcpus.iter().enumerate() {
            let vcpu_state = vcpu_state.clone();
            self.on_vcpu(index, move |fd| arch::restore_vcpu(fd, &vcpu_state))??;
        }
        self.set_guest_description(state.guest.clone());
        self.set_lifecycle(Lifecycle::Paused);
        Ok(())
    }
}

fn snapshot_config(dir: &Path, state: &MachineState) -> Result<MachineConfig, SnapshotError> {
    let config = config_of(state).map_err(|reason| SnapshotError::BadSnapshot {
        dir: dir.display().to_string(),
        reason,
    })?;
    config.validate()?;
    Ok(config)
}

/// The machine a decoded state asks for. The state came from a file: its region sizes may
/// add up past `u64::MAX` and its vCPU count past `u8::MAX`; both are errors, not panics
/// (the sizes themselves are checked by `MachineConfig::validate`).
fn config_of(state: &MachineState) -> Result<MachineConfig, StateMismatchError> {
    let vcpus = u8::try_from(state.vcpus.len())
        .map_err(|_| StateMismatchError::TooManyVcpus(state.vcpus.len()))?;
    let mem_bytes = state
        .mem_regions
        .iter()
        .try_fold(0u64, |total, r| total.checked_add(r.1))
        .ok_or(StateMismatchError::MemoryOverflow(state.mem_regions.len()))?;
    Ok(MachineConfig { mem_bytes, vcpus })
}

/// Sorted runs of consecutive set pages.
pub fn page_runs(bitmaps: &PageBitmaps) -> Vec<storage::PageRun> {
    bitmaps
        .regions
        .iter()
        .flat_map(|(start, words)| {
            storage::runs_from_dirty_bitmap(*start, words.len() as u64 * 64, words)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::state::{PvPortSnapshot, SerialSnapshot};

    fn state(mem_regions: Vec<(u64, u64)>) -> MachineState {
        MachineState {
            format_version: STATE_FORMAT_VERSION,
            mem_regions,
            guest: "linux".into(),
            vcpus: Vec::new(),
            pic_master: Vec::new(),
            pic_slave: Vec::new(),
            ioapic: Vec::new(),
            pit: Vec::new(),
            clock: Vec::new(),
            serial: SerialSnapshot::default(),
            pv_port: PvPortSnapshot::default(),
        }
    }

    #[test]
    fn config_of_a_hostile_state_is_an_error_not_an_overflow() {
        let config = config_of(&state(vec![(0, 3 << 30), (1 << 32, 1 << 30)])).unwrap();
        assert_eq!((config.mem_bytes, config.vcpus), (4 << 30, 0));
        // Regression: the sizes used to be summed with `sum()`, which panics on overflow in
        // debug builds (and wraps to a small, valid-looking size in release builds).
        let err = config_of(&state(vec![(0, u64::MAX), (1 << 32, 2)])).unwrap_err();
        assert!(err.to_string().contains("add up past 64 bits"), "{err}");
    }
}
