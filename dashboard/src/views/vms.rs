//! VMs on this node: a filterable list (state, name, age, progress) with pause, resume,
//! stop and migrate (mode; a target member or automatic placement).

use leptos::prelude::*;
use novacron_model::{VmInfo, VmState};

use super::{badge, csrf_field, options, tone_of_vm};
use crate::filter::ListFilter;
use crate::format;

#[derive(Clone, Debug)]
pub struct VmsData {
    pub vms: Vec<VmInfo>,
    pub filter: ListFilter,
    /// Live members a VM may be moved to (PeerIds, this node excluded).
    pub targets: Vec<String>,
    pub csrf: String,
    pub now_ms: u64,
}

/// The state names the filter offers (`""` for all).
fn state_names() -> Vec<&'static str> {
    std::iter::once("")
        .chain(VmState::ALL.iter().map(|s| s.as_str()))
        .collect()
}

/// What a VM's progress reads: its guest's last report (builtin guests report passes).
pub fn progress_of(vm: &VmInfo) -> String {
    match vm.last_report {
        Some((code, value)) => format!("report {code}: {value}"),
        None => "–".into(),
    }
}

pub fn render(d: VmsData) -> impl IntoView {
    let total = d.vms.len();
    let shown: Vec<VmInfo> = d.vms.into_iter().filter(|v| d.filter.vm(v)).collect();
    let count = format!("{} of {total}", shown.len());
    let rows = shown
        .into_iter()
        .map(|vm| row(vm, &d.csrf, d.now_ms))
        .collect_view();
    // One list of targets for every row's migrate field (a select per row would repeat the
    // cell's members in every row).
    let targets = d
        .targets
        .iter()
        .map(|t| view! { <option value=t.clone()>{format::short_peer(t)}</option> })
        .collect_view();
    let states = state_names();
    view! {
        <h1>"VMs"</h1>
        <form class="filters" method="get" action="/vms" role="search">
            <label>"State"<select name="state">{options(&states, &d.filter.state)}</select></label>
            <label>"Find"<input type="search" name="q" value=d.filter.q.clone() placeholder="id or name"/></label>
            <button type="submit">"Filter"</button>
        </form>
        <datalist id="migrate-targets"><option value="auto">"auto"</option>{targets}</datalist>
        <section class="panel" data-live="vms">
            <p class="muted">{count}</p>
            <div class="scroll">
                <table>
                    <thead><tr>
                        <th>"VM"</th><th>"Name"</th><th>"State"</th><th>"Backend"</th><th class="num">"vCPUs"</th>
                        <th class="num">"Memory"</th><th>"Age"</th><th>"Progress"</th><th>"Actions"</th>
                    </tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            </div>
        </section>
    }
}

fn row(vm: VmInfo, csrf: &str, now_ms: u64) -> impl IntoView {
    let id = vm.id.clone();
    let actions = vm_actions(&vm, csrf);
    view! {
        <tr data-vm=id.clone()>
            <td class="mono">{id.clone()}</td>
            <td>{vm.spec.name.clone().unwrap_or_default()}</td>
            <td title=vm.detail.clone().unwrap_or_default()>{badge(vm.state.as_str(), tone_of_vm(vm.state))}</td>
            <td>{vm.spec.backend.as_str()}</td>
            <td class="num">{vm.spec.vcpus}</td>
            <td class="num">{format::mib(vm.spec.mem_mib)}</td>
            <td>{format::age(vm.created_at_ms, now_ms)}</td>
            <td>{progress_of(&vm)}</td>
            <td>{actions}</td>
        </tr>
    }
}

fn vm_actions(vm: &VmInfo, csrf: &str) -> impl IntoView {
    let base = format!("/vms/{}", vm.id);
    let simple = |action: &'static str, label: &'static str| {
        view! {
            <form class="inline" method="post" action=format!("{base}/{action}")>
                {csrf_field(csrf)}
                <button type="submit">{label}</button>
            </form>
        }
    };
    let pause = (vm.state == VmState::Running).then(|| simple("pause", "Pause"));
    let resume = (vm.state == VmState::Paused).then(|| simple("resume", "Resume"));
    let stop =
        (vm.state.is_active() || vm.state == VmState::Suspended).then(|| simple("stop", "Stop"));
    let migrate = (vm.state == VmState::Running).then(|| {
        view! {
            <form class="inline" method="post" action=format!("{base}/migrate")>
                {csrf_field(csrf)}
                <select name="mode" aria-label="mode">
                    <option value="live">"live"</option>
                    <option value="warm">"warm"</option>
                    <option value="cold">"cold"</option>
                </select>
                <input name="target" value="auto" list="migrate-targets" size="14"
                    aria-label="target: auto, or a member's PeerId" spellcheck="false"/>
                <button type="submit" class="primary">"Migrate"</button>
            </form>
        }
    });
    view! { <div class="actions">{pause}{resume}{migrate}{stop}</div> }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::fixtures::vm;

    #[test]
    fn the_list_filters_and_offers_what_each_state_allows() {
        let mut paused = vm("vm-paused", VmState::Paused);
        paused.spec.name = Some("other".into());
        let data = |filter: ListFilter| VmsData {
            vms: vec![vm("vm-run", VmState::Running), paused.clone()],
            filter,
            targets: vec!["12D3KooWTargetPeer01".into()],
            csrf: "tok".into(),
            now_ms: 5_000,
        };
        let html = render(data(ListFilter::default())).to_html();
        for want in [
            "2 of 2",
            "action=\"/vms/vm-run/migrate\"",
            "action=\"/vms/vm-paused/resume\"",
            "name=\"csrf\" value=\"tok\"",
            "value=\"12D3KooWTargetPeer01\"",
            "report 1: 7",
            "4 s ago",
        ] {
            assert!(html.contains(want), "{want} missing: {html}");
        }
        assert!(
            !html.contains("/vms/vm-paused/migrate"),
            "a paused VM is not offered a move"
        );
        let html = render(data(ListFilter {
            state: "paused".into(),
            q: String::new(),
        }))
        .to_html();
        assert!(
            html.contains("1 of 2") && !html.contains("vm-run"),
            "{html}"
        );
        assert!(html.contains("<option value=\"paused\" selected"), "{html}");
    }
}
