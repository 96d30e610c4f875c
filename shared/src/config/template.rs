//! `{name}` placeholders in provider URLs: a tenant, a region, a login host
//! come from the config's `params`; a few values are only known per connection
//! (from the token response or the login) and are filled at run time.

use std::collections::BTreeMap;

/// Placeholders a URL may keep until a connection fills them: Salesforce's
/// `instance_url` and Zoho's `api_domain` (token response), Exact Online's
/// `division`, QuickBooks' `realm_id`, Xero's `tenant_id`.
pub const CONNECTION_PLACEHOLDERS: &[&str] = &["instance_url", "api_domain", "division", "realm_id", "tenant_id"];

/// A placeholder that has no value, or a brace that does not close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("placeholder `{{{0}}}` has no value: set `params.{0}`")]
    Unfilled(String),
    #[error("unclosed `{{` in `{0}`")]
    Unclosed(String),
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
    }
    out.push_str(rest);
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
}
