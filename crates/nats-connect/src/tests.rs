use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Parser;

use super::*;

/// A lookup over these variables only.
fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn user_seed() -> String {
    nkeys::KeyPair::new_user()
        .seed()
        .expect("a new key pair has a seed")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn drover_variables_win_over_nats_ones_and_empty_is_unset() {
    let auth = NatsAuth::from_lookup(lookup(&[
        ("DROVER_NATS_TOKEN", "drover-token"),
        ("NATS_TOKEN", "nats-token"),
        ("DROVER_NATS_USER", ""),
        ("NATS_USER", "nats-user"),
        ("DROVER_NATS_PASSWORD", "  "),
        ("NATS_PASSWORD", "nats-password"),
        ("NATS_CA", "/ca.pem"),
        ("DROVER_NATS_TLS_CERT", "/cert.pem"),
        ("NATS_KEY", "/key.pem"),
        ("NATS_CREDS", ""),
    ]))
    .unwrap();
    assert_eq!(auth.token.as_deref(), Some("drover-token"));
    assert_eq!(auth.user.as_deref(), Some("nats-user"));
    assert_eq!(auth.password.as_deref(), Some("nats-password"));
    assert_eq!(auth.tls_ca.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(auth.tls_cert.as_deref(), Some(Path::new("/cert.pem")));
    assert_eq!(auth.tls_key.as_deref(), Some(Path::new("/key.pem")));
    assert_eq!(auth.creds, None);
    assert!(!auth.is_empty());

    let nothing = NatsAuth::from_lookup(lookup(&[("DROVER_NATS_TOKEN", "")])).unwrap();
    assert!(nothing.is_empty());
}

#[test]
fn flags_win_over_the_environment() {
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        auth: NatsAuthArgs,
    }
    let cli =
        Cli::try_parse_from(["x", "--token", "flag-token", "--tlsca", "/flag-ca.pem"]).unwrap();
    let env = lookup(&[
        ("DROVER_NATS_TOKEN", "env-token"),
        ("NATS_CA", "/env-ca.pem"),
        ("NATS_USER", "env-user"),
    ]);
    let auth = cli.auth.resolve_with(env).unwrap();
    assert_eq!(auth.token.as_deref(), Some("flag-token"));
    assert_eq!(auth.tls_ca.as_deref(), Some(Path::new("/flag-ca.pem")));
    assert_eq!(auth.user.as_deref(), Some("env-user"));
    // A flag can complete the environment: the certificate from one, its key from the other.
    let cli = Cli::try_parse_from(["x", "--tlskey", "/k.pem"]).unwrap();
    let auth = cli
        .auth
        .resolve_with(lookup(&[("NATS_CERT", "/c.pem")]))
        .unwrap();
    assert_eq!(auth.tls_key.as_deref(), Some(Path::new("/k.pem")));
}

#[test]
fn or_keeps_self_where_set() {
    let mine = NatsAuth {
        token: Some("a".to_owned()),
        ..Default::default()
    };
    let other = NatsAuth {
        token: Some("b".to_owned()),
        user: Some("u".to_owned()),
        ..Default::default()
    };
    let merged = mine.or(other);
    assert_eq!(merged.token.as_deref(), Some("a"));
    assert_eq!(merged.user.as_deref(), Some("u"));
}

#[test]
fn a_seed_is_given_directly_or_through_a_file() {
    let seed = user_seed();
    assert_eq!(
        NkeySource::parse(&format!(" {seed}\n")).unwrap(),
        NkeySource::Seed(seed.clone())
    );
    assert_eq!(
        NkeySource::parse("/run/secrets/SUseed").unwrap(),
        NkeySource::File(PathBuf::from("/run/secrets/SUseed"))
    );
    assert_eq!(
        NkeySource::parse("worker.nk").unwrap(),
        NkeySource::File(PathBuf::from("worker.nk"))
    );
    // A file's seed is read, trimmed and checked by apply.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "worker.nk", &format!("\n  {seed}  \n"));
    let auth = NatsAuth::from_lookup(lookup(&[("NATS_NKEY", file.to_str().unwrap())])).unwrap();
    assert_eq!(auth.nkey, Some(NkeySource::File(file)));
    auth.apply("nats://127.0.0.1:4222", async_nats::ConnectOptions::new())
        .unwrap();
}

#[test]
fn bad_seeds_are_refused_without_showing_them() {
    let seed = user_seed();
    let mut broken = seed.clone();
    broken.pop();
    broken.push(if seed.ends_with('A') { 'B' } else { 'A' });
    let error = NatsAuth::from_lookup(lookup(&[("DROVER_NATS_NKEY", &broken)])).unwrap_err();
    assert!(matches!(error, AuthError::BadSeed { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("DROVER_NATS_NKEY") && !text.contains(&broken),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [("garbage.nk", "not a seed"), ("account.nk", "SAAGARBAGE")] {
        let file = write(dir.path(), name, content);
        let auth = NatsAuth {
            nkey: Some(NkeySource::File(file.clone())),
            ..Default::default()
        };
        let error = auth
            .apply("nats://127.0.0.1:4222", async_nats::ConnectOptions::new())
            .unwrap_err();
        assert!(matches!(error, AuthError::BadSeed { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&file.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn a_client_certificate_needs_its_key_and_the_error_names_both() {
    for (given, missing) in [
        ("DROVER_NATS_TLS_CERT", "DROVER_NATS_TLS_KEY"),
        ("NATS_KEY", "DROVER_NATS_TLS_CERT"),
    ] {
        let error = NatsAuth::from_lookup(lookup(&[(given, "/x.pem")])).unwrap_err();
        assert!(
            matches!(error, AuthError::HalfClientCertificate { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        let given_drover = given.replace("NATS_KEY", "DROVER_NATS_TLS_KEY");
        assert!(
            text.contains(&given_drover) && text.contains(missing),
            "{text}"
        );
    }
    let error = NatsAuth::from_lookup(lookup(&[("NATS_PASSWORD", "p")])).unwrap_err();
    assert!(matches!(error, AuthError::PasswordWithoutUser { .. }));
}

#[test]
fn unreadable_and_malformed_files_are_errors_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        NatsAuth {
            creds: Some(missing.clone()),
            ..Default::default()
        },
        NatsAuth {
            nkey: Some(NkeySource::File(missing.clone())),
            ..Default::default()
        },
        NatsAuth {
            tls_ca: Some(missing.clone()),
            ..Default::default()
        },
        NatsAuth {
            tls_cert: Some(missing.clone()),
            tls_key: Some(write(dir.path(), "key.pem", PEM)),
            ..Default::default()
        },
    ];
    for auth in cases {
        let error = auth
            .apply("nats://127.0.0.1:4222", async_nats::ConnectOptions::new())
            .unwrap_err();
        assert!(matches!(error, AuthError::Unreadable { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
    }
    let not_pem = NatsAuth {
        tls_ca: Some(write(dir.path(), "ca.txt", "hello")),
        ..Default::default()
    };
    let error = not_pem
        .apply("nats://x:4222", async_nats::ConnectOptions::new())
        .unwrap_err();
    assert!(matches!(error, AuthError::Malformed { .. }), "{error:?}");
    let bad_creds = NatsAuth {
        creds: Some(write(dir.path(), "x.creds", "nothing here")),
        ..Default::default()
    };
    let error = bad_creds
        .apply("nats://x:4222", async_nats::ConnectOptions::new())
        .unwrap_err();
    assert!(matches!(error, AuthError::Malformed { .. }), "{error:?}");
}

#[test]
fn tls_is_required_for_a_tls_url_or_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let shown = |auth: &NatsAuth, url: &str| {
        format!(
            "{:?}",
            auth.apply(url, async_nats::ConnectOptions::new()).unwrap()
        )
    };
    let plain = NatsAuth::default();
    assert!(shown(&plain, "nats://a:1").contains("\"tls_required\": false"));
    assert!(shown(&plain, "nats://a:1, tls://b:2").contains("\"tls_required\": true"));
    let with_ca = NatsAuth {
        tls_ca: Some(write(dir.path(), "ca.pem", PEM)),
        tls_cert: Some(write(dir.path(), "cert.pem", PEM)),
        tls_key: Some(write(dir.path(), "key.pem", PEM)),
        ..Default::default()
    };
    let options = shown(&with_ca, "nats://a:1");
    assert!(options.contains("\"tls_required\": true"), "{options}");
    assert!(
        options.contains("cert.pem") && options.contains("ca.pem"),
        "{options}"
    );
}

#[test]
fn secrets_stay_out_of_debug_output_and_env_vars_hand_everything_on() {
    let seed = user_seed();
    let auth = NatsAuth {
        nkey: Some(NkeySource::Seed(seed.clone())),
        token: Some("s3cret-token".to_owned()),
        user: Some("u".to_owned()),
        password: Some("s3cret-password".to_owned()),
        tls_ca: Some(PathBuf::from("relative/ca.pem")),
        ..Default::default()
    };
    let shown = format!("{auth:?}");
    for secret in [seed.as_str(), "s3cret-token", "s3cret-password"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let vars = auth.env_vars();
    let back = NatsAuth::from_lookup(lookup(
        &vars
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    assert_eq!(back.nkey, auth.nkey);
    assert_eq!(back.token, auth.token);
    assert_eq!(back.password, auth.password);
    let ca = back.tls_ca.expect("the CA is handed on");
    assert!(
        ca.is_absolute() && ca.ends_with("relative/ca.pem"),
        "{ca:?}"
    );
}
