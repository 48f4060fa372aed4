//! The command line: required secrets are named when missing, and `link`
//! prints a viewer URL whose token the server accepts.

use std::process::{Command, Output};

use sleep_dashboard::auth::ViewerKeys;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"));
    command
        .args(args)
        .env_remove("ASLEEP_API_KEY")
        .env_remove("DASHBOARD_SECRET")
        .env_remove("SLEEP_DASHBOARD_PUBLIC_URL");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running the sleep-dashboard binary failed")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Arguments, environment, and the text stderr must contain.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn missing_secret_is_named() {
    let serve = ["serve", "--listen", "127.0.0.1:0"];
    let cases: [Case; 3] = [
        (&serve, &[("DASHBOARD_SECRET", "s")], "ASLEEP_API_KEY is not set"),
        (&serve, &[("ASLEEP_API_KEY", "k")], "DASHBOARD_SECRET is not set"),
        (&["link", "--user", "alice"], &[], "DASHBOARD_SECRET is not set"),
    ];
    for (args, env, expected) in cases {
        let output = run(args, env);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn link_prints_verifiable_viewer_url() {
    // An empty file is an empty SQLite database; `link` adds the schema.
    let folder = tempfile::tempdir().unwrap();
    let database = folder.path().join("events.sqlite3");
    std::fs::File::create(&database).unwrap();
    let output = run(
        &[
            "link",
            "--user",
            "alice/b",
            "--ttl",
            "2h",
            "--public-url",
            "https://sleep.example.org/",
            "--database",
            database.to_str().unwrap(),
        ],
        &[("DASHBOARD_SECRET", "link-secret")],
    );
    assert!(output.status.success(), "{}", stderr(&output));

    let url = String::from_utf8(output.stdout).unwrap();
    let url = url.trim();
    let (path, token) = url.split_once("?token=").expect("the link carries a token");
    assert_eq!(path, "https://sleep.example.org/users/alice%2Fb/live");

    let keys = ViewerKeys::new("link-secret");
    let now = chrono::Utc::now().timestamp();
    assert!(keys.verify(token, "alice/b", now).is_ok());
    assert!(
        keys.verify(token, "alice/b", now + 2 * 3600 + 60).is_err(),
        "the link must expire after its ttl"
    );
    assert!(keys.verify(token, "alice", now).is_err());
}

#[test]
fn link_rejects_unusable_input() {
    let secret = [("DASHBOARD_SECRET", "link-secret")];
    for (args, expected) in [
        (&["link", "--user", ""][..], "--user: must not be empty"),
        (&["link", "--user", ".."][..], "--user"),
        (&["link", "--user", "alice", "--ttl", "0s"][..], "--ttl"),
        (&["link", "--user", "alice", "--ttl", "5y"][..], "--ttl"),
    ] {
        let output = run(args, &secret);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn serve_without_static_folder_names_it() {
    let output = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--static-dir",
            "/nonexistent-static",
        ],
        &[("ASLEEP_API_KEY", "k"), ("DASHBOARD_SECRET", "s")],
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("/nonexistent-static"), "{}", stderr(&output));
}

#[test]
fn unusable_limit_is_named() {
    let secrets = [("ASLEEP_API_KEY", "k"), ("DASHBOARD_SECRET", "s")];
    let cases: [Case; 3] = [
        (
            &["serve", "--listen", "127.0.0.1:0", "--max-header-size", "100"],
            &secrets,
            "--max-header-size 100 is out of range",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--shutdown-grace", "0s"],
            &secrets,
            "--shutdown-grace must be above zero",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--max-body-size", "1MB"],
            &secrets,
            "unknown unit",
        ),
    ];
    for (args, env, expected) in cases {
        let output = run(args, env);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }

    // The environment sets a limit when the flag is absent.
    let mut env = secrets.to_vec();
    env.push(("SLEEP_DASHBOARD_WS_MAX_TOTAL", "0"));
    let output = run(&["serve", "--listen", "127.0.0.1:0"], &env);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--ws-max-total"), "{}", stderr(&output));
}
