//! Headless Chromium for the end-to-end tests: started, or skipped (saying why) when this
//! host has none, unless `NOVACRON_REQUIRE_BROWSER` is set (CI), which makes that a failure.

use novacron_node::bench::browser::{Browser, BrowserError};

pub fn launch_or_skip(test: &str) -> Option<Browser> {
    match Browser::launch() {
        Ok(b) => Some(b),
        Err(BrowserError::Missing(why)) => {
            assert!(
                std::env::var_os("NOVACRON_REQUIRE_BROWSER").is_none(),
                "NOVACRON_REQUIRE_BROWSER is set but there is no browser: {why}"
            );
            eprintln!("skipping {test}: no headless Chromium ({why})");
            None
        }
        Err(e) => panic!("cannot start Chromium: {e}"),
    }
}
