//! The login flow: a signed connect link ([`link`]) starts a login attempt
//! ([`attempts`]: 256-bit `state`, single-use, expiring in minutes, bound to
//! the browser by a cookie, PKCE verifier sealed), the provider redirects back,
//! and the attempt is consumed exactly once before the code is exchanged and
//! the tokens are stored through the connection store ([`flow`]).

pub mod attempts;
pub mod flow;
pub mod grant;
pub mod link;

pub use link::{ConnectClaims, LinkError, LinkKeys, LinkOrder, MAX_LINK_LIFETIME, check_return_url, parse_lifetime};
