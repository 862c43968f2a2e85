//! `novacron keys new|list|show|trust|untrust`: submitter keys, and which of them a node
//! accepts jobs from.
//!
//! Submitter keys live in a keys directory, first found wins: `--keys-dir DIR`, env
//! `NOVACRON_KEYS_DIR`, `$XDG_CONFIG_HOME/novacron/keys`, `$HOME/.config/novacron/keys`
//! (made 0700 by `new`). Each key is `<NAME>.key` (0600; NAME is 1-64 of A-Z a-z 0-9 _ -).
//!
//! `trust` and `untrust` edit the node's trust file `<dataDir>/trusted-submitters`
//! ([`crate::jobs::trust`]); the data directory is `--data-dir DIR`, else env
//! `NOVACRON_DATA_DIR`, else the config file's `dataDir` (`--config FILE`, else
//! `/etc/novacron/node.yaml` when it exists). A running node sees the change on its next
//! submission.
//!
//! What this cannot do: remove a key the config file's `trustedSubmitters` lists (it says
//! so: that file is the operator's), check the keys directory's owner or permissions once it
//! exists, or edit the trust file of a node on another machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use novacron_mesh::submission::SubmitterId;
use novacron_mesh::submitter_key::SubmitterKey;
use serde::Serialize;

use super::api_args::DEFAULT_CONFIG;
use super::human::Table;
use super::output::{note, outln};
use crate::config::NodeConfig;
use crate::jobs::trust::{trust_file_path, trust_key, untrust_key};

/// Longest key name.
const MAX_NAME_CHARS: usize = 64;
/// A key file's extension.
const KEY_EXT: &str = "key";

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    /// The directory of submitter keys [env NOVACRON_KEYS_DIR; default:
    /// $XDG_CONFIG_HOME/novacron/keys, else ~/.config/novacron/keys].
    #[arg(long, global = true, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Make a new submitter key NAME (never replaces one); prints its public key.
    New { name: String },
    /// The submitter keys in the keys directory: name and public key.
    List,
    /// A key's public key (what a node's operator trusts).
    Show { name: String },
    /// Let a node accept jobs signed by a key (a public key, or a key name)
    ///
    /// Adds it to the node's trust file <dataDir>/trusted-submitters; a running node
    /// accepts the key's jobs from its next submission, no restart needed.
    Trust {
        /// `ed25519:<64 hex digits>`, or the name of a key in the keys directory.
        key_or_name: String,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Stop a node accepting jobs signed by a key (a public key, or a key name).
    Untrust {
        /// `ed25519:<64 hex digits>`, or the name of a key in the keys directory.
        key_or_name: String,
        #[command(flatten)]
        node: NodeDir,
    },
}

/// Which node's trust file: its data directory.
#[derive(Args, Debug, Clone, Default)]
struct NodeDir {
    /// The node's data directory (env NOVACRON_DATA_DIR; default: the config's dataDir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The node's config file [default: /etc/novacron/node.yaml if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A key as `list`, `show` and `new` print it.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct KeyEntry {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    path: PathBuf,
    /// Why the key file could not be read (list only).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What `trust` and `untrust` print with --json.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TrustReport {
    public_key: String,
    trust_file: PathBuf,
    /// Whether the file changed (false: the key was already trusted, or was not).
    changed: bool,
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let keys_dir = || keys_dir(args.keys_dir.as_deref(), &env);
    match args.command {
        KeysCommand::New { name } => {
            check_name(&name)?;
            let dir = keys_dir()?;
            make_keys_dir(&dir)?;
            let path = key_path(&dir, &name);
            let key = SubmitterKey::create(&path)?;
            let entry = KeyEntry {
                name: name.clone(),
                public_key: Some(key.public().to_string()),
                path,
                error: None,
            };
            if args.json {
                outln!("{}", serde_json::to_string(&entry)?)?;
            } else {
                outln!("{}", key.public())?;
                note(&format!(
                    "novacron: created submitter key {name} in {}; let a node accept its jobs \
                     with `novacron keys trust {name} --data-dir DIR` (there) or `novacron keys \
                     trust {}`",
                    entry.path.display(),
                    key.public()
                ));
            }
        }
        KeysCommand::List => {
            let dir = keys_dir()?;
            let entries = list_keys(&dir)?;
            if args.json {
                outln!("{}", serde_json::to_string(&entries)?)?;
            } else if entries.is_empty() {
                note(&format!(
                    "novacron: no submitter keys in {} (make one with `novacron keys new NAME`)",
                    dir.display()
                ));
            } else {
                let mut table = Table::new(&["NAME", "PUBLIC KEY"]);
                for e in &entries {
                    let shown = match (&e.public_key, &e.error) {
                        (Some(k), _) => k.clone(),
                        (None, Some(err)) => format!("(unreadable: {err})"),
                        (None, None) => String::new(),
                    };
                    table.row(vec![e.name.clone(), shown]);
                }
                super::output::print(&table.render())?;
            }
        }
        KeysCommand::Show { name } => {
            check_name(&name)?;
            let path = key_path(&keys_dir()?, &name);
            let key = SubmitterKey::load(&path)?;
            if args.json {
                let entry = KeyEntry {
                    name,
                    public_key: Some(key.public().to_string()),
                    path,
                    error: None,
                };
                outln!("{}", serde_json::to_string(&entry)?)?;
            } else {
                outln!("{}", key.public())?;
            }
        }
        KeysCommand::Trust { key_or_name, node } => {
            let (key, name) = resolve_key(&key_or_name, keys_dir)?;
            let data_dir = node_data_dir(&node, &env)?.0;
            let file = trust_file_path(&data_dir);
            let changed = trust_key(&file, &key, name.as_deref())?;
            report(args.json, &key, &file, changed, || {
                if changed {
                    format!(
                        "novacron: the node at {} now accepts jobs signed by {key} (in {})",
                        data_dir.display(),
                        file.display()
                    )
                } else {
                    format!("novacron: {key} was already in {}", file.display())
                }
            })?;
        }
        KeysCommand::Untrust { key_or_name, node } => {
            let (key, _) = resolve_key(&key_or_name, keys_dir)?;
            let (data_dir, config) = node_data_dir(&node, &env)?;
            let file = trust_file_path(&data_dir);
            let changed = untrust_key(&file, &key)?;
            if let Some((path, cfg)) = &config {
                if cfg.trusted_submitters()?.contains(&key) {
                    bail!(
                        "{key} is also listed in {}'s trustedSubmitters{}: remove it there and \
                         restart the node, or the node keeps accepting its jobs",
                        path.display(),
                        if changed {
                            " (it was removed from the trust file)"
                        } else {
                            ""
                        }
                    );
                }
            }
            report(args.json, &key, &file, changed, || {
                if changed {
                    format!(
                        "novacron: the node at {} no longer accepts jobs signed by {key}",
                        data_dir.display()
                    )
                } else {
                    format!(
                        "novacron: {key} was not in {}; nothing changed",
                        file.display()
                    )
                }
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(
    json: bool,
    key: &SubmitterId,
    file: &Path,
    changed: bool,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        let r = TrustReport {
            public_key: key.to_string(),
            trust_file: file.to_path_buf(),
            changed,
        };
        outln!("{}", serde_json::to_string(&r)?)?;
    } else {
        note(&text());
    }
    Ok(())
}

/// The keys directory (see the module doc), from `flag` and the environment `env`.
fn keys_dir(flag: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = set("NOVACRON_KEYS_DIR") {
        return Ok(d);
    }
    // XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
    if let Some(d) = set("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        return Ok(d.join("novacron").join("keys"));
    }
    if let Some(home) = set("HOME") {
        return Ok(home.join(".config").join("novacron").join("keys"));
    }
    bail!("no keys directory: give --keys-dir DIR or set NOVACRON_KEYS_DIR (HOME is not set)")
}

/// The keys directory: `dir` when given, else as the module doc says (the environment).
pub fn keys_dir_or_default(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let env = |k: &str| std::env::var(k).ok();
    keys_dir(dir, &env)
}

/// Whether `name` can name a key (1-64 of A-Z a-z 0-9 _ -).
pub fn is_key_name(name: &str) -> bool {
    check_name(name).is_ok()
}

/// Loads the submitter key `name` from the keys directory (`dir`, else as the module doc
/// says), with an error that says how to make one when it is missing.
pub fn load_submitter_key(dir: Option<&Path>, name: &str) -> anyhow::Result<SubmitterKey> {
    check_name(name)?;
    let env = |k: &str| std::env::var(k).ok();
    let dir = keys_dir(dir, &env)?;
    let path = key_path(&dir, name);
    if !path.exists() {
        bail!(
            "no submitter key {name} in {}: make one with `novacron keys new {name}`, and have \
             each node trust its public key (`novacron keys trust`)",
            dir.display()
        );
    }
    Ok(SubmitterKey::load(&path)?)
}

/// Makes the keys directory (and missing parents) readable by its owner only.
fn make_keys_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the keys directory {}", dir.display()))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        bail!(
            "{name:?} is not a key name: give 1-{MAX_NAME_CHARS} of the letters A-Z a-z, digits, \
             _ and -"
        );
    }
    Ok(())
}

fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.{KEY_EXT}"))
}

/// The keys in `dir`, by name; a file that does not load is listed with its error.
fn list_keys(dir: &Path) -> anyhow::Result<Vec<KeyEntry>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot list the keys directory {}", dir.display()))
        }
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        if check_name(name).is_err() {
            continue;
        }
        let (public_key, error) = match SubmitterKey::load(&path) {
            Ok(k) => (Some(k.public().to_string()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        keys.push(KeyEntry {
            name: name.to_string(),
            public_key,
            path,
            error,
        });
    }
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(keys)
}

/// A public key as given, or the public key of the named key in the keys directory (then
/// its name too).
fn resolve_key(
    key_or_name: &str,
    keys_dir: impl FnOnce() -> anyhow::Result<PathBuf>,
) -> anyhow::Result<(SubmitterId, Option<String>)> {
    let text = key_or_name.trim();
    let looks_like_key = text.starts_with(SubmitterId::PREFIX)
        || (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()));
    if looks_like_key {
        let key = SubmitterId::parse(text).map_err(|e| anyhow::anyhow!("{key_or_name:?}: {e}"))?;
        return Ok((key, None));
    }
    check_name(text).context("give a public key (ed25519:<64 hex digits>) or a key's name")?;
    let path = key_path(&keys_dir()?, text);
    if !path.exists() {
        bail!(
            "no key named {text} in {} (and {text:?} is not a public key, \
             ed25519:<64 hex digits>); list the keys with `novacron keys list`",
            path.parent()
                .map_or(path.clone(), Path::to_path_buf)
                .display()
        );
    }
    Ok((SubmitterKey::load(&path)?.public(), Some(text.to_string())))
}

/// The node's data directory (see the module doc), and its config when one was read.
fn node_data_dir(
    node: &NodeDir,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(PathBuf, Option<(PathBuf, NodeConfig)>)> {
    let config_path = match &node.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let config = match &config_path {
        Some(p) => Some((
            p.clone(),
            NodeConfig::load(Some(p), env)
                .context("cannot read the node's config (or pass --data-dir DIR)")?,
        )),
        None => None,
    };
    let dir = node
        .data_dir
        .clone()
        .or_else(|| {
            env("NOVACRON_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| config.as_ref().and_then(|(_, c)| c.data_dir.clone()));
    let Some(dir) = dir else {
        bail!(
            "which node? give --data-dir DIR (the node's data directory) or set \
             NOVACRON_DATA_DIR, or --config FILE with a dataDir"
        );
    };
    if !dir.is_dir() {
        bail!(
            "the node's data directory {} does not exist or is not a directory (is it the \
             one `novacron node --data-dir` runs with?)",
            dir.display()
        );
    }
    Ok((dir, config))
}

#[cfg(test)]
mod tests {
    use super::super::api_args::env_of;
    use super::*;

    #[test]
    fn the_keys_directory_is_the_flag_then_env_then_xdg_then_home() {
        let all = env_of(&[
            ("NOVACRON_KEYS_DIR", "/k"),
            ("XDG_CONFIG_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(
            keys_dir(Some(Path::new("/f")), &all).unwrap(),
            PathBuf::from("/f")
        );
        assert_eq!(keys_dir(None, &all).unwrap(), PathBuf::from("/k"));
        let xdg = env_of(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(
            keys_dir(None, &xdg).unwrap(),
            PathBuf::from("/x/novacron/keys")
        );
        let relative_xdg = env_of(&[("XDG_CONFIG_HOME", "cfg"), ("HOME", "/h")]);
        assert_eq!(
            keys_dir(None, &relative_xdg).unwrap(),
            PathBuf::from("/h/.config/novacron/keys")
        );
        let err = keys_dir(None, &env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("--keys-dir"), "{err}");
    }

    #[test]
    fn names_are_plain_words() {
        for ok in ["alice", "ci-bot_2", &"a".repeat(64)] {
            check_name(ok).unwrap();
        }
        for bad in ["", "../x", "a.b", "a b", "ä", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_made_listed_and_resolved_by_name_or_public_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cfg/novacron/keys");
        make_keys_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let bob = SubmitterKey::create(&key_path(&dir, "bob")).unwrap();
        let alice = SubmitterKey::create(&key_path(&dir, "alice")).unwrap();
        std::fs::write(dir.join("broken.key"), "x").unwrap();
        std::fs::write(dir.join("README"), "not a key").unwrap();
        let listed = list_keys(&dir).unwrap();
        let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "broken"]);
        assert_eq!(listed[0].public_key, Some(alice.public().to_string()));
        assert!(listed[2]
            .error
            .as_deref()
            .unwrap()
            .contains("submitter key"));
        assert_eq!(list_keys(&tmp.path().join("none")).unwrap(), vec![]);

        let by_name = resolve_key("bob", || Ok(dir.clone())).unwrap();
        assert_eq!(by_name, (bob.public(), Some("bob".to_string())));
        let by_key = resolve_key(&alice.public().to_string(), || unreachable!()).unwrap();
        assert_eq!(by_key, (alice.public(), None));
        let err = resolve_key("carol", || Ok(dir.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no key named carol"), "{err}");
        let err = resolve_key("ed25519:00", || Ok(dir.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex"), "{err}");
    }

    #[test]
    fn the_node_is_found_by_flag_env_or_config() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let flag = NodeDir {
            data_dir: Some(data.clone()),
            config: None,
        };
        assert_eq!(node_data_dir(&flag, &env_of(&[])).unwrap().0, data);
        let by_env = env_of(&[("NOVACRON_DATA_DIR", data.to_str().unwrap())]);
        assert_eq!(node_data_dir(&NodeDir::default(), &by_env).unwrap().0, data);
        let cfg = tmp.path().join("node.yaml");
        std::fs::write(&cfg, format!("dataDir: {}\n", data.display())).unwrap();
        let by_config = NodeDir {
            data_dir: None,
            config: Some(cfg.clone()),
        };
        let (dir, config) = node_data_dir(&by_config, &env_of(&[])).unwrap();
        assert_eq!((dir, config.unwrap().0), (data.clone(), cfg));
        let missing = NodeDir {
            data_dir: Some(tmp.path().join("nope")),
            config: None,
        };
        let err = node_data_dir(&missing, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn the_commands_parse() {
        use clap::Parser;
        for args in [
            &["keys", "new", "alice"][..],
            &["keys", "list", "--json"],
            &["keys", "--keys-dir", "/k", "show", "alice"],
            &["keys", "trust", "alice", "--data-dir", "/var/lib/novacron"],
            &[
                "keys",
                "untrust",
                "ed25519:00",
                "--config",
                "/etc/n.yaml",
                "--json",
            ],
        ] {
            crate::cli::Cli::try_parse_from(
                std::iter::once("novacron").chain(args.iter().copied()),
            )
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
}
