//! Live migration between two daemons on loopback (libp2p streams), against the same
//! workload moved by `bench migrate`'s direct-TCP path between two bare VMMs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::runtime::Runtime;

use super::idle_spec;
use super::measured_node::{MeasuredNode, MIGRATE_TIMEOUT, START_TIMEOUT};
use super::NodeBenchArgs;
use crate::api::client::path_segment;
use crate::api::types::{MigrationInfo, MigrationMode, MigrationRequest, MigrationState};
use crate::bench::migrate::{idle_reference, IDLE_MIGRATE_AFTER_MS};
use crate::bench::report::{median, Goal, Report};

/// The migration issue's idle workload: 1 GiB guest, 64 MiB of the pattern at 16 MiB.
const MIGRATE_MEM_MIB: u64 = 1024;
const MIGRATE_PREFILL_MIB: u64 = 64;
/// The downtime budget `bench migrate` uses by default, so both paths aim at the same.
const DOWNTIME_BUDGET_MS: u64 = 50;

/// One mesh migration's figures.
struct MeshMove {
    downtime_ms: f64,
    total_ms: f64,
    wire_bytes: f64,
}

pub(super) fn migrate_figures(
    rt: &Arc<Runtime>,
    args: &NodeBenchArgs,
    scratch: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (mut down, mut total, mut wire) = (vec![], vec![], vec![]);
    {
        let (a, _) = MeasuredNode::start(rt, "a", &scratch.join("mesh-a"), None)?;
        let (b, _) = MeasuredNode::start(rt, "b", &scratch.join("mesh-b"), Some(&a.addr))?;
        rt.block_on(async {
            let deadline = Instant::now() + START_TIMEOUT;
            while !(a.sees_live(&b.peer).await && b.sees_live(&a.peer).await) {
                if Instant::now() > deadline {
                    bail!("a and b did not see each other live within {START_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })?;
        for run in 0..args.runs {
            let (from, to) = if run % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let m = rt.block_on(mesh_migrate(from, to))?;
            down.push(m.downtime_ms);
            total.push(m.total_ms);
            wire.push(m.wire_bytes);
        }
        // The daemons (and their VMs) stop here, before the reference runs.
    }
    let direct = idle_reference(args.runs, &scratch.join("direct"))?;
    let down = median(&mut down);
    report.add(
        "mesh_migrate_downtime_ms",
        down,
        "ms",
        Some(Goal::at_most(2.0 * direct.pause_to_confirm_ms).shown_as("<= 2x direct")),
    );
    report.add("mesh_migrate_total_ms", median(&mut total), "ms", None);
    report.add("mesh_migrate_wire_bytes", median(&mut wire), "B", None);
    report.add(
        "direct_migrate_pause_to_confirm_ms",
        direct.pause_to_confirm_ms,
        "ms",
        None,
    );
    report.add("direct_migrate_downtime_ms", direct.downtime_ms, "ms", None);
    report.add("direct_migrate_total_ms", direct.total_ms, "ms", None);
    report.add("direct_migrate_wire_bytes", direct.wire_bytes, "B", None);
    report.add(
        "mesh_migrate_downtime_vs_direct",
        down / direct.pause_to_confirm_ms.max(1e-9),
        "x",
        Some(Goal::at_most(2.0)),
    );
    report.notes.push(format!(
        "migrate: builtin:idle, {MIGRATE_MEM_MIB} MiB guest, {MIGRATE_PREFILL_MIB} MiB of the \
         pattern, live, {DOWNTIME_BUDGET_MS} ms budget, migrated {IDLE_MIGRATE_AFTER_MS} ms \
         after it runs; {} runs alternating a->b, b->a (a fresh VM each). Mesh downtime is \
         the daemon's: the source's final pause to the destination's confirm at the source; \
         the ratio divides it by the same span of the direct-TCP path \
         (direct_migrate_pause_to_confirm_ms); direct_migrate_downtime_ms is `bench \
         migrate`'s pause-to-resume. Mesh total is the daemon's migration record (ms \
         clock: streams opened over libp2p, destination VMM spawned, confirm); direct \
         total is from the source VMM's command to the confirm",
        args.runs
    ));
    Ok(())
}

/// A fresh idle VM on `from`, moved live to `to`; stopped there afterwards.
async fn mesh_migrate(from: &MeasuredNode, to: &MeasuredNode) -> anyhow::Result<MeshMove> {
    let vm = from
        .create_running(&idle_spec(MIGRATE_MEM_MIB, Some(MIGRATE_PREFILL_MIB)))
        .await?;
    // The workload of `bench migrate`: the guest runs this long before it moves.
    tokio::time::sleep(Duration::from_millis(IDLE_MIGRATE_AFTER_MS)).await;
    let id = path_segment(&vm.id);
    let started: MigrationInfo = from
        .client
        .post(
            &format!("/api/v1/vms/{id}/migrate"),
            &MigrationRequest {
                to: to.peer.clone(),
                mode: MigrationMode::Live,
                downtime_budget_ms: Some(DOWNTIME_BUDGET_MS),
            },
        )
        .await?;
    let path = format!("/api/v1/migrations/{}", path_segment(&started.id));
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    let mut m = started;
    while !m.state.is_final() {
        if Instant::now() > deadline {
            bail!(
                "migration {} of VM {} to {} did not end within {MIGRATE_TIMEOUT:?}",
                m.id,
                vm.id,
                to.proc.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        m = from.client.get(&path).await?;
    }
    if m.state != MigrationState::Done {
        bail!(
            "migration {} of VM {} from {} to {} ended {:?}: {}",
            m.id,
            vm.id,
            from.proc.name,
            to.proc.name,
            m.state,
            m.error.as_deref().unwrap_or("no reason given")
        );
    }
    let Some(downtime_ms) = m.downtime_ms else {
        bail!("migration {} is done but reports no downtime", m.id);
    };
    let total_ms = m
        .ended_at_ms
        .unwrap_or(m.started_at_ms)
        .saturating_sub(m.started_at_ms) as f64;
    if let Err(e) = to.stop_vm(&vm.id).await {
        tracing::warn!(vm = %vm.id, error = %e, "cannot stop the moved VM (stopped at the end)");
    }
    Ok(MeshMove {
        downtime_ms,
        total_ms,
        wire_bytes: m.wire_bytes as f64,
    })
}
