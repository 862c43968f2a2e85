//! The NovaCron dashboard: what a node shows in a browser on http://localhost:3000.
//!
//! Pages are Leptos views rendered on the server from the node's domain model
//! (`novacron-model`), the same types its REST API serves. Each page marks the parts that
//! change with `data-live` regions; a small script ([`assets`]) listens to the node's event
//! stream (server-sent events) and, when an event a page cares about arrives, fetches the
//! page again as a fragment and swaps those regions in place, so pages update within a
//! second without a reload and work without the script (as plain pages).
//!
//! This crate does no I/O: the node (`novacron-node`, `api::dashboard`) owns the listener,
//! the sessions and the actions, collects each page's data and calls [`views`] to render
//! it. What lives here:
//! - [`pages`]: the pages, their paths and which events refresh them;
//! - [`shell`]: the document around every page (navigation, theme, connection banner);
//! - [`views`]: one module per page, and the parts they share;
//! - [`chart`]: SVG line charts with axes and units;
//! - [`history`]: the ring of samples the node keeps for the charts, and the churn window;
//! - [`filter`]: the list filters a page's query string sets;
//! - [`csrf`]: the tokens every action must carry;
//! - [`format`]: bytes, durations and ages for people;
//! - [`assets`]: the stylesheet, the live-update script and the icon, served by the node.

pub mod assets;
pub mod chart;
pub mod csrf;
pub mod filter;
pub mod format;
pub mod history;
pub mod pages;
pub mod shell;
pub mod views;
