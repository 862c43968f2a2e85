//! The page a caller from another machine sees first: it asks once for the node's API
//! token (`<dataDir>/api.token`, or `/etc/novacron/api.token` for an installed node).

use leptos::prelude::*;

use super::csrf_field;

pub fn render(csrf: &str, failed: bool) -> impl IntoView {
    let error = failed.then(
        || view! { <p class="notice error" role="alert">"That is not this node's API token."</p> },
    );
    view! {
        <h1>"Sign in"</h1>
        <section class="panel">
            <p>
                "This dashboard is reached from another machine, so it needs the node's API token once "
                "(the file " <code>"api.token"</code> " in the node's data directory, or "
                <code>"/etc/novacron/api.token"</code> "). The browser keeps a session derived from it, not the token."
            </p>
            {error}
            <form class="stack" method="post" action="/login">
                {csrf_field(csrf)}
                <label>"API token"<input type="password" name="token" autocomplete="current-password" required=true autofocus=true/></label>
                <div class="actions"><button type="submit" class="primary">"Sign in"</button></div>
            </form>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use leptos::prelude::*;

    #[test]
    fn the_login_form_posts_the_token_with_its_csrf_token() {
        let html = super::render("tok", true).to_html();
        assert!(
            html.contains("action=\"/login\"") && html.contains("value=\"tok\""),
            "{html}"
        );
        assert!(
            html.contains("type=\"password\"") && html.contains("not this node"),
            "{html}"
        );
    }
}
