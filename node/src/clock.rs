//! The wall clock as the API reports times: unix milliseconds. Read at the edge only; the
//! policy cores never read a clock, the daemon passes them `now`.

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    novacron_mesh::swarm::clock::unix_now().as_millis() as u64
}
