//! Two network namespaces joined by a veth pair, for partition tests: hosts on one machine
//! that only reach each other over a link the test can cut (`ip link set ... down`) and
//! restore. Needs root and iproute2; [`Link::create`] says why when it cannot.
//! Everything is removed when the [`Link`] drops (deleting a namespace deletes its veth end).

use std::process::Command;

/// Runs `ip ARGS`; Err names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// One namespace of the pair.
pub struct Side {
    pub netns: String,
    pub ifname: String,
    pub addr: String,
}

impl Side {
    /// The prefix that runs a program inside this namespace.
    pub fn exec_prefix(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.netns]
    }
}

/// Namespaces `a` and `b` with addresses 10.231.0.1/24 and 10.231.0.2/24 on a veth pair.
pub struct Link {
    pub a: Side,
    pub b: Side,
}

impl Link {
    /// Creates the pair; names carry `tag` (keep it short: interface names are ≤ 15 bytes).
    pub fn create(tag: &str) -> Result<Link, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        let link = Link {
            a: Side {
                netns: format!("nc-{tag}-a"),
                ifname: format!("nc{tag}a"),
                addr: "10.231.0.1".into(),
            },
            b: Side {
                netns: format!("nc-{tag}-b"),
                ifname: format!("nc{tag}b"),
                addr: "10.231.0.2".into(),
            },
        };
        // Leftovers of an earlier run that was killed.
        let _ = ip(&["netns", "del", &link.a.netns]);
        let _ = ip(&["netns", "del", &link.b.netns]);
        for side in [&link.a, &link.b] {
            ip(&["netns", "add", &side.netns])?;
            ip(&["-n", &side.netns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link",
            "add",
            &link.a.ifname,
            "netns",
            &link.a.netns,
            "type",
            "veth",
            "peer",
            "name",
            &link.b.ifname,
            "netns",
            &link.b.netns,
        ])?;
        for side in [&link.a, &link.b] {
            let cidr = format!("{}/24", side.addr);
            ip(&["-n", &side.netns, "addr", "add", &cidr, "dev", &side.ifname])?;
            ip(&["-n", &side.netns, "link", "set", &side.ifname, "up"])?;
        }
        Ok(link)
    }

    /// Cuts the link: both ends lose carrier, packets in flight are lost, no RST is sent.
    pub fn cut(&self) {
        ip(&["-n", &self.a.netns, "link", "set", &self.a.ifname, "down"]).expect("cut the link");
    }

    /// Brings the link back.
    pub fn restore(&self) {
        ip(&["-n", &self.a.netns, "link", "set", &self.a.ifname, "up"]).expect("restore the link");
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a.netns]);
        let _ = ip(&["netns", "del", &self.b.netns]);
    }
}
