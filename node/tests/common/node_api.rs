//! The node's REST API and its VMMs as end-to-end tests see them from outside: plain HTTP
//! on a node's `api.url`, and the processes in a VM's cgroup.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Whether `pid` runs (a zombie waiting for a parent that is not ours to reap it counts as
/// ended).
pub fn pid_alive(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    pid > 0 && state != Some("Z") && state != Some("X")
}

/// Processes whose cgroup names VM `id`'s VMM (any node's tag).
pub fn vmm_processes(id: &str) -> Vec<i32> {
    let needle = format!("/vm-{id}-");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&needle))
                && pid_alive(i64::from(*pid))
        })
        .collect()
}

/// Plain HTTP on the node's API, with a JSON body when given; (status, body).
pub fn http(dir: &Path, method: &str, path: &str, json: Option<&Value>) -> (u16, String) {
    let url = std::fs::read_to_string(dir.join("api.url")).unwrap();
    let host = url.trim().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = json.map(Value::to_string).unwrap_or_default();
    let content_type = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{content_type}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies: good enough to search for lines in.
    (status, body.to_string())
}
