//! The files the pages load, all served by the node itself (no fonts, scripts or styles from
//! anywhere else): the stylesheet, the live-update script and the icon, built into the
//! binary. Each has an ETag (its blake3), so browsers revalidate cheaply.

/// Where the pages find them.
pub const STYLE_PATH: &str = "/assets/dashboard.css";
pub const SCRIPT_PATH: &str = "/assets/live.js";
pub const ICON_PATH: &str = "/assets/icon.svg";

/// A file the node serves.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every asset.
pub const ASSETS: [Asset; 3] = [
    Asset {
        path: STYLE_PATH,
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/dashboard.css"),
    },
    Asset {
        path: SCRIPT_PATH,
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/live.js"),
    },
    Asset {
        path: ICON_PATH,
        content_type: "image/svg+xml",
        body: include_str!("../assets/icon.svg"),
    },
];

/// The asset served at `path`.
pub fn find(path: &str) -> Option<Asset> {
    ASSETS.iter().copied().find(|a| a.path == path)
}

impl Asset {
    /// Its ETag: a quoted prefix of its blake3.
    pub fn etag(&self) -> String {
        format!("\"{}\"", &blake3::hash(self.body.as_bytes()).to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_and_loads_nothing_from_elsewhere() {
        for a in ASSETS {
            assert_eq!(find(a.path).map(|f| f.path), Some(a.path));
            assert!(!a.body.is_empty());
            assert_eq!(a.etag().len(), 18);
            // The icon's XML namespace is a name, not a request.
            let body = a.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{}",
                a.path
            );
            assert!(
                !body.contains("@import") && !body.contains("url("),
                "{}",
                a.path
            );
        }
        assert!(find("/assets/nope.js").is_none());
    }
}
