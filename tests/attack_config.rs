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

/// A password with an unescaped `/` whose part before it is a number:
/// `postgres://localhost:1/TopSecretTail@db:5432/twitch` (user `localhost`, password
/// `1/TopSecretTail`). It parses as host `localhost`, port 1 and database
/// `TopSecretTail@db:5432/twitch`, so every retry line and `check --connect` printed
/// `database=anonymous@localhost:1/TopSecretTail@…`: the tail of the password in the log.
#[tokio::test]
async fn a_password_cut_short_by_an_unescaped_slash_never_reaches_the_log() {
    let (_dir, path) = config_dir("[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"chan\"]\n");
    let url = "postgres://localhost:1/TopSecretTail@db.invalid:5432/twitch";
    for args in [&["check", "--connect"][..], &["run"][..]] {
        let mut cmd = logger_cmd(path.parent().unwrap());
        cmd.arg("--config").arg(&path).args(args).env("DATABASE_URL", url);
        cmd.env("TWITCH_IRC_SERVER", "irc://127.0.0.1:1").env("HTTP_LISTEN", "off");
        let mut logger = Logger::spawn(cmd);
        // Before the fix `run` retried localhost:1 forever, logging the tail each time.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while logger.is_running() && std::time::Instant::now() < end {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let code =
            if logger.is_running() { None } else { Some(logger.wait_exit(std::time::Duration::from_secs(1)).await) };
        let text = logger.log_text();
        assert!(!text.contains("TopSecret"), "{args:?}: the password's tail is printed (exit {code:?})");
        assert_eq!(code, Some(2), "{args:?}\n{text}");
        assert!(text.contains("%2F"), "{args:?}: says how to fix it:\n{text}");
    }
}

/// `level = "warning"` (Python's and syslog's name for it) passed `check`, and the logger then
/// printed nothing at all: a bare word is a module name to the filter, so every other line,
/// errors such as "disk full" or "rows were lost" included, was hidden (measured: 0 lines in
/// 2 s of a start against an absent database, 5 with "info").
#[test]
fn a_log_level_that_is_no_level_is_refused_instead_of_silencing_every_line() {
    let check = |level: &str| {
        let (_dir, path) = config_dir(&format!(
            "[log]\nlevel = \"{level}\"\n[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"chan\"]\n"
        ));
        let out = logger_cmd(path.parent().unwrap())
            .arg("--config")
            .arg(&path)
            .arg("check")
            .env("DATABASE_URL", "postgres://u@127.0.0.1:1/db")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for bad in ["warning", "verbose", "info,critical"] {
        let (code, text) = check(bad);
        assert_eq!(code, Some(2), "{bad}: {text}");
        assert!(text.contains("log.level") && text.contains("is not a level"), "{bad}: {text}");
    }
    for good in ["WARN", "info,twitch_chat_logger=debug", "twitch_irc", "info,sqlx::query=warn", "3"] {
        let (code, text) = check(good);
        assert_eq!(code, Some(0), "{good}: {text}");
    }
}
