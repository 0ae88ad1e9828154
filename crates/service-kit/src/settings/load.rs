//! Loading [`Settings`] in layers: defaults, then a file, then `DROVER_*` environment
//! variables, then flags, then `validate()`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::{one_line, ConfigError, Settings, CONFIG_ENV, ENV_PREFIX, NATS_URL_ENV, SETTING_KEYS};

/// Flags every service binary accepts (`#[command(flatten)]` them).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Config file (TOML, JSON or YAML, by extension); default: $DROVER_CONFIG.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// NATS server URL; overrides DROVER_NATS_URL, NATS_URL and the config file.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Admin HTTP address (health, readiness, metrics).
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<String>,
    /// Do not run: ask the running service's `/readyz` on its admin address and exit 0 when
    /// it is ready, 1 when not (a container health probe that needs no curl).
    #[arg(long)]
    pub check_health: bool,
}

/// Loads settings from defaults, the config file, the process environment and `args`.
pub fn load_settings(args: &CommonArgs) -> Result<Settings, ConfigError> {
    load_from(args, std::env::vars())
}

/// Loads settings as [`load_settings`] does, reading `env` in place of the process
/// environment.
pub fn load_from(
    args: &CommonArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let env: HashMap<String, String> = env.into_iter().collect();
    let defaults = Settings::default();
    let known = known_keys(&defaults)?;

    let mut builder = Config::builder().add_source(
        Config::try_from(&defaults).map_err(|error| ConfigError::Load(one_line(error)))?,
    );

    let file = args.config.clone().or_else(|| {
        env.get(CONFIG_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = &file {
        builder = builder.add_source(read_file(path)?);
    }

    // Only variables naming a field take part: other DROVER_* variables (DROVER_CONFIG,
    // DROVER_LOG_FORMAT, ...) belong to someone else and must not trip the unknown-key check.
    let prefix = format!("{ENV_PREFIX}_");
    let mut drover_env: config::Map<String, String> = env
        .iter()
        .filter(|(name, _)| {
            name.strip_prefix(&prefix)
                .is_some_and(|key| known.contains(&key.to_ascii_lowercase()))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // NATS_URL ranks below DROVER_NATS_URL but above the file.
    let drover_nats_url = format!("{prefix}NATS_URL");
    if let Some(url) = env.get(NATS_URL_ENV).filter(|url| !url.trim().is_empty()) {
        drover_env
            .entry(drover_nats_url)
            .or_insert_with(|| url.clone());
    }
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(drover_env)),
    );

    builder = builder
        .set_override_option("nats_url", args.nats_url.clone())
        .and_then(|b| b.set_override_option("admin_addr", args.admin_addr.clone()))
        .map_err(|error| ConfigError::Load(one_line(error)))?;

    let settings: Settings = builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|error| load_error(file.as_deref(), error))?;
    settings.validate()?;
    Ok(settings)
}

fn load_error(file: Option<&Path>, error: config::ConfigError) -> ConfigError {
    // A value that a setting's own parser refused (`pickup_strategies`, ...) is named by
    // its key and variable, as `validate` names a value out of range.
    if let config::ConfigError::At {
        error: reason,
        key: Some(key),
        ..
    } = &error
    {
        if let Some(key) = SETTING_KEYS
            .into_iter()
            .find(|known| *known == key.as_str())
        {
            return ConfigError::invalid(key, one_line(reason));
        }
    }
    match (file, error) {
        (Some(path), config::ConfigError::FileParse { cause, .. }) => ConfigError::File {
            path: path.to_owned(),
            message: one_line(cause),
        },
        // Only the file can hold unknown keys: environment and flags are filtered.
        (Some(path), error) if error.to_string().starts_with("unknown field") => {
            ConfigError::File {
                path: path.to_owned(),
                message: one_line(error),
            }
        }
        (_, error) => ConfigError::Load(one_line(error)),
    }
}

/// The keys the loader accepts: the fields of `defaults`.
pub(super) fn known_keys(defaults: &Settings) -> Result<BTreeSet<String>, ConfigError> {
    let table = Config::try_from(defaults)
        .and_then(|c| c.try_deserialize::<HashMap<String, config::Value>>())
        .map_err(|error| ConfigError::Load(one_line(error)))?;
    let mut keys: BTreeSet<String> = table.into_keys().collect();
    // `None` fields may be left out of the serialised defaults.
    keys.insert("admin_addr".to_owned());
    Ok(keys)
}

fn read_file(path: &Path) -> Result<File<config::FileSourceString, FileFormat>, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .map(str::to_ascii_lowercase);
    let format = match extension.as_deref() {
        Some("toml") => FileFormat::Toml,
        Some("json") => FileFormat::Json,
        Some("yaml" | "yml") => FileFormat::Yaml,
        _ => {
            return Err(file_error(
                "unknown file type; use a .toml, .json, .yaml or .yml extension".to_owned(),
            ))
        }
    };
    let text = std::fs::read_to_string(path).map_err(|error| file_error(one_line(error)))?;
    Ok(File::from_str(&text, format))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::settings::tests::env;
    use crate::settings::DEFAULT_NATS_URL;

    fn file(extension: &str, text: &str) -> tempfile::TempPath {
        let mut file = tempfile::Builder::new()
            .suffix(&format!(".{extension}"))
            .tempfile()
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.into_temp_path()
    }

    fn with_config(path: &Path) -> CommonArgs {
        CommonArgs {
            config: Some(path.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let path = file(
            "toml",
            "heartbeat_interval_ms = 1000\nlost_after_ms = 4000\nleader_lease_ms = 2000\nadmin_addr = \"127.0.0.1:1\"\n",
        );
        let vars = env(&[
            ("DROVER_LOST_AFTER_MS", "5000"),
            ("DROVER_ADMIN_ADDR", "127.0.0.1:2"),
        ]);
        let from_file_and_env = load_from(&with_config(&path), vars.clone()).unwrap();
        assert_eq!(
            from_file_and_env.heartbeat_interval_ms, 1000,
            "file over default"
        );
        assert_eq!(from_file_and_env.leader_lease_ms, 2000, "file over default");
        assert_eq!(from_file_and_env.lost_after_ms, 5000, "env over file");
        assert_eq!(
            from_file_and_env.admin_addr.as_deref(),
            Some("127.0.0.1:2"),
            "env over file"
        );

        let args = CommonArgs {
            admin_addr: Some("127.0.0.1:3".to_owned()),
            ..with_config(&path)
        };
        let with_flags = load_from(&args, vars).unwrap();
        assert_eq!(
            with_flags.admin_addr.as_deref(),
            Some("127.0.0.1:3"),
            "flag over env"
        );
    }

    #[test]
    fn config_file_can_come_from_the_environment() {
        let path = file("json", r#"{"js_replicas": 3, "logs_max_bytes": -1}"#);
        let vars = env(&[(CONFIG_ENV, path.to_str().unwrap())]);
        let settings = load_from(&CommonArgs::default(), vars).unwrap();
        assert_eq!(settings.js_replicas, 3);
        assert_eq!(settings.logs_max_bytes, -1);

        // --config wins over DROVER_CONFIG.
        let other = file("yaml", "js_replicas: 5\n");
        let vars = env(&[(CONFIG_ENV, path.to_str().unwrap())]);
        let settings = load_from(&with_config(&other), vars).unwrap();
        assert_eq!(settings.js_replicas, 5);
    }

    #[test]
    fn nats_url_precedence() {
        let path = file("toml", "nats_url = \"nats://file:4222\"\n");
        let url =
            |args: &CommonArgs, vars: &[(&str, &str)]| load_from(args, env(vars)).unwrap().nats_url;
        let no_file = CommonArgs::default();
        let file_args = with_config(&path);
        let flag_args = CommonArgs {
            nats_url: Some("nats://flag:4222".to_owned()),
            ..with_config(&path)
        };
        let both = [
            ("DROVER_NATS_URL", "nats://drover:4222"),
            ("NATS_URL", "nats://plain:4222"),
        ];
        assert_eq!(url(&no_file, &[]), DEFAULT_NATS_URL);
        assert_eq!(url(&file_args, &[]), "nats://file:4222");
        assert_eq!(
            url(&file_args, &[("NATS_URL", "nats://plain:4222")]),
            "nats://plain:4222"
        );
        assert_eq!(url(&file_args, &both), "nats://drover:4222");
        assert_eq!(url(&flag_args, &both), "nats://flag:4222");
        // An empty NATS_URL does not hide the file.
        assert_eq!(url(&file_args, &[("NATS_URL", "")]), "nats://file:4222");
    }

    #[test]
    fn env_keys_with_single_underscores_and_unrelated_vars() {
        let vars = env(&[
            ("DROVER_HEARTBEAT_INTERVAL_MS", "200"),
            ("DROVER_LOST_AFTER_MS", "600"),
            ("DROVER_ASSIGN_ACK_TIMEOUT_MS", "750"),
            ("DROVER_MAX_REASSIGNMENTS", "9"),
            ("DROVER_INSTANCE_ID", "1234"),
            // Not ours: ignored rather than rejected as unknown keys.
            ("DROVER_LOG_FORMAT", "json"),
            ("DROVER_SOMETHING__NESTED", "x"),
            ("HEARTBEAT_INTERVAL_MS", "1"),
        ]);
        let settings = load_from(&CommonArgs::default(), vars).unwrap();
        assert_eq!(settings.heartbeat_interval_ms, 200);
        assert_eq!(settings.lost_after_ms, 600);
        assert_eq!(settings.assign_ack_timeout_ms, 750);
        assert_eq!(settings.max_reassignments, 9);
        assert_eq!(settings.instance_id, "1234");
    }

    #[test]
    fn pickup_strategies_in_a_file_as_a_string_or_a_table() {
        use crate::settings::{PickupStrategies, PickupStrategy};
        let expected =
            PickupStrategies::parse("reports.nightly=first-fit,images.*=round-robin").unwrap();
        let files = [
            file(
                "toml",
                "pickup_strategy = \"first-fit\"\npickup_strategies = \"reports.nightly=first-fit,images.*=round-robin\"\n",
            ),
            file(
                "toml",
                "pickup_strategy = \"first-fit\"\n[pickup_strategies]\n\"reports.nightly\" = \"first-fit\"\n\"images.*\" = \"round-robin\"\n",
            ),
            file(
                "yaml",
                "pickup_strategy: first-fit\npickup_strategies:\n  reports.nightly: first-fit\n  images.*: round-robin\n",
            ),
            file(
                "json",
                r#"{"pickup_strategy": "first-fit", "pickup_strategies": {"reports.nightly": "first-fit", "images.*": "round-robin"}}"#,
            ),
        ];
        for path in &files {
            let settings = load_from(&with_config(path), env(&[])).unwrap();
            assert_eq!(
                settings.pickup_strategy,
                PickupStrategy::FirstFit,
                "{path:?}"
            );
            assert_eq!(settings.pickup_strategies, expected, "{path:?}");
        }
        // The environment's string replaces the file's table.
        let settings = load_from(
            &with_config(&files[1]),
            env(&[("DROVER_PICKUP_STRATEGIES", "a=least-loaded")]),
        )
        .unwrap();
        assert_eq!(
            settings.pickup_strategies,
            PickupStrategies::parse("a=least-loaded").unwrap()
        );

        let bad = [
            file("toml", "pickup_strategy = \"fastest\"\n"),
            file("toml", "[pickup_strategies]\n\"a\" = \"fastest\"\n"),
            file("toml", "[pickup_strategies]\n\"a.*.b\" = \"first-fit\"\n"),
            file("yaml", "pickup_strategies: \"a=first-fit,a=first-fit\"\n"),
        ];
        for path in &bad {
            let error = load_from(&with_config(path), env(&[])).unwrap_err();
            assert!(
                matches!(error, ConfigError::Invalid { key, .. } if key.starts_with("pickup_strateg")),
                "{path:?}: {error:?}"
            );
        }
        let nested = file("toml", "[pickup_strategies]\n\"a\" = 3\n");
        let error = load_from(&with_config(&nested), env(&[])).unwrap_err();
        assert!(error.to_string().contains("pickup_strategies"), "{error}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let error = load_from(
            &CommonArgs::default(),
            env(&[("DROVER_HEARTBEAT_INTERVAL_MS", "soon")]),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("heartbeat_interval_ms"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn bad_files_are_errors() {
        let missing = with_config(Path::new("/nonexistent/drover.toml"));
        assert!(matches!(
            load_from(&missing, env(&[])),
            Err(ConfigError::File { .. })
        ));

        let unknown_kind = file("ini", "x=1");
        let error = load_from(&with_config(&unknown_kind), env(&[])).unwrap_err();
        assert!(error.to_string().contains("extension"), "{error}");

        let malformed = file("toml", "heartbeat_interval_ms = = 3\n");
        let error = load_from(&with_config(&malformed), env(&[])).unwrap_err();
        assert!(matches!(error, ConfigError::File { .. }), "{error}");
        assert!(!error.to_string().contains('\n'), "{error}");

        let typo = file("toml", "heartbeat_interval = 3\n");
        let error = load_from(&with_config(&typo), env(&[])).unwrap_err();
        assert!(matches!(error, ConfigError::File { .. }), "{error}");
        assert!(error.to_string().contains("heartbeat_interval"), "{error}");

        let wrong_type = file("json", r#"{"js_replicas": "many"}"#);
        let error = load_from(&with_config(&wrong_type), env(&[])).unwrap_err();
        assert!(error.to_string().contains("js_replicas"), "{error}");
    }
}
