//! Sessions and CSRF tokens.
//!
//! A caller from another machine signs in once with the node's API token; the browser then
//! keeps [`session_for_token`] of it (never the token itself) in an HttpOnly,
//! SameSite=Strict cookie. Callers on this machine need no session (loopback is trusted, as
//! by the API) and share the [`LOOPBACK`] one.
//!
//! Every action is a POST carrying the session's CSRF token, [`CsrfKey::token`]: a keyed
//! hash of the session under a key the node draws at start, written into each page's forms.
//! Another site can make a browser send a POST, but cannot read the page that holds the
//! token. Tokens change when the node restarts (a form from before asks for a reload).

/// The session of callers on the node's own machine.
pub const LOOPBACK: &str = "loopback";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "novacron_session";
/// The form field (and `X-CSRF-Token` header) that carries the token.
pub const FIELD: &str = "csrf";

/// The cookie value that stands for `api_token`: derived from it, so the browser never holds
/// the token and changing the token ends every session.
pub fn session_for_token(api_token: &str) -> String {
    blake3::derive_key("novacron dashboard session v1", api_token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The node's CSRF key.
#[derive(Clone)]
pub struct CsrfKey([u8; 32]);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    /// A key from 32 random bytes.
    pub fn new(random: [u8; 32]) -> CsrfKey {
        CsrfKey(random)
    }

    /// The token of `session`.
    pub fn token(&self, session: &str) -> String {
        blake3::keyed_hash(&self.0, session.as_bytes())
            .to_hex()
            .to_string()
    }

    /// Whether `given` is `session`'s token.
    pub fn check(&self, session: &str, given: &str) -> bool {
        same(&self.token(session), given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_belongs_to_one_session_and_one_key() {
        let k = CsrfKey::new([7; 32]);
        let t = k.token(LOOPBACK);
        assert!(k.check(LOOPBACK, &t));
        assert!(!k.check("another", &t));
        assert!(!k.check(LOOPBACK, ""));
        assert!(!k.check(LOOPBACK, &t[..63]));
        assert!(!CsrfKey::new([8; 32]).check(LOOPBACK, &t));
    }

    #[test]
    fn a_session_is_derived_from_the_token_not_the_token() {
        let s = session_for_token("secret-token");
        assert_eq!(s.len(), 64);
        assert!(!s.contains("secret"));
        assert_eq!(s, session_for_token("secret-token"));
        assert_ne!(s, session_for_token("other-token"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
