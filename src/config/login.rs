//! Twitch login names (channels and bot usernames) and the IRC server address: value types of
//! the config, so they live here and the IRC side imports them.

use std::fmt;

/// Why a name is not a Twitch login. Shows the name as written (a channel or user name, never
/// a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Nothing left after trimming and dropping `#`.
    #[error("`{0}` is empty")]
    Empty(String),
    /// Over 25 characters.
    #[error("`{0}` is longer than Twitch's 25-character limit")]
    TooLong(String),
    /// A character outside `a-z`, `0-9`, `_`.
    #[error("`{raw}` contains `{bad}`; Twitch logins use only letters, digits and `_`")]
    BadChar { raw: String, bad: char },
}

/// Why a server address does not parse; says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerAddrError {
    /// Neither `ircs://` nor `irc://`.
    #[error("`{0}` has no ircs:// or irc:// scheme; {HINT}")]
    NoScheme(String),
    /// The part after the last `:` is not a port number.
    #[error("`{text}` has a bad port `{port}`; {HINT}")]
    BadPort { text: String, port: String },
    /// Nothing (or a path) where the host should be.
    #[error("`{0}` has no host; {HINT}")]
    NoHost(String),
}

const HINT: &str = "write it as ircs://irc.chat.twitch.tv:6697 (TLS) or irc://127.0.0.1:6667 (plain)";

/// Normalises a channel or user name the way Twitch does (`#`, case and spaces dropped) and
/// checks it against Twitch's login rules: 1–25 characters of `a-z`, `0-9` and `_`.
/// (New accounts need 4+, but older, shorter logins exist and are valid channels.)
pub fn normalize_login(raw: &str) -> Result<String, LoginError> {
    let name = raw.trim();
    let name = name.strip_prefix('#').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err(LoginError::Empty(raw.to_string()));
    }
    if name.len() > 25 {
        return Err(LoginError::TooLong(raw.to_string()));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return Err(LoginError::BadChar { raw: raw.to_string(), bad });
    }
    Ok(name)
}

/// Longest user id accepted in a filter list (Twitch's are about 10 digits today).
pub const MAX_USER_ID_DIGITS: usize = 20;

/// One entry of `ignore_users` / `opt_out_users`, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserEntry {
    /// A Twitch login, lowercase.
    Login(String),
    /// A numeric Twitch user id.
    Id(String),
}

/// Reads a filter entry: digits only is a user id, anything else must be a login by Twitch's
/// rules ([`normalize_login`]). The error quotes the entry (a user name, never a secret).
pub fn parse_user_entry(raw: &str) -> Result<UserEntry, String> {
    let t = raw.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        if t.len() > MAX_USER_ID_DIGITS {
            return Err(format!(
                "`{raw}` is too long for a user id ({MAX_USER_ID_DIGITS} digits at most); write the login or the id Twitch shows"
            ));
        }
        return Ok(UserEntry::Id(t.to_string()));
    }
    normalize_login(raw).map(UserEntry::Login).map_err(|e| {
        format!("{e} (an entry is a Twitch login, e.g. \"nightbot\", or a numeric user id, e.g. \"19264788\")")
    })
}

/// Where the IRC connection goes: `ircs://host:port` (TLS) or `irc://host:port` (plain TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// Whether to speak TLS.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerAddr {
    /// Twitch's own TLS endpoint.
    pub fn twitch() -> Self {
        ServerAddr { tls: true, host: "irc.chat.twitch.tv".into(), port: 6697 }
    }

    /// Parses `ircs://host[:port]` or `irc://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, ServerAddrError> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("ircs://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("irc://") {
            (false, r)
        } else {
            return Err(ServerAddrError::NoScheme(text.to_string()));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| ServerAddrError::BadPort { text: text.to_string(), port: p.to_string() })?;
                (h, port)
            }
            _ => (rest, if tls { 6697 } else { 6667 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(ServerAddrError::NoHost(text.to_string()));
        }
        Ok(ServerAddr { tls, host: host.to_string(), port })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "ircs" } else { "irc" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_normalised() {
        assert_eq!(normalize_login(" #BLAST ").unwrap(), "blast");
        assert_eq!(normalize_login("esl_csgo").unwrap(), "esl_csgo");
    }

    #[test]
    fn channel_names_breaking_twitch_rules_are_rejected_naming_the_entry() {
        let e = normalize_login("bad-name").unwrap_err().to_string();
        assert!(e.contains("bad-name") && e.contains('-'), "{e}");
        assert!(normalize_login("#").is_err());
        assert!(normalize_login(&"a".repeat(26)).unwrap_err().to_string().contains("25"));
        assert!(normalize_login("ünicode").is_err());
    }

    #[test]
    fn filter_entries_are_logins_or_digit_ids_and_nothing_else() {
        assert_eq!(parse_user_entry(" NightBot ").unwrap(), UserEntry::Login("nightbot".into()));
        assert_eq!(parse_user_entry(" 19264788 ").unwrap(), UserEntry::Id("19264788".into()));
        assert_eq!(parse_user_entry("bot_123").unwrap(), UserEntry::Login("bot_123".into()));
        for bad in ["", " ", "-12", "12 34", "ünicode", "a b", "bad-name"] {
            let e = parse_user_entry(bad).unwrap_err();
            assert!(e.contains("login") || e.contains("empty"), "{bad:?}: {e}");
        }
        assert!(parse_user_entry(&"9".repeat(21)).unwrap_err().contains("20 digits"));
    }

    #[test]
    fn server_addresses_parse_with_default_ports() {
        assert_eq!(ServerAddr::parse("ircs://irc.chat.twitch.tv:6697").unwrap(), ServerAddr::twitch());
        let plain = ServerAddr::parse("irc://127.0.0.1:7000").unwrap();
        assert_eq!((plain.tls, plain.host.as_str(), plain.port), (false, "127.0.0.1", 7000));
        assert_eq!(ServerAddr::parse("irc://localhost").unwrap().port, 6667);
        assert!(ServerAddr::parse("http://x:1").is_err());
        assert!(ServerAddr::parse("irc://x:notaport").is_err());
    }
}
