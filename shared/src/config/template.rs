//! `{name}` placeholders in provider URLs: a tenant, a region, a login host
//! come from the config's `params`; a few values are only known per connection
//! (from the token response or the login) and are filled at run time.

use std::collections::BTreeMap;

/// Placeholders a URL may keep until a connection fills them: Salesforce's
/// `instance_url` and Zoho's `api_domain` (token response), Exact Online's
/// `division`, QuickBooks' `realm_id`, Xero's `tenant_id`.
pub const CONNECTION_PLACEHOLDERS: &[&str] = &["instance_url", "api_domain", "division", "realm_id", "tenant_id"];

/// The longest a filled template may be: what servers take as a URL (they
/// answer 414 beyond about 8 KiB). A placeholder repeated a thousand times
/// with a long value would otherwise turn a small file into megabytes.
pub const MAX_FILLED_LEN: usize = 8 * 1024;

/// A placeholder that has no value, a brace that does not close, or a
/// result too long to be a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("placeholder `{{{0}}}` has no value: set `params.{0}`")]
    Unfilled(String),
    #[error("unclosed `{{` in `{0}`")]
    Unclosed(String),
    #[error("longer than {MAX_FILLED_LEN} bytes once its placeholders are filled")]
    TooLong,
}

/// Replaces every `{name}` with `params[name]`; names listed in `keep` stay as
/// they are, any other unfilled name is an error.
pub fn fill_template(
    template: &str,
    params: &BTreeMap<String, String>,
    keep: &[&str],
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| TemplateError::Unclosed(template.to_owned()))?;
        let name = &after[..close];
        match params.get(name) {
            Some(value) => out.push_str(value),
            None if keep.contains(&name) => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
            None => return Err(TemplateError::Unfilled(name.to_owned())),
        }
        rest = &after[close + 1..];
        if out.len() > MAX_FILLED_LEN {
            return Err(TemplateError::TooLong);
        }
    }
    out.push_str(rest);
    if out.len() > MAX_FILLED_LEN {
        return Err(TemplateError::TooLong);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_keeps_and_rejects() {
        let params = BTreeMap::from([("tenant".to_owned(), "contoso".to_owned())]);
        assert_eq!(
            fill_template("https://h/{tenant}/t", &params, &[]).as_deref(),
            Ok("https://h/contoso/t")
        );
        assert_eq!(
            fill_template("{instance_url}/x/{tenant}", &params, CONNECTION_PLACEHOLDERS).as_deref(),
            Ok("{instance_url}/x/contoso")
        );
        assert_eq!(
            fill_template("https://h/{region}", &params, &[]),
            Err(TemplateError::Unfilled("region".to_owned()))
        );
        assert!(matches!(
            fill_template("https://h/{oops", &params, &[]),
            Err(TemplateError::Unclosed(_))
        ));
    }

    #[test]
    fn a_repeated_placeholder_cannot_blow_a_small_file_up() {
        // Found by fuzz::config: 2,000 `{p}` with a 2,000-byte `p` made a
        // 4 MB URL from a 8 KB file.
        let params = BTreeMap::from([("p".to_owned(), "a".repeat(2_000))]);
        let template = format!("https://h/{}", "{p}".repeat(2_000));
        assert_eq!(fill_template(&template, &params, &[]), Err(TemplateError::TooLong));
        let long = format!("https://h/{}", "a".repeat(MAX_FILLED_LEN));
        assert_eq!(fill_template(&long, &params, &[]), Err(TemplateError::TooLong));
        let fits = format!("https://h/{}", "{p}".repeat(3));
        assert_eq!(fill_template(&fits, &params, &[]).map(|s| s.len()), Ok(10 + 6_000));
    }
}
