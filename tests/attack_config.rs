//! Attacks by careless configuration: values `check` passes but `run` refuses, and secrets
//! around them.

mod common;

use common::*;

const PASSWORD: &str = "Hunter2SecretPw";

/// A `DATABASE_URL` with a typo in the port (`54x32`), a space in the host or an unknown
/// `sslmode`. `check` said "OK: the configuration is valid" (exit 0) for all three, then `run` stopped with exit 1 ("not a valid postgres:// URL"), not the 2 the
/// README gives an invalid configuration, and `check` never named what to fix.
#[test]
fn check_refuses_a_database_url_that_run_cannot_read_and_hides_its_password() {
    let (_dir, path) = config_dir("[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"chan\"]\n");
    for url in [
        format!("postgres://u:{PASSWORD}@localhost:54x32/db"),
        format!("postgres://u:{PASSWORD}@local host:5432/db"),
        format!("postgres://u:{PASSWORD}@localhost:5432/db?sslmode=bogus"),
    ] {
        for args in [&["check"][..], &["run"][..]] {
            let out = logger_cmd(path.parent().unwrap())
                .arg("--config")
                .arg(&path)
                .args(args)
                .env("DATABASE_URL", &url)
                // Never reach a network address: nothing may listen on port 1.
                .env("TWITCH_IRC_SERVER", "irc://127.0.0.1:1")
                .env("HTTP_LISTEN", "off")
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(!text.contains(PASSWORD) && !text.contains("Hunter2"), "{args:?} {url}: leaks:\n{text}");
            assert_eq!(out.status.code(), Some(2), "{args:?} with a bad DATABASE_URL: exit {:?}\n{text}", out.status);
            assert!(text.contains("DATABASE_URL") && text.contains("port"), "{args:?}: says what to fix:\n{text}");
        }
    }
}
