//! The document around every page: head (styles, icon, the CSRF token for the script), a
//! header with the node's name, the navigation and the theme switch, the connection banner,
//! the page's own content, and the live-update script.

use leptos::prelude::*;

use crate::assets;
use crate::pages::{Page, NAVIGATION};

/// What every page's frame shows.
#[derive(Clone, Debug)]
pub struct Frame {
    pub page: Page,
    /// The node's name (its `nodeId`, else its short PeerId).
    pub node_name: String,
    /// The CSRF token of the caller's session (for the script's and the forms' POSTs).
    pub csrf: String,
    /// A message to show once (an action's outcome), escaped like all text.
    pub notice: Option<Notice>,
}

/// An action's outcome shown above a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

/// A whole page: `<!DOCTYPE html>` and the document with `content` inside the frame.
pub fn document(frame: &Frame, content: impl IntoView + 'static) -> String {
    let title = format!("{} · {} · NovaCron", frame.page.title(), frame.node_name);
    let topics = frame.page.topics().join(" ");
    let nav = NAVIGATION
        .iter()
        .map(|p| {
            let current = p.section() == frame.page.section();
            view! {
                <a href=p.path() aria-current=current.then_some("page")>{p.title()}</a>
            }
        })
        .collect_view();
    let notice = frame.notice.clone().map(|n| {
        let class = if n.ok { "notice ok" } else { "notice error" };
        view! { <p class=class role="status">{n.text}</p> }
    });
    let live = !frame.page.topics().is_empty();
    let body = view! {
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <meta name="csrf-token" content=frame.csrf.clone()/>
                <title>{title}</title>
                <link rel="icon" href=assets::ICON_PATH type="image/svg+xml"/>
                <link rel="stylesheet" href=assets::STYLE_PATH/>
                <script src=assets::SCRIPT_PATH defer=true></script>
            </head>
            <body data-topics=topics data-live-page=live.then_some("1")>
                <a class="skip" href="#main">"Skip to content"</a>
                <header class="top">
                    <a class="brand" href="/">
                        <img src=assets::ICON_PATH alt="" width="24" height="24"/>
                        "NovaCron"
                    </a>
                    <span class="node-name" title="this node">{frame.node_name.clone()}</span>
                    <nav aria-label="pages">{nav}</nav>
                    <button type="button" class="theme" id="theme" aria-label="switch light or dark theme">
                        "◐"
                    </button>
                </header>
                <p id="connection" class="banner" role="alert" hidden=true>
                    "Live updates lost: reconnecting…"
                </p>
                <main id="main" tabindex="-1">
                    {notice}
                    {content}
                </main>
            </body>
        </html>
    };
    format!("<!DOCTYPE html>{}", body.to_html())
}

/// Only the page's content (what the script fetches to swap its live regions).
pub fn fragment(content: impl IntoView + 'static) -> String {
    view! { <main id="main">{content}</main> }.to_html()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_escapes_text_and_marks_the_current_page() {
        let frame = Frame {
            page: Page::Job,
            node_name: "<node>".into(),
            csrf: "t0ken".into(),
            notice: Some(Notice {
                ok: false,
                text: "<script>alert(1)</script>".into(),
            }),
        };
        let html = document(&frame, view! { <p>"hello"</p> });
        assert!(
            html.starts_with("<!DOCTYPE html><html lang=\"en\">"),
            "{html}"
        );
        assert!(html.contains("&lt;node&gt;"), "{html}");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains(r#"<a href="/jobs" aria-current="page">Jobs</a>"#),
            "{html}"
        );
        assert!(html.contains(r#"content="t0ken""#), "{html}");
        assert!(html.contains(r#"data-topics="job""#), "{html}");
        assert!(html.contains("<p>hello</p>"), "{html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "nothing from elsewhere: {html}"
        );
    }
}
