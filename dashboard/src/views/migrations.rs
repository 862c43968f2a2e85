//! Migrations: each one in flight with a live progress bar (phase, round, bytes sent,
//! skipped as zero or as held by the peer, bandwidth, dirty rate, time left), and the
//! history with downtime, total time and bytes on the wire.

use leptos::prelude::*;
use novacron_model::{MigrationDirection, MigrationInfo, MigrationProgressInfo};

use super::{badge, progress_bar, tone_of_migration};
use crate::format;

/// Finished migrations shown at most (newest first).
pub const MAX_HISTORY_ROWS: usize = 500;

#[derive(Clone, Debug)]
pub struct MigrationsData {
    /// Newest first, as the node lists them.
    pub migrations: Vec<MigrationInfo>,
    pub now_ms: u64,
}

pub fn render(d: MigrationsData) -> impl IntoView {
    let (running, done): (Vec<_>, Vec<_>) =
        d.migrations.into_iter().partition(|m| !m.state.is_final());
    let now_ms = d.now_ms;
    view! {
        <h1>"Migrations"</h1>
        <section class="panel" data-live="in-flight">{in_flight(running, now_ms)}</section>
        <section class="panel" data-live="history">{history(done, now_ms)}</section>
    }
}

fn direction(m: &MigrationInfo) -> String {
    match m.direction {
        MigrationDirection::Out => format!("→ {}", format::short_peer(&m.peer)),
        MigrationDirection::In => format!("← {}", format::short_peer(&m.peer)),
    }
}

/// The words on a migration's progress bar.
pub fn progress_words(p: &MigrationProgressInfo) -> String {
    let mut words = format!(
        "{} · round {} · {} of {}",
        p.phase,
        p.round,
        format::bytes(p.bytes_done),
        format::bytes(p.bytes_total)
    );
    if let Some(ms) = p.est_remaining_ms {
        words.push_str(&format!(" · {} left", format::duration_ms(ms)));
    }
    words
}

fn in_flight(running: Vec<MigrationInfo>, now_ms: u64) -> impl IntoView {
    if running.is_empty() {
        return view! { <h2>"In flight"</h2><p class="muted">"No migration is running."</p> }
            .into_any();
    }
    let rows = running
        .into_iter()
        .map(|m| {
            let p = m.progress.clone().unwrap_or_default();
            let dir = direction(&m);
            view! {
                <tr data-migration=m.id.clone()>
                    <td class="mono">{m.vm_id.clone()}</td>
                    <td class="mono" title=m.peer.clone()>{dir}</td>
                    <td>{m.mode.as_str()}</td>
                    <td>{progress_bar(p.bytes_done, p.bytes_total, progress_words(&p))}</td>
                    <td class="num">{format::bytes(p.bytes_sent)}</td>
                    <td class="num">{format::bytes(p.bytes_skipped_zero)}</td>
                    <td class="num">{format::bytes(p.bytes_skipped_held)}</td>
                    <td class="num">{format::rate(p.bandwidth_bps as f64)}</td>
                    <td class="num">{format::rate(p.dirty_rate_bps as f64)}</td>
                    <td>{format::duration_ms(now_ms.saturating_sub(m.started_at_ms))}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <h2>"In flight"</h2>
        <div class="scroll">
            <table>
                <thead><tr>
                    <th>"VM"</th><th>"Peer"</th><th>"Mode"</th><th>"Progress"</th>
                    <th class="num">"Sent"</th><th class="num">"Skipped, zero"</th><th class="num">"Skipped, held"</th>
                    <th class="num">"Bandwidth"</th><th class="num">"Dirty rate"</th><th>"Running for"</th>
                </tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
    .into_any()
}

fn history(done: Vec<MigrationInfo>, now_ms: u64) -> impl IntoView {
    if done.is_empty() {
        return view! { <h2>"History"</h2><p class="muted">"No migration has ended yet."</p> }
            .into_any();
    }
    let shown = done.len().min(MAX_HISTORY_ROWS);
    let total = done.len();
    let rows = done
        .into_iter()
        .take(MAX_HISTORY_ROWS)
        .map(|m| {
            let took = m
                .ended_at_ms
                .map(|e| format::duration_ms(e.saturating_sub(m.started_at_ms)))
                .unwrap_or_default();
            let downtime = m
                .downtime_ms
                .map(|d| format!("{d:.1} ms"))
                .unwrap_or("–".into());
            let dir = direction(&m);
            let ended = m
                .ended_at_ms
                .map(|e| format::age(e, now_ms))
                .unwrap_or_default();
            view! {
                <tr data-migration=m.id.clone()>
                    <td class="mono">{m.vm_id.clone()}</td>
                    <td class="mono" title=m.peer.clone()>{dir}</td>
                    <td>{m.mode.as_str()}</td>
                    <td>{badge(m.state.as_str(), tone_of_migration(m.state))}</td>
                    <td class="num">{downtime}</td>
                    <td class="num">{took}</td>
                    <td class="num">{format::bytes(m.wire_bytes)}</td>
                    <td>{ended}</td>
                    <td>{m.error.clone().unwrap_or_default()}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <h2>"History"</h2>
        <p class="muted">{format!("{shown} of {total}, newest first")}</p>
        <div class="scroll">
            <table>
                <thead><tr>
                    <th>"VM"</th><th>"Peer"</th><th>"Mode"</th><th>"Result"</th><th class="num">"Downtime"</th>
                    <th class="num">"Total time"</th><th class="num">"Wire bytes"</th><th>"Ended"</th><th>"Error"</th>
                </tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::{MigrationMode, MigrationState};

    pub fn migration(id: &str, state: MigrationState) -> MigrationInfo {
        MigrationInfo {
            id: id.into(),
            vm_id: "vm-1".into(),
            direction: MigrationDirection::Out,
            peer: "12D3KooWDestination".into(),
            mode: MigrationMode::Live,
            state,
            started_at_ms: 1_000,
            ended_at_ms: state.is_final().then_some(3_500),
            downtime_ms: state.is_final().then_some(12.5),
            wire_bytes: 3 << 20,
            error: None,
            progress: Some(MigrationProgressInfo {
                phase: "precopy".into(),
                round: 2,
                bytes_sent: 1 << 20,
                wire_bytes: 1 << 19,
                bytes_skipped_zero: 2 << 20,
                bytes_skipped_held: 0,
                bytes_total: 8 << 20,
                bytes_done: 4 << 20,
                bandwidth_bps: 10 << 20,
                dirty_rate_bps: 1 << 20,
                est_remaining_ms: Some(400),
            }),
        }
    }

    #[test]
    fn a_running_migration_has_a_progress_bar_and_a_finished_one_its_downtime() {
        let html = render(MigrationsData {
            migrations: vec![
                migration("m2", MigrationState::Running),
                migration("m1", MigrationState::Done),
            ],
            now_ms: 5_000,
        })
        .to_html();
        for want in [
            "role=\"progressbar\"",
            "aria-valuenow=\"50\"",
            "width:50.0%",
            "precopy · round 2 · 4.0 MiB of 8.0 MiB · 400 ms left",
            "10.0 MiB/s",
            "12.5 ms",
            "3.0 MiB",
            "2.5 s",
            ">done<",
            "1 of 1, newest first",
        ] {
            assert!(html.contains(want), "{want} missing: {html}");
        }
        let empty = render(MigrationsData {
            migrations: vec![],
            now_ms: 0,
        })
        .to_html();
        assert!(
            empty.contains("No migration is running") && empty.contains("No migration has ended")
        );
    }
}
