//! Secret values as newtypes: `Debug` and `Display` print `[redacted]`, and
//! reaching the value is an explicit `.secret()` that a reviewer can search for.
//!
//! They deliberately implement neither `Serialize` nor `Deserialize`: a secret
//! only leaves its newtype where the code says so, never by accident through a
//! `#[derive]` on a struct that holds it.

use std::fmt;

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret value. Never log it, format it into an error, or put it in a URL.
            pub fn secret(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

secret_string!(
    /// A bearer access token issued by a provider.
    AccessToken
);
secret_string!(
    /// A refresh token; often single-use, so it is the most valuable secret we hold.
    RefreshToken
);
secret_string!(
    /// The OAuth client secret, read from Secrets Manager.
    ClientSecret
);
secret_string!(
    /// An authorization code (single-use, valid for minutes).
    AuthorizationCode
);
secret_string!(
    /// A PKCE code verifier (RFC 7636): 43–128 characters.
    PkceVerifier
);
secret_string!(
    /// The `state` value of a login attempt.
    CsrfState
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let planted = "rt-planted-0123456789";
        let token = RefreshToken::new(planted);
        let debug = format!("{token:?}");
        let display = format!("{token}");
        assert_eq!(debug, "RefreshToken([redacted])");
        assert_eq!(display, "[redacted]");
        assert_eq!(token.secret(), planted);

        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            access: AccessToken,
            client: ClientSecret,
        }
        let holder = Holder {
            access: AccessToken::new("at-planted"),
            client: ClientSecret::new("cs-planted"),
        };
        let printed = format!("{holder:?} {holder:#?}");
        assert!(!printed.contains("planted"), "{printed}");
    }
}
