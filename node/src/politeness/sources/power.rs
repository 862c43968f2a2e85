//! Whether the machine runs on battery, from `/sys/class/power_supply`.
//!
//! On battery means: a system battery is present and no mains/USB supply is online, and
//! either a supply reports itself offline or the battery reports `Discharging`. Batteries
//! of peripherals (`scope` = `Device`: a wireless mouse) do not count. A UPS is not looked
//! at (a desktop on UPS power counts as on mains). No `power_supply` directory (containers,
//! VMs) is unknown; a directory without a battery is mains.

use std::path::Path;

use super::read_limited;

/// Largest sysfs attribute read.
const MAX_ATTR: u64 = 256;
/// Most supplies looked at.
const MAX_SUPPLIES: usize = 64;

/// `sys` is normally `/sys`.
pub fn on_battery(sys: &Path) -> Option<bool> {
    let entries = std::fs::read_dir(sys.join("class/power_supply")).ok()?;
    let mut battery = false;
    let mut discharging = false;
    let mut ac_online = false;
    let mut ac_offline = false;
    for entry in entries.take(MAX_SUPPLIES).filter_map(Result::ok) {
        let dir = entry.path();
        let attr =
            |name: &str| read_limited(&dir.join(name), MAX_ATTR).map(|s| s.trim().to_owned());
        let Some(kind) = attr("type") else { continue };
        match kind.as_str() {
            "Battery" => {
                if attr("scope").as_deref() == Some("Device") {
                    continue;
                }
                battery = true;
                discharging |= attr("status").as_deref() == Some("Discharging");
            }
            "Mains" | "Wireless" => note_online(attr("online"), &mut ac_online, &mut ac_offline),
            k if k.starts_with("USB") => {
                note_online(attr("online"), &mut ac_online, &mut ac_offline)
            }
            _ => {}
        }
    }
    Some(battery && !ac_online && (ac_offline || discharging))
}

fn note_online(online: Option<String>, on: &mut bool, off: &mut bool) {
    match online.as_deref() {
        Some("1") => *on = true,
        Some("0") => *off = true,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(sys: &Path, name: &str, attrs: &[(&str, &str)]) {
        let dir = sys.join("class/power_supply").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in attrs {
            std::fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn laptop_on_and_off_mains() {
        let sys = tempfile::tempdir().unwrap();
        supply(
            sys.path(),
            "BAT0",
            &[("type", "Battery"), ("status", "Charging")],
        );
        supply(sys.path(), "AC", &[("type", "Mains"), ("online", "1")]);
        assert_eq!(on_battery(sys.path()), Some(false));
        supply(sys.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        supply(
            sys.path(),
            "BAT0",
            &[("type", "Battery"), ("status", "Not charging")],
        );
        assert_eq!(on_battery(sys.path()), Some(true));
        // Plugged in over USB-C while the barrel jack is out.
        supply(
            sys.path(),
            "ucsi-source-psy-1",
            &[("type", "USB"), ("online", "1")],
        );
        assert_eq!(on_battery(sys.path()), Some(false));
    }

    #[test]
    fn a_discharging_battery_without_a_mains_supply_is_on_battery() {
        let sys = tempfile::tempdir().unwrap();
        supply(
            sys.path(),
            "BAT1",
            &[("type", "Battery"), ("status", "Full")],
        );
        assert_eq!(on_battery(sys.path()), Some(false));
        supply(
            sys.path(),
            "BAT1",
            &[("type", "Battery"), ("status", "Discharging")],
        );
        assert_eq!(on_battery(sys.path()), Some(true));
    }

    #[test]
    fn peripheral_batteries_desktops_and_containers() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(on_battery(sys.path()), None);
        supply(
            sys.path(),
            "hidpp_battery_0",
            &[
                ("type", "Battery"),
                ("scope", "Device"),
                ("status", "Discharging"),
            ],
        );
        supply(sys.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        assert_eq!(on_battery(sys.path()), Some(false));
        // A supply without a readable type is skipped.
        std::fs::create_dir_all(sys.path().join("class/power_supply/odd")).unwrap();
        assert_eq!(on_battery(sys.path()), Some(false));
    }
}
