//! The pool's configuration: a TOML file, overridden by flags, checked once before anything
//! starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_protocol::{GroupName, PoolId, RoutineId, WorkerId};
use serde::Deserialize;

/// A configuration that cannot be used; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a pool.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The values do not make sense together.
    #[error("{0}")]
    Invalid(String),
}

/// How a group treats a process that ended without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart after every exit that is not final (no code is final by default).
    Always,
    /// Restart after unexpected exits; exit code 0 is final by default.
    OnFailure,
    /// Never restart: an ended process stays terminated; exit code 0 is final by default.
    Never,
}

/// The whole pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The poolID.
    pub pool: PoolId,
    /// NATS to connect to, when the file names one.
    pub nats_url: Option<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub admin_addr: Option<String>,
    /// Restart intensity: more than this many restarts within `max_restarts_period` is a
    /// critical error.
    pub max_restarts: u32,
    /// The window of the restart intensity.
    pub max_restarts_period: Duration,
    /// The group SIGTTIN and SIGTTOU resize.
    pub signal_group: GroupName,
    /// The groups, in file order.
    pub groups: Vec<GroupConfig>,
}

/// One group of identical processes.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Its name.
    pub name: GroupName,
    /// The program.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Variables added to the pool's environment.
    pub env: BTreeMap<String, String>,
    /// Initial size.
    pub size: u32,
    /// Smallest size.
    pub min: u32,
    /// Largest size.
    pub max: u32,
    /// What follows an exit the pool did not ask for.
    pub restart: RestartPolicy,
    /// Exit codes that end a process for good.
    pub final_exit_codes: Vec<i32>,
    /// First restart delay; it doubles with each restart in a row.
    pub restart_delay: Duration,
    /// Largest restart delay.
    pub restart_delay_max: Duration,
    /// Time from start to registered and ready.
    pub start_timeout: Duration,
    /// Time from SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// Soft restart: how far below the target the ready processes may drop.
    pub max_unavailable: u32,
    /// Soft restart: how many processes above the target may run.
    pub max_surge: u32,
    /// Replace a process after this many runs ended on it.
    pub max_runs: Option<u64>,
    /// Replace a process after this age.
    pub max_age: Option<Duration>,
    /// Replace a process whose resident memory passes this many bytes.
    pub max_memory: Option<u64>,
    /// Size the group from the work waiting for it.
    pub autoscale: Option<AutoscaleConfig>,
}

/// Sizing a group from Drover's own queue.
#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    /// The routines whose runs count; empty: those the group's processes registered.
    pub routines: Vec<RoutineId>,
    /// How long the work must stay below the group's size before it shrinks.
    pub cooldown: Duration,
    /// How often it looks.
    pub interval: Duration,
}

impl GroupConfig {
    /// The workerID of process `index` of this group in `pool`.
    pub fn worker_id(&self, pool: &PoolId, index: u32) -> WorkerId {
        WorkerId::parse(format!("{pool}-{}-{index}", self.name))
            .expect("validated: every index up to max gives a valid workerID")
    }
}

// ------------------------------------------------------------------ the file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    pool: String,
    nats_url: Option<String>,
    admin_addr: Option<String>,
    #[serde(default = "default_max_restarts")]
    max_restarts: u32,
    #[serde(default = "default_restarts_period", with = "humantime_serde")]
    max_restarts_period: Duration,
    signal_group: Option<String>,
    #[serde(default)]
    groups: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    size: Option<u32>,
    min: Option<u32>,
    max: Option<u32>,
    #[serde(default = "default_policy")]
    restart: RestartPolicy,
    final_exit_codes: Option<Vec<i32>>,
    #[serde(default = "default_restart_delay", with = "humantime_serde")]
    restart_delay: Duration,
    #[serde(default = "default_restart_delay_max", with = "humantime_serde")]
    restart_delay_max: Duration,
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    start_timeout: Duration,
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    stop_grace: Duration,
    #[serde(default)]
    max_unavailable: u32,
    #[serde(default = "default_max_surge")]
    max_surge: u32,
    max_runs: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    max_memory: Option<String>,
    autoscale: Option<AutoscaleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoscaleFile {
    #[serde(default)]
    routines: Vec<String>,
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    cooldown: Duration,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
}

fn default_max_restarts() -> u32 {
    10
}
fn default_restarts_period() -> Duration {
    Duration::from_secs(60)
}
fn default_policy() -> RestartPolicy {
    RestartPolicy::OnFailure
}
fn default_restart_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_restart_delay_max() -> Duration {
    Duration::from_secs(30)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_max_surge() -> u32 {
    1
}
fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--pool-id`.
    pub pool: Option<String>,
    /// `--admin-addr`.
    pub admin_addr: Option<String>,
    /// `--size GROUP=N`.
    pub sizes: Vec<(String, u32)>,
}

impl PoolConfig {
    /// Reads, overrides and checks the configuration in `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        Self::parse(&text, &base, overrides).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses a configuration whose relative paths are relative to `base`.
    pub fn parse(text: &str, base: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message,
        };
        let file: PoolFile =
            toml::from_str(text).map_err(|error| parse_error(error.message().to_owned()))?;
        let pool_text = overrides.pool.clone().unwrap_or(file.pool);
        let pool = PoolId::parse(pool_text).map_err(|error| invalid(error.to_string()))?;
        let mut groups = Vec::new();
        for (name, value) in file.groups {
            let group: GroupFile = value.try_into().map_err(|error: toml::de::Error| {
                parse_error(format!("groups.{name}: {}", error.message()))
            })?;
            groups.push(group_config(&pool, &name, group, base, overrides)?);
        }
        if groups.is_empty() {
            return Err(invalid(
                "the pool has no groups: add a [groups.<name>] table".to_owned(),
            ));
        }
        for (name, _) in &overrides.sizes {
            if !groups.iter().any(|group| group.name == name.as_str()) {
                return Err(invalid(format!("--size names no group {name:?}")));
            }
        }
        let signal_group = match file.signal_group {
            Some(name) => groups
                .iter()
                .find(|group| group.name == name.as_str())
                .map(|group| group.name.clone())
                .ok_or_else(|| invalid(format!("signal_group names no group {name:?}")))?,
            None => groups[0].name.clone(),
        };
        if file.max_restarts_period.is_zero() {
            return Err(invalid(
                "max_restarts_period must be longer than zero".to_owned(),
            ));
        }
        Ok(Self {
            pool,
            nats_url: file.nats_url,
            admin_addr: overrides.admin_addr.clone().or(file.admin_addr),
            max_restarts: file.max_restarts,
            max_restarts_period: file.max_restarts_period,
            signal_group,
            groups,
        })
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|group| group.name == name)
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

fn group_config(
    pool: &PoolId,
    name: &str,
    file: GroupFile,
    base: &Path,
    overrides: &Overrides,
) -> Result<GroupConfig, ConfigError> {
    let group_name = GroupName::parse(name).map_err(|error| invalid(error.to_string()))?;
    let at = |message: String| invalid(format!("groups.{name}: {message}"));
    if file.command.trim().is_empty() {
        return Err(at("command must not be empty".to_owned()));
    }
    let min = file.min.unwrap_or(1);
    let size = overrides
        .sizes
        .iter()
        .rev()
        .find(|(group, _)| group == name)
        .map(|(_, size)| *size)
        .or(file.size)
        .unwrap_or(min);
    let max = file.max.unwrap_or(size.max(min).max(1));
    if max == 0 {
        return Err(at("max must be at least 1".to_owned()));
    }
    if min > max {
        return Err(at(format!("min ({min}) is above max ({max})")));
    }
    if size < min || size > max {
        return Err(at(format!(
            "size {size} is outside min {min} and max {max}"
        )));
    }
    if file.max_unavailable + file.max_surge == 0 {
        return Err(at(
            "max_unavailable and max_surge are both 0: a soft restart could never proceed"
                .to_owned(),
        ));
    }
    if file.restart_delay_max < file.restart_delay {
        return Err(at(
            "restart_delay_max is shorter than restart_delay".to_owned()
        ));
    }
    if file.start_timeout.is_zero() {
        return Err(at("start_timeout must be longer than zero".to_owned()));
    }
    if file.max_runs == Some(0) {
        return Err(at("max_runs must be at least 1".to_owned()));
    }
    // The longest index this group can reach is max + max_surge.
    let longest = format!("{pool}-{name}-{}", max + file.max_surge);
    if WorkerId::parse(&longest).is_err() {
        return Err(at(format!(
            "workerIDs such as {longest:?} would be longer than {} characters: shorten the pool or group name",
            WorkerId::MAX_LEN
        )));
    }
    let max_memory = file
        .max_memory
        .map(|text| {
            text.parse::<bytesize::ByteSize>()
                .map(|size| size.as_u64())
                .map_err(|error| at(format!("max_memory {text:?}: {error}")))
        })
        .transpose()?;
    let autoscale = file
        .autoscale
        .map(|auto| {
            let routines = auto
                .routines
                .iter()
                .map(|routine| RoutineId::parse(routine.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| at(format!("autoscale: {error}")))?;
            if routines.is_empty() && min == 0 {
                return Err(at(
                    "autoscale.routines is required when min is 0: with no process running the pool cannot learn them"
                        .to_owned(),
                ));
            }
            if auto.interval.is_zero() {
                return Err(at("autoscale.interval must be longer than zero".to_owned()));
            }
            Ok(AutoscaleConfig {
                routines,
                cooldown: auto.cooldown,
                interval: auto.interval,
            })
        })
        .transpose()?;
    let command = PathBuf::from(&file.command);
    // A bare name is looked up in PATH; a relative path is relative to the file.
    let command = if command.components().count() > 1 && command.is_relative() {
        base.join(command)
    } else {
        command
    };
    let cwd = match file.cwd {
        Some(dir) if dir.is_relative() => base.join(dir),
        Some(dir) => dir,
        None => base.to_owned(),
    };
    let final_exit_codes = file.final_exit_codes.unwrap_or_else(|| match file.restart {
        RestartPolicy::OnFailure | RestartPolicy::Never => vec![0],
        RestartPolicy::Always => Vec::new(),
    });
    Ok(GroupConfig {
        name: group_name,
        command,
        args: file.args,
        cwd,
        env: file.env,
        size,
        min,
        max,
        restart: file.restart,
        final_exit_codes,
        restart_delay: file.restart_delay,
        restart_delay_max: file.restart_delay_max,
        start_timeout: file.start_timeout,
        stop_grace: file.stop_grace,
        max_unavailable: file.max_unavailable,
        max_surge: file.max_surge,
        max_runs: file.max_runs,
        max_age: file.max_age,
        max_memory,
        autoscale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PoolConfig, ConfigError> {
        PoolConfig::parse(text, Path::new("/etc/drover"), &Overrides::default())
    }

    #[test]
    fn a_small_file_gets_the_documented_defaults() {
        let config = parse("pool = \"demo\"\n[groups.py]\ncommand = \"python3\"\n").unwrap();
        assert_eq!(config.pool, "demo");
        assert_eq!(config.max_restarts, 10);
        assert_eq!(config.max_restarts_period, Duration::from_secs(60));
        assert_eq!(config.signal_group, "py");
        let order = parse(
            "pool = \"p\"\n[groups.zeta]\ncommand = \"z\"\n[groups.alpha]\ncommand = \"a\"\n",
        )
        .unwrap();
        let names: Vec<&str> = order
            .groups
            .iter()
            .map(|group| group.name.as_str())
            .collect();
        assert_eq!(names, ["zeta", "alpha"], "the file's order");
        assert_eq!(order.signal_group, "zeta");
        let group = &config.groups[0];
        assert_eq!((group.size, group.min, group.max), (1, 1, 1));
        assert_eq!(group.restart, RestartPolicy::OnFailure);
        assert_eq!(group.final_exit_codes, vec![0]);
        assert_eq!(group.command, PathBuf::from("python3"));
        assert_eq!(group.cwd, PathBuf::from("/etc/drover"));
        assert_eq!((group.max_unavailable, group.max_surge), (0, 1));
        assert_eq!(group.worker_id(&config.pool, 3), "demo-py-3");
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"
            pool = "p"
            nats_url = "nats://n:4222"
            admin_addr = "127.0.0.1:0"
            max_restarts = 3
            max_restarts_period = "10s"
            signal_group = "b"
            [groups.a]
            command = "bin/worker"
            args = ["--x"]
            cwd = "work"
            env = { K = "v" }
            size = 2
            min = 0
            max = 4
            restart = "always"
            restart_delay = "200ms"
            restart_delay_max = "2s"
            start_timeout = "5s"
            stop_grace = "3s"
            max_unavailable = 1
            max_surge = 0
            max_runs = 50
            max_age = "1h"
            max_memory = "64MiB"
            [groups.a.autoscale]
            routines = ["demo.hello"]
            cooldown = "2s"
            interval = "500ms"
            [groups.b]
            command = "/usr/bin/env"
            restart = "never"
            "#,
        )
        .unwrap();
        let a = config.group("a").unwrap();
        assert_eq!(a.command, PathBuf::from("/etc/drover/bin/worker"));
        assert_eq!(a.cwd, PathBuf::from("/etc/drover/work"));
        assert_eq!(a.env["K"], "v");
        assert_eq!((a.size, a.min, a.max), (2, 0, 4));
        assert_eq!(a.restart, RestartPolicy::Always);
        assert!(a.final_exit_codes.is_empty());
        assert_eq!(a.restart_delay, Duration::from_millis(200));
        assert_eq!(a.max_runs, Some(50));
        assert_eq!(a.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(a.max_memory, Some(64 * 1024 * 1024));
        let auto = a.autoscale.as_ref().unwrap();
        assert_eq!(auto.routines[0], "demo.hello");
        assert_eq!(auto.cooldown, Duration::from_secs(2));
        assert_eq!(config.signal_group, "b");
        assert_eq!(config.group("b").unwrap().restart, RestartPolicy::Never);
        assert_eq!(config.admin_addr.as_deref(), Some("127.0.0.1:0"));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("pool = \"p\"", "no groups"),
            ("pool = \"p.q\"\n[groups.a]\ncommand = \"x\"", "poolID"),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nsize = 5\nmax = 3",
                "outside",
            ),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nmin = 4\nmax = 3",
                "above max",
            ),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nmax_surge = 0",
                "both 0",
            ),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nbogus = 1",
                "bogus",
            ),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nstop_grace = \"soon\"",
                "soon",
            ),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nrestart = \"sometimes\"",
                "sometimes",
            ),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nmax_memory = \"lots\"",
                "max_memory",
            ),
            (
                "pool = \"p\"\nsignal_group = \"z\"\n[groups.a]\ncommand = \"x\"",
                "signal_group",
            ),
            (
                "pool = \"p\"\n[groups.a]\ncommand = \"x\"\nmin = 0\n[groups.a.autoscale]\n",
                "routines is required",
            ),
            (
                &format!("pool = \"{}\"\n[groups.a]\ncommand = \"x\"", "p".repeat(62)),
                "longer than 64",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let overrides = Overrides {
            pool: Some("other".to_owned()),
            admin_addr: Some("127.0.0.1:9".to_owned()),
            sizes: vec![("a".to_owned(), 3)],
        };
        let text = "pool = \"p\"\nadmin_addr = \"x\"\n[groups.a]\ncommand = \"x\"\nmax = 4";
        let config = PoolConfig::parse(text, Path::new("."), &overrides).unwrap();
        assert_eq!(config.pool, "other");
        assert_eq!(config.admin_addr.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(config.groups[0].size, 3);
        let unknown = Overrides {
            sizes: vec![("zzz".to_owned(), 1)],
            ..Overrides::default()
        };
        assert!(PoolConfig::parse(text, Path::new("."), &unknown).is_err());
        let too_big = Overrides {
            sizes: vec![("a".to_owned(), 9)],
            ..Overrides::default()
        };
        assert!(PoolConfig::parse(text, Path::new("."), &too_big).is_err());
    }
}
